"""What users' machines do to a run: two resumes at once, a forged checkpoint pointer, a crash
holding the lock, a directory holding the user's files."""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import zarr

import bignmf
from bignmf.errors import CheckpointError, CheckpointWarning
from bignmf.fit import lock
from bignmf.fit.rundir import POINTER, RunDir

K = 4
RUN = {"random_state": 1, "tol": 0, "scheduler": "sync", "checkpoint_every": 1}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store whose fit takes a few seconds: two resumes started together overlap."""
    rng = np.random.default_rng(0)
    A = rng.random((4000, K)) @ rng.random((K, 300))
    A[rng.random(A.shape) < 0.7] = 0
    return bignmf.convert(A.astype(np.float32), tmp_path_factory.mktemp("faults") / "A.zarr")


def started(store, path, max_iter=2):
    """A run with a checkpoint at ``max_iter``, to resume."""
    bignmf.nmf(store, K, max_iter=max_iter, checkpoint_dir=path, **RUN)
    return path


def final_h(run_dir):
    return zarr.open_array(run_dir / "H.zarr", mode="r")[...]


def resume_cli(run_dir, max_iter):
    cmd = [sys.executable, "-m", "bignmf", "resume", str(run_dir), "--max-iter", str(max_iter),
           "--scheduler", "threads", "--no-progress", "--top", "0"]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def concurrent_resumes(store, tmp_path, pairs, max_iter=100):
    """``pairs`` times: two `bignmf resume` of one run started together; one is refused, the
    other gives the uninterrupted run's bits."""
    reference = tmp_path / "reference"
    bignmf.nmf(store, K, max_iter=max_iter, checkpoint_dir=reference, **RUN)
    whole = bignmf.resume(reference, max_iter=max_iter)  # H as the CLI writes it, below
    for pair in range(pairs):
        run_dir = started(store, tmp_path / f"run{pair}")
        both = [resume_cli(run_dir, max_iter) for _ in range(2)]
        outcomes = sorted((p.wait(timeout=600), p.stderr.read()) for p in both)
        for p in both:
            p.stdout.close()
            p.stderr.close()
        (ok, _), (refused, message) = outcomes
        assert (ok, refused) == (0, 2), outcomes
        assert f"{run_dir} is in use by pid " in message
        assert "Traceback" not in message
        assert final_h(run_dir).tobytes() == whole.H.tobytes()


def test_two_resumes_at_once_one_is_refused_the_other_gives_the_same_bits(store, tmp_path):
    concurrent_resumes(store, tmp_path, pairs=1)


@pytest.mark.slow
def test_twenty_pairs_of_concurrent_resumes(store, tmp_path):
    concurrent_resumes(store, tmp_path, pairs=20)


def test_the_lock_names_its_owner_and_is_held_by_one_thread(tmp_path):
    with lock.hold(tmp_path):
        with lock.hold(tmp_path):  # the same thread takes it again (CLI, then engine)
            pass
        failed = []

        def other():
            try:
                with lock.hold(tmp_path):
                    pass
            except CheckpointError as error:
                failed.append(str(error))

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        assert failed == [f"{tmp_path} is in use by another thread of this process"]
    with lock.hold(tmp_path):  # released
        pass


HOLDER = textwrap.dedent("""
    import sys, time
    from bignmf.fit import lock

    with lock.hold(sys.argv[1]):
        print("held", flush=True)
        time.sleep(600)
""")


def test_a_crashed_owner_leaves_no_lock_and_a_live_one_is_named(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(CheckpointError) as refused, lock.hold(tmp_path):
            pass
        message = str(refused.value)
        assert f"is in use by pid {holder.pid} on " in message
        assert "wait for it to end, or stop it" in message
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        with lock.hold(tmp_path):  # the kernel dropped the dead process's lock
            pass
    finally:
        holder.kill()
        holder.stdout.close()


def test_without_filesystem_locks_an_owner_file_is_taken_over_only_from_a_dead_owner(
    tmp_path, monkeypatch
):
    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lock.fcntl, "flock", no_locks)
    owner = tmp_path / lock.LOCK_OWNER
    with lock.hold(tmp_path):
        assert f'"pid": {os.getpid()}' in owner.read_text()
    assert not owner.exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    import socket

    owner.write_text(f'{{"host": "{socket.gethostname()}", "pid": {dead}}}')
    with lock.hold(tmp_path):  # a dead process's file: taken over
        pass
    owner.write_text('{"host": "elsewhere", "pid": 1, "since": "today"}')
    refused = pytest.raises(CheckpointError, match=f"pid 1 on elsewhere .* remove {owner}")
    with refused, lock.hold(tmp_path):
        pass


