"""``bignmf report``: one self-contained HTML page of a run, to look at and to hand on.

The page holds the run's settings, the matrix summary and the memory plan when the run
records one, the loss curve, how the rows use the components, and for each component its top
features as a bar chart and its top rows when their names are known. Every image is a PNG
embedded as a ``data:`` URI and the style sheet is inline: the page needs no other file and
no network. It is built from what the run directory holds (:mod:`bignmf.results`): a
finished run's ``W.zarr`` and ``H.zarr``, or a stopped run's newest checkpoint. W is read once,
by row slabs.

Needs matplotlib (the ``plots`` extra).
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import os
import uuid
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bignmf.errors import MissingExtraError
from bignmf.fit.inspect import RowScan, RunFactors, open_factors, scan_rows
from bignmf.fit.outputs import read_metrics, read_summary
from bignmf.fit.rundir import RunDir
from bignmf.results import Ranked, Top, name_rows, row_names, top_features

LABEL_CHARS = 40  # a feature's name on a chart is cut here; the list beside it has it whole
DPI = 80

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222;
       padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
.status { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { text-align: left; padding: 0.15em 0.8em 0.15em 0; vertical-align: top; }
th { font-weight: 600; color: #444; }
section { margin-bottom: 1.5em; }
.columns { display: flex; flex-wrap: wrap; gap: 2em; }
.components { display: grid; grid-template-columns: repeat(auto-fill, minmax(22em, 1fr));
              gap: 1.2em; }
.component { border: 1px solid #ddd; border-radius: 6px; padding: 0.6em 0.8em; margin: 0; }
.component h3 { margin: 0 0 0.3em 0; font-size: 1.05em; }
.features { font-size: 0.92em; }
.rows { font-size: 0.85em; margin: 0.2em 0 0 0; padding-left: 1.8em; }
.rows li { overflow-wrap: anywhere; }
.rows-title { font-weight: 600; font-size: 0.9em; margin: 0.6em 0 0 0; }
img { max-width: 100%; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; }
footer { color: #777; font-size: 0.85em; }
"""


def _figure():
    """A matplotlib Figure class (no pyplot: the page changes no backend of the caller's)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise MissingExtraError(
            f"bignmf report draws with matplotlib, which cannot be imported ({error}): "
            "pip install matplotlib, or bignmf's 'plots' extra (pip install '.[plots]')"
        ) from None
    return Figure


def _png(fig) -> str:
    """The figure as a ``data:image/png;base64,...`` URI."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # a name in a script the font lacks (CJK gene names) is drawn as boxes, not an error
        warnings.filterwarnings("ignore", message="Glyph .* missing from", category=UserWarning)
        fig.savefig(buffer, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def _e(value: Any) -> str:
    return html.escape(str(value))


def _fmt(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return " × ".join(map(str, value))
    return str(value)


def _table(rows: Iterable[tuple[str, Any]], css: str) -> str:
    cells = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_fmt(v))}</td></tr>" for k, v in rows)
    return f'<table class="{css}">{cells}</table>'


def _cut(name: str) -> str:
    return name if len(name) <= LABEL_CHARS else name[: LABEL_CHARS - 1] + "…"


