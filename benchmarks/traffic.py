"""Network traffic of a bignmf iteration on a Dask cluster, against the theoretical minimum.

A ``dask scheduler`` and ``--workers`` single-threaded ``dask worker`` processes (each with its
nanny, bignmf's :data:`~bignmf.cluster.config.WORKER_ENV`)
are started on 127.0.0.1, each a process of
its own, so that every hop between the client, the scheduler and the workers crosses a TCP
socket. Every process's ``distributed.comm.tcp.TCP.write`` is wrapped to count the bytes each
message puts on its socket (distributed's frames with their length headers, after any
compression: what the kernel is given to send; TCP/IP headers not included), by local and peer
address; addresses are then mapped back to the process that owns them. A planted store is
factorized with ``bignmf.nmf(store, k, scheduler=client, ...)`` (W in Zarr, as always on a
distributed scheduler) and a callback snapshots every process's counters after each iteration.

Reported per iteration (median of the iterations after the first, which opens connections):

- bytes by route: client→scheduler (the pickled graph, with H in it), scheduler→client (the
  reduced partial sums relayed), scheduler↔workers, worker↔worker, worker↔client;
- which keys crossed between workers (from the workers' ``transfer_outgoing_log``);
- what each worker read from and wrote to files (``/proc/<pid>/io``: ``rchar``/``wchar``,
  which do not count sockets), against A's store on disk and W;
- the theoretical minimum: every worker needs H once (k·n·itemsize) and each worker's sum of
  its partial sums (AᵀW: n·k·itemsize, WᵀW: k²·8, the loss's 8 bytes) must reach the driver
  once, so ``P·k·n·s + P·(n·k·s + 8k² + 8)`` for P workers; and the measured/minimum ratio.

The counters' own traffic (one ``client.run`` and one ``run_on_scheduler`` per snapshot) is
measured by back-to-back snapshots after the fit and subtracted; the cluster's background
(heartbeats) is measured over an idle interval as long as an iteration and shown, not
subtracted.

Two clients are measured in turn on the same cluster: Dask's default, where ``compute``
gathers its result through the scheduler, and ``Client(direct_to_workers=True)``, where the
client fetches it from the worker.

Usage::

    python benchmarks/traffic.py            # 400k x 30k, 20M nonzeros, k = 20, ~30 s
    python benchmarks/traffic.py --quick    # 50k x 10k, 1.5M nonzeros, k = 10, ~10 s
    python benchmarks/traffic.py --chunk-size 262144 --n-tasks 16   # 20 blocks, 10 tasks
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import json
import os
import pickle
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

try:
    import bignmf  # noqa: F401
except ImportError:  # run as `python benchmarks/traffic.py` from an uninstalled checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bignmf.cluster.config import WORKER_ENV
from bignmf.datasets.synthetic import make_planted
from bignmf.fit.engine import nmf
from bignmf.store.csr import open_matrix

MB = 1e6
# What an iteration's graph may move between workers: H, the static plan, partial-sum stacks
# (a block task's output, a merge's, the fold's). Anything else would be A or W.
EXPECTED_KEYS = {"HState", "Pass", "getitem", "merge_task", "fold_task"}
ROUTES = (
    ("client", "scheduler"),
    ("scheduler", "client"),
    ("scheduler", "worker"),
    ("worker", "scheduler"),
    ("worker", "worker"),
    ("worker", "client"),
    ("client", "worker"),
)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Counting bytes in every process
# ---------------------------------------------------------------------------------------------


def install_meter() -> int:
    """Wrap ``TCP.write`` in this process to count bytes per (local, peer) address; its pid.

    Run in every process (``client.run``, ``client.run_on_scheduler`` and here). Idempotent.
    """
    import os

    from distributed.comm import tcp

    if not hasattr(tcp.TCP, "_traffic"):
        counts: dict = {}
        write = tcp.TCP.write

        async def counted_write(self, msg, *args, **kwargs):
            n = await write(self, msg, *args, **kwargs)
            entry = counts.setdefault((self.local_address, self.peer_address), [0, 0])
            entry[0] += n
            entry[1] += 1
            return n

        tcp.TCP.write = counted_write
        tcp.TCP._traffic = counts
    return os.getpid()


def read_meter() -> dict:
    """This process's counts so far: (local, peer) -> (bytes, messages)."""
    from distributed.comm import tcp

    return {key: tuple(value) for key, value in tcp.TCP._traffic.items()}


