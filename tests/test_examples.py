"""Every script in ``examples/`` runs in its small form and produces what it promises.

Each example runs as a person would run it, ``python examples/<name>.py --out DIR``, in a
subprocess: exit status 0, then its printed summary and its files are checked. The whole file
takes about 2 minutes on 2 cores; ``larger_than_memory.py`` alone about 70 s.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_example(name: str, out: Path, *args: str, timeout: float = 300) -> str:
    """Run ``examples/<name>.py --out OUT ARGS``; return its output, failing on a non-zero exit."""
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), "--out", str(out), *args],
        cwd=out.parent, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, f"{name} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def png_size(path: Path) -> tuple[int, int]:
    """Width and height of a PNG file, from its IHDR chunk; fails if it is not a PNG."""
    header = path.read_bytes()[:24]
    assert header[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert header[12:16] == b"IHDR"
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def test_every_example_is_tested():
    tested = {"topics_docstrings", "image_parts_digits", "single_cell_anndata",
              "larger_than_memory", "ratings_missing", "implicit_feedback",
              "single_cell_consensus"}  # fmt: skip
    assert {path.stem for path in EXAMPLES.glob("*.py")} == tested


def test_topics_docstrings(tmp_path):
    out = tmp_path / "topics"
    stdout = run_example("topics_docstrings", out, "--topics", "8", "--documents", "2000")
    topics = re.findall(r"^topic +(\d+): (.+?)  e\.g\. (\S+)$", stdout, flags=re.MULTILINE)
    assert [int(t) for t, _, _ in topics] == list(range(8))
    for _, words, _ in topics:
        assert len(words.split()) == 8  # --words defaults to 8
    assert "2,000 documents x" in stdout
    assert (out / "topics.txt").read_text(encoding="utf-8").count("\ntopic ") == 7
    assert (out / "run" / "H.zarr").is_dir()
    # The run directory is a bignmf run: the command line prints the same topics.
    listed = subprocess.run(
        [sys.executable, "-m", "bignmf", "top-features", str(out / "run"), "-n", "8"],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert [line.split(": ", 1)[1] for line in listed] == [w.strip() for _, w, _ in topics]


def test_image_parts_digits(tmp_path):
    out = tmp_path / "digits"
    stdout = run_example("image_parts_digits", out)
    assert "1,797 images x 64 pixels -> 16 parts" in stdout
    error = float(re.search(r"relative error ‖X − WH‖/‖X‖ = ([\d.]+)", stdout).group(1))
    assert 0 < error < 0.4
    for name in ("components.png", "reconstructions.png"):
        width, height = png_size(out / name)
        assert 200 <= width <= 2000, (name, width)
        assert 150 <= height <= 2000, (name, height)
        assert (out / name).stat().st_size > 5_000  # drawn images, not an empty canvas


def test_single_cell_anndata(tmp_path):
    ad = pytest.importorskip("anndata")
    out = tmp_path / "sc"
    stdout = run_example("single_cell_anndata", out, "--cells", "1500", "--genes", "1200")
    k = 7  # 6 cell types + 1 activity program
    ari = float(re.search(r"adjusted Rand index ([\d.]+)", stdout).group(1))
    assert ari > 0.9
    correlation = float(re.search(r"planted activity: ([\d.]+)", stdout).group(1))
    assert correlation > 0.9
    # The results are in the AnnData store factorized in place, and in the .h5ad copy.
    for adata in (ad.read_zarr(out / "cells.zarr"), ad.read_h5ad(out / "cells_nmf.h5ad")):
        assert adata.shape == (1500, 1200)
        assert adata.obsm["X_nmf"].shape == (1500, k)
        assert adata.varm["NMF"].shape == (1200, k)
        assert (adata.obsm["X_nmf"] >= 0).all()
        assert adata.uns["nmf"]["params"]["n_components"] == k
        assert list(adata.obs["cell_type"].cat.categories) == [f"type_{t}" for t in range(6)]


def test_single_cell_consensus(tmp_path):
    pytest.importorskip("anndata")
    out = tmp_path / "scc"
    stdout = run_example("single_cell_consensus", out, "--ks", "6-8", timeout=600)
    assert re.search(r"^chosen k = 7 ", stdout, flags=re.MULTILINE)  # 6 types + 1 activity
    r_min = float(re.search(r"correlation min ([\d.]+)", stdout).group(1))
    assert r_min > 0.95
    assert len(re.findall(r"^program \d: (gene_\d+ ){5}gene_\d+$", stdout, re.MULTILINE)) == 7
    for name in ("summary.json", "table.csv", "selection.png", "density.png"):
        assert (out / "study" / name).is_file()
    png_size(out / "study" / "selection.png")


def test_larger_than_memory(tmp_path):
    out = tmp_path / "ltm"
    stdout = run_example("larger_than_memory", out, timeout=600)
    ratio = float(re.search(r"([\d.]+)x the 400 MiB of the 2 workers", stdout).group(1))
    assert ratio > 1
    assert "SIGKILL to the process group after" in stdout
    killed_at = int(re.search(r"newest checkpoint: iteration (\d+)", stdout).group(1))
    assert 0 < killed_at < 10
    # the resumed run starts after the checkpoint, not from scratch
    assert re.search(rf"bignmf resume .*\n  iteration {killed_at + 1}/10 ", stdout)
    assert "workers paused or restarted for memory: never" in stdout
    digests = re.findall(r"W, H digest: ([0-9a-f]{16})", stdout)
    assert len(digests) == 2
    assert digests[0] == digests[1]
    assert "bitwise equal: yes" in stdout
    for line in re.findall(r"worker peak RSS \(MiB\): ([\d, ]+) —", stdout):
        assert all(int(peak) < 200 for peak in line.split(", "))
    assert (out / "run" / "summary.json").exists()


def test_ratings_missing(tmp_path):
    out = tmp_path / "ratings"
    stdout = run_example("ratings_missing", out, "--iterations", "25")
    rmse = {
        name: float(re.search(rf"held-out RMSE, {name}[^:]*: ([\d.]+)", stdout).group(1))
        for name in ("stored entries only", "absent ratings read as zeros", "each user's mean")
    }
    assert rmse["stored entries only"] < 0.6  # the planted noise is 0.25
    assert rmse["stored entries only"] < rmse["each user's mean"]
    assert rmse["absent ratings read as zeros"] > 3 * rmse["stored entries only"]
    assert re.search(r"top predicted unrated items: \d+ \([\d.]+\)", stdout)
    # the run directory scores again from the command line, to the same figure
    scored = subprocess.run(
        [sys.executable, "-m", "bignmf", "score", str(out / "run"),
         str(out / "ratings.zarr.test.mtx")], capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    again = float(re.search(r"RMSE ([\d.]+)", scored).group(1))
    assert again == pytest.approx(rmse["stored entries only"], abs=6e-4)


def test_implicit_feedback(tmp_path):
    out = tmp_path / "implicit"
    stdout = run_example("implicit_feedback", out)
    methods = ("implicit feedback", "plain NMF of the counts", "most played items")

    def figure(metric: str, name: str) -> float:
        return float(re.search(rf"^{metric}, {name}: ([\d.]+)$", stdout, re.M).group(1))

    auc = {name: figure("held-out AUC", name) for name in methods}
    recall = {name: figure("recall@10", name) for name in methods}
    # measured: AUC 0.916, 0.769, 0.786; recall@10 0.270, 0.048, 0.182
    assert auc["implicit feedback"] > 0.85
    for other in methods[1:]:
        assert auc["implicit feedback"] > auc[other] + 0.07, (other, auc)
        assert recall["implicit feedback"] > recall[other] + 0.04, (other, recall)
    assert recall["implicit feedback"] > 3 * recall["plain NMF of the counts"]
    top = re.search(r"^top 10 for user \d+: (.+)$", stdout, re.M).group(1).split(", ")
    assert len(top) == 10
    assert all(re.fullmatch(r"\d+\*? \(group \d\)", item) for item in top)
    # the run directory is a bignmf run: the command line lists the fit's 10 components
    listed = subprocess.run(
        [sys.executable, "-m", "bignmf", "top-features", str(out / "run"), "-n", "5"],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert len(listed) == 10
    # the held-out plays are in the Matrix Market file, as many as it says
    n_test = int(re.search(r"([\d,]+) held out", stdout).group(1).replace(",", ""))
    with open(out / "plays.zarr.test.mtx") as mtx:
        size_line = next(line for line in mtx if not line.startswith("%"))
    assert int(size_line.split()[2]) == n_test > 0
