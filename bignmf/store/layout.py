"""The CSR store's defaults that need no zarr: what ``bignmf --help`` shows without loading
it (:mod:`bignmf.store.csr` writes the stores)."""

from __future__ import annotations

#: Elements per chunk of a stored array (values, column indices).
DEFAULT_CHUNK_SIZE = 2**20
#: The compressions of a store's arrays by name; :data:`bignmf.store.csr.CODECS` makes them.
CODEC_NAMES = {
    "lz4": "Blosc lz4, level 5, byte shuffle",
    "zstd": "Zstandard, level 0",
    "none": "uncompressed",
}
DEFAULT_CODEC = "lz4"

__all__ = ["CODEC_NAMES", "DEFAULT_CHUNK_SIZE", "DEFAULT_CODEC"]
