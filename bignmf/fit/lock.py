"""An exclusive lock per run directory, held by the one process that fits or resumes it.

Two processes that resumed one run at once used to interleave their checkpoints (measured: in 4
of 6 pairs the survivor exited 0 with wrong W and H whose checkpoints passed their checksums).
:func:`hold` takes ``RUN_DIR/.lock`` with ``flock(LOCK_EX | LOCK_NB)`` and writes its owner
(host, pid, start time, command) into it; a second process is refused at once, naming that
owner. The kernel drops a ``flock`` when its process dies however it dies, so a lock left by
a crash is simply free again: nothing to recognise as stale, nothing to clean up.

Filesystems: ``flock`` is exclusive between processes on local filesystems and, on Linux, on
NFS (the client emulates it with NFS byte-range locks, held by the server: exclusive across
hosts) and on Lustre and GPFS mounted with lock support (Lustre's ``flock`` mount option).
Where the filesystem refuses locks (``ENOLCK``, ``EOPNOTSUPP``: Lustre mounted ``noflock``, some
FUSE filesystems), the lock falls back to an owner file created with ``O_EXCL`` — atomic on
every POSIX filesystem — which a later process takes over only when the owner is provably
gone: the same host and a pid that no longer exists; from another host it names the owner and
the file to remove. Within one process a run is held by one thread at a time (a thread may
take its own lock again: the CLI holds it around the fit and the outputs, the engine around
the fit).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from bignmf.errors import CheckpointError

__all__ = ["LOCK", "LOCK_OWNER", "hold"]

#: The lock file of a run directory (kept: removing a lock file races with its next taker).
LOCK = ".lock"
#: The owner file of the fallback where the filesystem has no locks.
LOCK_OWNER = ".lock-owner"

_HELD: dict[Path, tuple[int, int]] = {}  # run directory → (holding thread, depth)
_GUARD = threading.Lock()


@contextlib.contextmanager
def hold(run_dir: str | os.PathLike) -> Iterator[None]:
    """Hold ``run_dir``'s exclusive lock for the ``with`` block.

    Raises
    ------
    CheckpointError
        When another process (or another thread of this one) holds it, naming the owner.
    """
    path = Path(run_dir).absolute()
    me = threading.get_ident()
    with _GUARD:
        holder = _HELD.get(path)
        if holder is not None and holder[0] != me:
            raise CheckpointError(f"{path} is in use by another thread of this process")
        if holder is not None:  # the thread's own lock, taken again
            _HELD[path] = (me, holder[1] + 1)
    if holder is not None:
        try:
            yield
        finally:
            with _GUARD:
                _HELD[path] = (me, _HELD[path][1] - 1)
        return
    with _locked(path):
        with _GUARD:
            _HELD[path] = (me, 1)
        try:
            yield
        finally:
            with _GUARD:
                del _HELD[path]


def _owner() -> dict:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "command": " ".join(sys.argv)[:300],
    }


def _refusal(path: Path, owner: dict | None, remedy: str) -> CheckpointError:
    if owner:
        who = (
            f"pid {owner.get('pid')} on {owner.get('host')} since {owner.get('since')} "
            f"({owner.get('command') or 'a fit'})"
        )
    else:
        who = "another process"
    return CheckpointError(f"{path} is in use by {who}: {remedy}")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _refusal(path, _owner_of(fd), "wait for it to end, or stop it") from None
        except OSError as error:
            if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            os.close(fd)
            fd = -1
            with _owner_file(path):
                yield
            return
        _write(fd, _owner())
        yield
    finally:
        if fd >= 0:
            os.close(fd)  # drops the flock


def _owner_of(fd: int) -> dict | None:
    """The holder's owner record, which it writes just after taking the lock: a moment's
    wait when we came in between (two resumes started together)."""
    for _ in range(10):
        owner = _read(fd)
        if owner:
            return owner
        time.sleep(0.05)
    return None


def _read(fd: int) -> dict | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 1 << 16).decode("utf-8"))
    except (OSError, ValueError):
        return None


def _write(fd: int, owner: dict) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(owner).encode("utf-8"))


@contextlib.contextmanager
def _owner_file(path: Path) -> Iterator[None]:
    """The fallback: an owner file created exclusively, taken over only from a dead owner."""
    file = path / LOCK_OWNER
    for _ in range(2):  # once more after taking over a dead owner's file
        try:
            fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            break
        except FileExistsError:
            owner = _read_file(file)
            if not _gone(owner):
                remedy = f"if it is no longer running, remove {file}"
                raise _refusal(path, owner, remedy) from None
            file.unlink(missing_ok=True)
    else:
        raise _refusal(path, _read_file(file), f"if it is no longer running, remove {file}")
    try:
        _write(fd, _owner())
        os.close(fd)
        yield
    finally:
        file.unlink(missing_ok=True)


def _read_file(file: Path) -> dict | None:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _gone(owner: dict | None) -> bool:
    """Whether the owner's process provably no longer exists (same host, no such pid)."""
    if not owner or owner.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, KeyError, TypeError, ValueError):
        return False
    return False
