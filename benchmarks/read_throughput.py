"""Read throughput of the sparse matrix store against raw uncompressed ``.npy`` files.

Generates (once, cached in ``--workdir``) a planted matrix with
:mod:`bignmf.datasets.synthetic`, saves its
``data``/``indices``/``indptr`` as raw ``.npy`` files, writes it with every codec and chunk size
asked for, then times reading every row block of each store against reading the same byte
ranges from the ``.npy`` files, all variants side by side in one process, round-robin, and
reports medians. The page cache cannot be dropped without root: every file set is read once
before timing, so the figures are warm-cache figures.

Variants timed for each store (codec x chunk size):

* ``read_block``: ``store.read_block(i)`` for every block, allocating per read;
* ``read_block+buf``: the same into buffers reused across blocks (``store.new_buffers()``);
* ``chunks+decode``: a floor that skips zarr: read every chunk file and decode it with numcodecs
  into a reused buffer (what any reader has to do at least);

and, for the row blocks of each chunk size, on the ``.npy`` files:

* ``npy copy``: ``np.load(..., mmap_mode="r")[start:stop].copy()`` per block (allocating);
* ``npy readinto``: ``readinto`` a preallocated buffer at the block's byte offset.

Throughput is in MB/s (10**6 bytes/s) of uncompressed matrix bytes (values + indices + indptr).

Usage::

    python benchmarks/read_throughput.py                # >= 50M nonzeros, a few minutes
    python benchmarks/read_throughput.py --quick        # ~5M nonzeros, < 1 minute
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

try:
    import bignmf  # noqa: F401
except ImportError:  # run as `python benchmarks/read_throughput.py` from an uninstalled checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bignmf.datasets.synthetic import planted_source
from bignmf.store.csr import DirectChunkReader
from bignmf.types import Source

ARRAYS = ("data", "indices", "indptr")
SOURCE_SLAB_ROWS = 65536
MB = 1e6


# ---------------------------------------------------------------------------------------------
# Raw .npy copy of the matrix
# ---------------------------------------------------------------------------------------------


@dataclass
class RawMatrix:
    """The matrix as three raw ``.npy`` files."""

    directory: Path
    shape: tuple[int, int]

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.npy"

    def load(self, name: str) -> np.ndarray:
        return np.load(self.path(name), mmap_mode="r")

    @property
    def nnz(self) -> int:
        return int(self.load("data").shape[0])

    @property
    def nbytes(self) -> int:
        return sum(int(self.load(name).nbytes) for name in ARRAYS)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _matrix_tag(args: argparse.Namespace, n_rows: int) -> str:
    return (
        f"planted_{n_rows}x{args.n_cols}_k{args.components}"
        f"_z{args.nnz_per_row:g}_s{args.seed}_{args.dtype}"
    )


def ensure_raw(args: argparse.Namespace) -> RawMatrix:
    """Generate the planted matrix into raw ``.npy`` files unless they are cached."""
    n_rows = math.ceil(1.02 * args.nnz / args.nnz_per_row)  # the realised mean is within ~1%
    directory = Path(args.workdir) / _matrix_tag(args, n_rows)
    raw = RawMatrix(directory, (n_rows, args.n_cols))
    if (directory / "done").exists():
        _say(f"using cached {directory} ({raw.nnz:,} nonzeros)")
        return raw
    source = planted_source(
        n_rows,
        args.n_cols,
        args.components,
        nnz_per_row=args.nnz_per_row,
        seed=args.seed,
        dtype=args.dtype,
    )
    start = time.perf_counter()
    parts: dict[str, list[np.ndarray]] = {name: [] for name in ARRAYS}
    parts["indptr"].append(np.zeros(1, dtype=np.int64))
    offset = 0
    for slab in source.blocks():
        parts["data"].append(slab.data)
        parts["indices"].append(slab.indices.astype(np.int32, copy=False))
        parts["indptr"].append(slab.indptr[1:].astype(np.int64) + offset)
        offset += slab.nnz
    seconds = time.perf_counter() - start
    _say(f"generated {offset:,} nonzeros in {seconds:.1f} s ({offset / seconds / 1e6:.2f} M/s)")
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    for name in ARRAYS:
        array = np.concatenate(parts.pop(name))
        np.save(raw.path(name), array)
    (directory / "done").write_text(json.dumps({"generate_s": seconds, "nnz": offset}))
    return raw


def raw_source(raw: RawMatrix) -> Source:
    """The raw files as a :class:`~bignmf.types.Source`, to write the stores from."""
    data, indices, indptr = (raw.load(name) for name in ARRAYS)

    def blocks() -> Iterator[sp.csr_matrix]:
        for r0 in range(0, raw.shape[0], SOURCE_SLAB_ROWS):
            r1 = min(r0 + SOURCE_SLAB_ROWS, raw.shape[0])
            s, e = int(indptr[r0]), int(indptr[r1])
            local = np.asarray(indptr[r0 : r1 + 1]) - s
            yield sp.csr_matrix(
                (np.asarray(data[s:e]), np.asarray(indices[s:e]), local),
                shape=(r1 - r0, raw.shape[1]),
            )

    return Source(f"<{raw.directory.name}>", raw.shape, data.dtype, blocks)


# ---------------------------------------------------------------------------------------------
# Stores
# ---------------------------------------------------------------------------------------------


def ensure_store(raw: RawMatrix, codec: str, chunk: int, workdir: Path):
    """Write the matrix with ``codec`` and ``chunk`` unless cached; returns (store, write_s)."""
    from bignmf.store.csr import open_matrix, write_matrix

    path = workdir / f"{raw.directory.name}_{codec}_c{chunk}.zarr"
    stamp = path.with_name(path.name + ".done")
    if stamp.exists() and path.exists():
        try:
            store = open_matrix(path)
        except Exception as err:  # written by an older layout: write it again
            _say(f"rewriting {path.name}: {err}")
        else:
            if store.nnz == raw.nnz:
                return store, json.loads(stamp.read_text())["write_s"]
    stamp.unlink(missing_ok=True)
    start = time.perf_counter()
    store = write_matrix(raw_source(raw), path, overwrite=True, chunk_size=chunk, codec=codec)
    seconds = time.perf_counter() - start
    stamp.write_text(json.dumps({"write_s": seconds}))
    _say(f"wrote {path.name} in {seconds:.1f} s ({raw.nnz / seconds / 1e6:.2f} M nnz/s)")
    return store, seconds


# ---------------------------------------------------------------------------------------------
# Readers: each returns a function that reads every row block once
# ---------------------------------------------------------------------------------------------


def store_reader(store, reuse: bool) -> Callable[[], int]:
    """Read every row block with ``read_block`` (into reused buffers if ``reuse``)."""

    def run() -> int:
        buffers = store.new_buffers() if reuse else None
        nnz = 0
        for i in range(store.n_blocks):
            nnz += store.read_block(i, buffers).nnz
        return nnz

    return run


def _block_ranges(store) -> list[tuple[int, int, int, int]]:
    rows, nnzs = store.row_offsets, store.nnz_offsets
    return [
        (int(rows[i]), int(rows[i + 1]), int(nnzs[i]), int(nnzs[i + 1]))
        for i in range(len(rows) - 1)
    ]


def npy_copy_reader(raw: RawMatrix, blocks: list[tuple[int, int, int, int]]):
    """Read the blocks' byte ranges from memory-mapped ``.npy`` files, copying each."""

    def run() -> int:
        data, indices, indptr = (raw.load(name) for name in ARRAYS)
        nnz = 0
        for r0, r1, s, e in blocks:
            np.array(indptr[r0 : r1 + 1])
            np.array(indices[s:e])
            nnz += np.array(data[s:e]).size
        return nnz

    return run