def _loss_chart(metrics: list[dict], checkpoint: int | None) -> str | None:
    if not metrics:
        return None
    iterations = [r["iteration"] for r in metrics]
    relative = all(r.get("relative_error") is not None for r in metrics)
    values = [r["relative_error"] if relative else r["loss"] for r in metrics]
    fig = _figure()(figsize=(6, 3.6))
    ax = fig.add_subplot()
    ax.plot(iterations, values, marker="." if len(values) < 60 else None)
    if checkpoint is not None:
        ax.axvline(checkpoint, color="0.5", linestyle="--", label="newest checkpoint")
        ax.legend()
    ax.set_xlabel("iteration")
    ax.set_ylabel("relative error ‖A − WH‖ / ‖A‖" if relative else "loss")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _usage_charts(scan: RowScan) -> tuple[str, str]:
    k = scan.mass_share.size
    Figure = _figure()
    fig = Figure(figsize=(max(6, 0.25 * k + 2), 4.4))
    top, bottom = fig.subplots(2, 1, sharex=True)
    components = np.arange(k)
    top.bar(components, 100 * scan.mass_share, color="#4878a8")
    top.set_ylabel("% of Σ(W·H)")
    top.set_title("each component's share of the reconstruction")
    bottom.bar(components, scan.dominant, color="#d08040")
    bottom.set_ylabel("rows")
    bottom.set_title("rows whose largest component it is")
    bottom.set_xlabel("component")
    if k <= 40:
        bottom.set_xticks(components)
    for ax in (top, bottom):
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    shares = _png(fig)
    fig = Figure(figsize=(6, 3.2))
    ax = fig.add_subplot()
    edges = np.linspace(0, 1, scan.dominant_share.size + 1)
    ax.stairs(scan.dominant_share, edges, fill=True, color="#6a9f58")
    ax.set_title("how mixed the rows are")
    ax.set_xlabel("share of a row's W·H from its largest component")
    ax.set_ylabel("rows")
    ax.set_xlim(0, 1)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return shares, _png(fig)


def _feature_chart(features: list[Ranked]) -> str:
    fig = _figure()(figsize=(4.4, 0.24 * len(features) + 0.7))
    ax = fig.add_subplot()
    y = np.arange(len(features))
    ax.barh(y, [f.weight for f in features], color="#4878a8")
    ax.set_yticks(y, [_cut(f.name) for f in features])
    for label in ax.get_yticklabels():
        label.set_parse_math(False)  # a name holding '$' is text, not TeX
    ax.invert_yaxis()  # the largest on top, as in the list
    ax.set_xlabel("weight in H")
    ax.tick_params(labelsize=8)
    fig.tight_layout()
    return _png(fig)


@dataclass(frozen=True)
class _Run:
    """What the page is made of."""

    path: Path
    record: dict
    summary: dict | None
    metrics: list[dict]
    factors: RunFactors
    features: Top
    scan: RowScan
    rows: list[list[Ranked]] | None  # named top rows; None when no row names are known


def _gather(run: str | os.PathLike, n_features: int, n_rows: int, vocab) -> _Run:
    directory = RunDir(run)
    record = directory.record()
    factors = open_factors(run)
    features = top_features(run, n_features, vocab, factors=factors)
    scan = scan_rows(factors, n_rows)
    names = row_names(run, factors.n_rows) if n_rows else None
    rows = name_rows(scan, names) if names is not None else None
    summary = read_summary(run)
    if not factors.finished:
        summary = None  # the summary of an earlier finish describes other factors
    return _Run(directory.path, record, summary, read_metrics(run), factors, features, scan, rows)


def _status(run: _Run) -> str:
    settings, options = run.record["settings"], run.record["options"]
    if run.factors.finished and run.summary is not None:
        state = "converged" if run.summary.get("converged") else "stopped at max_iter"
        return f"finished: {run.summary.get('n_iter')} iterations ({state})"
    if run.factors.finished:
        return "finished (no summary.json)"
    return (
        f"from the newest checkpoint, {run.factors.origin} (iteration {run.factors.iteration} of "
        f"at most {options.get('max_iter')}, k = {settings.get('n_components')}): the run wrote "
        f"no W.zarr and H.zarr — it was stopped, or started from Python; `bignmf resume "
        f"{run.path}` finishes it"
    )


