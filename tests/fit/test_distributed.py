"""Real `dask scheduler` / `dask worker` processes: lost workers, lineage, W placement."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import dask
import numpy as np
import pytest
import scipy.sparse as sp
import zarr
from distributed import Client

import bignmf
from bignmf.cluster.runner import Runner
from tests.conftest import LocalProcessCluster

K = 4


@pytest.fixture
def own_cluster(tmp_path):
    """A cluster this test may damage: scheduler + 2 single-threaded workers on 127.0.0.1."""
    cluster = LocalProcessCluster(tmp_path / "cluster", n_workers=2)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    A = sp.random(4000, 300, density=0.04, format="csr", random_state=0)
    return bignmf.convert(A, tmp_path_factory.mktemp("data") / "A.zarr", block_rows=250)


@pytest.mark.parametrize(
    "passes",
    [[], ["--column-chunks", 3], ["--cache-a", "auto"]],
    ids=["fused", "two-pass", "cached"],
)
def test_a_worker_killed_mid_fit_changes_nothing(tmp_path, store, own_cluster, passes):
    common = ["-k", K, "--init", "random", "--seed", 2, "--tol", 0, "--max-iter", 25,
              "--checkpoint-every", 1000, "--no-progress", "--top", 0, *passes]  # fmt: skip
    cmd = [sys.executable, "-m", "bignmf", "fit", store.path]
    subprocess.run([*map(str, cmd), "--out", str(tmp_path / "t"), "--scheduler", "threads",
                    *map(str, common)], check=True, capture_output=True, timeout=300)  # fmt: skip
    run = tmp_path / "d"
    with open(tmp_path / "fit.log", "wb") as log:
        proc = subprocess.Popen(
            [*map(str, cmd), "--out", str(run), "--scheduler", own_cluster.address,
             *map(str, common)], stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        metrics = run / "metrics.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 4:
                break
            time.sleep(0.02)
        victim = own_cluster.procs[1]
        os.killpg(victim.pid, signal.SIGKILL)
        assert proc.wait(timeout=300) == 0, (tmp_path / "fit.log").read_text()
    assert victim.wait() == -9
    for name in ("W.zarr", "H.zarr"):
        expected = zarr.open_array(tmp_path / "t" / name)[...]
        assert zarr.open_array(run / name)[...].tobytes() == expected.tobytes()


def test_lineage_is_one_iteration_deep(tmp_path, store, dask_client):
    counts = []

    def count(info):
        counts.append(
            dask_client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))
        )

    bignmf.nmf(store, K, init="random", random_state=1, tol=0, max_iter=15, scheduler=dask_client,
               workdir=tmp_path, callback=count)  # fmt: skip
    # each look finds one iteration's tasks, or none when they were already released (as the
    # first five looks once did on a loaded machine): not more and more as the fit goes on
    seen = [c for c in counts if c]
    assert seen
    assert max(seen) <= 2 * min(seen)  # a lineage kept would grow by one graph a look


@pytest.mark.parametrize("scheduler", ["client", "threads", "synchronous"])
def test_persist_and_compute_keeps_the_others_and_returns_the_last(dask_client, scheduler):
    runner = Runner(dask_client if scheduler == "client" else scheduler)
    parts = [dask.delayed(np.arange)(n) for n in (2, 3)]
    total = dask.delayed(lambda xs: sum(int(x.sum()) for x in xs))(parts)
    kept, value = runner.persist_and_compute(*parts, total)
    assert value == 4
    assert [list(x) for x in runner.compute(*kept)] == [[0, 1], [0, 1, 2]]


def test_memory_w_is_refused_on_a_cluster(store, dask_client):
    with pytest.raises(ValueError, match="keep every iteration's lineage"):
        bignmf.nmf(store, K, w_storage="memory", scheduler=dask_client, max_iter=1)


def test_default_client_is_used_and_w_goes_to_disk(tmp_path, store, dask_cluster):
    with Client(dask_cluster) as client:
        assert client is not None
        result = bignmf.nmf(store, K, init="random", random_state=0, max_iter=3, tol=0,
                            workdir=tmp_path)  # fmt: skip
    assert len(list(tmp_path.glob("bignmf-*/W-buffers.zarr"))) == 1
    reference = bignmf.nmf(store, K, init="random", random_state=0, max_iter=3, tol=0,
                           scheduler="sync")  # fmt: skip
    assert np.asarray(result.W).tobytes() == reference.W.tobytes()


def test_workers_paused_for_memory_stop_the_fit_with_a_clear_error(tmp_path, store, own_cluster):
    import dask

    with Client(own_cluster.address, timeout=60) as client:

        def pause(dask_worker):  # as if each worker were over distributed's pause threshold
            dask_worker.memory_manager.memory_pause_fraction = 1e-9

        client.run(pause)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            statuses = [w["status"] for w in client.scheduler_info()["workers"].values()]
            if statuses == ["paused", "paused"]:
                break
            time.sleep(0.1)
        start = time.monotonic()
        with (
            dask.config.set({"bignmf.paused-timeout": 3}),
            pytest.raises(
                bignmf.WorkersPausedError, match="every worker has been paused"
            ) as raised,
        ):
            bignmf.nmf(store, K, init="random", random_state=0, max_iter=3, scheduler=client,
                       workdir=tmp_path)  # fmt: skip
        assert time.monotonic() - start < 60
        for address in client.scheduler_info()["workers"]:
            assert address in str(raised.value)
        assert "limit" in str(raised.value)
