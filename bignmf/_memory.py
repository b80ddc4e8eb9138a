"""Keep a streaming process's resident memory at what it uses.

glibc raises its mmap threshold each time a large block is freed, after which blocks of that
size come from the heap and stay resident: a converter streaming multi-megabyte slabs then
holds tens of megabytes it no longer uses (measured here: 45 MB resident for 20 MB in use).
Fixing the threshold returns every large buffer to the system when freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3
THRESHOLD = 128 * 1024  # glibc's initial value


def fix_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold (no-op elsewhere); True when applied."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to fix
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD))
