"""The benchmark suite runs end to end (``python -m benchmarks --smoke``) and writes its report.

Tiny matrices: the figures mean nothing, so nothing here is timed; the checks are that every
part ran, that the report and the JSON hold the tables a reader expects with plausible numbers,
and that the plots are real PNG files.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TITLES = (
    "## Roofline",
    "## Against scikit-learn",
    "## Memory",
    "## Scaling",
    "## Checkpoint",
    "## Missing entries",
    "## Sizes",
)

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")
pytest.importorskip("psutil")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """Run the suite once in a subprocess; its report text, JSON results and output folder."""
    out = tmp_path_factory.mktemp("bench-out")
    workdir = tmp_path_factory.mktemp("bench-data")
    cmd = [sys.executable, "-m", "benchmarks", "--smoke", "--out", str(out),
           "--workdir", str(workdir)]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    report = (out / "report-smoke.md").read_text()
    results = json.loads((out / "results-smoke.json").read_text())
    return report, results, out


def _table(report: str, header_start: str) -> list[list[str]]:
    """The body rows of the Markdown table whose header line starts with ``header_start``."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def _number(cell: str) -> float:
    return float(cell.replace(",", "").replace("+", ""))


def test_report_names_the_run_and_every_part(smoke):
    report, results, _ = smoke
    assert "smoke profile" in report
    for field in ("- Date: ", "- Machine: ", "- Versions: ", "- Command: `python -m benchmarks"):
        assert field in report
    assert "cores" in results["header"]["machine"]
    assert "bignmf" in results["header"]["versions"]
    for title in TITLES:
        assert title in report
    assert "Failed" not in report


def test_memory_table_has_four_sizes_with_finite_peaks(smoke):
    report, results, _ = smoke
    rows = _table(report, "| × budget |")
    assert [row[0] for row in rows] == ["1", "2", "4", "8"]
    peaks = [_number(row[6]) for row in rows]  # tree peak MiB
    assert all(math.isfinite(p) and p > 10 for p in peaks)  # a Python process is > 10 MiB
    data = results["parts"]["memory"]["result"]["rows"]
    assert len(data) == 4
    nnz = [r["matrix"]["nnz"] for r in data]
    assert all(b > 1.5 * a for a, b in itertools.pairwise(nnz))  # sizes double
    for r in data:
        assert r["returncode"] == 0
        assert 0 < r["driver_peak"] <= r["tree_peak"] <= r["sum_of_peaks"]
        assert math.isfinite(r["s_per_iter"])
        assert r["s_per_iter"] > 0


def test_scaling_has_both_worker_counts_and_a_linear_fit(smoke):
    report, results, _ = smoke
    workers = _table(report, "| workers |")
    assert [row[0] for row in workers] == ["1", "2"]
    sizes = _table(report, "| rows | nonzeros |")
    assert len(sizes) == 4
    fit = results["parts"]["scaling"]["result"]["nnz_scaling"]["fit"]
    assert len(fit["residuals"]) == 4
    assert math.isfinite(fit["r2"])
    assert fit["r2"] <= 1
    assert all(_number(row[4]) > 0 for row in sizes)  # s/iter


def test_engine_parts_include_every_solver(smoke):
    report, _, _ = smoke
    methods = [row[0] for row in _table(report, "| method |")]
    for method in ("sklearn cd", "sklearn mu", "sklearn MiniBatchNMF", "bignmf mu", "bignmf bpp"):
        assert method in methods
    assert any(m.startswith("bignmf hals") for m in methods)
    variants = [row[0] for row in _table(report, "| variant | s/iter | best | CPU s/iter | ÷ loop")]
    assert "loop, memory" in variants
    assert any("LocalCluster" in v for v in variants)


def test_checkpoint_table(smoke):
    report, _, _ = smoke
    rows = _table(report, "| checkpoints |")
    assert [row[0] for row in rows] == ["none", "default (every 10)", "every iteration"]
    assert rows[0][2] == "1.00"


def test_missing_part_scores_every_bignmf_solver_on_held_out_ratings(smoke):
    report, results, _ = smoke
    rows = {row[0]: row for row in _table(report, "| method | runs |")}
    for method in ("bignmf hals n_inner=1", "bignmf hals n_inner=3", "bignmf mu"):
        assert 0 < _number(rows[method][5]) < 5  # held-out RMSE of ratings on a 1..5 scale
    result = results["parts"]["missing"]["result"]
    cli, first = result["cli"], result["curves"][0]
    assert cli["returncode"] == 0
    assert cli["tree_peak"] > 10 * 2**20
    # `bignmf fit` + `bignmf score` give the in-process fit's RMSE at the same iteration
    in_process = first["rmse"][first["iters"].index(cli["iters"])]
    assert math.isclose(cli["rmse"], in_process, rel_tol=1e-4)
    # the larger-than-memory series: every size fitted on the LocalCluster and scored
    big = result["big"]["rows"]
    assert len(big) >= 2
    assert all("error" not in r and r["returncode"] == 0 and 0 < r["rmse"] < 5 for r in big)
    assert "| × users |" in report


