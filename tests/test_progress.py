"""Progress from the first second: the ETA rules, the plain lines written when stderr is not a
terminal, the phases `bignmf fit` shows, silence with --no-progress, the dashboard line."""

from __future__ import annotations

import importlib.util
import io
import re
from types import SimpleNamespace

import pytest
import scipy.sparse as sp

from bignmf.cli import main
from bignmf.cluster.config import dashboard
from bignmf.fit.callbacks import (
    Phase,
    ProgressBar,
    eta_seconds,
    progress_total,
)
from bignmf.fit.driver import IterationInfo
from bignmf.fit.stopping import decrease_ratio
from bignmf.plan import format_bytes

LINE = re.compile(r"^\[\d+:\d\d:\d\d\] ")


def test_total_and_eta_only_when_every_iteration_runs():
    assert progress_total(200, 0.0) == 200
    assert progress_total(200, None) == 200
    assert progress_total(200, 1e-4) is None  # a tolerance: nothing says when it stops
    assert eta_seconds(10, 100, 5.0) == pytest.approx(45.0)  # 0.5 s an iteration, 90 left
    assert eta_seconds(10, 100, 5.0, first=5) == pytest.approx(90.0)  # resumed at 5: 1 s/it
    assert eta_seconds(10, None, 5.0) is None
    assert eta_seconds(5, 100, 0.0, first=5) is None  # no iteration run yet
    assert eta_seconds(120, 100, 5.0) == 0.0


def test_decrease_ratio_is_what_the_relative_rule_reads():
    assert decrease_ratio([]) is None
    assert decrease_ratio([10.0]) is None
    assert decrease_ratio([10.0, 9.0]) == pytest.approx(0.1)
    assert decrease_ratio([10.0, 9.0, 9.0]) == 0.0


def _state(iteration: int = 0):
    return SimpleNamespace(
        iteration=iteration,
        objective_history=[],
        history=[],
        converged=False,
        relative_error=lambda loss: 0.25,
    )


def _drive(bar: ProgressBar, n: int, max_iter: int, start: int = 0, converged=False) -> list:
    """Run ``bar`` through ``n`` iterations after ``start``; its lines."""
    state = _state(start)
    bar.on_start(state, max_iter)
    for i in range(start + 1, start + n + 1):
        state.iteration = i
        state.history.append(100.0 / i)
        state.objective_history.append(100.0 / i)
        bar.on_iteration(state, IterationInfo(i, 100.0 / i, 0.25, 0.5, max_iter, 100.0 / i))
    state.converged = converged
    bar.on_end(state)
    return bar.file.getvalue().splitlines()


def test_plain_lines_every_n_iterations_when_not_a_terminal():
    bar = ProgressBar(tol=0.0, every=10, seconds=1e9, file=io.StringIO(), terminal=False)
    lines = _drive(bar, 25, 25)
    assert all(LINE.match(line) for line in lines)
    assert "iterating: 25 iterations (tol 0)" in lines[0]
    shown = [int(re.search(r"iteration (\d+)/25", line).group(1)) for line in lines[1:]]
    assert shown == [1, 11, 21, 25]  # the first, every 10th after it, and the last
    assert "ETA 0:00:12" in lines[1]  # 24 left at 0.5 s each
    assert "(0.5 s/it" in lines[2]


def test_with_a_tolerance_no_eta_but_the_decrease_against_it():
    bar = ProgressBar(tol=1e-3, every=10, seconds=1e9, file=io.StringIO(), terminal=False)
    lines = _drive(bar, 12, 200, converged=True)
    assert "until the objective falls by less than tol=0.001 (relative), at most 200" in lines[0]
    assert not any("ETA" in line for line in lines)
    assert "decrease 0.083/0.001" in lines[-1]  # (100/11 - 100/12) / (100/11)
    assert "iteration 12/200 (converged)" in lines[-1]


def test_seconds_bound_the_gap_between_lines_and_a_resume_counts_on():
    bar = ProgressBar(tol=0.0, every=1000, seconds=0.0, file=io.StringIO(), terminal=False)
    lines = _drive(bar, 3, 50, start=40)
    assert "iterating from iteration 40: 50 iterations" in lines[0]
    assert [line.split("]")[1].split(":")[0] for line in lines[1:]] == [
        " iteration 41/50",
        " iteration 42/50",
        " iteration 43/50",
    ]
    assert "ETA 0:00:03" in lines[-1]  # 7 left at 0.5 s


def test_phases_are_lines_and_frequent_ones_are_throttled():
    bar = ProgressBar(seconds=1e9, file=io.StringIO(), terminal=False)
    bar.phase("opening cells.zarr", "open")
    bar.on_phase(Phase("init-pass", "initialisation: pass 1/9 over A"))
    bar.on_phase(Phase("init-pass", "initialisation: pass 2/9 over A"))  # within 10 s: not shown
    lines = bar.file.getvalue().splitlines()
    assert [line.split("] ")[1] for line in lines] == [
        "opening cells.zarr",
        "initialisation: pass 1/9 over A",
    ]


def test_disabled_is_silent():
    bar = ProgressBar(enabled=False, file=io.StringIO(), terminal=False)
    bar.phase("opening", "open")
    assert _drive(bar, 5, 5) == []


