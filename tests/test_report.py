"""`bignmf report`: one self-contained HTML page, its structure read back with the standard
library's HTML parser and its figures against dense NumPy over W and H; a slow test renders
it in headless Chromium and saves the screenshot shown in the README."""

from __future__ import annotations

import base64
import html
import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import zarr

import bignmf
from bignmf.cli import main
from bignmf.fit.init import nndsvd_passes
from bignmf.report import build_report
from tests.conftest import stopped_fit

pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
M, N, K = 240, 30, 3
VOID = {"img", "meta", "br", "hr", "link", "input", "source", "wbr"}


class Page(HTMLParser):
    """What a test reads off the page: its title, images, tables, and per component section
    its feature names and row names, each as the text between its tags."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, dict]] = []
        self.title = ""
        self.images: list[dict] = []
        self.external: list[str] = []
        self.components: list[str] = []
        self.features: dict[str, list[str]] = {}
        self.rows: dict[str, list[str]] = {}
        self.tables: dict[str, dict[str, str]] = {}
        self.heading = ""
        self.feed(text)
        self.close()
        assert not self.stack, self.stack  # every element closed

    def _within(self, tag: str, css: str | None = None) -> dict | None:
        for name, attrs in reversed(self.stack):
            if name == tag and (css is None or css in attrs.get("class", "").split()):
                return attrs
        return None

    def handle_starttag(self, tag, attrs):
        attrs = {k: v or "" for k, v in attrs}
        for key in ("src", "href"):
            if key in attrs and not attrs[key].startswith(("data:", "#")):
                self.external.append(attrs[key])
        if tag in ("script", "link", "iframe", "object"):
            self.external.append(tag)
        if tag == "img":
            self.images.append(attrs)
        if tag == "section" and "component" in attrs.get("class", "").split():
            self.components.append(attrs["id"])
            self.features[attrs["id"]], self.rows[attrs["id"]] = [], []
        if tag == "span" and attrs.get("class") in ("feature", "name"):
            which = self.features if attrs["class"] == "feature" else self.rows
            which[self.components[-1]].append("")
        if tag not in VOID:
            self.stack.append((tag, attrs))

    def handle_endtag(self, tag):
        assert self.stack, tag
        assert self.stack[-1][0] == tag, (tag, self.stack[-1])
        self.stack.pop()

    def handle_data(self, data):
        if self._within("title") is not None:
            self.title += data
        span = self._within("span")
        if span is not None and span.get("class") == "feature":
            self.features[self.components[-1]][-1] += data
        if span is not None and span.get("class") == "name":
            self.rows[self.components[-1]][-1] += data
        table = self._within("table")
        if table is not None:
            cells = self.tables.setdefault(table["class"], {})
            if self._within("th") is not None:
                self.heading = data
                cells[data] = ""
            elif self._within("td") is not None:
                cells[self.heading] += data


def planted(seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    A = rng.random((M, K)) ** 3 @ rng.random((K, N)) * (rng.random((M, N)) < 0.5)
    return sp.csr_matrix(A)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """A finished fit of a small 'corpus' with its vocabulary and document titles."""
    root = tmp_path_factory.mktemp("report")
    A = planted()
    bignmf.convert(A, root / "docs.zarr")
    (root / "docs.zarr.vocab.txt").write_text("".join(f"word{j}\n" for j in range(N)))
    (root / "docs.zarr.titles.txt").write_text("".join(f"title {i}\n" for i in range(M)))
    assert (
        main(
            [
                "fit",
                str(root / "docs.zarr"),
                "-k",
                str(K),
                "--out",
                str(root / "run"),
                "--scheduler",
                "threads",
                "--no-progress",
                "--top",
                "0",
                "--seed",
                "3",
                "--max-iter",
                "25",
            ]
        )
        == 0
    )
    return root / "run", A


def test_the_page_has_a_section_per_component_with_its_top_features(text_run, capsys):
    run, A = text_run
    assert main(["report", str(run), "-n", "6", "--rows", "4"]) == 0
    assert capsys.readouterr().out.strip() == f"report: {run / 'report.html'}"
    page = Page((run / "report.html").read_text(encoding="utf-8"))
    assert page.title == "bignmf report: run"
    assert page.components == [f"component-{c}" for c in range(K)]
    H = zarr.open_array(run / "H.zarr")[...]
    W = zarr.open_array(run / "W.zarr")[...]
    for c in range(K):
        top = [j for j in np.argsort(-H[c], kind="stable")[:6] if H[c, j] > 0]
        assert page.features[f"component-{c}"] == [f"word{j}" for j in top]
        rows = np.lexsort((np.arange(M), -W[:, c]))[:4]
        assert page.rows[f"component-{c}"] == [f"title {i}" for i in rows]
    # the settings, the matrix and the result, as run.json and summary.json hold them
    settings = page.tables["settings"]
    record = json.loads((run / "run.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert settings["solver"] == "hals"
    assert settings["n_components"] == str(K)
    assert settings["seed"] == str(record["settings"]["seed"]) == "3"
    assert settings["max_iter"] == "25"
    assert settings["n_iter"] == str(summary["n_iter"])
    assert settings["relative_error"] == f"{summary['relative_error']:.6g}"
    # the default init, NNDSVD: its randomized SVD's passes (as progress counts them) and time
    init = summary["init"]
    assert init["method"] == record["settings"]["init"] == "nndsvda"
    assert init["passes"] == nndsvd_passes(K, *A.shape)
    assert 0 < init["seconds"] < summary["seconds"]
    shown = f"nndsvda, {init['passes']} passes, {init['seconds']:.2f} s"
    assert settings["initialisation"] == shown
    assert page.tables["matrix"]["shape"] == f"{M:,} × {N:,}"
    assert page.tables["matrix"]["nonzeros"] == f"{A.nnz:,}"
    assert page.tables["matrix"]["density"] == f"{A.nnz / (M * N):.4g}"
    # the memory plan the fit ran with, line for line
    assert summary["plan"][0].startswith(f"matrix: {M} x {N}, {A.nnz} nonzeros, k = {K}")
    text = (run / "report.html").read_text(encoding="utf-8")
    section = text.split('<section id="memory-plan">')[1].split("</section>")[0]
    assert all(html.escape(line) in section for line in summary["plan"])
    # every image a PNG inside the page; nothing fetched from anywhere else
    assert page.external == []
    assert len(page.images) == 1 + 2 + K  # loss, usage (2), a chart per component
    for image in page.images:
        head, _, data = image["src"].partition(",")
        assert head == "data:image/png;base64"
        assert base64.b64decode(data, validate=True).startswith(PNG)
        assert image["alt"]


def test_the_usage_shares_are_those_of_w_and_h(text_run):
    run, _ = text_run
    W = zarr.open_array(run / "W.zarr")[...]
    H = zarr.open_array(run / "H.zarr")[...]
    share = (W * H.sum(axis=1)).sum(axis=0) / (W @ H).sum()
    text = build_report(run, 3, 0)
    for c in range(K):
        assert f"{100 * share[c]:.1f}% of Σ(W·H)" in text
    assert "top rows" not in text  # --rows 0


def test_names_are_escaped(text_run, tmp_path):
    run, _ = text_run
    vocab = tmp_path / "names.txt"
    vocab.write_text("".join(f"<b>&{j}</b>$x$\n" for j in range(N)), encoding="utf-8")
    text = build_report(run, 4, 2, vocab=vocab)
    assert "<b>" not in text
    assert "&lt;b&gt;&amp;" in text
    page = Page(text)
    H = zarr.open_array(run / "H.zarr")[...]
    top = [j for j in np.argsort(-H[0], kind="stable")[:4] if H[0, j] > 0]
    assert page.features["component-0"] == [f"<b>&{j}</b>$x$" for j in top]


def test_a_stopped_run_is_reported_from_its_newest_checkpoint(tmp_path):
    store = bignmf.convert(planted(1), tmp_path / "a.zarr", block_nnz=800)

    stopped_fit(store, K, tmp_path / "run", 8, max_iter=40, random_state=1, checkpoint_every=5)
    text = build_report(tmp_path / "run", 5, 5)
    page = Page(text)
    assert page.components == [f"component-{c}" for c in range(K)]
    status = "from the newest checkpoint, ckpt-000005 (iteration 5 of at most 40, k = 3)"
    assert status in text
    assert page.tables["settings"]["factors"] == "ckpt-000005"
    H = zarr.open_group(tmp_path / "run" / "ckpt-000005", mode="r")["H"][...]
    for c in range(K):  # no vocabulary: column numbers
        top = [j for j in np.argsort(-H[c], kind="stable")[:5] if H[c, j] > 0]
        assert page.features[f"component-{c}"] == [str(j) for j in top]
    assert page.rows["component-0"] == []  # no row names known: numbers via top-rows
    assert "bignmf top-rows RUN" in text
    assert len(page.images) == 1 + 2 + K


def test_without_matplotlib_the_error_names_the_extra(text_run, tmp_path, monkeypatch, capsys):
    run, _ = text_run
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # an import of it fails
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    out = tmp_path / "page.html"
    assert main(["report", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "'plots' extra" in err
    assert not out.exists()


def _non_blank(path: Path) -> tuple[int, float]:
    """Distinct colours of a screenshot and the share of its pixels that are not white."""
    from matplotlib.image import imread

    pixels = imread(path)[..., :3]
    colours = np.unique((pixels.reshape(-1, 3) * 255).round().astype(np.uint8), axis=0)
    return len(colours), float(np.mean(np.any(pixels < 0.97, axis=-1)))


@pytest.mark.slow
def test_the_page_renders_in_headless_chromium(tmp_path):
    """The text-topics workflow on a real corpus (the installed docstrings), rendered by
    Chromium; its screenshot, made smaller, is docs/report.png in the README
    (``BIGNMF_README_SCREENSHOT=docs/report.png pytest -m slow tests/test_report.py``)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium binary (the Debian package: apt-get install chromium)")
    from bignmf.datasets.corpus import docstring_corpus

    docstring_corpus(tmp_path / "docs.zarr", max_documents=3000)
    assert (
        main(
            [
                "fit",
                str(tmp_path / "docs.zarr"),
                "-k",
                "8",
                "--out",
                str(tmp_path / "run"),
                "--scheduler",
                "threads",
                "--no-progress",
                "--top",
                "0",
                "--seed",
                "0",
            ]
        )
        == 0
    )
    assert main(["report", str(tmp_path / "run"), "-n", "8", "--rows", "6"]) == 0
    page = tmp_path / "run" / "report.html"
    shot = tmp_path / "shot.png"
    done = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--screenshot={shot}",
            "--window-size=1200,2000",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    colours, inked = _non_blank(shot)
    assert colours > 50, colours  # charts, text and borders, not one flat colour
    assert 0.03 < inked < 0.9, inked  # neither all white nor one filled area
    # the README's copy is replaced only when asked: a test run leaves the tree as it was
    readme_copy = os.environ.get("BIGNMF_README_SCREENSHOT")
    _save_for_the_readme(shot, ROOT / readme_copy if readme_copy else tmp_path / "small.png")


def _save_for_the_readme(shot: Path, dst: Path) -> None:
    """The screenshot at two thirds of its size in a 64-colour palette: well under 400 KB."""
    try:
        from PIL import Image
    except ImportError:  # matplotlib depends on Pillow; without it, keep the full size
        dst.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, dst)
        return
    with Image.open(shot) as image:
        small = image.convert("RGB").resize((800, 1333), Image.Resampling.LANCZOS)
        dst.parent.mkdir(exist_ok=True)
        small.quantize(colors=64).save(dst, optimize=True)
    assert dst.stat().st_size < 400_000
    with open(dst, "rb") as saved:
        assert saved.read(8) == PNG
