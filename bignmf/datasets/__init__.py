"""Data to try bignmf on, made on this machine: planted low-rank matrices with known factors
(:mod:`.synthetic`), planted ratings with most entries unknown and a held-out split
(:mod:`.ratings`), planted implicit feedback (play counts) with held-out plays
(:mod:`.implicit`), and a real text corpus from the installed docstrings (:mod:`.corpus`).

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
from bignmf.datasets.implicit import (
    PlaysDataset,
    PlaysFactors,
    PlaysSpec,
    held_out_plays,
    make_plays,
    plays_factors,
    plays_source,
)
from bignmf.datasets.ratings import (
    RATING_BLOCK_ROWS,
    RatingFactors,
    RatingsDataset,
    RatingsSpec,
    RatingTriples,
    held_out_ratings,
    is_held_out,
    make_ratings,
    ratings_factors,
    ratings_source,
    write_held_out_mtx,
)
from bignmf.datasets.synthetic import PlantedFactors, make_planted, planted_factors, planted_source

__all__ = [
    "RATING_BLOCK_ROWS",
    "SLAB_DOCUMENTS",
    "STOP_WORDS",
    "PlantedFactors",
    "PlaysDataset",
    "PlaysFactors",
    "PlaysSpec",
    "RatingFactors",
    "RatingTriples",
    "RatingsDataset",
    "RatingsSpec",
    "docstring_corpus",
    "docstring_documents",
    "held_out_plays",
    "held_out_ratings",
    "is_held_out",
    "load_vocabulary",
    "make_planted",
    "make_plays",
    "make_ratings",
    "planted_factors",
    "planted_source",
    "plays_factors",
    "plays_source",
    "ratings_factors",
    "ratings_source",
    "titles_path",
    "tokenize",
    "vocabulary_path",
    "write_held_out_mtx",
]
