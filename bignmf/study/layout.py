"""Study directories: the only code that knows their layout.

Layout of a study directory::

    STUDY/
      study.json          what the study is: A, the ks, replicates, seeds, the fits' settings,
                          the held-out fraction, the consensus's parameters (written once)
      A.zarr/             the input converted, when it was not a store (`bignmf sweep`)
      fits/k10/r3/        replicate 3 of k = 10: a normal run directory (run.json, checkpoints,
                          metrics.jsonl, W.zarr, H.zarr, summary.json), plus score.json (its
                          held-out error) in a cross-validated study
      consensus/k10/      the consensus of k = 10: H.zarr (k × n), W.zarr (m × k, refitted),
                          consensus.json (stability, outliers, densities, error), written last
      summary.json        the table per k and the chosen k, written last
      table.csv           the same table
      selection.png       stability and error against k (and the held-out error)
      density.png         each k's local densities with the outlier threshold
      .lock               held by the one process running or resuming the study

Every file is written atomically (or, for Zarr arrays, before the JSON that names them is), so a
study killed at any moment resumes: finished fits are read back, the others resume from their
checkpoints.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bignmf.errors import CheckpointError
from bignmf.fit.lock import hold
from bignmf.fit.rundir import H_FILE, SUMMARY, W_FILE, write_json_atomic

__all__ = [
    "CONSENSUS_FILE",
    "SCORE_FILE",
    "STUDY_FILE",
    "StudyDir",
    "is_study",
]

STUDY_FORMAT = "bignmf-study"
STUDY_VERSION = 1
STUDY_FILE = "study.json"
SCORE_FILE = "score.json"  # a cross-validated fit's held-out error, beside its summary
CONSENSUS_FILE = "consensus.json"
TABLE_FILE = "table.csv"
SELECTION_PLOT = "selection.png"
DENSITY_PLOT = "density.png"
FITS = "fits"
CONSENSUS = "consensus"
CONVERTED = "A.zarr"


def is_study(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a study (its ``study.json``)."""
    return (Path(path) / STUDY_FILE).is_file()


class StudyDir:
    """A study directory (see the module's layout).

    Parameters
    ----------
    path : path
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).absolute()

    @property
    def record_path(self) -> Path:
        """``study.json``."""
        return self.path / STUDY_FILE

    def exists(self) -> bool:
        """Whether a study was started here."""
        return self.record_path.is_file()

    def locked(self):
        """This directory's exclusive lock: a second process running the study is refused."""
        return hold(self.path)

    def check_free(self) -> None:
        """Refuse a directory that holds anything but a lock or the converted input."""
        if self.path.exists() and not self.path.is_dir():
            raise CheckpointError(f"{self.path}: not a directory")
        if self.exists():
            raise CheckpointError(
                f"{self.path} already holds a study: `bignmf resume {self.path}` finishes it, "
                "or give another --out"
            )
        if self.path.is_dir():
            ours = (CONVERTED, f"{CONVERTED}.vocab.txt")
            left = sorted(
                p.name
                for p in self.path.iterdir()
                if p.name not in ours and not p.name.startswith(".")
            )
            if left:
                raise CheckpointError(
                    f"{self.path} is not empty (it holds {', '.join(left[:3])}"
                    f"{'...' if len(left) > 3 else ''}); give a new or empty directory"
                )

    def create(self, record: dict) -> None:
        """Write ``study.json`` (once)."""
        self.path.mkdir(parents=True, exist_ok=True)
        payload = {"format": STUDY_FORMAT, "format_version": STUDY_VERSION, **record}
        write_json_atomic(self.record_path, json.dumps(payload, indent=2) + "\n")

    def record(self) -> dict:
        """The study's record."""
        try:
            record = json.loads(self.record_path.read_text())
        except FileNotFoundError:
            raise CheckpointError(f"{self.path}: no study here (no {STUDY_FILE})") from None
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{self.record_path}: unreadable ({err})") from None
        if record.get("format") != STUDY_FORMAT:
            raise CheckpointError(f"{self.record_path}: not a bignmf study")
        return record

    def fit_path(self, k: int, replicate: int) -> Path:
        """Replicate ``replicate`` of ``k``'s run directory."""
        return self.path / FITS / f"k{k}" / f"r{replicate}"

    def score_path(self, k: int, replicate: int) -> Path:
        """That fit's held-out error."""
        return self.fit_path(k, replicate) / SCORE_FILE

    def consensus_path(self, k: int) -> Path:
        """The consensus of ``k``."""
        return self.path / CONSENSUS / f"k{k}"

    def consensus_factors(self, k: int) -> tuple[Path, Path]:
        """The consensus's ``W.zarr`` and ``H.zarr``."""
        return self.consensus_path(k) / W_FILE, self.consensus_path(k) / H_FILE

    @property
    def summary_path(self) -> Path:
        """``summary.json``."""
        return self.path / SUMMARY

    @property
    def table_path(self) -> Path:
        """``table.csv``."""
        return self.path / TABLE_FILE

    @property
    def selection_plot(self) -> Path:
        """``selection.png``."""
        return self.path / SELECTION_PLOT

    @property
    def density_plot(self) -> Path:
        """``density.png``."""
        return self.path / DENSITY_PLOT

    @property
    def converted(self) -> Path:
        """Where `bignmf sweep` converts an input that is not a store."""
        return self.path / CONVERTED


def read_json(path: Path) -> Any | None:
    """A JSON file written atomically; None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
