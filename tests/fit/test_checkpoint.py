"""Checkpoints and resume: bitwise continuation, kills at any moment, damage, wrong inputs."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import zarr

import bignmf
from bignmf.datasets.synthetic import make_planted
from bignmf.fit import callbacks
from bignmf.fit.outputs import read_metrics
from bignmf.fit.rundir import CheckpointError, CheckpointWarning, RunDir

K = 4


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "A.zarr"
    return make_planted(path, 1200, 150, K, nnz_per_row=15, seed=3, block_rows=100)


def fit(store, run_dir=None, **kwargs):
    options = {"init": "random", "random_state": 5, "tol": 0, "max_iter": 12,
               "checkpoint_every": 4, "scheduler": "sync", **kwargs}  # fmt: skip
    return bignmf.nmf(store, K, checkpoint_dir=run_dir, **options)


def same(a, b):
    assert np.asarray(a.W).tobytes() == np.asarray(b.W).tobytes()
    assert a.H.tobytes() == b.H.tobytes()
    assert a.loss_history == b.loss_history


class _Clock:
    """Time that passes only when told: iterations and checkpoints of a chosen cost."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self):
        return self.now


def _checkpoints(monkeypatch, every, iteration_s, checkpoint_s, n=200):
    """The iterations a Checkpointer commits at, and the share of the time they took."""
    clock = _Clock()
    monkeypatch.setattr(callbacks, "time", clock)
    saved = []

    class Run:
        path = "run"

        def save(self, iteration, *args, **kwargs):
            saved.append(iteration)
            clock.now += checkpoint_s

    state = types.SimpleNamespace(iteration=0, history=[], H=None, save_w=None,
                                  objective_history=[], final_loss=lambda: 0.0)  # fmt: skip
    checkpointer = callbacks.Checkpointer(Run(), every, seconds=600.0)
    checkpointer.on_start(state, n)
    for _ in range(n):
        state.iteration += 1
        clock.now += iteration_s
        checkpointer.on_iteration(state, None)
    return saved, len(saved) * checkpoint_s / clock.now


def test_auto_checkpoints_take_a_small_share_of_the_time(monkeypatch):
    """'auto': every 10 iterations while a checkpoint is cheap against them; postponed while
    checkpoints would take more than 5% of the time (a small matrix: 50 ms iterations, 145 ms
    checkpoints, where every 10 took 22%). A number is a number."""
    saved, share = _checkpoints(monkeypatch, "auto", iteration_s=1.0, checkpoint_s=0.1)
    assert saved == list(range(10, 201, 10))
    saved, share = _checkpoints(monkeypatch, "auto", iteration_s=0.05, checkpoint_s=0.145)
    assert saved[0] == 10
    assert 4 <= len(saved) <= 6
    assert share < 0.06  # 5% but for the first, at 10 iterations, before its cost is known
    assert min(b - a for a, b in itertools.pairwise(saved)) >= 55  # 19 checkpoints' time apart
    saved, share = _checkpoints(monkeypatch, 10, iteration_s=0.05, checkpoint_s=0.145)
    assert saved == list(range(10, 201, 10))
    assert share > 0.2
    saved, _ = _checkpoints(monkeypatch, "auto", iteration_s=100.0, checkpoint_s=1.0, n=30)
    assert saved == list(range(6, 31, 6))  # every 600 s first, whatever the count


def test_default_checkpoints_are_auto_and_resume_keeps_them(tmp_path, store):
    bignmf.nmf(store, K, checkpoint_dir=tmp_path / "run", init="random", random_state=5, tol=0,
               max_iter=3, scheduler="sync")  # fmt: skip
    record = RunDir(tmp_path / "run").record()
    assert record["options"]["checkpoint_every"] == "auto"
    resumed = bignmf.nmf(store, K, resume=tmp_path / "run", max_iter=5)
    assert len(resumed.loss_history) == 5
    same(resumed, fit(store, max_iter=5))


@pytest.mark.parametrize("w_storage", ["memory", "zarr"])
def test_resume_is_bitwise_equal_and_may_raise_max_iter(tmp_path, store, w_storage):
    whole = fit(store, max_iter=12, w_storage=w_storage, workdir=tmp_path / "w0")
    fit(store, tmp_path / "run", max_iter=7, w_storage=w_storage)
    assert [p.name for p in RunDir(tmp_path / "run").committed()] == ["ckpt-000007", "ckpt-000004"]
    resumed = bignmf.resume(tmp_path / "run", max_iter=12, scheduler="threads", n_tasks=3)
    same(resumed, whole)
    metrics = read_metrics(tmp_path / "run")
    assert [r["iteration"] for r in metrics] == list(range(1, 13))


def test_resume_refuses_another_matrix_and_changes_nothing(tmp_path, store):
    fit(store, tmp_path / "run", max_iter=4)
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    other = make_planted(tmp_path / "B.zarr", 1200, 150, K, nnz_per_row=15, seed=4, block_rows=100)
    with pytest.raises(CheckpointError, match="another matrix"):
        bignmf.resume(tmp_path / "run", A=other)
    with pytest.raises(CheckpointError, match=r"other settings.*solver"):
        bignmf.nmf(store, K, solver="mu", init="random", resume=tmp_path / "run")
    with pytest.raises(CheckpointError, match="another row blocking"):
        bignmf.nmf(store, K, block_nnz=500, init="random", resume=tmp_path / "run")
    with pytest.raises(CheckpointError, match="already holds a run"):
        fit(store, tmp_path / "run")
    after = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert after == before


