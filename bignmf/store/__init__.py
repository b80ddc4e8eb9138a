"""The on-disk formats: A as CSR row blocks in Zarr, W and H as dense Zarr arrays.

Owns: the CSR store (:mod:`.csr`), its row-block validation and dtype policy (:mod:`.validate`),
factor arrays on disk or in memory (:mod:`.factors`), Zarr chunks read and written raw where the
layout allows, for both (:mod:`.raw`), matrices as row blocks whatever they hold
(:mod:`.matrix`), a matrix with a mask of unknown entries (:mod:`.masked`) and the
decoded-block cache (:mod:`.blockcache`).
May import: :mod:`bignmf.errors`, :mod:`bignmf.types`, :mod:`bignmf.plan`, zarr, NumPy, SciPy.
Never Dask graphs, never the fit.
"""