def _run_tables(run: _Run) -> str:
    """The run's result (a finished run's summary), settings and options, side by side."""
    result: list[tuple[str, Any]] = [
        ("run directory", str(run.path)),
        ("factors", run.factors.origin),
    ]
    if run.summary is not None:
        for key in ("n_iter", "converged", "reconstruction_err", "relative_error", "error_over"):
            result.append((key, run.summary.get(key)))
        if run.summary.get("seconds") is not None:
            result.append(("seconds", round(float(run.summary["seconds"]), 2)))
        init = run.summary.get("init")
        if init:
            passes = f", {init['passes']} passes" if init.get("passes") else ""
            result.append(("initialisation", f"{init['method']}{passes}, {init['seconds']:.2f} s"))
    tables = [
        ("result", result),
        ("settings", run.record["settings"].items()),
        ("options", run.record["options"].items()),
    ]
    return "".join(f"<div><h3>{name}</h3>{_table(rows, 'settings')}</div>" for name, rows in tables)


def _matrix_rows(run: _Run) -> list[tuple[str, Any]]:
    matrix = run.record["matrix"]
    fingerprint = matrix.get("fingerprint", {})
    shape = fingerprint.get("shape") or [run.factors.n_rows, run.factors.H.shape[1]]
    m, n = (int(x) for x in shape)
    rows: list[tuple[str, Any]] = [("shape", f"{m:,} × {n:,}")]
    nnz = fingerprint.get("nnz")
    if nnz is not None:
        rows.append(("nonzeros", f"{int(nnz):,}"))
        rows.append(("density", f"{int(nnz) / (m * n):.4g}" if m * n else "n/a"))
    if fingerprint.get("dtype"):
        rows.append(("dtype", fingerprint["dtype"]))
    if matrix.get("frobenius_sq") is not None:
        rows.append(("‖A‖ (Frobenius)", float(matrix["frobenius_sq"]) ** 0.5))
    if matrix.get("n_blocks") is not None:
        rows.append(("row blocks", matrix["n_blocks"]))
    rows.append(("store", matrix.get("path", "in memory")))
    return rows


def _memory_plan(run: _Run) -> str:
    plan = run.record.get("plan") or (run.summary or {}).get("plan")
    if not plan:
        return (
            "<p>This run records no memory plan; <code>bignmf fit … --plan-only</code> prints "
            "one for a matrix and a machine, <code>-v</code> logs it before a fit.</p>"
        )
    if isinstance(plan, dict):
        return _table(plan.items(), "plan")
    lines = plan if isinstance(plan, list) else [str(plan)]
    return f"<pre>{_e(chr(10).join(map(str, lines)))}</pre>"


def _component(c: int, run: _Run) -> str:
    features = run.features.components[c]
    share = run.scan.mass_share[c]
    parts = [
        f'<section class="component" id="component-{c}">',
        f"<h3>Component {c}</h3>",
        f'<p class="usage">{100 * share:.1f}% of Σ(W·H); the largest component of '
        f"{int(run.scan.dominant[c]):,} rows</p>",
    ]
    if features:
        names = ", ".join(f'<span class="feature">{_e(f.name)}</span>' for f in features)
        parts.append(f'<p class="features">{names}</p>')
        parts.append(_img(_feature_chart(features), f"top features of component {c}"))
    else:
        parts.append('<p class="features">no feature with a positive weight</p>')
    if run.rows is not None and run.rows[c]:
        items = "".join(
            f'<li value="{r}"><span class="name">{_e(x.name)}</span> '
            f"<small>(row {x.index}, {x.weight:.4g})</small></li>"
            for r, x in enumerate(run.rows[c], 1)
        )
        parts.append(f'<p class="rows-title">top rows</p><ol class="rows">{items}</ol>')
    parts.append("</section>")
    return "\n".join(parts)


