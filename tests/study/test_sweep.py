"""Studies end to end: the planted k chosen, the planted programs found, the same bits with
fits in flight, on a real 2-worker Dask scheduler, and after a kill at any moment."""

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
import zarr

import bignmf
from bignmf.plan import fits_in_flight, make_plan
from tests.study.planted import matched_correlations, planted_programs

K = 4
KS = (3, 4, 5)
FIT = {"max_iter": 80, "tol": 1e-5, "replicates": 3, "seed": 0}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The planted matrix as a store, its programs H, and the store's path."""
    A, _, H = planted_programs(k=K)
    path = tmp_path_factory.mktemp("planted") / "a.zarr"
    bignmf.convert(A, path, block_nnz=8000)  # 3 row blocks: a reduction tree
    return path, H


@pytest.fixture(scope="module")
def reference(planted, tmp_path_factory):
    """One fit at a time, on threads: what every other way of running the study must give."""
    out = tmp_path_factory.mktemp("reference") / "study"
    study = bignmf.sweep(planted[0], KS, out=out, scheduler="threads", fits_in_flight=1, **FIT)
    return study


def _table(out: Path) -> list:
    return json.loads((Path(out) / "summary.json").read_text())["table"]


def _bits(out: Path) -> dict:
    """Every fit's W and H and every consensus's W and H, as bytes."""
    found = {}
    for array in sorted(Path(out).glob("*/*/*/[WH].zarr")) + sorted(
        Path(out).glob("consensus/*/[WH].zarr")
    ):
        found[str(array.relative_to(out))] = zarr.open_array(array, mode="r")[...].tobytes()
    return found


def test_the_stability_picks_the_planted_k_and_the_consensus_finds_its_programs(planted, reference):
    assert reference.chosen_k == K
    assert [row.k for row in reference.table] == list(KS)
    _, H = reference.consensus(K)
    assert H.shape == (K, planted[1].shape[1])
    assert matched_correlations(planted[1], H).min() >= 0.99
    row = reference.row(K)
    assert row.stability > 0.95
    assert row.replicates == 3
    assert reference.row(K).consensus_error < reference.row(K - 1).consensus_error
    summary = json.loads((reference.path / "summary.json").read_text())
    assert summary["chosen_k"] == K
    assert len(summary["table"]) == len(KS)
    for name in ("table.csv", "selection.png", "density.png"):
        assert (reference.path / name).stat().st_size > 0


def test_the_held_out_error_picks_the_planted_k(planted, tmp_path):
    study = bignmf.sweep(
        planted[0], (3, 4, 6), out=tmp_path / "cv", cv=0.1, scheduler="threads", **FIT
    )
    assert study.chosen_k == K
    rmse = {row.k: row.test_rmse for row in study.table}
    assert rmse[K] == min(rmse.values())
    assert rmse[6] > rmse[K]  # too many components fit the noise
    score = json.loads((study.path / "fits/k4/r0/score.json").read_text())
    assert score["count"] > 0
    assert score["rmse"] > 0


def test_fits_in_flight_give_the_bits_of_one_at_a_time(planted, reference, tmp_path):
    study = bignmf.sweep(
        planted[0], KS, out=tmp_path / "study", scheduler="threads", fits_in_flight=3, **FIT
    )
    assert _bits(study.path) == _bits(reference.path)
    assert _table(study.path) == _table(reference.path)


def test_fits_in_flight_on_a_real_two_worker_scheduler_give_the_same_bits(
    planted, reference, dask_client, tmp_path
):
    study = bignmf.sweep(
        planted[0], KS, out=tmp_path / "study", scheduler=dask_client, fits_in_flight=2, **FIT
    )
    assert _bits(study.path) == _bits(reference.path)
    assert study.chosen_k == reference.chosen_k


def test_an_open_study_reads_back_what_the_sweep_returned(reference):
    again = bignmf.open_study(reference.path)
    assert again.chosen_k == reference.chosen_k
    for ours, theirs in zip(again.table, reference.table, strict=True):
        assert ours.k == theirs.k
        assert ours.stability == theirs.stability
        assert np.isnan(ours.test_rmse)
        assert np.isnan(theirs.test_rmse)


def test_the_plan_bounds_the_fits_in_flight():
    plan = make_plan(10**6, 2000, 10**8, 20, 4, 64, 4, ram=8 << 30, threads=2)
    count, why = fits_in_flight(plan, 100, requested=50)
    assert 1 <= count < 50
    assert "50 asked" in why
    assert fits_in_flight(plan, 3)[0] <= 3
    small = make_plan(1000, 100, 10**4, 5, 4, 1, 1, ram=8 << 30, threads=2)
    assert fits_in_flight(small, 100) == (4, fits_in_flight(small, 100)[1])


# ----------------------------------------------------------------------- the command line


