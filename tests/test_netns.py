"""Fits on a multi-host bed: scheduler and workers in network namespaces of their own.

The bed (:mod:`tests.netns_bed`) needs root, iproute2 and a kernel that lets it make network
namespaces, veth pairs and a bridge; each test skips, saying why, where that is missing. The
store and W's buffers lie under the test's tmp path, which every namespace sees at the same
absolute path (namespaces split the network, not the file system); each worker runs in a
working directory of its own.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time

import numpy as np
import pytest
import scipy.sparse as sp
import zarr

import bignmf
from tests import netns_bed
from tests.netns_bed import NetnsBed

K = 4
FIT = {"init": "random", "random_state": 2, "tol": 0}
ITERATIONS = 40


def _skip_unless(reason: str | None) -> None:
    if reason is not None:
        pytest.skip(f"no network-namespace test bed here: {reason}")


@pytest.fixture(scope="module")
def capable():
    """Skip (naming what is missing) unless this machine can build the bed: checked first, so
    that nothing else is prepared for nothing."""
    _skip_unless(netns_bed.unavailable())


@pytest.fixture
def make_bed(capable, tmp_path):
    """Build beds for one test; every one is torn down after it, whatever happened."""
    made: list[NetnsBed] = []

    def make(name="bed", tbf: bool = False, **options):
        _skip_unless(netns_bed.tbf_unavailable() if tbf else None)
        bed = NetnsBed(tmp_path / name, **options)
        made.append(bed)
        return bed

    yield make
    for bed in made:
        bed.close()
        assert bed.remaining() == [], "the bed left namespaces or links behind"


@pytest.fixture(scope="module")
def matrix(capable):
    return sp.random(4000, 300, density=0.04, format="csr", random_state=0)


@pytest.fixture(scope="module")
def store(tmp_path_factory, matrix):
    path = tmp_path_factory.mktemp("netns-data") / "A.zarr"
    return bignmf.convert(matrix, path, block_rows=250)


@pytest.fixture(scope="module")
def expected(store):
    """The threads scheduler's W and H, as bytes."""
    result = bignmf.nmf(store, K, max_iter=ITERATIONS, scheduler="threads", **FIT)
    return np.asarray(result.W).tobytes(), result.H.tobytes()


class Timeline(bignmf.Callback):
    """When each iteration ended; ``at`` (iteration -> function) runs something after one."""

    def __init__(self, at=None):
        self.times: list[float] = []
        self.at = at or {}

    def on_start(self, state, max_iter):
        self.times.append(time.monotonic())

    def on_iteration(self, state, info):
        self.times.append(time.monotonic())
        if info.iteration in self.at:
            self.at[info.iteration]()

    def slowest(self) -> float:
        return max(np.diff(self.times))


def fit_on(bed, store, workdir, **options):
    """The fit on ``bed`` from this process: result, W, each worker's task transitions."""
    from distributed import Client

    with Client(bed.address, timeout=60) as client:
        result = bignmf.nmf(store, K, max_iter=ITERATIONS, scheduler=client, workdir=workdir,
                            **FIT, **options)  # fmt: skip
        W = np.asarray(result.W)  # lazy on a distributed scheduler: read while the bed runs
        workers = client.run(lambda dask_worker: dask_worker.state.transition_counter)
    return result, W, workers


@pytest.mark.parametrize("loss", [0.0, 0.5])
def test_the_proxy_delays_each_way_keeps_the_order_and_resets(loss):
    """The proxy alone, on 127.0.0.1 (no namespace, no root): an echo through it takes two
    delays (four with a "lost" chunk each way), the bytes arrive whole and in order, and a
    reset reaches the client as a RST."""
    import socket

    echo = socket.create_server(("127.0.0.1", 0))

    def serve():
        conn, _ = echo.accept()
        with conn, contextlib.suppress(ConnectionResetError):  # the proxy's reset, below
            while data := conn.recv(65536):
                conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    proxy = netns_bed.LatencyProxy("127.0.0.1", delay=0.05, loss=loss, loss_penalty=0.1)
    try:
        port = proxy.forward("echo", echo.getsockname())
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            payload = bytes(range(256)) * 4096  # 1 MiB: many chunks
            start = time.monotonic()
            client.sendall(payload)
            got = b""
            while len(got) < len(payload):
                got += client.recv(1 << 20)
            took = time.monotonic() - start
            assert got == payload
            assert took >= 0.1
            if loss:
                assert proxy.stats["lost"] > 0
            else:
                assert proxy.stats["lost"] == 0
                assert took < 2
            assert proxy.reset("echo") == 1
            with pytest.raises(ConnectionResetError):
                client.recv(1)
    finally:
        proxy.close()
        echo.close()