def _npy_data_offset(path: Path) -> tuple[int, np.dtype]:
    """Byte offset of the data in a ``.npy`` file, and its dtype."""
    array = np.load(path, mmap_mode="r")
    return int(array.offset), array.dtype


def npy_readinto_reader(raw: RawMatrix, blocks: list[tuple[int, int, int, int]]):
    """Read the blocks' byte ranges from the ``.npy`` files into preallocated buffers."""
    offsets = {name: _npy_data_offset(raw.path(name)) for name in ARRAYS}
    widest = max(e - s for _, _, s, e in blocks)
    tallest = max(r1 - r0 for r0, r1, _, _ in blocks)
    sizes = {"data": widest, "indices": widest, "indptr": tallest + 1}
    buffers = {name: np.empty(sizes[name], dtype=offsets[name][1]) for name in ARRAYS}

    def read(f, name: str, start: int, stop: int) -> None:
        header, dtype = offsets[name]
        view = memoryview(buffers[name][: stop - start]).cast("B")
        f.seek(header + start * dtype.itemsize)
        while view.nbytes:
            got = f.readinto(view)
            view = view[got:]

    def run() -> int:
        with contextlib.ExitStack() as stack:
            files = {
                name: stack.enter_context(open(raw.path(name), "rb", buffering=0))
                for name in ARRAYS
            }
            nnz = 0
            for r0, r1, s, e in blocks:
                read(files["indptr"], "indptr", r0, r1 + 1)
                read(files["data"], "data", s, e)
                read(files["indices"], "indices", s, e)
                nnz += e - s
            return nnz

    return run


