"""A study's two figures: choosing k (``selection.png``) and the outlier filter (``density.png``).

Both raise ImportError without matplotlib (the ``plots`` extra); the study then says so.
"""

from __future__ import annotations

import math
from pathlib import Path

__all__ = ["plot_density", "plot_selection"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_selection(path: Path, table, chosen: int | None, cv: float | None) -> Path:
    """Stability and error against k, and the held-out error of a cross-validated study; the
    chosen k marked."""
    plt = _pyplot()
    ks = [row.k for row in table]
    panels = 3 if cv is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.6), dpi=100)
    axes[0].plot(ks, [row.stability for row in table], marker="o")
    axes[0].set_ylabel("stability (silhouette)")
    axes[1].plot(ks, [row.error for row in table], marker="o", label="replicates (median)")
    axes[1].plot(ks, [row.consensus_error for row in table], marker="s", label="consensus")
    axes[1].set_ylabel("relative error")
    axes[1].legend(fontsize=8)
    if cv is not None:
        rmse = [row.test_rmse for row in table]
        se = [0.0 if math.isnan(row.test_rmse_se) else row.test_rmse_se for row in table]
        axes[2].errorbar(ks, rmse, yerr=se, marker="o", capsize=3)
        axes[2].set_ylabel(f"held-out RMSE ({cv:.0%} of entries)")
    for ax in axes:
        ax.set_xlabel("k")
        ax.grid(True, alpha=0.3)
        if chosen is not None:
            ax.axvline(chosen, color="tab:red", alpha=0.4, linestyle="--")
    fig.suptitle(f"choosing k: {'k = ' + str(chosen) if chosen is not None else 'no k chosen'}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_density(path: Path, entries: dict) -> Path:
    """Each k's histogram of local densities, with its outlier threshold."""
    plt = _pyplot()
    ks = sorted(entries)
    columns = min(len(ks), 4)
    rows = math.ceil(len(ks) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 2.8 * rows), dpi=100)
    flat = list(axes.flat) if hasattr(axes, "flat") else [axes]
    for ax, k in zip(flat, ks, strict=False):
        entry = entries[k]
        # fixed bins from 0: a stable k's densities all sit near 0, one invisible sliver else
        upper = max(1.2 * entry["density_threshold"], max(entry["density"], default=0.0))
        bins = [upper * i / 30 for i in range(31)]
        ax.hist(entry["density"], bins=bins, color="tab:blue", alpha=0.8)
        ax.axvline(entry["density_threshold"], color="tab:red", linestyle="--")
        ax.set_title(f"k = {k}: {entry['outliers']} outliers", fontsize=9)
        ax.set_xlabel("local density", fontsize=8)
    for ax in flat[len(ks) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
