"""Shared fixtures: a real Dask cluster of separate processes on 127.0.0.1."""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _dask_cli() -> list[str]:
    exe = shutil.which("dask")
    return [exe] if exe else [sys.executable, "-m", "dask"]


class LocalProcessCluster:
    """``dask scheduler`` and ``dask worker`` processes started from the command line."""

    def __init__(self, workdir: Path, n_workers: int = 2, nthreads: int = 1):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.procs: list[subprocess.Popen] = []
        self.logs: list = []
        self.scheduler_file = workdir / "scheduler.json"
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        self.procs.append(self._start(
            [*_dask_cli(), "scheduler", "--host", "127.0.0.1", "--port", "0",
             "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(self.scheduler_file)],
            env, "scheduler",
        ))  # fmt: skip
        self.address = self._wait_for_address()
        for i in range(n_workers):
            self.procs.append(self.start_worker(f"worker{i}", nthreads, env))
        self._wait_for_workers(n_workers)

    def _start(self, cmd, env, name):
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - closed in close()
        self.logs.append(log)
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip

    def start_worker(self, name, nthreads=1, env=None):
        cmd = [*_dask_cli(), "worker", self.address, "--host", "127.0.0.1", "--nthreads",
               str(nthreads), "--nworkers", "1", "--dashboard-address", "127.0.0.1:0",
               "--memory-limit", "2GiB",
               "--local-directory", str(self.workdir / name), "--name", name]  # fmt: skip
        return self._start(cmd, env or {**os.environ, "PYTHONWARNINGS": "ignore"}, name)

    def _wait_for_address(self) -> str:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.scheduler_file.exists():
                try:
                    return json.loads(self.scheduler_file.read_text())["address"]
                except (json.JSONDecodeError, KeyError):
                    pass
            time.sleep(0.1)
        raise RuntimeError("dask scheduler did not start")

    def _wait_for_workers(self, n: int) -> None:
        from distributed import Client

        with Client(self.address, timeout=60) as client:
            client.wait_for_workers(n, timeout=60)

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for log in self.logs:
            log.close()


def imported_modules(path: Path) -> list[str]:
    """Every module a source file imports (``from x import y`` counts as ``x``), read statically."""
    names = []
    for node in ast.walk(ast.parse(Path(path).read_text())):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.append(node.module or "")
    return names


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory):
    """Address of a scheduler with two single-threaded worker processes on 127.0.0.1."""
    cluster = LocalProcessCluster(tmp_path_factory.mktemp("dask-cluster"))
    try:
        yield cluster.address
    finally:
        cluster.close()


@pytest.fixture
def dask_client(dask_cluster):
    """A Client connected to :func:`dask_cluster`, closed after the test."""
    from distributed import Client

    with Client(dask_cluster, timeout=60) as client:
        yield client


def stopped_fit(store, k: int, run_dir, stop_after: int, **kwargs) -> None:
    """A checkpointed fit on threads stopped (by an exception, as a kill would leave it)
    after iteration ``stop_after``: its run directory holds checkpoints and no outputs."""
    import bignmf

    class Stop(Exception):
        pass

    def stop(info):
        if info.iteration == stop_after:
            raise Stop

    with pytest.raises(Stop):
        bignmf.nmf(
            store, k, tol=0, scheduler="threads", checkpoint_dir=run_dir, callback=stop, **kwargs
        )
