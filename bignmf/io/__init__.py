"""Input formats and conversion into a store.

Owns: one reader per input format, the registry that guesses a file's format and opens it
(:mod:`.readers`), the COO → CSR slab sorter (:mod:`.coo`), conversion (:mod:`.convert`) and
the feature names that travel with a matrix (:mod:`.vocabulary`).
May import: :mod:`bignmf.store`, :mod:`bignmf.errors`, :mod:`bignmf.types`; optional readers
(h5py, anndata) only when a file of theirs is opened.
"""
