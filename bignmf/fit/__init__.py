"""The factorization: Dask graphs over the stored blocks, the iteration loop and its run.

Owns: the settings of a run (:mod:`.settings`), the per-iteration graph (:mod:`.graph`) and its
fixed reduction tree (:mod:`.reduction`), the two-pass column variant (:mod:`.columns`),
initialisations (:mod:`.init`), the loop (:mod:`.driver`) with its callbacks
(:mod:`.callbacks`), the run directory — every file name in it (:mod:`.rundir`) —, the results
written from a run (:mod:`.outputs`) and read back for people (:mod:`.inspect`), transform
with H fixed (:mod:`.transform`), predictions and held-out scores (:mod:`.predict`), the
stored entries per row and column (:mod:`.coverage`) and :func:`~bignmf.fit.engine.nmf`, which
puts them together (:mod:`.engine`).
May import: :mod:`bignmf.kernels`, :mod:`bignmf.store`, :mod:`bignmf.cluster`,
:mod:`bignmf.plan`, :mod:`bignmf.registry`, :mod:`bignmf.errors`, :mod:`bignmf.types`. Never the
CLI or the estimator.
"""
