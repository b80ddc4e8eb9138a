"""A study's results: the consensus of each k, the table per k, the chosen k, what is written.

:func:`finish_study` runs after the fits: per k the consensus of its replicates' spectra
(:func:`bignmf.study.consensus.consensus`) and its W refitted out of core with H fixed
(:func:`bignmf.fit.transform.transform`, which also gives the consensus's error), then the
table, the chosen k (:func:`choose_k`), ``table.csv``, the plots and ``summary.json``, last.
Each k's consensus is committed by its ``consensus.json`` (written after its factors), so a
study killed here redoes only the k it was at.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bignmf.errors import CheckpointError, ParameterError
from bignmf.fit.rundir import crash_point, write_json_atomic
from bignmf.study.consensus import consensus
from bignmf.study.layout import CONSENSUS_FILE, StudyDir, read_json

__all__ = ["KRow", "Study", "choose_k", "finish_study", "open_study"]

#: How each rule of :func:`choose_k` reads, for the summary and the CLI.
RULES = {
    "cv": "the smallest k whose median held-out RMSE is within one standard error (over its "
    "replicates) of the lowest median",
    "stability": "the largest k whose stability (silhouette of the consensus clustering) is "
    "within 0.01 of the highest",
}
#: How far below the highest stability a k still counts as stable (:func:`choose_k`).
STABILITY_TOLERANCE = 0.01


@dataclass(frozen=True)
class KRow:
    """One k of the table.

    Attributes
    ----------
    k : int
    replicates : int
    error : float
        Median relative error of the replicates (over the entries they saw).
    consensus_error : float
        Relative error ``‖A − W·H‖ / ‖A‖`` of the consensus (H the medians, W refitted), over
        every entry of A.
    stability : float
        Silhouette of the consensus clustering (NaN for k = 1).
    outliers : int
        Spectra dropped by the local density filter.
    test_rmse, test_rmse_se : float
        Median held-out RMSE of the replicates and its standard error (NaN without cv).
    test_relative : float
        Median held-out relative error ``√(Σ err² / Σ a²)`` (NaN without cv).
    iterations : float
        Median iterations of the replicates.
    """

    k: int
    replicates: int
    error: float
    consensus_error: float
    stability: float
    outliers: int
    test_rmse: float
    test_rmse_se: float
    test_relative: float
    iterations: float


@dataclass(frozen=True)
class Study:
    """A finished study (what :func:`bignmf.sweep` returns; :func:`open_study` reads it).

    Attributes
    ----------
    path : pathlib.Path
    table : list of KRow
        One row per k, ascending.
    chosen_k : int or None
        The k :func:`choose_k`'s rule picks (None when no k can be compared).
    rule : str
        That rule in words.
    """

    path: Path
    table: list[KRow]
    chosen_k: int | None
    rule: str

    def row(self, k: int) -> KRow:
        """The table's row of ``k``."""
        for row in self.table:
            if row.k == k:
                return row
        ks = ", ".join(str(r.k) for r in self.table)
        raise ParameterError(f"k = {k} is not in the study {self.path} (its ks: {ks})")

    def consensus(self, k: int) -> tuple[Any, np.ndarray]:
        """The consensus of ``k``: W (a read-only Zarr array, m × k) and H (k × n)."""
        import zarr

        self.row(k)
        w_path, h_path = StudyDir(self.path).consensus_factors(k)
        if not h_path.is_dir():
            entry = read_json(StudyDir(self.path).consensus_path(k) / CONSENSUS_FILE) or {}
            why = entry.get("problem") or "the study has not made it"
            raise ParameterError(f"k = {k} has no consensus: {why}")
        return zarr.open_array(w_path, mode="r"), zarr.open_array(h_path, mode="r")[...]


def choose_k(table: list[KRow], cross_validated: bool) -> tuple[int | None, str]:
    """The k a study picks, and its rule (:data:`RULES`).

    With a held-out set: the smallest k whose median held-out RMSE is at most the lowest
    median plus that k's standard error (the one-standard-error rule: no larger k than the
    data show to be better). Without: the largest k whose consensus is as stable as the most
    stable one's, within :data:`STABILITY_TOLERANCE` — cNMF's advice, since a k below the
    true one merges programs, often just as reproducibly, and one above splits them
    differently in each replicate.
    """
    if cross_validated:
        scored = [row for row in table if not math.isnan(row.test_rmse)]
        if not scored:
            return None, RULES["cv"]
        best = min(scored, key=lambda row: (row.test_rmse, row.k))
        se = 0.0 if math.isnan(best.test_rmse_se) else best.test_rmse_se
        return min(row.k for row in scored if row.test_rmse <= best.test_rmse + se), RULES["cv"]
    stable = [row for row in table if not math.isnan(row.stability)]
    if not stable:
        return None, RULES["stability"]
    best = max(row.stability for row in stable)
    chosen = max(row.k for row in stable if row.stability >= best - STABILITY_TOLERANCE)
    return chosen, RULES["stability"]


