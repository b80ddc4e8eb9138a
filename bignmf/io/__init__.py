"""Input formats and conversion into a store.

Owns: one reader module per input format — :mod:`.memory` (scipy.sparse, NumPy, Dask, AnnData
objects), :mod:`.npz` (``.npz``), :mod:`.mtx` (Matrix Market ``.mtx``/``.mm``, compressed or
not), :mod:`.hdf5` (AnnData ``.h5ad``), :mod:`.zarr` (AnnData ``.zarr``, Zarr sparse groups,
dense Zarr arrays) — with what they share (:mod:`.common`); the registry that guesses a file's
format and opens it (:mod:`.registry`, :func:`~bignmf.io.registry.open_source`); the COO → CSR
slab sorter (:mod:`.coo`), conversion (:mod:`.convert`) and the feature and row names that
travel with a matrix (:mod:`.vocabulary`); and, the other way, a fit's results written back
into an AnnData input as obsm/varm/uns elements (:mod:`.writeback`).
May import: :mod:`bignmf.store`, :mod:`bignmf.errors`, :mod:`bignmf.types`; optional readers
(h5py, anndata, zarr) only when a file of theirs is opened.
"""