def read_worker(dask_worker) -> dict:
    """A worker's counts, the keys it sent to others since the last call, its file I/O."""
    import psutil
    from dask.utils import key_split

    sent = [(entry["who"], sorted(key_split(k) for k in entry["keys"]))
            for entry in dask_worker.transfer_outgoing_log]  # fmt: skip
    dask_worker.transfer_outgoing_log.clear()
    io = psutil.Process().io_counters()
    return {"meter": read_meter(), "sent": sent, "io": (io.read_chars, io.write_chars)}


class Meter:
    """Snapshots every process's counters and turns two snapshots into bytes per route."""

    def __init__(self, client):
        self.client = client
        install_meter()
        client.run_on_scheduler(install_meter)
        client.run(install_meter)
        info = client.scheduler_info(n_workers=-1)
        self.scheduler = info["address"]
        self.workers = sorted(info["workers"])

    def snapshot(self) -> dict:
        """Counts of every process, now."""
        return {
            "time": time.perf_counter(),
            "client": read_meter(),
            "scheduler": self.client.run_on_scheduler(read_meter),
            "workers": self.client.run(read_worker),
        }

    def owners(self, snapshots: list[dict]) -> dict[str, str]:
        """Address -> 'client', 'scheduler' or a worker's address, from local addresses seen."""
        owner = {self.scheduler: "scheduler", **{w: w for w in self.workers}}
        for snap in snapshots:
            for local, _ in snap["client"]:
                owner.setdefault(local, "client")
            for local, _ in snap["scheduler"]:
                owner.setdefault(local, "scheduler")
            for worker, state in snap["workers"].items():
                for local, _ in state["meter"]:
                    owner.setdefault(local, worker)
        return owner

    def delta(self, a: dict, b: dict, owner: dict[str, str]) -> dict:
        """What happened between snapshots ``a`` and ``b``: bytes per (from, to) process."""
        flows: dict[tuple[str, str], int] = {}

        def add(source: str, before: dict, after: dict) -> None:
            for key, (n, _) in after.items():
                change = n - before.get(key, (0, 0))[0]
                if change:
                    target = owner.get(key[1], "?")
                    flows[source, target] = flows.get((source, target), 0) + change

        add("client", a["client"], b["client"])
        add("scheduler", a["scheduler"], b["scheduler"])
        io = {}
        for worker in self.workers:
            add(worker, a["workers"][worker]["meter"], b["workers"][worker]["meter"])
            io[worker] = tuple(np.subtract(b["workers"][worker]["io"],
                                           a["workers"][worker]["io"]))  # fmt: skip
        sent = {w: b["workers"][w]["sent"] for w in self.workers}
        return {"seconds": b["time"] - a["time"], "flows": flows, "io": io, "sent": sent}


def role(process: str) -> str:
    """'client', 'scheduler', 'worker' or '?' for a process name of :meth:`Meter.owners`."""
    return process if process in ("client", "scheduler", "?") else "worker"


def by_route(flows: dict[tuple[str, str], int]) -> dict[str, int]:
    """Bytes per route ('client→scheduler', 'worker→worker'...)."""
    routes: dict[str, int] = {}
    for (source, target), n in flows.items():
        name = f"{role(source)}→{role(target)}"
        routes[name] = routes.get(name, 0) + n
    return routes


# ---------------------------------------------------------------------------------------------
# The cluster: one process each, on 127.0.0.1
# ---------------------------------------------------------------------------------------------


def _dask_cli() -> list[str]:
    exe = shutil.which("dask")
    return [exe] if exe else [sys.executable, "-m", "dask"]