@pytest.mark.parametrize(
    "pointer",
    [b"\xff\xfe\x00garbage", b"/elsewhere/ckpt-000002", b"../other/ckpt-000002", b"ckpt-00x"],
)
def test_a_forged_checkpoint_pointer_is_ignored_with_a_warning(store, tmp_path, pointer):
    other = started(store, tmp_path / "other", max_iter=3)  # another run a pointer could name
    run_dir = started(store, tmp_path / "run")
    whole = bignmf.nmf(store, K, max_iter=4, **RUN)
    text = pointer.replace(b"/elsewhere", str(other).encode())
    (run_dir / POINTER).write_bytes(text)
    with pytest.warns(CheckpointWarning, match="not a checkpoint of this run: ignored"):
        resumed = bignmf.resume(run_dir, max_iter=4)
    assert resumed.H.tobytes() == whole.H.tobytes()
    assert RunDir(run_dir).newest().iteration == 4


def test_a_directory_holding_the_users_files_is_refused_and_left_untouched(store, tmp_path):
    from bignmf.cli import main

    mine = tmp_path / "mine"
    (mine / "W.zarr").mkdir(parents=True)
    (mine / "W.zarr" / "notes.txt").write_text("the user's")
    before = sorted(p.relative_to(mine) for p in mine.rglob("*"))
    with pytest.raises(CheckpointError, match="is not empty and holds no run"):
        bignmf.nmf(store, K, max_iter=2, checkpoint_dir=mine, **RUN)
    assert main(["fit", str(store.path), "-k", "4", "--out", str(mine), "--no-progress"]) == 2
    assert sorted(p.relative_to(mine) for p in mine.rglob("*")) == before
    assert (mine / "W.zarr" / "notes.txt").read_text() == "the user's"


def test_a_failed_start_leaves_no_directory_behind(store, tmp_path):
    from bignmf.cli import main

    out = tmp_path / "new"
    refused = ["--weights", "implicit", "--solver", "bpp"]  # refused after the claim and lock
    assert main(["fit", str(store.path), "-k", "2", "--out", str(out), *refused]) == 2
    assert not out.exists()
    assert main(["fit", str(store.path), "-k", "2", "--out", str(out), "--no-progress",
                 "--max-iter", "2", "--scheduler", "sync", "--top", "0"]) == 0  # fmt: skip


def fit_cli(store, out, *more):
    cmd = [sys.executable, "-m", "bignmf", "fit", str(store.path), "-k", str(K), "--out",
           str(out), "--seed", "1", "--tol", "0", "--no-progress", "--top", "0",
           "--checkpoint-every", "1", *map(str, more)]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def metrics_lines(run_dir) -> int:
    try:
        return len((run_dir / "metrics.jsonl").read_text().splitlines())
    except FileNotFoundError:
        return 0


