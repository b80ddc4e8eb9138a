"""What a finished run leaves for people: W and H as Zarr arrays, a summary, a loss curve."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import zarr

ROWS_PER_CHUNK = 1 << 16


def write_factors(W: Any, H: np.ndarray, run_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``W.zarr`` (m×k) and ``H.zarr`` (k×n) into ``run_dir``, replacing older ones.

    ``W`` may be NumPy or a lazy Dask array: it is written one chunk of rows at a time, so it
    never has to fit in memory.
    """
    run_dir = Path(run_dir)
    w_path, h_path = write_rows(W, run_dir / "W.zarr"), run_dir / "H.zarr"
    k, n = H.shape
    zarr.create_array(h_path, data=np.ascontiguousarray(H), chunks=(k, min(n, ROWS_PER_CHUNK)),
                      overwrite=True)  # fmt: skip
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
    path = Path(run_dir) / "metrics.jsonl"
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
    path = Path(path) if path is not None else Path(run_dir) / "loss.png"
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
    from bignmf.fit.rundir import write_json_atomic

    path = Path(run_dir) / "summary.json"
    write_json_atomic(path, json.dumps(summary, indent=2) + "\n")
    return path


def top_features(H: np.ndarray, n: int = 10) -> list[list[tuple[int, float]]]:
    """Per component, its ``n`` largest columns of H as ``(column, weight)``, largest first."""
    top = []
    for row in np.asarray(H):
        order = np.argsort(row)[::-1][:n]
        top.append([(int(j), float(row[j])) for j in order if row[j] > 0])
    return top
