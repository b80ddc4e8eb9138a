"""Data to try bignmf on, made on this machine: planted low-rank matrices with known factors
(:mod:`.synthetic`) and a real text corpus from the installed docstrings (:mod:`.corpus`).

May import: :mod:`bignmf.store`, :mod:`bignmf.io`, :mod:`bignmf.errors`, :mod:`bignmf.types`.
"""

from bignmf.datasets.corpus import (
    SLAB_DOCUMENTS,
    STOP_WORDS,
    docstring_corpus,
    docstring_documents,
    load_vocabulary,
    titles_path,
    tokenize,
    vocabulary_path,
)
from bignmf.datasets.synthetic import PlantedFactors, make_planted, planted_factors, planted_source

__all__ = [
    "SLAB_DOCUMENTS",
    "STOP_WORDS",
    "PlantedFactors",
    "docstring_corpus",
    "docstring_documents",
    "load_vocabulary",
    "make_planted",
    "planted_factors",
    "planted_source",
    "titles_path",
    "tokenize",
    "vocabulary_path",
]
