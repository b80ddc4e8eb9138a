"""`bignmf fit` killed at any moment of its life — conversion, start-up, initialisation, the
iterations, a checkpoint, the final write — is finished by `bignmf resume` (or, when nothing
durable was written yet, by the same `bignmf fit`) with the bits of an uninterrupted run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import zarr


def _fit_options(max_iter: int) -> tuple:
    return ("-k", "4", "--seed", "0", "--tol", "0", "--max-iter", str(max_iter),
            "--checkpoint-every", "5", "--no-progress", "--top", "0")  # fmt: skip


FIT = _fit_options(12)
THREADS = ("--scheduler", "threads")


def _bignmf(*args, env=None, **options) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bignmf", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=300, **options)  # fmt: skip


@pytest.fixture(scope="module")
def matrix(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("kill") / "a.npz"
    sp.save_npz(path, sp.random(900, 60, density=0.15, format="csr", random_state=3))
    return path


def _outputs(run: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    summary = json.loads((run / "summary.json").read_text())
    W = zarr.open_array(run / "W.zarr", mode="r")[...]
    H = zarr.open_array(run / "H.zarr", mode="r")[...]
    return W, H, summary


def _recover(matrix: Path, run: Path, where: tuple, fit: tuple) -> subprocess.CompletedProcess:
    """What a user does after a kill: resume a run that began, else start the same fit."""
    if (run / "run.json").exists():
        return _bignmf("resume", run, *where, "--no-progress", "--top", "0")
    return _bignmf("fit", matrix, "--out", run, *where, *fit)


def _same_result(reference: Path, run: Path) -> None:
    W0, H0, summary0 = _outputs(reference)
    W1, H1, summary1 = _outputs(run)
    assert W1.tobytes() == W0.tobytes()
    assert H1.tobytes() == H0.tobytes()
    for key in ("n_iter", "converged", "reconstruction_err", "relative_error"):
        assert summary1[key] == summary0[key], key
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in lines] == list(range(1, summary0["n_iter"] + 1))


@pytest.fixture(scope="module")
def reference(matrix, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("reference") / "run"
    done = _bignmf("fit", matrix, "--out", run, *THREADS, *FIT)
    assert done.returncode == 0, done.stderr
    return run


# one deterministic kill in each phase: after the conversion (before the run is recorded),
# mid-iteration before the first checkpoint, inside a checkpoint, before its pointer switch,
# after the final factors but before the summary
@pytest.mark.parametrize(
    "point",
    ["fit-converted@0", "iteration-before-h@2", "finish-factors@12",
     # the default run kills inside checkpoints in tests/test_checkpoint.py already
     pytest.param("checkpoint-after-w@5", marks=pytest.mark.slow),
     pytest.param("checkpoint-before-pointer@10", marks=pytest.mark.slow)],
)  # fmt: skip
def test_killed_fit_finishes_with_the_same_bits(matrix, reference, tmp_path, point):
    run = tmp_path / "run"
    env = {**os.environ, "BIGNMF_CRASH_AT": point}
    killed = _bignmf("fit", matrix, "--out", run, *THREADS, *FIT, env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    done = _recover(matrix, run, THREADS, FIT)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    _same_result(reference, run)


def _mtimes(run: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in run.rglob("*")}


def test_resume_of_a_finished_run_says_so_and_changes_no_file(matrix, reference, tmp_path):
    before = _mtimes(reference)
    done = _bignmf("resume", reference, "--no-progress")  # the default scheduler: a cluster
    assert done.returncode == 0, done.stderr
    assert "--max-iter 12" in done.stderr
    assert "--max-iter" in done.stderr
    assert _mtimes(reference) == before
    converged = tmp_path / "converged"
    fit = ("-k", "4", "--seed", "0", "--tol", "0.01", "--no-progress", "--top", "0")
    assert _bignmf("fit", matrix, "--out", converged, *THREADS, *fit).returncode == 0
    before = _mtimes(converged)
    done = _bignmf("resume", converged, "--no-progress", "--max-iter", "400")
    assert done.returncode == 0, done.stderr
    assert "converged" in done.stderr
    assert "--tol 0" in done.stderr
    assert _mtimes(converged) == before


def test_resume_to_a_higher_max_iter_continues(matrix, reference, tmp_path):
    longer = tmp_path / "longer"
    fit = _fit_options(20)
    assert _bignmf("fit", matrix, "--out", longer, *THREADS, *fit).returncode == 0
    run = tmp_path / "run"
    assert _bignmf("fit", matrix, "--out", run, *THREADS, *FIT).returncode == 0
    done = _bignmf("resume", run, *THREADS, "--no-progress", "--top", "0", "--max-iter", "20",
                   "--checkpoint-every", "3")  # fmt: skip
    assert done.returncode == 0, done.stderr
    _same_result(longer, run)
    assert sorted(p.name for p in run.glob("ckpt-*")) == ["ckpt-000018", "ckpt-000020"]


@pytest.mark.slow
def test_twenty_random_kills_resume_to_the_same_bits(matrix, tmp_path):
    """SIGKILL of the whole process group (the LocalCluster's workers too) at 20 moments
    spread uniformly over an uninterrupted fit's wall time, on the default scheduler."""
    fit = ("--workers", "2", *_fit_options(40))
    reference = tmp_path / "reference"
    start = time.monotonic()
    assert _bignmf("fit", matrix, "--out", reference, *fit).returncode == 0
    lifetime = time.monotonic() - start
    moments = sorted(random.Random(11).uniform(0.05, 1.0) * lifetime for _ in range(20))
    outcomes = []
    for i, moment in enumerate(moments):
        run = tmp_path / f"run{i}"
        proc = subprocess.Popen([sys.executable, "-m", "bignmf", "fit", str(matrix), "--out",
                                 str(run), *fit], start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            proc.wait(timeout=moment)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        done = _recover(matrix, run, (), fit)
        assert done.returncode == 0, (moment, done.stderr)
        _same_result(reference, run)
        outcomes.append(proc.returncode)
    assert outcomes.count(-signal.SIGKILL) >= 15  # the kills did land over the fit's life
