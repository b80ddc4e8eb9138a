"""Run directories and their checkpoints: the only code that knows their layout.

Layout of a run directory::

    RUN_DIR/
      run.json            parameters, fingerprint of A, seed, package versions (written once)
      CURRENT             name of the newest committed checkpoint (switched by atomic rename)
      ckpt-000040/        a committed checkpoint (Zarr v3 group):
        W/0/<block>         W's row blocks, one array per row block of A
        H                   H (k×n)
        attrs               iteration, loss and objective histories, the exact final loss,
                            CRC-32 of every W block and of H
      ckpt-000050/        the newer one (the last two are kept)
      metrics.jsonl       one JSON line per iteration
      W-buffers.zarr/     W between iterations, when kept on disk (double-buffered)
      AHt-buffers.zarr/   A·Hᵀ between the two passes of a column-range fit
      W.zarr/, H.zarr/    the finished run's factors
      loss.png            the loss curve (with matplotlib)
      report.html         `bignmf report`'s page (written on demand)
      summary.json        the finished run's summary, written last
      .bignmf-fit.json    `bignmf fit`'s claim: the input it converts (written before run.json)
      A.zarr/             that input converted, when it was not a store (+ A.zarr.vocab.txt)
      choose-k/           `bignmf fit -k auto`'s study (bignmf.study.layout), kept
      .lock               locked by the one process fitting or resuming the run, naming it
                          (:mod:`bignmf.fit.lock`)

A checkpoint is written into a hidden temporary directory, its manifest (the group attributes,
with the checksums) last, then renamed to ``ckpt-NNNNNN`` and only then named by ``CURRENT``.
A process killed at any moment leaves either the previous pointer or the new one, each naming
a complete checkpoint; a checkpoint damaged later (a truncated chunk, a flipped byte) fails its
checksums when loaded and the previous one is used instead, with a warning. No pickle: JSON and
Zarr only.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import uuid
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from bignmf.errors import CheckpointError, CheckpointWarning
from bignmf.fit.lock import LOCK, LOCK_OWNER, hold

FORMAT_VERSION = 1
RUN_FILE = "run.json"
POINTER = "CURRENT"
PREFIX = "ckpt-"
KEEP = 2
METRICS = "metrics.jsonl"
W_FILE = "W.zarr"  # the finished run's factors, as people read them
H_FILE = "H.zarr"
SUMMARY = "summary.json"  # written last: its presence says the outputs are complete
LOSS_PLOT = "loss.png"
REPORT = "report.html"  # `bignmf report`'s default page


def buffers_name(name: str) -> str:
    """The directory of a fit's double buffers of ``name`` (W, or the two-pass ``AHt``)."""
    return f"{name}-buffers.zarr"


WORK_W = buffers_name("W")  # W between iterations when kept on disk
CONVERTED = "A.zarr"  # the input converted by `bignmf fit` when it was not a store
CONVERTED_NAMES = CONVERTED + ".vocab.txt"  # its column names, from an AnnData input
MASK_CONVERTED = "mask.zarr"  # the --mask converted by `bignmf fit` when it was not a store
WEIGHTS_CONVERTED = "weights.zarr"  # the same for --weights FILE
CHOOSE_K = "choose-k"  # the study of `bignmf fit -k auto`, before the fit of the k it chose
CLAIM = ".bignmf-fit.json"  # a fit's claim on the directory before its run.json exists
# what a run writes before its first checkpoint: removed when such a run fails
_STARTED = (RUN_FILE, POINTER, METRICS, WORK_W, buffers_name("AHt"))
LOCKS = {LOCK, LOCK_OWNER}  # a run directory's lock files: never the user's


def crc32(values: np.ndarray) -> int:
    """CRC-32 of an array's bytes (C order)."""
    return zlib.crc32(np.ascontiguousarray(values).view(np.uint8))


