"""What a finished run leaves for people: W and H as Zarr arrays, a summary, a loss curve.

The file names are :mod:`bignmf.fit.rundir`'s; :func:`finish_run` writes them all, in the
order that makes ``summary.json`` the mark of complete outputs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from bignmf.fit.rundir import RunDir, crash_point, write_json_atomic

ROWS_PER_CHUNK = 1 << 16


def write_factors(W: Any, H: np.ndarray, run_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``W.zarr`` (m×k) and ``H.zarr`` (k×n) into ``run_dir``, replacing older ones.

    ``W`` may be NumPy or a lazy Dask array: it is written one chunk of rows at a time, so it
    never has to fit in memory.
    """
    w_path, h_path = RunDir(run_dir).factor_paths
    write_rows(W, w_path)
    k, n = H.shape
    zarr.create_array(
        h_path, data=np.ascontiguousarray(H), chunks=(k, min(n, ROWS_PER_CHUNK)), overwrite=True
    )
    return w_path, h_path


def write_rows(W: Any, path: str | os.PathLike) -> Path:
    """Write a tall matrix (NumPy or lazy Dask) as a Zarr array, one chunk of rows at a time."""
    m, k = W.shape
    rows = max(min(m, ROWS_PER_CHUNK), 1)
    out = zarr.create_array(path, shape=(m, k), chunks=(rows, k), dtype=W.dtype, overwrite=True)
    for start in range(0, m, rows):
        part = W[start : start + rows]
        out[start : start + rows] = part.compute() if hasattr(part, "compute") else part
    return Path(path)


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The run's ``metrics.jsonl`` as a list of records."""
    path = RunDir(run_dir).metrics_path
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss(run_dir: str | os.PathLike, path: str | os.PathLike | None = None) -> Path | None:
    """Draw the loss (or relative error) per iteration to ``loss.png``; None without metrics.

    Raises ImportError when matplotlib (the ``plots`` extra) cannot be imported.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = read_metrics(run_dir)
    if not metrics:
        return None
    path = Path(path) if path is not None else RunDir(run_dir).loss_plot_path
    iterations = [r["iteration"] for r in metrics]
    use_rel = all(r.get("relative_error") is not None for r in metrics)
    values = [r["relative_error"] if use_rel else r["loss"] for r in metrics]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(iterations, values, marker="." if len(values) < 60 else None)
    ax.set_xlabel("iteration")
    ax.set_ylabel("relative error ‖A − WH‖ / ‖A‖" if use_rel else "loss")
    ax.set_title(f"bignmf: {Path(run_dir).name}")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_summary(run_dir: str | os.PathLike, summary: dict) -> Path:
    """Write ``summary.json``, last of a run's outputs and atomically: its presence says they
    are complete."""
    path = RunDir(run_dir).summary_path
    write_json_atomic(path, json.dumps(summary, indent=2) + "\n")
    return path


@dataclass(frozen=True)
class RunOutputs:
    """What :func:`finish_run` wrote, for a front end to show."""

    W: Path
    H: Path
    summary: Path
    metrics: Path
    loss_plot: Path | None
    plot_skipped: str | None  # why there is no loss curve (matplotlib missing)
    relative_error: float | None


def finish_run(
    run_dir: str | os.PathLike, result: Any, seconds: float, plot: bool = True
) -> RunOutputs:
    """Write a finished run's W, H, loss curve (unless not ``plot``) and summary (last,
    atomically)."""
    from bignmf.fit.settings import RunRecord

    run = RunDir(run_dir)
    record = RunRecord.from_json(run.record())
    w_path, h_path = write_factors(result.W, result.H, run.path)
    crash_point("finish-factors", result.n_iter)
    png = skipped = None
    try:
        png = plot_loss(run.path) if plot else None
    except ImportError as error:
        skipped = f"matplotlib cannot be imported ({error})"
    rel = None
    norm = record.matrix.get("frobenius_sq")  # of the entries the fit saw (off a mask)
    if norm is None and record.store is not None:  # a run recorded before it was
        from bignmf.store.csr import open_matrix

        norm = open_matrix(*record.store).frobenius_sq
    if result.loss_history and record.settings.beta_loss == 2 and norm:
        rel = result.reconstruction_err / norm**0.5
    summary = {
        "n_components": record.settings.n_components,
        "n_iter": result.n_iter,
        "converged": result.converged,
        "reconstruction_err": result.reconstruction_err,
        "relative_error": rel,
        # what the error is taken over: with missing entries, the stored ones only
        "error_over": error_over(record.settings.missing, record.settings.weights),
        "seconds": seconds,
        "W": str(w_path),
        "H": str(h_path),
        "loss_plot": str(png) if png else None,
        "settings": record.settings.to_record(),
        "matrix": record.matrix,
        "plan": list(getattr(result, "plan", [])),  # the last start's: a resume plans again
        "init": _init_of(run, getattr(result, "init", None)),
    }
    path = write_summary(run.path, summary)
    return RunOutputs(w_path, h_path, path, run.metrics_path, png, skipped, rel)


def _init_of(run: RunDir, init: dict | None) -> dict | None:
    """The fit's initialisation (:attr:`NMFResult.init`); a resume's is the one the summary of
    an earlier finish recorded (None if the run never finished before)."""
    if init is not None:
        return init
    try:
        return json.loads(run.summary_path.read_text()).get("init")
    except (OSError, ValueError):
        return None


def error_over(missing: str | None, weights: str | None = None) -> str:
    """What a run's error is taken over, in words."""
    if weights is not None:
        which = "weighted stored entries" if missing == "zeros" else "weighted entries"
        how = "implicit feedback's confidence" if weights == "implicit" else "given weights"
        return f"{which} ({how})"
    return {None: "all entries", "zeros": "stored entries"}.get(missing, "entries off the mask")


def read_summary(run_dir: str | os.PathLike) -> dict | None:
    """The run's ``summary.json``; None when it is missing or unreadable."""
    try:
        return json.loads(RunDir(run_dir).summary_path.read_text())
    except (OSError, ValueError):
        return None


def read_factor(run_dir: str | os.PathLike, name: str) -> np.ndarray | None:
    """``H`` (or ``W``) as written by :func:`write_factors`; None before the run finished."""
    w_path, h_path = RunDir(run_dir).factor_paths
    path = {"W": w_path, "H": h_path}[name]
    return zarr.open_array(path, mode="r")[...] if path.exists() else None


def top_features(H: np.ndarray, n: int = 10) -> list[list[tuple[int, float]]]:
    """Per component, its ``n`` largest columns of H as ``(column, weight)``, largest first."""
    top = []
    for row in np.asarray(H):
        order = np.argsort(row)[::-1][:n]
        top.append([(int(j), float(row[j])) for j in order if row[j] > 0])
    return top
