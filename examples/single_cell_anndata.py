"""Single-cell style NMF on an AnnData ``.zarr`` store: gene programs and their usage per cell.

A cells × genes count matrix is the sum of a few gene expression programs — one per cell type
(identity programs) and some shared by cells of any type (activity programs: cell cycle,
stress, interferon response...) — each cell using its own mixture. NMF of the counts finds the
programs (rows of H, "loadings" over the genes) and each cell's usage of them (rows of W).

This example generates such counts with a known answer, stores them as AnnData writes them,
and runs the single-cell workflow:

1. generate cells × genes counts: 6 cell types, each with its own program (the same base
   expression changed by type-specific fold changes and marker genes), plus one activity
   program used by a third of the cells of every type; negative binomial noise;
2. write an AnnData ``.zarr`` store (Zarr format 3) with ``obs["cell_type"]``;
3. factorize its ``X`` **directly** and write the results back —
   ``bignmf.anndata.fit("cells.zarr", k)`` opens the CSR matrix of an AnnData ``.zarr`` store
   without any conversion, reads it row block by row block, and stores the usage W in
   ``obsm["X_nmf"]``, the loadings Hᵀ in ``varm["NMF"]`` and the settings and loss in
   ``uns["nmf"]`` of the same store, without rewriting ``X`` (``bignmf fit cells.zarr -k 7
   --out run/ --write-back`` does the same from the command line);
5. reload the AnnData object, save a ``.h5ad`` copy, and show how well the usage recovers the
   cell types (adjusted Rand index, a confusion table) and the activity program.

Needs anndata and scikit-learn (for the adjusted Rand index): ``pip install
'bignmf-dask[readers,sklearn]'``. An ``.h5ad`` file works the same way
(``bignmf.anndata.fit("cells.h5ad", k)``): it is converted into a temporary store for the fit
and rewritten with the results beside itself, then swapped in.

Run it::

    python examples/single_cell_anndata.py            # 5,000 cells x 4,000 genes, ~10 s
    python examples/single_cell_anndata.py --large    # 60,000 cells x 12,000 genes, ~2.5 min

It writes, under ``--out`` (default ``./bignmf-examples/single_cell``), ``cells.zarr`` (the
AnnData store, with the results added) and ``cells_nmf.h5ad`` (the same object as ``.h5ad``).
"""

from __future__ import annotations

import argparse
import shutil
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.metrics import adjusted_rand_score

import bignmf
import bignmf.anndata
from bignmf.cluster.config import scheduler_for

SMALL = {"cells": 5_000, "genes": 4_000}
LARGE = {"cells": 60_000, "genes": 12_000}
N_TYPES = 6
MEDIAN_COUNTS = 1_500  # median total counts per cell (library size)
DISPERSION = 0.1  # negative binomial: variance = mu + DISPERSION * mu**2
CELLS_PER_SLAB = 2_000  # cells generated at a time (a dense slab of cells x genes)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bignmf-examples/single_cell", help="output directory")
    parser.add_argument("--large", action="store_true", help="60,000 cells x 12,000 genes")
    parser.add_argument("--cells", type=int, help="number of cells")
    parser.add_argument("--genes", type=int, help="number of genes")
    parser.add_argument("--scheduler", default="threads",
                        help="threads (default), sync, local (an embedded Dask cluster) or "
                             "a scheduler address tcp://host:8786")  # fmt: skip
    return parser.parse_args(argv)


# --------------------------------------------------------------------------------------------
# 1. Counts with a known answer
# --------------------------------------------------------------------------------------------