def json_crc32(payload: Any) -> int:
    """CRC-32 of a JSON document's canonical text (sorted keys, no spaces)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return zlib.crc32(text.encode("utf-8"))


def crash_point(name: str, iteration: int) -> None:
    """Kill this process here if ``BIGNMF_CRASH_AT`` names this point (crash-safety tests).

    The variable holds ``point@iteration`` (e.g. ``checkpoint-before-pointer@3``); unset, as in
    any normal run, this does nothing.
    """
    if os.environ.get("BIGNMF_CRASH_AT") == f"{name}@{iteration}":
        os.kill(os.getpid(), signal.SIGKILL)


class RecordChangedError(CheckpointError):
    """``run.json`` differs from the one the run's checkpoints were written with."""


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint's manifest and H; W is read block by block by the driver."""

    path: Path
    iteration: int
    loss_history: list[float]
    H: np.ndarray
    w_crc32: np.ndarray
    final_loss: float | None = None  # exact loss of (W, H) as saved; None in older checkpoints
    # loss + penalties per iteration (what the stopping rule reads); None in older checkpoints
    objective_history: list[float] | None = None

    @property
    def w_path(self) -> Path:
        """Directory of W's row blocks (buffer 0 of a one-buffer ZarrBlocks)."""
        return self.path / "W"


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON (or text) to ``path`` by an atomic rename: a kill leaves the old or the new."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    with open(tmp, "w") as f:
        f.write(payload if isinstance(payload, str) else json.dumps(payload, indent=2))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class RunDir:
    """A run directory: its record (``run.json``), checkpoints and metrics.

    Parameters
    ----------
    path : path
        The directory.
    """

    def __init__(self, path: str | os.PathLike):
        # absolute: W's buffers are opened by workers whose working directory is not ours
        self.path = Path(path).absolute()

    # -- the record
    @property
    def record_path(self) -> Path:
        """``run.json``."""
        return self.path / RUN_FILE

    def exists(self) -> bool:
        """Whether a run was started here."""
        return self.record_path.is_file()

    def locked(self):
        """A context holding this directory's exclusive lock (:func:`bignmf.fit.lock.hold`):
        a second process fitting or resuming it is refused, naming the owner."""
        return hold(self.path)

    def create(self, record: dict) -> RunDir:
        """Start a run: write ``run.json``. Refuses a directory that holds another run, or
        anything but what a fit's claim left (see :meth:`claim`)."""
        self.check_free()
        self.path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.record_path, {"format_version": FORMAT_VERSION, **record})
        return self

    def record(self) -> dict:
        """The run's record."""
        try:
            return json.loads(self.record_path.read_text())
        except FileNotFoundError:
            if not self.path.exists():
                raise CheckpointError(f"{self.path}: no such directory") from None
            if (self.path / CLAIM).is_file():
                raise CheckpointError(
                    f"{self.path}: the fit started here stopped before its run began (nothing "
                    "to resume): run the same `bignmf fit` again"
                ) from None
            raise CheckpointError(f"{self.path}: no run here (no {RUN_FILE})") from None
        except NotADirectoryError:
            raise CheckpointError(f"{self.path}: not a directory") from None
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{self.record_path}: unreadable ({err})") from None

    def discard(self) -> None:
        """Remove what a run wrote here before its first checkpoint, so that a failed start
        blocks no later attempt; a run with a committed checkpoint is kept (it resumes)."""
        if self.committed():
            return
        for name in _STARTED:
            path = self.path / name
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists():
                path.unlink()
        for path in self.path.glob(f".{PREFIX}*.tmp-*"):
            shutil.rmtree(path, ignore_errors=True)
        for name in LOCKS:  # no run began: nothing is written after
            (self.path / name).unlink(missing_ok=True)

    # -- a fit's claim on its directory, before the run is recorded
    def claim(self, source: dict) -> bool:
        """Claim this directory for a fit of ``source`` before its run is recorded.

        The directory must be new, empty, or left by a fit that stopped before its run began
        (it holds only :data:`CLAIM`, the converted input and that fit's hidden temporaries);
        anything else is refused, naming what is there. Returns whether :data:`CONVERTED`
        already holds ``source`` converted by that earlier fit (conversion commits it only
        when complete, so it is reusable as is); a conversion of another source is removed.
        """
        self.check_free()
        reusable = self._claim() == source and (self.path / CONVERTED).is_dir()
        if not reusable:
            shutil.rmtree(self.path / CONVERTED, ignore_errors=True)
            (self.path / CONVERTED_NAMES).unlink(missing_ok=True)
        self.path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path / CLAIM, source)
        return reusable

    def release(self, created: bool) -> None:
        """Undo :meth:`claim` after a fit that failed before its run began: the claim goes
        (and the directory, when the claim made it and nothing else is left), unless it holds
        the input's conversion, which the next attempt then reuses."""
        if self.exists():
            return  # a run to resume
        for name in LOCKS:  # no run began: its lock leaves with it (nothing is written after)
            (self.path / name).unlink(missing_ok=True)
        if (self.path / CONVERTED).is_dir() or (self.path / CHOOSE_K).is_dir():
            return  # a conversion, or a choice of k, the next attempt reuses
        (self.path / CLAIM).unlink(missing_ok=True)
        if created and self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()

    def check_free(self) -> None:
        """Refuse a run, a file, or a directory holding anything but a fit's own leftovers
        (the user's files): :class:`CheckpointError` naming what is there."""
        if self.exists():
            raise CheckpointError(
                f"{self.path} already holds a run: `bignmf resume {self.path}` continues it, or "
                "choose another directory"
            )
        if self.path.exists() and not self.path.is_dir():
            raise CheckpointError(f"{self.path} exists and is not a directory")
        claimed = self._claim() is not None
        entries = self.path.iterdir() if self.path.is_dir() else ()
        foreign = sorted(
            p.name for p in entries if p.name not in LOCKS and not (claimed and _ours(p.name))
        )
        if foreign:
            more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
            raise CheckpointError(
                f"{self.path} is not empty and holds no run ({', '.join(foreign[:3])}{more}): "
                "choose a new or empty directory"
            )

    def _claim(self) -> dict | None:
        try:
            return json.loads((self.path / CLAIM).read_text())
        except (OSError, ValueError):
            return None

    def fit_input(self) -> str | None:
        """The input ``bignmf fit`` was given (as its claim records it), or None: for a file
        it converted into :data:`CONVERTED`, where the row names (AnnData ``obs_names``) are."""
        claim = self._claim()
        return claim.get("input") if isinstance(claim, dict) else None

    def fit_key(self) -> str | None:
        """The ``--key`` (matrix inside an AnnData input) ``bignmf fit`` was given, or None."""
        claim = self._claim()
        return claim.get("key") if isinstance(claim, dict) else None

    # -- writing checkpoints
    def save(
        self,
        iteration: int,
        loss_history: list[float],
        H: np.ndarray,
        write_w: Callable[[Path], np.ndarray],
        final_loss: float | None = None,
        objective_history: list[float] | None = None,
    ) -> Path:
        """Commit a checkpoint of iteration ``iteration``.

        Parameters
        ----------
        iteration : int
            Iterations done.
        loss_history : list of float
            Loss after each of them.
        H : ndarray
            The current H.
        write_w : callable
            ``write_w(directory)`` writes W's row blocks under ``directory`` and returns their
            CRC-32s (one per block).
        final_loss : float, optional
            The exact loss of the saved ``(W, H)``, so that a run resumed with nothing left to
            do reports the error the uninterrupted run reported.
        objective_history : list of float, optional
            The objective (loss + penalties) after each iteration, which the stopping rule
            reads: a resumed run then stops where the uninterrupted one does.

        Returns
        -------
        Path
            The committed checkpoint.
        """
        name = f"{PREFIX}{iteration:06d}"
        tmp = self.path / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            group = zarr.open_group(tmp, mode="w-", zarr_format=3)
            w_crc = np.asarray(write_w(tmp / "W"), dtype=np.int64)
            crash_point("checkpoint-after-w", iteration)
            group.create_array("H", data=np.ascontiguousarray(H), compressors=None)
            group.attrs.update(
                {
                    "format_version": FORMAT_VERSION,
                    "iteration": iteration,
                    "loss_history": [float(x) for x in loss_history],
                    "w_crc32": [int(x) for x in w_crc],
                    "h_crc32": crc32(H),
                    "final_loss": final_loss,
                    "objective_history": None
                    if objective_history is None
                    else [float(x) for x in objective_history],
                    "created": time.time(),
                    # the run.json it continues: an edited run.json (k, the matrix) is noticed
                    "record_crc32": json_crc32(self.record()),
                }
            )
            group.attrs["manifest_crc32"] = json_crc32(dict(group.attrs))
            final = self.path / name
            if final.exists():  # the same iteration again after a resume: identical content
                shutil.rmtree(final)
            os.rename(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        crash_point("checkpoint-before-pointer", iteration)
        write_json_atomic(self.path / POINTER, name + "\n")
        self._prune(keep=final)
        return final

    def _prune(self, keep: Path) -> None:
        """Keep the newest KEEP committed checkpoints (and always ``keep``); drop temporaries."""
        committed = self.committed()
        doomed = [p for p in committed[KEEP:] if p != keep]
        doomed += [p for p in self.path.glob(f".{PREFIX}*.tmp-*") if p.is_dir()]
        for path in doomed:
            shutil.rmtree(path, ignore_errors=True)

    # -- reading checkpoints
    def committed(self) -> list[Path]:
        """Committed checkpoints, newest first."""
        found = [p for p in self.path.glob(f"{PREFIX}*") if p.is_dir() and p.name[5:].isdigit()]
        return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]), reverse=True)

    def _candidates(self) -> Iterator[Path]:
        """The checkpoint ``CURRENT`` names, then every committed one, newest first."""
        seen = set()
        named = self._named()
        for path in ([named] if named is not None else []) + self.committed():
            if path not in seen:
                seen.add(path)
                yield path

    def _named(self) -> Path | None:
        """The checkpoint ``CURRENT`` names, when it names one of this run's by its name alone
        (no path: an absolute or ``../`` pointer would continue another run); otherwise the
        committed checkpoints are tried, with a warning."""
        try:
            name = (self.path / POINTER).read_bytes().decode("utf-8").strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as err:
            name = f"<unreadable: {type(err).__name__}>"
        if name.startswith(PREFIX) and name[len(PREFIX) :].isdigit():
            return self.path / name
        warnings.warn(
            f"{self.path / POINTER} names {name[:80]!r}, not a checkpoint of this run: "
            "ignored, the newest intact checkpoint is used",
            CheckpointWarning,
            stacklevel=3,
        )
        return None

    def read(self, path: Path) -> Checkpoint:
        """Read a checkpoint's manifest and H, checking H's checksum."""
        try:
            group = zarr.open_group(path, mode="r", use_consolidated=False)
            attrs = dict(group.attrs)
            self._check_manifest(path, attrs)
            H = group["H"][...]
            iteration = int(attrs["iteration"])
            history = [float(x) for x in attrs["loss_history"]]
            w_crc = np.asarray(attrs["w_crc32"], dtype=np.int64)
            h_crc = int(attrs["h_crc32"])
            final_loss = attrs.get("final_loss")
            final_loss = None if final_loss is None else float(final_loss)
            objective = attrs.get("objective_history")
            objective = None if objective is None else [float(x) for x in objective]
        except CheckpointError:
            raise
        except Exception as err:  # any unreadable part means a damaged checkpoint
            raise CheckpointError(f"{path}: unreadable ({type(err).__name__}: {err})") from None
        if crc32(H) != h_crc:
            raise CheckpointError(f"{path}: H fails its checksum")
        if len(history) != iteration:
            raise CheckpointError(f"{path}: {len(history)} losses for {iteration} iterations")
        if objective is not None and len(objective) != iteration:
            raise CheckpointError(
                f"{path}: {len(objective)} objective values for {iteration} iterations"
            )
        return Checkpoint(path, iteration, history, H, w_crc, final_loss, objective)

    def _check_manifest(self, path: Path, attrs: dict) -> None:
        """The manifest's own checksum, and the run.json it was written with (checkpoints of
        runs recorded before these checksums have neither)."""
        stored = attrs.pop("manifest_crc32", None)
        if stored is not None and json_crc32(attrs) != stored:
            raise CheckpointError(f"{path}: its manifest fails its checksum (edited or damaged)")
        recorded = attrs.get("record_crc32")
        if recorded is not None and recorded != json_crc32(self.record()):
            raise RecordChangedError(
                f"{self.record_path} was changed after the run started ({path.name} was written "
                "with another one): restore it; a resume changes options with its flags"
            )

    def newest(self) -> Checkpoint | None:
        """The newest checkpoint whose manifest and H read back intact (W is not read)."""
        for path in self._candidates():
            try:
                return self.read(path)
            except RecordChangedError:
                raise  # every checkpoint would say so: not a damaged one
            except CheckpointError:
                continue
        return None

    def load(self, restore: Callable[[Checkpoint], Any]) -> tuple[Checkpoint, Any] | None:
        """The newest checkpoint that reads back intact, with what ``restore`` made of it.

        ``restore(checkpoint)`` reads W (checking each block's CRC-32) and raises
        :class:`CheckpointError` on damage; a damaged checkpoint is skipped with a
        :class:`CheckpointWarning`. Returns None when the run has no checkpoint yet.
        """
        problems = []
        for path in self._candidates():
            try:
                checkpoint = self.read(path)
                return checkpoint, restore(checkpoint)
            except RecordChangedError:
                raise
            except CheckpointError as err:
                problems.append(str(err))
                warnings.warn(
                    f"skipping damaged checkpoint: {err}; trying an older one",
                    CheckpointWarning,
                    stacklevel=2,
                )
        if problems:
            raise CheckpointError("no intact checkpoint: " + "; ".join(problems))
        return None

    # -- metrics and outputs
    @property
    def metrics_path(self) -> Path:
        """``metrics.jsonl``."""
        return self.path / METRICS

    @property
    def factor_paths(self) -> tuple[Path, Path]:
        """``W.zarr`` and ``H.zarr``, written when the run finishes."""
        return self.path / W_FILE, self.path / H_FILE

    @property
    def summary_path(self) -> Path:
        """``summary.json``."""
        return self.path / SUMMARY

    @property
    def loss_plot_path(self) -> Path:
        """``loss.png``."""
        return self.path / LOSS_PLOT

    @property
    def report_path(self) -> Path:
        """``report.html``."""
        return self.path / REPORT

    def truncate_metrics(self, iteration: int) -> None:
        """Drop metric lines past ``iteration`` (they are redone after a resume)."""
        if not self.metrics_path.exists():
            return
        kept = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                if json.loads(line)["iteration"] <= iteration:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                break  # a line cut by the kill: everything after it is redone
        text = "".join(f"{line}\n" for line in kept)
        if text != self.metrics_path.read_text():  # a resume with nothing to redo changes no file
            write_json_atomic(self.metrics_path, text)


def _ours(name: str) -> bool:
    """Whether a directory entry is what a fit leaves before its run begins."""
    # the conversion's temporary store, the external sort's files, an interrupted claim write
    beside = (MASK_CONVERTED, WEIGHTS_CONVERTED)
    return name in (CLAIM, CONVERTED, CONVERTED_NAMES, CHOOSE_K, *beside, *_STARTED) or (
        name.startswith(
            (f".{CONVERTED}.", *(f".{b}." for b in beside), "bignmf-sort-", f".{CLAIM}.")
        )
    )
