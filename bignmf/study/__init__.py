"""Studies: many fits of one matrix as one resumable run, to choose k and find stable programs.

The front door is :func:`bignmf.sweep` (:func:`bignmf.resume_study`, :func:`bignmf.open_study`).

Modules
-------
sweep
    :func:`~bignmf.study.sweep.sweep` and :func:`~bignmf.study.sweep.resume_study`: every
    (k, replicate) fit, several in flight.
consensus
    Consensus NMF of the replicates' spectra (Kotliar et al.), in NumPy.
heldout
    The held-out error of a cross-validated fit, one pass over A.
summary
    The table per k, the chosen k, :class:`~bignmf.study.summary.Study`, ``summary.json``.
plots
    ``selection.png`` and ``density.png``.
layout
    The study directory's files.
"""