def chunks_decode_reader(store):
    """Read every chunk file of the three arrays and decode it into a reused buffer."""
    root = Path(store.path)
    plan = []
    for name in ARRAYS:
        array = store.group[name]
        directory = root / name
        n_chunks = -(-array.shape[0] // array.chunks[0])
        files = [directory / "c" / str(i) for i in range(n_chunks)]
        out = np.empty(array.chunks[0], dtype=array.dtype)
        plan.append((files, DirectChunkReader.for_array(array).decoder, out))

    def run() -> int:
        decoded = 0
        for files, decoder, out in plan:
            raw_out = memoryview(out).cast("B")
            for path in files:
                if decoder is None:
                    with open(path, "rb", buffering=0) as f:
                        decoded += f.readinto(raw_out)
                else:
                    decoder.decode(path.read_bytes(), out=out)
                    decoded += out.nbytes
        return decoded

    return run


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


def time_round_robin(variants: dict[str, Callable[[], int]], repeat: int) -> dict[str, list[float]]:
    """Run every variant once to warm the page cache, then ``repeat`` rounds, rotating order."""
    names = list(variants)
    for name in names:
        variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeat):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - start)
        _say(f"round {r + 1}/{repeat} done")
    return times


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        import psutil

        mem = f", {psutil.virtual_memory().total / 2**30:.0f} GiB"
    except ImportError:
        pass
    return f"{model}, {os.cpu_count()} cores{mem}"


