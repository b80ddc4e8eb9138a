"""Which k, and which programs are stable: consensus NMF of single-cell counts with a study.

cNMF's question (Kotliar et al., eLife 2019) on counts with a known answer: the cells × genes
counts of examples/single_cell_anndata.py (6 cell types, each its own program, plus an
activity program used by a third of the cells: 7 programs), written as an AnnData ``.zarr``.

1. ``bignmf.sweep`` fits every k of a range several times (random starts), as one resumable
   study with several fits in flight; per k the replicates' spectra are clustered into a
   consensus (outliers dropped by local density), its W refitted with H fixed, and the
   stability (silhouette) measured; the most stable k is chosen;
2. the consensus spectra of the chosen k are compared with the planted programs (Pearson
   correlation of each planted program with its matched consensus spectrum);
3. each consensus program's top genes, as ``bignmf top-features STUDY -k K`` prints them.

Needs anndata (the ``readers`` extra) and matplotlib for the study's plots (``plots``).

Run it::

    python examples/single_cell_consensus.py            # 2,000 cells x 1,000 genes, ~40 s
    python examples/single_cell_consensus.py --large    # 20,000 cells x 2,000 genes, ~8 min

It writes, under ``--out`` (default ``./bignmf-examples/single_cell_consensus``),
``cells.zarr`` and the study ``study/`` (``summary.json``, ``table.csv``, ``selection.png``,
``density.png``, ``consensus/k<K>/``). Killed, it is finished by ``bignmf resume study/``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment
from single_cell_anndata import N_TYPES, generate_counts, planted_programs, write_store

import bignmf
from bignmf.cluster.config import scheduler_for
from bignmf.results import consensus_top_features

SMALL = {"cells": 2_000, "genes": 1_000, "replicates": 6}
LARGE = {"cells": 20_000, "genes": 2_000, "replicates": 20}
PROGRAMS = N_TYPES + 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bignmf-examples/single_cell_consensus")
    parser.add_argument("--large", action="store_true", help="20,000 cells x 2,000 genes")
    parser.add_argument("--ks", default="5-9", help="the ranks to try (as `bignmf sweep -k`)")
    parser.add_argument("--scheduler", default="threads",
                        help="threads (default), local (an embedded Dask cluster) or a "
                             "scheduler address tcp://host:8786")  # fmt: skip
    return parser.parse_args(argv)


def ranks(text: str) -> list[int]:
    low, _, high = text.partition("-")
    return list(range(int(low), int(high or low) + 1))


def matched(planted: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Each planted program's correlation with its consensus spectrum (best total matching)."""
    k = planted.shape[0]
    C = np.corrcoef(np.vstack([planted, found]))[:k, k:]
    rows, cols = linear_sum_assignment(-C)
    return C[rows, cols]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    size = LARGE if args.large else SMALL
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path, study_dir = out / "cells.zarr", out / "study"
    print(f"generating {size['cells']:,} cells x {size['genes']:,} genes: {PROGRAMS} programs")
    write_store(generate_counts(size["cells"], size["genes"], seed=0), path)
    programs = planted_programs(size["genes"], np.random.default_rng(0))  # the same first draw

    start = time.perf_counter()
    with scheduler_for(args.scheduler) as where:
        if (study_dir / "study.json").exists():  # a run of this script that was stopped
            study = bignmf.resume_study(study_dir, scheduler=where, progress=True)
        else:
            study = bignmf.sweep(path, ranks(args.ks), out=study_dir, scheduler=where,
                                 replicates=size["replicates"], max_iter=300, tol=1e-5,
                                 progress=True)  # fmt: skip
    print(f"study of k = {args.ks}, {size['replicates']} replicates each, in "
          f"{time.perf_counter() - start:.1f}s")  # fmt: skip
    print(f"{'k':>3} {'stability':>10} {'outliers':>9} {'consensus error':>16}")
    for row in study.table:
        print(f"{row.k:>3} {row.stability:>10.4f} {row.outliers:>9} {row.consensus_error:>16.4f}")
    print(f"chosen k = {study.chosen_k} ({study.rule}); planted: {PROGRAMS}")

    if PROGRAMS in [row.k for row in study.table]:
        _, H = study.consensus(PROGRAMS)
        r = matched(programs, H)
        print(f"consensus of k = {PROGRAMS} against the planted programs: correlation min "
              f"{r.min():.4f}, median {np.median(r):.4f}")  # fmt: skip
    top = consensus_top_features(study_dir, study.chosen_k, n=6)
    for c, genes in enumerate(top.components):
        print(f"program {c}: {' '.join(g.name for g in genes)}")
    print(f"plots: {study_dir / 'selection.png'}, {study_dir / 'density.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