def _bignmf(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bignmf", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


SWEEP = ("-k", "3-5", "--replicates", "2", "--max-iter", "24", "--tol", "0",
         "--checkpoint-every", "5", "--scheduler", "threads",
         "--no-progress", "--top", "0")  # fmt: skip


@pytest.fixture(scope="module")
def cli_reference(planted, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "study"
    done = _bignmf("sweep", planted[0], "--out", out, *SWEEP)
    assert done.returncode == 0, done.stderr
    assert "chosen k = " in done.stdout
    return out


def test_the_command_prints_the_table_and_top_features_of_a_consensus(cli_reference):
    done = _bignmf("top-features", cli_reference, "-k", "4", "-n", "3")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 4
    wrong = _bignmf("top-features", cli_reference, "-k", "9")
    assert wrong.returncode == 2
    assert "k = 9 is not in the study" in wrong.stderr
    assert "Traceback" not in wrong.stderr


def _same_study(reference: Path, out: Path) -> None:
    assert _bits(out) == _bits(reference)
    assert _table(out) == _table(reference)


# a kill in each phase: inside a fit, between a fit's iterations and its outputs, while a
# fit writes them, inside the consensus
@pytest.mark.parametrize(
    "point", ["iteration-before-h@7", "study-fit@4001", "finish-factors@24", "study-consensus@4"]
)
def test_a_killed_study_resumes_to_the_same_bits(planted, cli_reference, tmp_path, point):
    out = tmp_path / "study"
    env = {**os.environ, "BIGNMF_CRASH_AT": point}
    killed = _bignmf("sweep", planted[0], "--out", out, *SWEEP, env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    again = _bignmf("sweep", planted[0], "--out", out, *SWEEP)
    assert again.returncode == 2
    assert "bignmf resume" in again.stderr
    done = _bignmf("resume", out, "--scheduler", "threads", "--no-progress", "--top", "0")
    assert done.returncode == 0, done.stderr
    _same_study(cli_reference, out)


@pytest.mark.parametrize("kills", [2, pytest.param(12, marks=pytest.mark.slow)])
def test_a_study_killed_at_random_moments_resumes_to_the_same_bits(
    planted, cli_reference, tmp_path, kills
):
    start = time.monotonic()
    timed = _bignmf("sweep", planted[0], "--out", tmp_path / "timed", *SWEEP)
    assert timed.returncode == 0
    lifetime = time.monotonic() - start
    moments = sorted(random.Random(kills).uniform(0.1, 0.95) * lifetime for _ in range(kills))
    for i, moment in enumerate(moments):
        out = tmp_path / f"study{i}"
        cmd = [sys.executable, "-m", "bignmf", "sweep", str(planted[0]), "--out", str(out), *SWEEP]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=moment)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        if (out / "study.json").exists():
            done = _bignmf("resume", out, "--scheduler", "threads", "--no-progress", "--top", "0")
        else:  # killed before the study began: the same command again
            done = _bignmf("sweep", planted[0], "--out", out, *SWEEP)
        assert done.returncode == 0, (moment, done.stderr)
        _same_study(cli_reference, out)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("-k", "3-x"), "is not a k"),
        (("-k", "0,3"), "integers >= 1"),
        (("-k", "5-3"), "'5-3' is an empty range"),
        (("-k", "500"), "k = 500 is above min(m, n)"),
        (("-k", "3", "--cv", "1.5"), "--cv"),
        (("-k", "3", "--replicates", "0"), "--replicates"),
        (("-k", "3", "--solver", "nope"), "--solver"),
        (("-k", "3", "--beta-loss", "kullback-leibler"), "--beta-loss"),
    ],
)
def test_a_mistake_in_a_sweep_is_one_line_and_leaves_nothing(planted, tmp_path, args, message):
    out = tmp_path / "study"
    done = _bignmf("sweep", planted[0], "--out", out, "--no-progress", *args)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) <= 2
    assert not out.exists()


def test_a_missing_input_or_a_used_directory_is_refused(planted, cli_reference, tmp_path):
    done = _bignmf("sweep", tmp_path / "nope.npz", "-k", "3", "--out", tmp_path / "s")
    assert done.returncode == 2
    assert "nope.npz" in done.stderr
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    done = _bignmf("sweep", planted[0], "-k", "3", "--out", tmp_path / "used")
    assert done.returncode == 2
    assert "not empty" in done.stderr
    done = _bignmf("resume", cli_reference, "--max-iter", "50")
    assert done.returncode == 2
    assert "a study resumes with the settings it recorded" in done.stderr


def _row(k, stability=float("nan"), rmse=float("nan"), se=float("nan")):
    from bignmf.study.summary import KRow

    return KRow(k, 3, 0.5, 0.5, stability, 0, rmse, se, float("nan"), 10.0)


def test_the_rules_that_choose_k():
    from bignmf.study.summary import choose_k

    # held out: the smallest k within one standard error of the lowest median RMSE
    table = [_row(3, rmse=2.0, se=0.1), _row(4, rmse=1.55, se=0.1), _row(5, rmse=1.5, se=0.1)]
    assert choose_k(table, True)[0] == 4
    assert choose_k([_row(3, rmse=2.0, se=0.0), _row(4, rmse=1.5)], True)[0] == 4
    assert choose_k([_row(3)], True)[0] is None
    # stability: the largest k within 0.01 of the most stable
    table = [_row(5, 0.79), _row(6, 0.995), _row(7, 0.992), _row(8, 0.83)]
    assert choose_k(table, False)[0] == 7
    assert choose_k([_row(1), _row(2, 0.9), _row(3, 0.7)], False)[0] == 2
    assert choose_k([_row(1)], False)[0] is None


def test_a_study_where_a_run_is_expected_says_what_to_do(cli_reference):
    done = _bignmf("report", cli_reference)
    assert done.returncode == 2
    assert "is a study, not a run" in done.stderr
    assert "top-features" in done.stderr
    fit = _bignmf("report", cli_reference / "fits" / "k4" / "r0")
    assert fit.returncode == 0, fit.stderr  # each fit is a run


def test_ctrl_c_stops_a_study_in_one_line_and_resume_finishes_it(planted, cli_reference, tmp_path):
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "bignmf", "sweep", str(planted[0]), "--out", str(out), *SWEEP]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(out.glob("fits/*/*/ckpt-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert f"interrupted; `bignmf resume {out}`" in stderr
    done = _bignmf("resume", out, "--scheduler", "threads", "--no-progress", "--top", "0")
    assert done.returncode == 0, done.stderr
    _same_study(cli_reference, out)