@contextlib.contextmanager
def process_cluster(n_workers: int, workdir: Path) -> Iterator[str]:
    """Start ``dask scheduler`` and ``n_workers`` ``dask worker`` processes; yield the address."""
    scheduler_file = workdir / "scheduler.json"
    env = {**os.environ, **WORKER_ENV, "PYTHONWARNINGS": "ignore"}
    procs, logs = [], []

    def start(cmd: list[str], name: str) -> None:
        log = open(workdir / f"{name}.log", "wb")  # noqa: SIM115 - closed below
        logs.append(log)
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))  # fmt: skip

    try:
        start([*_dask_cli(), "scheduler", "--host", "127.0.0.1", "--port", "0",
               "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(scheduler_file)],
              "scheduler")  # fmt: skip
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        for i in range(n_workers):
            start([*_dask_cli(), "worker", address, "--host", "127.0.0.1", "--nthreads", "1",
                   "--nworkers", "1", "--dashboard-address", "127.0.0.1:0",
                   "--local-directory", str(workdir / f"worker{i}"), "--name", f"worker{i}"],
                  f"worker{i}")  # fmt: skip
        yield address
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
        for log in logs:
            log.close()


# ---------------------------------------------------------------------------------------------
# Data and one measured fit
# ---------------------------------------------------------------------------------------------


def ensure_store(args: argparse.Namespace):
    """The planted matrix as an lz4 store in ``--workdir`` (cached)."""
    tag = (f"traffic_planted_{args.rows}x{args.cols}_k{args.k}_z{args.nnz_per_row:g}"
           f"_s{args.seed}_float32_lz4_c{args.chunk_size}")  # fmt: skip
    path = Path(args.workdir) / f"{tag}.zarr"
    stamp = path.with_name(path.name + ".done")
    if stamp.exists() and path.exists():
        with contextlib.suppress(Exception):
            store = open_matrix(path)
            _say(f"using cached {path} ({store.nnz:,} nonzeros)")
            return store
    stamp.unlink(missing_ok=True)
    start = time.perf_counter()
    store = make_planted(
        path, args.rows, args.cols, args.k, nnz_per_row=args.nnz_per_row, seed=args.seed,
        dtype="float32", chunk_size=args.chunk_size, codec="lz4", overwrite=True,
    )  # fmt: skip
    stamp.write_text("done\n")
    _say(f"generated {path} in {time.perf_counter() - start:.1f} s ({store.nnz:,} nonzeros)")
    return store


def _disk_bytes(path: str) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


class Snapshots:
    """bignmf callback: a snapshot when the loop starts and after every iteration."""

    def __init__(self, meter: Meter):
        self.meter = meter
        self.snaps: list[dict] = []
        self.acc_bytes = 0
        self.n_tasks = 0

    def on_start(self, state, max_iter) -> None:
        """Before the first iteration (after the initialisation)."""
        self.snaps.append(self.meter.snapshot())

    def on_iteration(self, state, info) -> None:
        """After each iteration: the snapshot, and the reduced accumulator's size."""
        self.snaps.append(self.meter.snapshot())
        self.acc_bytes = sum(np.asarray(v).nbytes for v in state.acc.values())
        self.n_tasks = len(state.plan.groups)

    def on_end(self, state) -> None:
        """Nothing to do."""


def measure(client, store, args: argparse.Namespace, workdir: Path) -> dict:
    """Fit ``--iterations`` iterations, snapshotting; return per-iteration routes and more."""
    meter = Meter(client)
    meter.snapshot()  # a first snapshot opens the connections the later ones use
    snaps = Snapshots(meter)
    nmf(store, args.k, init="random", random_state=0, max_iter=args.iterations, tol=0,
        scheduler=client, workdir=workdir, n_tasks=args.n_tasks, callbacks=[snaps])  # fmt: skip
    fit = snaps.snaps
    calibration = [meter.snapshot() for _ in range(args.calibration + 1)]
    iteration_s = statistics.median(b["time"] - a["time"] for a, b in itertools.pairwise(fit[1:]))
    idle = [meter.snapshot()]
    time.sleep(iteration_s)
    idle.append(meter.snapshot())
    owner = meter.owners(fit + calibration + idle)
    windows = [meter.delta(a, b, owner) for a, b in itertools.pairwise(fit)]
    pairs = itertools.pairwise(calibration)
    overhead = _median_routes([by_route(meter.delta(a, b, owner)["flows"]) for a, b in pairs])
    background = by_route(meter.delta(*idle, owner)["flows"])
    background = {r: max(n - overhead.get(r, 0), 0) for r, n in background.items()}
    iterations = []
    for w in windows[1:]:  # the first iteration opens connections
        routes = by_route(w["flows"])
        routes = {r: max(n - overhead.get(r, 0), 0) for r, n in routes.items()}
        crossed: dict[str, int] = {}
        for sent in w["sent"].values():
            for who, keys in sent:
                if who is None or owner.get(who) in (None, "client", "scheduler"):
                    continue  # gathered for the client: counted on the scheduler route
                for key in keys:
                    crossed[key] = crossed.get(key, 0) + 1
        iterations.append({
            "seconds": w["seconds"], "routes": routes, "crossed": crossed,
            "worker_file_read": sum(io[0] for io in w["io"].values()),
            "worker_file_written": sum(io[1] for io in w["io"].values()),
        })  # fmt: skip
    return {
        "iterations": iterations,
        "routes": _median_routes([it["routes"] for it in iterations]),
        "crossed": _median_routes([it["crossed"] for it in iterations]),
        "seconds": statistics.median(it["seconds"] for it in iterations),
        "worker_file_read": statistics.median(it["worker_file_read"] for it in iterations),
        "worker_file_written": statistics.median(it["worker_file_written"] for it in iterations),
        "snapshot_overhead": overhead,
        "background": background,
        "acc_bytes": snaps.acc_bytes,
        "n_tasks": snaps.n_tasks,
        "n_workers": len(meter.workers),
    }


def _median_routes(rows: list[dict]) -> dict:
    names = sorted({name for row in rows for name in row})
    return {name: statistics.median(row.get(name, 0) for row in rows) for name in names}


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def theory(store, args: argparse.Namespace, n_workers: int, acc_bytes: int) -> dict:
    """Sizes that bound the traffic (bytes); HState as bignmf pickles it."""
    from bignmf.fit.graph import HState

    m, n = store.shape
    s = store.dtype.itemsize
    h = args.k * n * s
    hstate = len(pickle.dumps(HState.of(np.ones((args.k, n), store.dtype)), protocol=5))
    return {
        "H": h,
        "HState": hstate,
        "acc": acc_bytes,
        "minimum": n_workers * h + n_workers * acc_bytes,
        "A_csr": store.nnz * (s + 4) + (m + 1) * 8,
        "A_disk": _disk_bytes(store.path),
        "W": m * args.k * s,
    }


def report(store, args: argparse.Namespace, results: dict[str, dict]) -> str:
    """The markdown tables of the README section."""
    first = next(iter(results.values()))
    t = theory(store, args, first["n_workers"], first["acc_bytes"])
    lines = [
        f"Matrix {store.shape[0]:,} × {store.shape[1]:,}, {store.nnz:,} nonzeros "
        f"({store.dtype}), {store.n_blocks} row blocks; k = {args.k}; "
        f"{first['n_workers']} workers × 1 thread, {first['n_tasks']} block tasks per iteration; "
        f"median of iterations 2–{args.iterations}.",
        "",
        f"Sizes: H (k×n) {t['H'] / MB:.2f} MB; bignmf's HState, pickled, "
        f"{t['HState'] / MB:.2f} MB; "
        f"reduced partial sums (AᵀW, WᵀW, loss) {t['acc'] / MB:.2f} MB; A as CSR "
        f"{t['A_csr'] / MB:,.0f} MB ({t['A_disk'] / MB:,.0f} MB on disk); W {t['W'] / MB:,.0f} MB.",
        "",
        "| route, MB per iteration | " + " | ".join(results) + " | idle (same time) |",
        "|---|" + "--:|" * (len(results) + 1),
    ]
    for source, target in ROUTES:
        name = f"{source}→{target}"
        values = [r["routes"].get(name, 0) for r in results.values()]
        if not any(values) and not first["background"].get(name):
            continue
        cells = " | ".join(f"{v / MB:.2f}" for v in values)
        lines.append(f"| {name} | {cells} | {first['background'].get(name, 0) / MB:.3f} |")
    totals = [sum(r["routes"].values()) for r in results.values()]
    lines.append("| **total** | " + " | ".join(f"**{v / MB:.2f}**" for v in totals)
                 + f" | {sum(first['background'].values()) / MB:.3f} |")  # fmt: skip
    minimum = f"{t['minimum'] / MB:.2f}"
    lines.append(f"| minimum | {' | '.join(minimum for _ in results)} | |")
    lines.append("| **measured ÷ minimum** | "
                 + " | ".join(f"**{v / t['minimum']:.2f}**" for v in totals) + " | |")  # fmt: skip
    seconds = [r["seconds"] for r in results.values()]
    lines.append("| seconds per iteration | " + " | ".join(f"{v:.2f}" for v in seconds) + " | |")
    reads = [r["worker_file_read"] for r in results.values()]
    writes = [r["worker_file_written"] for r in results.values()]
    lines.append("| workers' file reads (not network) | "
                 + " | ".join(f"{v / MB:,.0f}" for v in reads) + " | |")  # fmt: skip
    lines.append("| workers' file writes (not network) | "
                 + " | ".join(f"{v / MB:,.0f}" for v in writes) + " | |")  # fmt: skip
    lines += ["", "Keys sent worker→worker per iteration (count): " + "; ".join(
        f"{label}: " + ", ".join(f"{k} ×{v:g}" for k, v in sorted(r["crossed"].items()))
        for label, r in results.items())]  # fmt: skip
    # H leaves the client once, inside the graph (client→worker stays 0 unless H is scattered)
    graph = [
        r["routes"].get("client→scheduler", 0) + r["routes"].get("client→worker", 0) - t["HState"]
        for r in results.values()
    ]
    lines.append("sent by the client besides H (the graph): "
                 + "; ".join(f"{v / 1e3:.1f} kB" for v in graph) + ".")  # fmt: skip
    foreign = ", ".join(sorted({k for r in results.values() for k in r["crossed"]} - EXPECTED_KEYS))
    lines.append("Keys between workers other than H (HState), the plan (Pass) and partial sums "
                 f"(getitem, merge_task, fold_task): {foreign or 'none'}.")  # fmt: skip
    overhead = sum(first["snapshot_overhead"].values())
    lines.append(f"Counter snapshots cost {overhead / 1e3:.1f} kB each (subtracted).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print the report; return the raw results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small matrix, ~10 s")
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--cols", type=int, default=30_000)
    parser.add_argument("--nnz-per-row", type=float, default=50)
    parser.add_argument("-k", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk-size", type=int, default=2**20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--n-tasks", type=int, help="block tasks per iteration (bignmf's default)")
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--calibration", type=int, default=5)
    parser.add_argument("--workdir", default=str(Path(__file__).parent / "_data"))
    parser.add_argument("--json", help="also write the raw results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.cols, args.nnz_per_row, args.k = 50_000, 10_000, 30, 10
        args.chunk_size, args.iterations = 2**16, 4
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    store = ensure_store(args)
    from distributed import Client

    results = {}
    clients = (("gather via scheduler (default)", False), ("direct_to_workers=True", True))
    with (
        tempfile.TemporaryDirectory(prefix="traffic-", dir=args.workdir) as tmp,
        process_cluster(args.workers, Path(tmp)) as address,
    ):
        for label, direct in clients:
            with Client(address, timeout=60, direct_to_workers=direct) as client:
                client.wait_for_workers(args.workers, timeout=60)
                _say(f"measuring: {label}")
                results[label] = measure(client, store, args, Path(tmp) / label[:6])
    text = report(store, args, results)
    header = (f"{datetime.date.today()}, Python {platform.python_version()}, "
              f"{os.cpu_count()} cores, bignmf on {store.path}")  # fmt: skip
    print(header + "\n\n" + text)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"args": vars(args), "results": results, "theory": theory(
                store, args, args.workers, next(iter(results.values()))["acc_bytes"])},
            indent=1, default=str))  # fmt: skip
    return results


if __name__ == "__main__":
    main()