@pytest.mark.slow
def test_a_fit_across_namespaces_equals_threads(make_bed, store, expected, tmp_path):
    bed = make_bed()
    assert len({bed.ips[r] for r in ("scheduler", "worker1", "worker2")}) == 3
    timeline = Timeline()
    result, W, workers = fit_on(bed, store, tmp_path / "work", callbacks=[timeline])
    assert (W.tobytes(), result.H.tobytes()) == expected
    assert sorted(workers) == [f"tcp://{bed.ips[w]}:{netns_bed.WORKER_PORT}"
                               for w in ("worker1", "worker2")]  # fmt: skip
    assert result.n_iter == ITERATIONS
    assert min(workers.values()) > 100  # both workers ran tasks


@pytest.mark.slow
def test_latency_loss_and_a_rate_limit_change_no_bit(make_bed, store, expected, tmp_path):
    """20 ms each way on every Dask connection, 1% of chunks held 200 ms more (as a lost and
    retransmitted TCP segment), each worker's link limited to 100 Mbit/s by tbf."""
    bed = make_bed(proxy=True, delay=0.020, loss=0.01, tbf=True)
    for name in ("worker1", "worker2"):
        bed.limit_rate(name, "100mbit")
    timeline = Timeline()
    result, W, workers = fit_on(bed, store, tmp_path / "work", callbacks=[timeline])
    assert (W.tobytes(), result.H.tobytes()) == expected
    assert all(address.startswith(f"tcp://{bed.ips['bridge']}:") for address in workers)
    stats = bed.proxy.stats
    print(f"proxy: {stats}; fastest iteration {min(np.diff(timeline.times)):.2f} s")
    assert stats["lost"] > 0
    assert stats["chunks"] > 100
    # an iteration needs round trips through the proxy: at least 40 ms each
    assert min(np.diff(timeline.times)) > 0.04