def run(args: argparse.Namespace) -> dict:
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    raw = ensure_raw(args)
    nbytes = raw.nbytes
    stores, variants, layouts = {}, {}, {}
    for chunk in args.chunk_sizes:
        for codec in args.codecs:
            store, write_s = ensure_store(raw, codec, chunk, workdir)
            stores[codec, chunk] = (store, write_s)
            blocks = _block_ranges(store)
            if layouts.setdefault(chunk, blocks) != blocks:
                raise RuntimeError(f"row blocks differ between codecs at chunk size {chunk}")
            variants[f"{codec}/{chunk}/read_block"] = store_reader(store, reuse=False)
            if hasattr(store, "new_buffers"):
                variants[f"{codec}/{chunk}/read_block+buf"] = store_reader(store, reuse=True)
            variants[f"{codec}/{chunk}/chunks+decode"] = chunks_decode_reader(store)
        variants[f"npy/{chunk}/copy"] = npy_copy_reader(raw, layouts[chunk])
        variants[f"npy/{chunk}/readinto"] = npy_readinto_reader(raw, layouts[chunk])
    times = time_round_robin(variants, args.repeat)
    mbps = {name: nbytes / statistics.median(t) / MB for name, t in times.items()}
    rows = []
    for (codec, chunk), (store, write_s) in stores.items():
        info = store.info()
        block_nnz = np.diff(store.nnz_offsets)
        rows.append(
            {
                "codec": codec,
                "chunk_size": chunk,
                "row_blocks": store.n_blocks,
                "median_block_nnz": int(np.median(block_nnz)),
                "disk_mb": info["bytes_on_disk"] / MB,
                "compression_ratio": nbytes / info["bytes_on_disk"],
                "write_s": write_s,
                "read_block": mbps[f"{codec}/{chunk}/read_block"],
                "read_block_buf": mbps.get(f"{codec}/{chunk}/read_block+buf"),
                "chunks_decode": mbps[f"{codec}/{chunk}/chunks+decode"],
                "npy_copy": mbps[f"npy/{chunk}/copy"],
                "npy_readinto": mbps[f"npy/{chunk}/readinto"],
            }
        )
    return {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "zarr": __import__("zarr").__version__,
        "matrix": {"shape": list(raw.shape), "nnz": raw.nnz, "uncompressed_mb": nbytes / MB},
        "repeat": args.repeat,
        "command": " ".join(["python", "benchmarks/read_throughput.py", *sys.argv[1:]]),
        "rows": rows,
        "times_s": times,
    }


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def _fmt_chunk(chunk: int) -> str:
    return f"{chunk // 1024}K" if chunk % (1 << 20) else f"{chunk >> 20}M"


def markdown(result: dict) -> str:
    """The results as a Markdown table (ratios are store / raw ``.npy``, higher is better)."""
    m = result["matrix"]
    lines = [
        f"{result['date']}, {result['machine']}; Python {result['python']}, "
        f"numpy {result['numpy']}, zarr {result['zarr']}.",
        f"Matrix {m['shape'][0]:,} x {m['shape'][1]:,}, {m['nnz']:,} nonzeros, "
        f"{m['uncompressed_mb']:.0f} MB uncompressed; warm page cache; "
        f"median of {result['repeat']} rounds; MB/s of uncompressed bytes.",
        "",
        "| codec | chunk | blocks | disk MB | compr. | write s | read_block MB/s | "
        "÷ npy copy | read_block+buf MB/s | ÷ npy readinto | chunks+decode MB/s | "
        "npy copy MB/s | npy readinto MB/s |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in result["rows"]:
        buf = r["read_block_buf"]
        buf_cells = f"{buf:,.0f} | {buf / r['npy_readinto']:.2f}" if buf is not None else "– | –"
        lines.append(
            f"| {r['codec']} | {_fmt_chunk(r['chunk_size'])} | {r['row_blocks']} | "
            f"{r['disk_mb']:,.0f} | {r['compression_ratio']:.2f} | {r['write_s']:.1f} | "
            f"{r['read_block']:,.0f} | {r['read_block'] / r['npy_copy']:.2f} | {buf_cells} | "
            f"{r['chunks_decode']:,.0f} | {r['npy_copy']:,.0f} | {r['npy_readinto']:,.0f} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])

    def int_list(text: str) -> list[int]:
        return [int(float(x)) for x in text.split(",") if x]

    def str_list(text: str) -> list[str]:
        return [x.strip() for x in text.split(",") if x.strip()]

    parser.add_argument("--nnz", type=float, help="nonzeros, at least (default 50e6)")
    parser.add_argument("--quick", action="store_true", help="~5M nonzeros, under a minute")
    parser.add_argument("--codecs", type=str_list, default=["lz4", "zstd", "none"])
    parser.add_argument(
        "--chunk-sizes", type=int_list, default=[262144, 524288, 1048576], help="elements"
    )
    parser.add_argument("--workdir", default="benchmarks/_data")
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds (median)")
    parser.add_argument("--n-cols", type=int, default=50_000)
    parser.add_argument("--nnz-per-row", type=float, default=50)
    parser.add_argument("--components", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.nnz is None:
        args.nnz = 5e6 if args.quick else 50e6
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    print(markdown(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