@pytest.mark.parametrize(
    "name", ["roofline.png", "engine_sklearn.png", "memory.png", "scaling.png", "missing.png"]
)
def test_plots_are_png_files_linked_from_the_report(smoke, name):
    report, _, out = smoke
    data = (out / name).read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 10_000  # axes, lines and labels, not an empty canvas
    assert f"]({name})" in report


def _part_smoke(tmp_path_factory, part: str):
    """One part alone (``--smoke --parts PART``): report, its JSON results, output folder."""
    out = tmp_path_factory.mktemp(f"{part}-out")
    workdir = tmp_path_factory.mktemp(f"{part}-data")
    cmd = [sys.executable, "-m", "benchmarks", "--smoke", "--parts", part]
    cmd += ["--out", str(out), "--workdir", str(workdir)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    report = (out / "report-smoke.md").read_text()
    results = json.loads((out / "results-smoke.json").read_text())
    return report, results["parts"][part]["result"], out


@pytest.fixture(scope="module")
def sizes_smoke(tmp_path_factory):
    """The ``sizes`` part alone: report, JSON results, output folder."""
    return _part_smoke(tmp_path_factory, "sizes")


def test_sizes_part_times_every_method_to_sklearns_loss(sizes_smoke):
    report, result, _ = sizes_smoke
    assert "## Sizes" in report
    assert "Failed" not in report
    rows = _table(report, "| nonzeros | shape | method |")
    assert {row[0] for row in rows} == {"4e+03", "2e+04"}
    methods = {row[2] for row in rows}
    assert {"bignmf fit (CLI)", "bignmf.nmf", "sklearn cd", "sklearn mu", "plain SciPy loop"} <= (
        methods
    )
    for case in result["cases"]:
        assert 0 < case["target"] < 1  # a relative error
        ran = {r["method"]: r for r in case["rows"] if "rel" in r}
        assert {"fit", "nmf", "cd", "mu"} <= set(ran)
        for row in ran.values():
            assert row["s_per_iter"] > 0
            assert row["peak"] > 10 * 2**20  # a Python process is > 10 MiB
        for method in ("fit", "nmf", "cd", "mu"):  # one run each: its iterates in order
            assert all(b > a for a, b in itertools.pairwise(ran[method]["times"]))
        # bignmf runs twice scikit-learn's iterations of the same HALS: it gets there
        assert ran["fit"]["to_target"] > 0
        assert ran["nmf"]["to_target"] > 0
        assert ran["fit"]["rel"] == pytest.approx(ran["nmf"]["rel"], rel=1e-4)
        assert case["loop"]["s_per_iter"] > 0
    rcppml = [r for c in result["cases"] for r in c["rows"] if r["method"] == "rcppml"]
    assert all("rel" in r or r["note"].startswith("skipped") for r in rcppml)


def test_sizes_plot_is_a_png_linked_from_the_report(sizes_smoke):
    report, _, out = sizes_smoke
    assert (out / "sizes.png").read_bytes().startswith(PNG_MAGIC)
    assert "](sizes.png)" in report


@pytest.fixture(scope="module")
def study_smoke(tmp_path_factory):
    """The ``study`` part alone: report, JSON results."""
    pytest.importorskip("anndata")
    report, result, _ = _part_smoke(tmp_path_factory, "study")
    return report, result


def test_study_part_compares_the_sweep_with_cnmf_on_planted_programs(study_smoke):
    report, result = study_smoke
    assert "## Study" in report
    assert "Failed" not in report
    rows = {row[0]: row for row in _table(report, "| method | matrix | ks |")}
    assert _number(rows["bignmf sweep"][4]) > 0  # wall s
    sweep = result["bignmf"]
    assert "error" not in sweep
    assert sweep["seconds"] > 0
    assert sweep["peak"] > 10 * 2**20  # a Python process is > 10 MiB
    assert sorted(sweep["spectra"]) == result["ks"]  # a consensus H for every k
    assert {row["k"] for row in sweep["per_k"]} == set(result["ks"])
    assert 0.5 < sweep["agreement"]["min"] <= sweep["agreement"]["median"] <= 1
    assert len(sweep["agreement"]["matched"]) == result["planted_k"]
    cnmf = result["cnmf"]
    if "note" in cnmf:  # not installed: skipped, and the report says so
        assert cnmf["note"].startswith("skipped")
        assert "No ratio" in report
    else:
        steps = ["prepare", "factorize", "combine", "k_selection_plot", "consensus"]
        assert [s["step"] for s in cnmf["steps"]] == steps
        assert all(s["returncode"] == 0 for s in cnmf["steps"])
        assert 0.5 < cnmf["agreement"]["min"] <= 1
        assert result["ratio"]["replaced"] > 0
        assert "bignmf / cNMF wall time measured side by side in this run" in report
        assert any(name.startswith("cNMF") and _number(row[4]) > 0 for name, row in rows.items())
    assert "bignmf sweep, LocalCluster" in rows
    large = result["large"]  # the smoke profile's tiny "larger" matrix, on a LocalCluster
    assert "error" not in large
    assert large["worker_peak"] > 10 * 2**20
    assert large["processes"] >= 3  # the driver and two workers
    assert 0.5 < large["agreement"]["median"] <= 1