@pytest.mark.slow
@pytest.mark.parametrize(
    "target", ["to-the-workers", "worker1-to-scheduler", "client-to-scheduler"]
)
def test_connections_reset_mid_fit_change_no_bit(make_bed, store, expected, tmp_path, target):
    """Connections reset with a RST by the proxy after iterations 3, 6 and 9.

    'to-the-workers': every connection to a worker (the scheduler's, the other worker's):
    the senders reconnect, nobody leaves. 'worker1-to-scheduler': worker1's connections to
    the scheduler: distributed's worker closes on losing its scheduler stream, and its nanny
    with it (the process exits, nothing restarts it), the fit ends on worker2. (Resetting
    every worker's stream so leaves no worker at all, and the fit then waits for one
    forever.) 'client-to-scheduler': this process's connections: the Client reconnects.
    """
    bed = make_bed(proxy=True)
    name, peer = {
        "to-the-workers": (None, None),
        "worker1-to-scheduler": ("scheduler", bed.ips["worker1"]),
        "client-to-scheduler": ("scheduler", bed.ips["bridge"]),
    }[target]
    resets = []

    def reset():
        if name is None:
            resets.append(bed.proxy.reset("worker1") + bed.proxy.reset("worker2"))
        else:
            resets.append(bed.proxy.reset(name, peer=peer))

    timeline = Timeline(at={3: reset, 6: reset, 9: reset})
    result, W, workers = fit_on(bed, store, tmp_path / "work", callbacks=[timeline])
    assert (W.tobytes(), result.H.tobytes()) == expected
    assert len(resets) == 3
    assert resets[0] > 0
    print(f"connections reset after iterations 3, 6, 9: {resets}")
    if target == "worker1-to-scheduler":
        assert len(workers) == 1
        assert bed.named["worker1"].wait(timeout=60) == 0
        assert "Reason: worker-handle-scheduler-connection-broken" in bed.log("worker1")
    else:
        assert len(workers) == 2
        assert "Remove worker" not in bed.log("scheduler")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("down", "ttl", "nanny"),
    [(3.0, None, True), (12.0, "2s", True), (12.0, "2s", False)],
    ids=["brief-outage", "past-the-ttl-with-a-nanny", "past-the-ttl-without-a-nanny"],
)
def test_a_worker_cut_off_mid_fit_and_restored_changes_nothing(
    make_bed, store, expected, tmp_path, down, ttl, nanny
):
    """worker1's link is cut after iteration 3 for ``down`` seconds, then restored.

    Within distributed's worker-ttl (default 5 minutes) TCP rides the outage out: the fit
    waits for worker1, no task moves. Past it (ttl 2 s, which distributed floors at 10
    heartbeats: 5 s), the scheduler gives worker1 up: with a nanny it asks the nanny — behind
    the same cut link — to restart worker1, which only happens once the link is back (the
    old worker1 is then removed, its tasks rerun, a new worker1 joins); without a nanny it
    removes worker1 at once, and worker2 goes on alone during the outage.
    """
    env = {} if ttl is None else {"DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL": ttl}
    bed = make_bed(env=env, nanny=nanny)
    cut: dict[str, float] = {}
    timers: list[threading.Timer] = []

    def outage():
        bed.link_down("worker1")
        cut["down"] = time.monotonic()

        def restore():
            bed.link_up("worker1")
            cut["up"] = time.monotonic()

        timers.append(threading.Timer(down, restore))
        timers[0].start()

    def restored():  # without a nanny worker2 may finish the fit alone before the link is back
        timers[0].join()

    timeline = Timeline(at={3: outage, ITERATIONS - 2: restored})
    result, W, workers = fit_on(bed, store, tmp_path / "work", callbacks=[timeline])
    assert (W.tobytes(), result.H.tobytes()) == expected
    assert "up" in cut, "the fit ended before the link came back"
    log = bed.log("scheduler")
    during = [t for t in timeline.times if cut["down"] < t < cut["up"]]
    worker1 = f"tcp://{bed.ips['worker1']}:{netns_bed.WORKER_PORT}"
    if ttl is None:
        assert "Remove worker" not in log
        assert not during
        assert timeline.slowest() >= down * 0.8  # one iteration spans the outage
        assert worker1 in workers
    elif nanny:
        assert "Worker failed to heartbeat" in log
        assert "attempting restart" in log
        assert log.count("Register worker addr: " + worker1) == 2  # restarted by its nanny
        assert "Restarting worker" in bed.log("worker1")
        assert not during  # the scheduler waited for the nanny, behind the cut link
        assert worker1 in workers
    else:
        assert "Worker failed to heartbeat" in log
        assert "do not use a nanny and will be terminated" in log
        assert during, "no iteration ended while worker1 was cut off"
        assert worker1 not in workers
        # back on the network, the old worker1 heartbeats, is told it is unknown, and exits
        bed.named["worker1"].wait(timeout=60)
        assert "Scheduler was unaware of this worker; shutting down" in bed.log("worker1")
    print(f"outage {down:.0f} s: slowest iteration {timeline.slowest():.1f} s, "
          f"{len(during)} iterations ended during it")  # fmt: skip


@pytest.mark.slow
def test_relative_paths_are_made_absolute_before_the_workers_see_them(
    make_bed, matrix, expected, tmp_path, monkeypatch
):
    """The client runs in another directory than any worker, where a relative store or
    workdir means something else. bignmf makes both absolute in the client, so the workers
    open the client's files: same bits, nothing written in the workers' directories. The CLI,
    run in a namespace of its own with relative paths, does the same."""
    bed = make_bed(client=True)
    here = tmp_path / "client-cwd"
    here.mkdir()
    monkeypatch.chdir(here)
    bignmf.convert(matrix, "A.zarr", block_rows=250)
    result, W, _ = fit_on(bed, "A.zarr", "work")
    assert (W.tobytes(), result.H.tobytes()) == expected
    assert (here / "work").is_dir()
    for name in ("scheduler", "worker1", "worker2"):
        assert not (bed.workdir / name / "A.zarr").exists()
        assert not (bed.workdir / name / "work").exists()

    done = bed.run("client", [sys.executable, "-m", "bignmf", "fit", "A.zarr", "--out", "run",
                              "-k", K, "--init", "random", "--seed", FIT["random_state"],
                              "--tol", 0, "--max-iter", ITERATIONS, "--no-progress", "--top", 0,
                              "--scheduler", bed.address], cwd=here)  # fmt: skip
    assert done.returncode == 0, done.stderr
    W_cli = zarr.open_array(here / "run" / "W.zarr", mode="r")[...]
    H_cli = zarr.open_array(here / "run" / "H.zarr", mode="r")[...]
    assert (W_cli.tobytes(), H_cli.tobytes()) == expected
