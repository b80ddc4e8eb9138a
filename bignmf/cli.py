"""Command-line interface: ``bignmf convert``, ``bignmf info``, ``bignmf generate``.

No algorithm lives here: each command parses its options and calls the library.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from . import __version__
from .errors import BigNMFError
from .storage import CODECS, DEFAULT_CHUNK_SIZE, DEFAULT_CODEC


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")


def _progress_bar(total: int, enabled: bool, desc: str):
    """A tqdm bar on stderr, silent when stderr is not a terminal or when disabled."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total, unit="rows", unit_scale=True, desc=desc, disable=None if enabled else True
    )


def _add_store_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.add_argument("--dtype", choices=["float32", "float64"], help="dtype of stored values")
    p.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="elements per chunk")
    p.add_argument("--block-nnz", type=int, help="target nonzeros per row block (4 chunks)")
    p.add_argument("--block-rows", type=int, help="fixed rows per row block instead")
    p.add_argument("--codec", choices=sorted(CODECS), default=DEFAULT_CODEC)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _store_options(args: argparse.Namespace) -> dict:
    return {
        "overwrite": args.overwrite,
        "dtype": args.dtype,
        "chunk_size": args.chunk_size,
        "block_nnz": args.block_nnz,
        "block_rows": args.block_rows,
        "codec": args.codec,
    }


def _cmd_convert(args: argparse.Namespace) -> int:
    from .ingest import convert

    with _progress_bar(None, not args.no_progress, "convert") as bar:
        store = convert(args.src, args.dst, format=args.format, key=args.key,
                        slab_nnz=args.slab_nnz, memory_nnz=args.memory_nnz, tmpdir=args.tmpdir,
                        progress=bar.update, **_store_options(args))  # fmt: skip
    _print_info(store.info())
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from .synthetic import make_planted

    options = _store_options(args)
    options["dtype"] = options["dtype"] or "float32"
    with _progress_bar(args.rows, not args.no_progress, "generate") as bar:
        store = make_planted(
            args.dst,
            args.rows,
            args.cols,
            args.components,
            nnz_per_row=args.nnz_per_row,
            seed=args.seed,
            progress=bar.update,
            **options,
        )
    _print_info(store.info())
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .storage import open_matrix

    info = open_matrix(args.path, key=args.key).info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_info(info)
    return 0


def _print_info(info: dict) -> None:
    m, n = info["shape"]
    bn = info["block_nnz"]
    rows = [
        ("path", info["path"]),
        ("shape", f"{m:,} x {n:,}"),
        ("nonzeros", f"{info['nnz']:,}"),
        ("density", f"{info['density']:.3g}"),
        ("dtype", f"{info['dtype']} (indices {info['index_dtype']})"),
        (
            "row blocks",
            f"{info['row_blocks']} (nnz min {bn['min']:,} / median "
            f"{bn['median']:,} / max {bn['max']:,})",
        ),
        ("chunks", f"{info['chunk_size']:,} elements, codec {info['codec']}"),
        ("size on disk", _human_bytes(info["bytes_on_disk"])),
        ("uncompressed", _human_bytes(info["bytes_uncompressed"])),
        ("compression", f"{info['compression_ratio']:.2f}x"),
        ("Frobenius norm", f"{info['frobenius_norm']:.6g}"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``bignmf`` command."""
    parser = argparse.ArgumentParser(
        prog="bignmf",
        description="Out-of-core, distributed NMF of large sparse matrices.",
    )
    parser.add_argument("--version", action="version", version=f"bignmf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="convert a matrix file into a bignmf store")
    p.add_argument("src", help=".npz, .mtx[.gz], .h5ad, AnnData .zarr or dense Zarr array")
    p.add_argument("dst", help="directory of the new store")
    p.add_argument("--format", help="source format when the suffix does not tell")
    p.add_argument("--key", help="matrix inside an AnnData file (default X)")
    p.add_argument("--slab-nnz", type=int, help="nonzeros read from the source at a time")
    p.add_argument("--memory-nnz", type=int, help="entries the external sort holds in memory")
    p.add_argument("--tmpdir", help="external sort's temporary files (default: beside DST)")
    _add_store_options(p)
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("info", help="describe a stored matrix")
    p.add_argument("path")
    p.add_argument("--key", help="matrix inside an AnnData store (default X)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("generate", help="write a seeded synthetic low-rank sparse matrix")
    p.add_argument("dst")
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--cols", type=int, default=20_000)
    p.add_argument("-k", "--components", type=int, default=20, help="planted rank")
    p.add_argument("--nnz-per-row", type=float, default=50)
    p.add_argument("--seed", type=int, default=0)
    _add_store_options(p)
    p.set_defaults(func=_cmd_generate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bignmf`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.func
    try:
        return handler(args)
    except (BigNMFError, FileNotFoundError) as err:
        print(f"bignmf: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