def build_report(
    run: str | os.PathLike,
    n_features: int = 10,
    n_rows: int = 10,
    vocab: str | os.PathLike | None = None,
) -> str:
    """The HTML page of a run, as text.

    Parameters
    ----------
    run : str or path-like
        The run directory: finished, or stopped (its newest checkpoint is shown).
    n_features : int
        Top features charted per component.
    n_rows : int
        Top rows listed per component, when row names are known (0: none).
    vocab : str or path-like, optional
        One feature name per line; by default the run's store's vocabulary.

    Returns
    -------
    str
        A complete HTML document; its images are ``data:`` URIs.

    Raises
    ------
    bignmf.MissingExtraError
        When matplotlib (the ``plots`` extra) cannot be imported.
    bignmf.CheckpointError
        When ``run`` holds no run, or one with neither its outputs nor a checkpoint.

    Notes
    -----
    Memory: H, one slab of W's rows and the charts; W is read once by row slabs
    (:func:`bignmf.fit.inspect.scan_rows`), however many rows it has.
    """
    _figure()  # before reading anything: a missing extra is said at once
    data = _gather(run, n_features, n_rows, vocab)
    title = f"bignmf report: {data.path.name}"
    k = data.factors.H.shape[0]
    loss = _loss_chart(data.metrics, data.factors.iteration)
    shares, dominance = _usage_charts(data.scan)
    names_note = (
        ""
        if data.features.named
        else "<p>No vocabulary was found: features are column numbers "
        "(<code>bignmf report RUN --vocab FILE</code> names them).</p>"
    )
    rows_note = (
        ""
        if data.rows is not None or n_rows == 0
        else "<p>Row names are not known (a <code>&lt;store&gt;.titles.txt</code> beside the "
        "store, or AnnData <code>obs_names</code>, give them): "
        "<code>bignmf top-rows RUN</code> lists each component's top rows by number.</p>"
    )
    empty = (
        f"<p>{data.scan.empty_rows:,} of {data.scan.n_rows:,} rows use no component (empty "
        "rows of A).</p>"
        if data.scan.empty_rows
        else ""
    )
    versions = ", ".join(f"{_e(a)} {_e(b)}" for a, b in data.record.get("versions", {}).items())
    made = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    body = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        '<head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>{STYLE}</style></head>",
        "<body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="status">{_e(_status(data))}</p>',
        f'<section id="components"><h2>Components ({k})</h2>',
        names_note,
        rows_note,
        '<div class="components">',
        *(_component(c, data) for c in range(k)),
        "</div>",
        "</section>",
        '<section id="usage"><h2>How the rows use the components</h2>',
        "<p>A row's use of component c is W[row, c] · Σ<sub>j</sub> H[c, j], its share of the "
        "row's W·H: these figures do not depend on how W and H share each component's "
        "scale.</p>",
        '<div class="columns">',
        _img(shares, "share of each component"),
        _img(dominance, "histogram of the largest component's share per row"),
        "</div>",
        empty,
        "</section>",
        '<div class="columns">',
        '<section id="loss"><h2>Loss</h2>',
        _img(loss, "loss per iteration") if loss else "<p>No iteration recorded yet.</p>",
        "</section>",
        '<section id="matrix"><h2>Matrix</h2>',
        _table(_matrix_rows(data), "matrix"),
        "</section>",
        '<section id="memory-plan"><h2>Memory plan</h2>',
        _memory_plan(data),
        "</section>",
        "</div>",
        '<section id="run"><h2>Run</h2><div class="columns">',
        _run_tables(data),
        "</div></section>",
        f"<footer>Made {_e(made)} by <code>bignmf report</code>; {versions}.</footer>",
        "</body></html>",
    ]
    return "\n".join(part for part in body if part) + "\n"


def write_report(
    run: str | os.PathLike,
    out: str | os.PathLike | None = None,
    n_features: int = 10,
    n_rows: int = 10,
    vocab: str | os.PathLike | None = None,
) -> Path:
    """Write :func:`build_report`'s page, by default as ``RUN/report.html``.

    Parameters
    ----------
    run : str or path-like
        The run directory.
    out : str or path-like, optional
        The file written (replaced atomically); default ``report.html`` in the run.
    n_features, n_rows : int
        Top features charted and top rows listed per component.
    vocab : str or path-like, optional
        One feature name per line.

    Returns
    -------
    pathlib.Path
        The page written.
    """
    page = build_report(run, n_features, n_rows, vocab)
    path = Path(out) if out is not None else RunDir(run).report_path
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:  # renamed into place: a kill leaves the old page or the new, never half of one
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


__all__ = ["build_report", "write_report"]