@pytest.mark.slow  # the client waits for the scheduler to come back before it gives up: ~80 s
def test_a_lost_scheduler_says_where_the_run_is_and_resume_finishes_it(store, tmp_path):
    from tests.conftest import LocalProcessCluster

    cluster = LocalProcessCluster(tmp_path / "cluster", n_workers=1)
    run_dir = tmp_path / "run"
    try:
        fit = fit_cli(store, run_dir, "--max-iter", 400, "--scheduler", cluster.address)
        deadline = time.monotonic() + 300
        while metrics_lines(run_dir) < 3 and fit.poll() is None:
            assert time.monotonic() < deadline, "the fit made no progress"
            time.sleep(0.1)
        os.killpg(cluster.procs[0].pid, signal.SIGKILL)  # the scheduler
        _, err = fit.communicate(timeout=300)
    finally:
        cluster.close()
    assert fit.returncode == 3, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("bignmf fit: error: lost the scheduler or its workers")
    assert re.search(r"at iteration \d+; the last checkpoint is iteration \d+ \(ckpt-\d+\); "
                     rf"start it again, then run `bignmf resume {run_dir}`", line)  # fmt: skip
    assert "Traceback" not in err
    done = subprocess.run(
        [sys.executable, "-m", "bignmf", "resume", str(run_dir), "--max-iter", "8",
         "--scheduler", "threads", "--no-progress", "--top", "0"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    whole = bignmf.nmf(store, K, max_iter=8, random_state=1, tol=0, scheduler="threads")
    assert final_h(run_dir).tobytes() == whole.H.tobytes()


@pytest.fixture
def small_disk(tmp_path):
    """A 2.5 MiB tmpfs (root only; skipped where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2560k", "tmpfs", str(mount)],
                          capture_output=True, text=True)  # fmt: skip
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_names_the_path_the_size_and_the_last_checkpoint(tmp_path, small_disk):
    rng = np.random.default_rng(3)
    A = (rng.random((60_000, K)) @ rng.random((K, 50))).astype(np.float32)  # W: 0.9 MiB
    A[rng.random(A.shape) < 0.8] = 0
    store = bignmf.convert(A, tmp_path / "big.zarr")
    run_dir = small_disk / "run"
    fit = fit_cli(store, run_dir, "--max-iter", 30, "--scheduler", "threads",
                  "--w-storage", "memory")  # fmt: skip
    _, err = fit.communicate(timeout=300)
    assert fit.returncode == 3, err
    line = err.strip().splitlines()[-1]
    print(line)
    assert line.startswith(f"bignmf fit: error: no space left on the device writing {run_dir}")
    assert "(a checkpoint takes about 9" in line  # (60,000 + 50) x 4 x 4 bytes: 0.9 MiB
    assert re.search(rf"the last checkpoint is iteration (\d+) \(ckpt-\d+\); free some space, "
                     rf"then run `bignmf resume {run_dir}`", line)  # fmt: skip
    assert "Traceback" not in err
    # the checkpoints are intact: moved to a disk with room, the run finishes bit for bit
    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved)
    resumed = bignmf.resume(moved, max_iter=30, scheduler="threads")
    whole = bignmf.nmf(store, K, max_iter=30, random_state=1, tol=0, scheduler="threads")
    assert resumed.H.tobytes() == whole.H.tobytes()


def test_an_edited_manifest_is_skipped_and_an_edited_run_json_refused(store, tmp_path):
    import json

    from bignmf.cli import main

    run_dir = started(store, tmp_path / "run", max_iter=3)
    manifest = run_dir / "ckpt-000003" / "zarr.json"
    meta = json.loads(manifest.read_text())
    meta["attributes"]["loss_history"][1] *= 0.5  # H and W's checksums still pass
    manifest.write_text(json.dumps(meta))
    whole = bignmf.nmf(store, K, max_iter=4, **RUN)
    with pytest.warns(CheckpointWarning, match="ckpt-000003: its manifest fails its checksum"):
        resumed = bignmf.resume(run_dir, max_iter=4)
    assert resumed.H.tobytes() == whole.H.tobytes()
    assert resumed.loss_history == whole.loss_history
    record = json.loads((run_dir / "run.json").read_text())
    record["settings"]["n_components"] = K + 1
    (run_dir / "run.json").write_text(json.dumps(record))
    status = main(["resume", str(run_dir), "--max-iter", "6", "--no-progress"])
    assert status == 2
    with pytest.raises(CheckpointError, match=r"run\.json was changed after the run started"):
        bignmf.resume(run_dir, max_iter=6)


@pytest.mark.slow  # a cluster of its own and a fit left without workers: ~40 s
def test_a_fit_whose_every_worker_left_ends_with_exit_3(store, tmp_path):
    from tests.conftest import LocalProcessCluster

    cluster = LocalProcessCluster(tmp_path / "cluster", n_workers=1)
    run_dir = tmp_path / "run"
    env = {**os.environ, "DASK_BIGNMF__NO_WORKERS_TIMEOUT": "5"}
    try:
        cmd = [sys.executable, "-m", "bignmf", "fit", str(store.path), "-k", str(K), "--out",
               str(run_dir), "--tol", "0", "--no-progress", "--top", "0", "--checkpoint-every",
               "1", "--max-iter", "400", "--scheduler", cluster.address]  # fmt: skip
        fit = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               text=True, env=env)  # fmt: skip
        deadline = time.monotonic() + 300
        while metrics_lines(run_dir) < 3 and fit.poll() is None:
            assert time.monotonic() < deadline, "the fit made no progress"
            time.sleep(0.1)
        os.killpg(cluster.procs[1].pid, signal.SIGKILL)  # the worker and its nanny
        _, err = fit.communicate(timeout=300)
    finally:
        cluster.close()
    assert fit.returncode == 3, err
    line = err.strip().splitlines()[-1]
    assert "lost the scheduler or its workers (WorkersLostError)" in line
    assert f"run `bignmf resume {run_dir}`" in line