def planted_programs(n_genes: int, rng: np.random.Generator) -> np.ndarray:
    """(N_TYPES + 1) × genes: one program per cell type, then the activity program.

    Each program is a distribution over the genes (its row sums to 1).
    """
    base = rng.lognormal(mean=0.0, sigma=1.5, size=n_genes)  # most genes low, a few high
    programs = []
    for _ in range(N_TYPES):
        folds = rng.lognormal(0.0, 0.5, size=n_genes)  # every gene shifts a little by type
        markers = rng.choice(n_genes, size=n_genes // 50, replace=False)
        folds[markers] *= 8.0  # and 2% of the genes mark the type
        programs.append(base * folds)
    activity = np.zeros(n_genes)  # a response: a few hundred genes, off in resting cells
    responders = rng.choice(n_genes, size=n_genes // 20, replace=False)
    activity[responders] = rng.lognormal(1.0, 1.0, size=len(responders))
    programs.append(activity)
    programs = np.array(programs)
    return programs / programs.sum(axis=1, keepdims=True)


def generate_counts(n_cells: int, n_genes: int, seed: int = 0) -> ad.AnnData:
    """An AnnData object of negative binomial counts, with the truth in ``obs``."""
    rng = np.random.default_rng(seed)
    programs = planted_programs(n_genes, rng)
    cell_type = rng.integers(0, N_TYPES, size=n_cells)
    # A third of the cells, of any type, are activated: a share of their counts comes from the
    # activity program.
    activity = np.where(rng.random(n_cells) < 1 / 3, rng.uniform(0.1, 0.45, n_cells), 0.0)
    library = rng.lognormal(np.log(MEDIAN_COUNTS), 0.4, size=n_cells)
    slabs = []
    for start in range(0, n_cells, CELLS_PER_SLAB):  # bounded memory: one dense slab at a time
        cells = slice(start, min(start + CELLS_PER_SLAB, n_cells))
        mix = (1 - activity[cells, None]) * programs[cell_type[cells]]
        mix += activity[cells, None] * programs[N_TYPES]
        mu = library[cells, None] * mix
        # Negative binomial as a Gamma-Poisson mixture: biological variation around mu,
        # then sampling noise.
        rate = rng.gamma(shape=1 / DISPERSION, scale=mu * DISPERSION)
        slabs.append(sp.csr_matrix(rng.poisson(rate).astype(np.float32)))
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical([f"type_{t}" for t in cell_type]), "activity": activity},
        index=[f"cell_{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(index=[f"gene_{j}" for j in range(n_genes)])
    return ad.AnnData(X=sp.vstack(slabs, format="csr"), obs=obs, var=var)


# --------------------------------------------------------------------------------------------
# 2.–5. The AnnData workflow
# --------------------------------------------------------------------------------------------


def write_store(adata: ad.AnnData, path: Path) -> None:
    """Write an AnnData ``.zarr`` store in Zarr format 3, X as CSR (what bignmf opens)."""
    shutil.rmtree(path, ignore_errors=True)
    # No sharding: a row block of X is then read from a few small chunks, not from one shard
    # (saying so also silences anndata's notice that sharding will become the default).
    with (
        ad.settings.override(zarr_write_format=3, auto_shard_zarr_v3=False),
        warnings.catch_warnings(),
    ):
        # anndata consolidates the metadata, which the Zarr 3 spec does not cover yet
        warnings.filterwarnings("ignore", "Consolidated metadata", UserWarning)
        adata.write_zarr(path)


def factorize(path: Path, k: int, scheduler: str):
    """NMF of the AnnData store's X, read in place; W, Hᵀ and a summary written back into it.

    Only the new elements are written: X is left as it is, however large.
    """
    store = bignmf.open_matrix(path)  # a handle on X of the AnnData store: shape, blocks...
    m, n = store.shape
    print(f"{path}: X is {m:,} cells x {n:,} genes, {store.nnz:,} nonzeros "
          f"({store.nnz / (m * n):.1%} dense), read in {store.n_blocks} row blocks")  # fmt: skip
    start = time.perf_counter()
    with scheduler_for(scheduler) as where:
        # On a distributed scheduler W's blocks are kept on disk: here, beside the store.
        result = bignmf.anndata.fit(path, k, random_state=0, max_iter=300, scheduler=where,
                                    workdir=path.parent)  # fmt: skip
    relative = result.reconstruction_err / np.sqrt(store.frobenius_sq)
    print(f"NMF with k = {k}: {result.n_iter} iterations in {time.perf_counter() - start:.1f}s, "
          f"relative error {relative:.3f}")  # fmt: skip
    return result


def usage_fractions(adata: ad.AnnData) -> np.ndarray:
    """Each cell's share of counts explained by each program: W·diag(sum of H's rows)."""
    totals = adata.varm["NMF"].sum(axis=0)  # each program's total over the genes
    usage = adata.obsm["X_nmf"] * totals
    return usage / np.maximum(usage.sum(axis=1, keepdims=True), np.finfo(float).tiny)


def report_recovery(adata: ad.AnnData) -> None:
    """The activity program against the truth; cell types against the identity programs."""
    fractions = usage_fractions(adata)
    # The activity program is the one whose usage follows the planted activity share.
    truth = adata.obs["activity"].to_numpy()
    r = np.array([np.corrcoef(fractions[:, c], truth)[0, 1] for c in range(fractions.shape[1])])
    activity = int(np.nanargmax(r))
    print(f"activity program: component {activity} (correlation of its usage share with the "
          f"planted activity: {r[activity]:.3f})")  # fmt: skip
    # The others are identity programs: a cell's type is the one it uses most.
    identity = [c for c in range(fractions.shape[1]) if c != activity]
    dominant = np.array(identity)[fractions[:, identity].argmax(axis=1)]
    ari = adjusted_rand_score(adata.obs["cell_type"], dominant)
    print(f"cell types vs each cell's dominant identity program: adjusted Rand index {ari:.3f}")
    table = pd.crosstab(adata.obs["cell_type"], pd.Series(dominant, index=adata.obs_names,
                        name="dominant program"))  # fmt: skip
    print(table.to_string())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    size = LARGE if args.large else SMALL
    n_cells, n_genes = args.cells or size["cells"], args.genes or size["genes"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "cells.zarr"

    print(f"generating {n_cells:,} cells x {n_genes:,} genes: {N_TYPES} cell types + 1 "
          f"activity program...")  # fmt: skip
    write_store(generate_counts(n_cells, n_genes), path)

    factorize(path, N_TYPES + 1, args.scheduler)

    adata = ad.read_zarr(path)  # reloaded: the results are part of the AnnData object now
    print(f"reloaded {path}: obsm['X_nmf'] {adata.obsm['X_nmf'].shape}, "
          f"varm['NMF'] {adata.varm['NMF'].shape}, uns['nmf']: {adata.uns['nmf']['n_iter']} "
          "iterations")  # fmt: skip
    adata.write_h5ad(out / "cells_nmf.h5ad")
    print(f"saved {out / 'cells_nmf.h5ad'}")
    report_recovery(adata)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