def _consensus_of(study: StudyDir, spec, matrix, k: int, scheduler, bar) -> dict:
    """k's consensus: read back when committed, else made, refitted and committed."""
    from bignmf.fit.outputs import write_factors
    from bignmf.fit.transform import transform
    from bignmf.study.sweep import fit_h

    path = study.consensus_path(k)
    found = read_json(path / CONSENSUS_FILE)
    if found is not None:
        return found
    bar.phase(f"consensus of k={k}: {spec.replicates} replicates' spectra, W refitted", "study")
    spectra = [fit_h(study, k, r) for r in range(spec.replicates)]
    made = consensus(
        spectra,
        k,
        density_threshold=spec.density_threshold,
        local_neighborhood=spec.local_neighborhood,
        seed=spec.seed,
    )
    path.mkdir(parents=True, exist_ok=True)
    error = None
    if made.spectra is None:
        bar.phase(f"no consensus of k={k}: {made.problem}", "study")
    else:
        H = made.spectra.astype(matrix.dtype)
        work = tempfile.mkdtemp(prefix=".refit-", dir=path)
        try:
            W, error = transform(matrix, H, return_error=True, scheduler=scheduler, workdir=work)
            write_factors(W, H, path)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    crash_point("study-consensus", k)
    entry = {
        "k": k,
        "replicates": spec.replicates,
        "stability": _finite(made.stability),
        "outliers": made.outliers,
        "relative_error": error,
        "problem": made.problem,
        "density_threshold": made.threshold,
        "neighbors": made.neighbors,
        "density": [float(d) for d in made.density],
        "labels": [int(label) for label in made.labels],
    }
    write_json_atomic(path / CONSENSUS_FILE, entry)
    return entry


def _finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def _row(k: int, outcomes, entry: dict) -> KRow:
    from bignmf.study.sweep import median_or_nan, replicate_errors, standard_error

    mine = [o for o in outcomes if o.k == k]
    tests = [o.score["rmse"] for o in mine if o.score]
    relative = [o.score["relative"] for o in mine if o.score]
    return KRow(
        k,
        len(mine),
        median_or_nan(replicate_errors(outcomes, k)),
        _nan(entry["relative_error"]),
        _nan(entry["stability"]),
        int(entry["outliers"]),
        median_or_nan(tests),
        standard_error(tests),
        median_or_nan(relative),
        median_or_nan([o.n_iter for o in mine]),
    )


def finish_study(study: StudyDir, spec, matrix, outcomes, scheduler, bar) -> Study:
    """Consensus per k, the table, the chosen k, the files; ``summary.json`` last."""
    from bignmf.study.plots import plot_density, plot_selection

    entries = {k: _consensus_of(study, spec, matrix, k, scheduler, bar) for k in spec.ks}
    table = [_row(k, outcomes, entries[k]) for k in spec.ks]
    chosen, rule = choose_k(table, spec.cv is not None)
    _write_table(study.table_path, table)
    plots = {}
    try:
        plots["selection"] = str(plot_selection(study.selection_plot, table, chosen, spec.cv))
        plots["density"] = str(plot_density(study.density_plot, entries))
    except ImportError as error:
        plots["skipped"] = f"matplotlib cannot be imported ({error})"
    summary = {
        "ks": list(spec.ks),
        "replicates": spec.replicates,
        "cv": spec.cv,
        "chosen_k": chosen,
        "rule": rule,
        "table": [_record_of(row) for row in table],
        "plots": plots,
        "consensus": {str(k): str(study.consensus_path(k)) for k in spec.ks},
    }
    write_json_atomic(study.summary_path, summary)
    return Study(study.path, table, chosen, rule)


def _record_of(row: KRow) -> dict:
    return {name: _json_number(value) for name, value in dataclasses.asdict(row).items()}


def _json_number(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _write_table(path: Path, table: list[KRow]) -> None:
    names = [f.name for f in dataclasses.fields(KRow)]
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(names)
        for row in table:
            values = dataclasses.asdict(row)
            writer.writerow(["" if _json_number(values[n]) is None else values[n] for n in names])
    os.replace(tmp, path)


def open_study(path: str | os.PathLike) -> Study:
    """A finished study read back from its ``summary.json``.

    Raises
    ------
    CheckpointError
        When ``path`` holds no study, or one that has not finished (resume it).
    """
    study = StudyDir(path)
    study.record()
    summary = read_json(study.summary_path)
    if summary is None:
        raise CheckpointError(
            f"{study.path}: the study has not finished (no summary.json): "
            f"`bignmf resume {study.path}` finishes it"
        )
    rows = summary["table"]
    table = [KRow(**{n: _nan(v) if v is None else v for n, v in r.items()}) for r in rows]
    return Study(study.path, table, summary["chosen_k"], summary["rule"])
