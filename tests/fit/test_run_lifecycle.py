"""What a fit leaves in its directory when it fails, is retried, or is pointed at the user's
files; relative paths on a cluster; workers that cannot see the store."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

import bignmf
from bignmf.cluster.runner import Runner
from bignmf.errors import BigNMFError
from bignmf.fit import engine
from bignmf.fit.rundir import CLAIM, CONVERTED, RunDir

QUIET = ("--no-progress", "--top", "0")


def _bignmf(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bignmf", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


@pytest.fixture
def npz(tmp_path):
    path = tmp_path / "a.npz"
    sp.save_npz(path, sp.random(300, 40, density=0.1, format="csr", random_state=0))
    return path


def test_a_fit_failing_before_its_first_checkpoint_leaves_no_run(tmp_path, monkeypatch):
    A = sp.random(200, 30, density=0.2, format="csr", random_state=1)

    def broken(*args):
        raise RuntimeError("initialisation lost")

    monkeypatch.setattr(engine, "_initialize", broken)
    with pytest.raises(RuntimeError, match="initialisation lost"):
        bignmf.nmf(A, 3, checkpoint_dir=tmp_path / "run", scheduler="sync")
    assert not RunDir(tmp_path / "run").exists()
    assert not (tmp_path / "run" / "W-buffers.zarr").exists()
    monkeypatch.undo()
    result = bignmf.nmf(A, 3, checkpoint_dir=tmp_path / "run", scheduler="sync", max_iter=3)
    assert result.n_iter == 3


def test_a_failure_after_a_checkpoint_keeps_the_run(tmp_path):
    A = sp.random(200, 30, density=0.2, format="csr", random_state=1)

    def stop(info):
        if info.iteration == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        bignmf.nmf(A, 3, checkpoint_dir=tmp_path / "run", scheduler="sync", max_iter=8,
                   checkpoint_every=2, callback=stop)  # fmt: skip
    run = RunDir(tmp_path / "run")
    assert run.exists()
    assert run.committed()


@pytest.mark.parametrize("options", [("-k", "0"), ("-k", "3", "--alpha-W", "-1"),
                                     ("-k", "3", "--max-iter", "0"), ("-k", "3", "--tol", "-1"),
                                     ("-k", "3", "--checkpoint-every", "0")])  # fmt: skip
def test_bad_parameters_write_nothing(npz, tmp_path, options):
    done = _bignmf("fit", npz, "--out", tmp_path / "r", "--scheduler", "threads", *options)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_a_parameter_refused_after_conversion_blocks_no_retry(npz, tmp_path):
    run = tmp_path / "r"
    refused = _bignmf("fit", npz, "--out", run, "-k", "3", "--scheduler", "threads",
                      "--n-tasks", "1", "--column-chunks", "100", *QUIET)  # fmt: skip
    assert refused.returncode == 2, refused.stderr
    assert "Traceback" not in refused.stderr
    assert not RunDir(run).exists()
    done = _bignmf("fit", npz, "--out", run, "-k", "3", "--scheduler", "threads", *QUIET)
    assert done.returncode == 0, done.stderr
    assert "earlier attempt" in done.stderr  # the conversion was reused, not redone


def test_missing_input_is_named_before_anything_is_printed_or_written(tmp_path):
    done = _bignmf("fit", tmp_path / "nosuch.zarr", "-k", "3", "--out", tmp_path / "r")
    assert done.returncode == 2
    assert "converting" not in done.stderr
    assert "nosuch.zarr" in done.stderr
    assert not (tmp_path / "r").exists()


def test_a_directory_of_the_users_files_is_refused_and_untouched(npz, tmp_path):
    out = tmp_path / "mine"
    (out / "W.zarr").mkdir(parents=True)
    (out / "W.zarr" / "notes.txt").write_text("mine")
    done = _bignmf("fit", npz, "--out", out, "-k", "3", "--scheduler", "threads", *QUIET)
    assert done.returncode == 2
    assert "W.zarr" in done.stderr
    assert (out / "W.zarr" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == ["W.zarr"]
    with pytest.raises(BigNMFError, match="not empty"):
        bignmf.nmf(sp.random(20, 5, density=0.5, format="csr"), 2, checkpoint_dir=out)


def test_a_conversion_of_another_input_is_not_reused(npz, tmp_path):
    run = tmp_path / "r"
    RunDir(run).claim({"input": "elsewhere"})
    bignmf.convert(sp.random(50, 7, density=0.3, format="csr", random_state=0), run / CONVERTED)
    done = _bignmf("fit", npz, "--out", run, "-k", "3", "--scheduler", "threads", *QUIET)
    assert done.returncode == 0, done.stderr
    assert bignmf.open_matrix(run / CONVERTED).shape == (300, 40)
    assert (run / CLAIM).exists()


def test_resume_of_a_directory_without_a_run_says_what_to_do(npz, tmp_path):
    RunDir(tmp_path / "r").claim({"input": str(npz)})
    done = _bignmf("resume", tmp_path / "r")
    assert done.returncode == 2
    assert "bignmf fit" in done.stderr
    assert "Traceback" not in done.stderr


def test_relative_paths_reach_the_workers(npz, tmp_path, dask_cluster):
    """The workers run in another working directory: paths are made absolute first."""
    work = tmp_path / "here"
    work.mkdir()
    bignmf.convert(sp.load_npz(npz), work / "a.zarr")
    done = _bignmf("fit", "a.zarr", "--out", "run", "-k", "3", "--max-iter", "3",
                   "--scheduler", dask_cluster, *QUIET, cwd=work)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (work / "run" / "W.zarr").exists()


def test_a_path_no_worker_sees_is_named_with_the_worker(tmp_path, dask_client):
    ghost = tmp_path / "not-on-the-workers"
    with pytest.raises(BigNMFError, match=r"worker .* cannot see .*not-on-the-workers"):
        Runner(dask_client).check_visible([ghost])
    Runner(dask_client).check_visible([tmp_path, None])  # seen: no error
    Runner("threads").check_visible([ghost])  # no workers to ask


def test_stores_open_by_absolute_path(tmp_path, monkeypatch):
    bignmf.convert(np.eye(4), tmp_path / "e.zarr")
    monkeypatch.chdir(tmp_path)
    assert bignmf.open_matrix("e.zarr").path == str(tmp_path / "e.zarr")