def test_on_a_terminal_a_bar_without_total_under_a_tolerance():
    out = io.StringIO()
    bar = ProgressBar(tol=1e-4, file=out, terminal=True)
    state = _state()
    bar.on_start(state, 200)
    assert bar.bar.total is None  # counts iterations; no ETA from max_iter
    bar.on_end(state)
    bar = ProgressBar(tol=0.0, file=out, terminal=True)
    bar.on_start(state, 200)
    assert bar.bar.total == 200
    bar.on_end(state)


@pytest.fixture
def npz(tmp_path):
    path = tmp_path / "a.npz"
    sp.save_npz(path, sp.random(300, 40, density=0.2, format="csr", random_state=0))
    return path


def _fit(capsys, npz, tmp_path, *more) -> tuple[str, str]:
    status = main(["fit", str(npz), "-k", "3", "--out", str(tmp_path / "run"), *map(str, more)])
    out, err = capsys.readouterr()
    assert status == 0, err
    return out, err


def test_cli_shows_the_phases_from_the_first_second(npz, tmp_path, capsys):
    out, err = _fit(capsys, npz, tmp_path, "--scheduler", "sync", "--max-iter", 12, "--tol", 0)
    lines = [line for line in err.splitlines() if LINE.match(line)]
    texts = [LINE.sub("", line) for line in lines]
    assert texts[0] == f"opening {npz}"
    # k = 3 < 0.1 x min(300, 40): 7 power iterations, so 8 sketches and the left vectors
    assert texts[1] == "initialising W and H: nndsvda, from a randomized SVD (9 passes over A)"
    assert texts[2] == "initialisation: pass 1/9 over A"
    assert texts[3] == "iterating: 12 iterations (tol 0)"
    assert [t.split(":")[0] for t in texts[4:7]] == [
        "iteration 1/12",
        "iteration 11/12",
        "iteration 12/12",
    ]
    assert "ETA" in texts[4]
    assert texts[-1] == f"writing W, H, the summary and the loss curve into {tmp_path / 'run'}"
    assert "12 iterations (stopped at max_iter)" in out  # stdout is as before


def test_cli_no_progress_is_silent(npz, tmp_path, capsys):
    _, err = _fit(capsys, npz, tmp_path, "--scheduler", "sync", "--max-iter", 5, "--no-progress")
    assert "converting" in err  # the notice of a conversion stays, and nothing else
    assert not any(LINE.match(line) for line in err.splitlines())


@pytest.mark.timeout(120)
def test_cli_names_the_cluster_and_its_dashboard(npz, tmp_path, capsys):
    _, err = _fit(capsys, npz, tmp_path, "--scheduler", "local", "--workers", 1, "--max-iter", 2)
    assert "starting a local Dask cluster (1 worker)" in err
    if importlib.util.find_spec("bokeh") is not None:
        assert re.search(r"\] Dask dashboard: http://127\.0\.0\.1:\d+/status\n", err), err
    else:
        assert "no Dask dashboard: it needs bokeh" in err
        assert "pip install 'bignmf-dask[dashboard]'" in err


class _Client:
    dashboard_link = "http://127.0.0.1:8787/status"

    def __init__(self, bokeh):
        self.bokeh = bokeh

    def run_on_scheduler(self, function):
        assert function() is (importlib.util.find_spec("bokeh") is not None)  # runs as sent
        return self.bokeh


def test_dashboard_line_names_the_extra_rather_than_a_dead_link():
    assert dashboard("threads") is None
    assert dashboard("sync") is None
    assert dashboard(_Client(True)) == "Dask dashboard: http://127.0.0.1:8787/status"
    line = dashboard(_Client(False))
    assert "http" not in line
    assert "pip install 'bignmf-dask[dashboard]'" in line


def test_cli_default_scheduler_is_threads_for_a_fit_in_core(npz, tmp_path, capsys):
    _, err = _fit(capsys, npz, tmp_path, "--max-iter", 2)
    line = next(LINE.sub("", t) for t in err.splitlines() if "scheduler:" in t)
    # 2,400 float64 values and int32 indices, 301 row pointers; W 3 copies of 300 x 3
    need = 2400 * 12 + 301 * 4 + 3 * 300 * 3 * 8
    assert line.startswith(f"scheduler: threads (A decoded and W take {format_bytes(need)}, ")
    assert line.endswith("in core; --scheduler local for a cluster)")
    assert "starting a local Dask cluster" not in err


@pytest.mark.timeout(120)
def test_cli_default_scheduler_is_a_local_cluster_out_of_core(npz, tmp_path, capsys, monkeypatch):
    import bignmf.store.factors

    monkeypatch.setattr(bignmf.store.factors, "machine_memory_bytes", lambda: 64 * 1024)
    _, err = _fit(capsys, npz, tmp_path, "--max-iter", 2)
    need = format_bytes(2400 * 12 + 301 * 4 + 3 * 300 * 3 * 8)
    assert f"scheduler: local (A decoded and W take {need}, more than 16 KiB, a quarter" in err
    assert "starting a local Dask cluster" in err
    # a resume chooses again, here on the machine as it is
    monkeypatch.undo()
    assert main(["resume", str(tmp_path / "run"), "--max-iter", "3"]) == 0
    assert "scheduler: threads (" in capsys.readouterr().err