def _newest_w_chunk(run: Path) -> Path:
    newest = RunDir(run).committed()[0]
    return next(
        p for p in sorted((newest / "W" / "0").rglob("*")) if p.is_file() and "c" in p.parts
    )


@pytest.mark.parametrize("damage", ["truncate-w", "flip-w", "flip-h", "drop-pointer", "empty"])
def test_damaged_newest_checkpoint_falls_back(tmp_path, store, damage):
    whole = fit(store, max_iter=12)
    fit(store, tmp_path / "run", max_iter=8)
    newest = RunDir(tmp_path / "run").committed()[0]
    if damage == "truncate-w":
        chunk = _newest_w_chunk(tmp_path / "run")
        chunk.write_bytes(chunk.read_bytes()[:-7])
    elif damage == "flip-w":
        chunk = _newest_w_chunk(tmp_path / "run")
        data = bytearray(chunk.read_bytes())
        data[len(data) // 2] ^= 0x10
        chunk.write_bytes(bytes(data))
    elif damage == "flip-h":
        chunk = next(p for p in (newest / "H").rglob("*") if p.is_file() and "c" in p.parts)
        data = bytearray(chunk.read_bytes())
        data[3] ^= 0x01
        chunk.write_bytes(bytes(data))
    elif damage == "drop-pointer":
        (tmp_path / "run" / "CURRENT").unlink()
    else:
        shutil.rmtree(newest)
        newest.mkdir()
    context = (pytest.warns(CheckpointWarning, match="skipping damaged checkpoint")
               if damage != "drop-pointer" else warnings.catch_warnings())  # fmt: skip
    with context:
        resumed = bignmf.resume(tmp_path / "run", max_iter=12)
    same(resumed, whole)


def test_every_checkpoint_damaged_is_an_error(tmp_path, store):
    fit(store, tmp_path / "run", max_iter=4, checkpoint_every=2)
    for path in RunDir(tmp_path / "run").committed():
        (path / "zarr.json").write_text("{")
    with pytest.warns(CheckpointWarning), pytest.raises(CheckpointError, match="no intact"):
        bignmf.resume(tmp_path / "run")


def _cli(*args, env=None, check=True):
    cmd = [sys.executable, "-m", "bignmf", *map(str, args)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(result.stdout + result.stderr)
    return result


FIT = ("-k", K, "--init", "random", "--seed", 5, "--tol", 0, "--max-iter", 9,
       "--checkpoint-every", 2, "--scheduler", "threads", "--no-progress")  # fmt: skip


def test_sigkill_at_any_moment_then_resume_is_bitwise_equal(tmp_path, store):
    _cli("fit", store.path, "--out", tmp_path / "whole", *FIT)
    W = zarr.open_array(tmp_path / "whole" / "W.zarr")[...]
    H = zarr.open_array(tmp_path / "whole" / "H.zarr")[...]
    moments = ["iteration-before-h@3", "checkpoint-after-w@4", "checkpoint-before-pointer@6",
               "iteration-before-h@9"]  # fmt: skip
    run = tmp_path / "killed"
    env = {**os.environ, "BIGNMF_CRASH_AT": moments[0]}
    result = _cli("fit", store.path, "--out", run, *FIT, env=env, check=False)
    assert result.returncode == -9, result.stderr
    for moment in moments[1:]:
        env["BIGNMF_CRASH_AT"] = moment
        result = _cli("resume", run, "--scheduler", "threads", "--no-progress", env=env,
                      check=False)  # fmt: skip
        assert result.returncode == -9, result.stderr
    _cli("resume", run, "--scheduler", "threads", "--no-progress")
    assert zarr.open_array(run / "W.zarr")[...].tobytes() == W.tobytes()
    assert zarr.open_array(run / "H.zarr")[...].tobytes() == H.tobytes()
    assert [r["iteration"] for r in read_metrics(run)] == list(range(1, 10))
    assert not list(run.glob(".ckpt-*"))  # temporaries of killed writes cleaned up


def test_sigkill_mid_iteration_on_the_default_local_cluster(tmp_path, store):
    """A real kill by signal, from outside, while the embedded LocalCluster computes."""
    run = tmp_path / "run"
    args = [sys.executable, "-m", "bignmf", "fit", store.path, "--out", run, "-k", K,
            "--init", "random", "--seed", 5, "--tol", 0, "--max-iter", 40,
            "--checkpoint-every", 3, "--workers", 2, "--no-progress"]  # fmt: skip
    log = tmp_path / "fit.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(list(map(str, args)), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        _kill_after_iterations(proc, run / "metrics.jsonl", 7)
    assert proc.returncode == -9, log.read_text()
    _cli("resume", run, "--scheduler", "threads", "--no-progress")
    whole = fit(store, max_iter=40)
    assert zarr.open_array(run / "W.zarr")[...].tobytes() == np.asarray(whole.W).tobytes()
    assert zarr.open_array(run / "H.zarr")[...].tobytes() == whole.H.tobytes()


def _kill_after_iterations(proc, metrics: Path, n: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= n:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _kill_after_iterations(proc, metrics: Path, n: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= n:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_in_memory_run_resumes_with_the_matrix_given(tmp_path):
    A = sp.random(300, 60, density=0.1, format="csr", random_state=0)
    whole = bignmf.nmf(A, K, init="random", random_state=1, tol=0, max_iter=6)
    bignmf.nmf(A, K, init="random", random_state=1, tol=0, max_iter=3,
               checkpoint_dir=tmp_path / "run")  # fmt: skip
    with pytest.raises(CheckpointError, match="in-memory matrix"):
        bignmf.resume(tmp_path / "run")
    same(bignmf.resume(tmp_path / "run", A=A, max_iter=6), whole)
