"""Run directories and their checkpoints: the only code that knows their layout.

Layout of a run directory::

    RUN_DIR/
      run.json            parameters, fingerprint of A, seed, package versions (written once)
      CURRENT             name of the newest committed checkpoint (switched by atomic rename)
      ckpt-000040/        a committed checkpoint (Zarr v3 group):
        W/0/<block>         W's row blocks, one array per row block of A
        H                   H (k×n)
        attrs               iteration, loss history, CRC-32 of every W block and of H
      ckpt-000050/        the newer one (the last two are kept)
      metrics.jsonl       one JSON line per iteration

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

from .errors import BigNMFError

FORMAT_VERSION = 1
RUN_FILE = "run.json"
POINTER = "CURRENT"
PREFIX = "ckpt-"
KEEP = 2


class CheckpointError(BigNMFError):
    """A checkpoint or run directory is missing, damaged, or belongs to another run."""


class CheckpointWarning(UserWarning):
    """A damaged checkpoint was skipped in favour of an older one."""


def crc32(values: np.ndarray) -> int:
    """CRC-32 of an array's bytes (C order)."""
    return zlib.crc32(np.ascontiguousarray(values).view(np.uint8))


def crash_point(name: str, iteration: int) -> None:
    """Kill this process here if ``BIGNMF_CRASH_AT`` names this point (crash-safety tests).

    The variable holds ``point@iteration`` (e.g. ``checkpoint-before-pointer@3``); unset, as in
    any normal run, this does nothing.
    """
    if os.environ.get("BIGNMF_CRASH_AT") == f"{name}@{iteration}":
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint's manifest and H; W is read block by block by the driver."""

    path: Path
    iteration: int
    loss_history: list[float]
    H: np.ndarray
    w_crc32: np.ndarray

    @property
    def w_path(self) -> Path:
        """Directory of W's row blocks (buffer 0 of a one-buffer ZarrBlocks)."""
        return self.path / "W"


def _write_json_atomic(path: Path, payload: Any) -> None:
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
        self.path = Path(path)

    # -- the record
    @property
    def record_path(self) -> Path:
        """``run.json``."""
        return self.path / RUN_FILE

    def exists(self) -> bool:
        """Whether a run was started here."""
        return self.record_path.is_file()

    def create(self, record: dict) -> RunDir:
        """Start a run: write ``run.json``. Refuses a directory that holds another run."""
        if self.exists():
            raise CheckpointError(
                f"{self.path} already holds a run; resume it (`bignmf resume {self.path}`) or "
                "choose another directory"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(self.record_path, {"format_version": FORMAT_VERSION, **record})
        return self

    def record(self) -> dict:
        """The run's record."""
        try:
            return json.loads(self.record_path.read_text())
        except FileNotFoundError:
            raise CheckpointError(f"{self.path}: no run here (no {RUN_FILE})") from None
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{self.record_path}: unreadable ({err})") from None

    # -- writing checkpoints
    def save(
        self,
        iteration: int,
        loss_history: list[float],
        H: np.ndarray,
        write_w: Callable[[Path], np.ndarray],
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
            group.attrs.update({
                "format_version": FORMAT_VERSION,
                "iteration": iteration,
                "loss_history": [float(x) for x in loss_history],
                "w_crc32": [int(x) for x in w_crc],
                "h_crc32": crc32(H),
                "created": time.time(),
            })  # fmt: skip
            final = self.path / name
            if final.exists():  # the same iteration again after a resume: identical content
                shutil.rmtree(final)
            os.rename(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        crash_point("checkpoint-before-pointer", iteration)
        _write_json_atomic(self.path / POINTER, name + "\n")
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
        try:
            named = self.path / (self.path / POINTER).read_text().strip()
        except (FileNotFoundError, OSError):
            named = None
        for path in ([named] if named is not None else []) + self.committed():
            if path not in seen:
                seen.add(path)
                yield path

    def read(self, path: Path) -> Checkpoint:
        """Read a checkpoint's manifest and H, checking H's checksum."""
        try:
            group = zarr.open_group(path, mode="r", use_consolidated=False)
            attrs = dict(group.attrs)
            H = group["H"][...]
            iteration = int(attrs["iteration"])
            history = [float(x) for x in attrs["loss_history"]]
            w_crc = np.asarray(attrs["w_crc32"], dtype=np.int64)
            h_crc = int(attrs["h_crc32"])
        except Exception as err:  # any unreadable part means a damaged checkpoint
            raise CheckpointError(f"{path}: unreadable ({type(err).__name__}: {err})") from None
        if crc32(H) != h_crc:
            raise CheckpointError(f"{path}: H fails its checksum")
        if len(history) != iteration:
            raise CheckpointError(f"{path}: {len(history)} losses for {iteration} iterations")
        return Checkpoint(path, iteration, history, H, w_crc)

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

    # -- metrics
    @property
    def metrics_path(self) -> Path:
        """``metrics.jsonl``."""
        return self.path / "metrics.jsonl"

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
        _write_json_atomic(self.metrics_path, "".join(f"{line}\n" for line in kept))
