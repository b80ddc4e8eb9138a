"""The code base stays ruff-clean (lint and format), checked with the project's config."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TARGETS = [d for d in ("bignmf", "tests", "benchmarks", "examples") if (ROOT / d).is_dir()]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("ruff")
    cmd = [exe] if exe else [sys.executable, "-m", "ruff"]
    return subprocess.run([*cmd, *args, *TARGETS], cwd=ROOT, capture_output=True, text=True)


@pytest.mark.parametrize("args", [("check",), ("format", "--check")])
def test_ruff(args):
    result = _ruff(*args)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_codec_name_has_its_compressor():
    from bignmf.store.csr import CODECS
    from bignmf.store.layout import CODEC_NAMES

    assert CODECS.keys() == CODEC_NAMES.keys()
