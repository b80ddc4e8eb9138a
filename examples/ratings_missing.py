"""Ratings with most entries unknown: fit the stored entries only, score on held-out ratings.

A users × items matrix of ratings is mostly empty, and an empty entry is a rating nobody gave,
not a zero. This example plants low-rank ratings (power-law item popularity, users of varied
activity, values on a 1–5 scale plus noise), holds out 10% of them by a seeded hash of
(user, item), and fits the rest twice with the same k: with ``missing="zeros"`` (only the
stored ratings are observed) and as a plain NMF (every absent rating read as 0). It prints the
held-out RMSE of both, the baseline of predicting every user's mean, and a user's top
predicted items among those they did not rate.

Run it::

    python examples/ratings_missing.py            # 20,000 users x 2,000 items, ~400k ratings
    python examples/ratings_missing.py --large    # 200,000 users x 10,000 items, ~6M ratings

It writes, under ``--out`` (default ``./bignmf-examples/ratings``): ``ratings.zarr`` (the
training store), ``ratings.zarr.test.mtx`` (the held-out triples) and ``run/``, a bignmf run
directory, so that ``bignmf score <out>/run <out>/ratings.zarr.test.mtx`` scores it again.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np

import bignmf
from bignmf.datasets import held_out_ratings, make_ratings
from bignmf.fit.outputs import write_factors
from bignmf.fit.predict import score
from bignmf.io.registry import open_source

SMALL = {"users": 20_000, "items": 2_000, "per_user": 20}
LARGE = {"users": 200_000, "items": 10_000, "per_user": 30}
K = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bignmf-examples/ratings", help="output directory")
    parser.add_argument("--large", action="store_true", help="200,000 users x 10,000 items")
    parser.add_argument("--iterations", type=int, default=40, help="iterations of each fit")
    parser.add_argument("--alpha", type=float, default=1e-4, help="L2 penalty (alpha_W)")
    return parser.parse_args(argv)


def user_mean_rmse(store, test) -> float:
    """The RMSE of predicting each user's mean training rating (the global mean if none)."""
    sums = np.zeros(store.shape[0])
    counts = np.zeros(store.shape[0])
    for i in range(store.n_blocks):
        r0, r1 = store.block_rows(i)
        block = store.read_block(i)
        sums[r0:r1] = np.asarray(block.sum(axis=1)).ravel()
        counts[r0:r1] = np.diff(block.indptr)
    overall = sums.sum() / counts.sum()
    means = np.where(counts > 0, sums / np.maximum(counts, 1), overall)
    return float(np.sqrt(np.mean((means[test.rows] - test.values) ** 2)))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    size = LARGE if args.large else SMALL
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    ratings = make_ratings(
        out / "ratings.zarr", size["users"], size["items"], K,
        ratings_per_user=size["per_user"], noise=0.25, seed=0,
    )  # fmt: skip
    print(
        f"{size['users']:,} users x {size['items']:,} items: {ratings.n_train:,} ratings to fit, "
        f"{ratings.n_test:,} held out"
    )
    test = held_out_ratings(ratings.spec)
    held_out = open_source(str(ratings.test_path))
    common = {"init": "random", "random_state": 0, "tol": 0, "max_iter": args.iterations,
              "scheduler": "threads"}  # fmt: skip

    start = time.perf_counter()
    observed = bignmf.nmf(
        ratings.store, K, missing="zeros", n_inner=3, alpha_W=args.alpha,
        checkpoint_dir=out / "run", **common,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    write_factors(observed.W, observed.H, out / "run")
    fitted = score(observed.W, observed.H, held_out)
    plain = bignmf.nmf(ratings.store, K, alpha_W=args.alpha, **common)
    print(f"held-out RMSE, stored entries only (missing='zeros'): {fitted.rmse:.3f}  "
          f"({observed.n_iter} iterations, {seconds:.1f} s)")  # fmt: skip
    print(f"held-out RMSE, absent ratings read as zeros (plain NMF): "
          f"{score(plain.W, plain.H, held_out).rmse:.3f}")  # fmt: skip
    print(f"held-out RMSE, each user's mean rating: {user_mean_rmse(ratings.store, test):.3f}")

    user = int(np.argmax(np.diff(ratings.store.read_block(0).indptr)))  # a user with ratings
    rated = set(ratings.store.read_block(0)[user].indices)
    unrated = np.array([j for j in range(size["items"]) if j not in rated])
    predicted = observed.predict(np.full(unrated.size, user), unrated)
    top = unrated[np.argsort(predicted)[::-1][:5]]
    shown = ", ".join(
        f"{j} ({p:.2f})" for j, p in zip(top, np.sort(predicted)[::-1][:5], strict=True)
    )
    print(f"user {user} rated {len(rated)} items; top predicted unrated items: {shown}")
    print(f"score it again: bignmf score {out / 'run'} {ratings.test_path}")


if __name__ == "__main__":
    main()
