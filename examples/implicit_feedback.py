"""Implicit feedback: rank the items a user played but the fit did not see above the rest.

Play counts say what a user chose, not how much they liked it: a stored count means "played",
an absent one "never played", and the size of a count (a song on repeat) says little about
taste. This example plants plays (users with tastes over 10 groups of items, power-law item
popularity, heavy-tailed Pareto counts unrelated to the taste), holds out 20% of them by a
seeded hash of (user, item), and fits the rest with the same k two ways: with implicit
feedback's weights (``weights="implicit"``: every play is "liked" with confidence
``1 + α·log(1 + count)``, every other entry "not liked" with confidence 1) and as a plain NMF
of the counts. It prints, for both and for recommending the most played items to everyone, the
held-out AUC (how often a held-out play scores above a never-played entry, on a seeded sample)
and recall@10 (the share of a user's held-out plays among the 10 best-scored items they did not
play in training, averaged over users; over a seeded sample of 20,000 users with ``--large``),
then one user's top 10. Users are scored in batches, so that W·H is never whole.

Run it::

    python examples/implicit_feedback.py            # 20,000 users x 2,000 items, ~600k plays
    python examples/implicit_feedback.py --large    # 300,000 users x 20,000 items, ~12M plays

It writes, under ``--out`` (default ``./bignmf-examples/implicit``): ``plays.zarr`` (the training
store), ``plays.zarr.test.mtx`` (the held-out ``(user, item, count)`` triples), ``held_out.zarr``
(the same as a store, read by rows to score) and ``run/``, the implicit fit's bignmf run
directory: ``bignmf top-features <out>/run`` lists each component's top items.
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import bignmf
from bignmf.datasets import make_plays
from bignmf.fit.outputs import write_factors

SMALL = {"users": 20_000, "items": 2_000, "per_user": 30}
LARGE = {"users": 300_000, "items": 20_000, "per_user": 40}
K = 10
TOP = 10
SCORE_BYTES = 64 << 20  # the dense scores of one batch of users: the evaluation's memory

Scorer = Callable[[np.ndarray], np.ndarray]  # users -> their scores of every item


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bignmf-examples/implicit", help="output directory")
    parser.add_argument("--large", action="store_true", help="300,000 users x 20,000 items")
    parser.add_argument("--iterations", type=int, default=30, help="iterations of each fit")
    parser.add_argument("--implicit-alpha", type=float, default=1.0, help="α of the confidence")
    parser.add_argument("--alpha", type=float, default=1e-3, help="L2 penalty (alpha_W)")
    parser.add_argument("--pairs", type=int, default=100_000, help="sampled pairs of the AUC")
    parser.add_argument("--eval-users", type=int, default=20_000, help="users scored (a sample)")
    return parser.parse_args(argv)


# --------------------------------------------------------------------------------------------
# Scoring users in batches
# --------------------------------------------------------------------------------------------


def factor_scorer(result) -> Scorer:
    """W·H for a batch of users: W's rows for them times H, never the whole of W·H."""
    return lambda users: np.asarray(result.W[users]) @ result.H


def popularity_scorer(store) -> Scorer:
    """Every user scores an item by how many users played it in training."""
    played = np.zeros(store.shape[1])
    for block in store.iter_blocks():
        played += np.bincount(block.indices, minlength=store.shape[1])
    return lambda users: np.broadcast_to(played, (users.size, played.size))


def user_batches(train, test, users: np.ndarray, batch: int):
    """``(users, their training rows, their held-out rows)``, ``batch`` users at a time, reading
    one row block of the training store (and the held-out rows beside it) at a time."""
    for i in range(train.n_blocks):
        r0, r1 = train.block_rows(i)
        mine = users[(users >= r0) & (users < r1)]
        if mine.size:
            seen, held = train.read_block(i), test.read_rows(r0, r1)
            for s in range(0, mine.size, batch):
                local = mine[s : s + batch] - r0
                yield local + r0, seen[local], held[local]


def sample_pairs(rng, seen, held, share: float) -> tuple[tuple, tuple]:
    """A share of a batch's held-out plays, and as many never-played entries of its users drawn
    uniformly (a draw that hits a play, seen or held out, is dropped: ~1.5% of them), as local
    ``(rows, cols)``."""
    plays = held.tocoo()
    keep = rng.random(plays.nnz) < share
    n_rows, n_items = seen.shape
    rows = rng.integers(0, n_rows, size=int(keep.sum()))
    cols = rng.integers(0, n_items, size=rows.size)
    unseen = np.asarray((seen + held)[rows, cols]).ravel() == 0
    return (plays.row[keep], plays.col[keep]), (rows[unseen], cols[unseen])


def recall_at_top(scores: np.ndarray, seen, held) -> np.ndarray:
    """Per user with a held-out play: the share of them among the TOP best-scored items the
    user did not play in training."""
    cost = -np.asarray(scores, dtype=np.float32)  # a copy, float32: argpartition's time halves
    cost[seen.nonzero()] = np.inf  # training plays are not recommended
    top = np.argpartition(cost, TOP, axis=1)[:, :TOP]
    is_held = np.zeros(cost.shape, dtype=bool)
    is_held[held.nonzero()] = True
    hits = np.take_along_axis(is_held, top, axis=1).sum(axis=1)
    n_held = held.getnnz(axis=1)
    return hits[n_held > 0] / n_held[n_held > 0]


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counting half (Mann-Whitney U)."""
    negative = np.sort(negative)
    below = np.searchsorted(negative, positive, side="left")
    tied = np.searchsorted(negative, positive, side="right") - below
    return float(np.mean(below + 0.5 * tied) / negative.size)


def evaluate(scorers: dict[str, Scorer], train, test, n_users: int, pairs: int) -> dict:
    """AUC (on about ``pairs`` sampled pairs) and recall@TOP of each scorer over a seeded sample
    of ``n_users`` users (all if there are fewer), in one pass over them in batches: memory is
    one batch's dense scores, one row block and the sampled pairs' scores, whatever the number
    of users."""
    m, n = train.shape
    rng = np.random.default_rng(0)  # the same users and pairs for every scorer
    users = np.sort(rng.choice(m, size=min(m, n_users), replace=False))
    share = min(1.0, pairs / max(test.nnz * users.size / m, 1))
    found = {name: {"pos": [], "neg": [], "recall": []} for name in scorers}
    for ids, seen, held in user_batches(train, test, users, max(1, SCORE_BYTES // (8 * n))):
        positive, negative = sample_pairs(rng, seen, held, share)
        for name, scorer in scorers.items():
            scores = scorer(ids)
            found[name]["pos"].append(scores[positive])
            found[name]["neg"].append(scores[negative])
            found[name]["recall"].append(recall_at_top(scores, seen, held))
    return {
        name: (auc(*(np.concatenate(f[key]) for key in ("pos", "neg"))),
               float(np.concatenate(f["recall"]).mean()))
        for name, f in found.items()
    }  # fmt: skip


# --------------------------------------------------------------------------------------------
# The example
# --------------------------------------------------------------------------------------------


def show_user(result, plays, test) -> None:
    """One user's top TOP unplayed items, each with its taste group; '*' marks held-out plays."""
    n_held = test.read_rows(0, min(plays.spec.n_users, 1000)).getnnz(axis=1)
    user = int(np.argmax(n_held))  # among the first users, the one with most held-out plays
    seen = plays.store.read_rows(user, user + 1).indices
    held = set(test.read_rows(user, user + 1).indices)
    scores = factor_scorer(result)(np.array([user]))[0]
    scores[seen] = -np.inf
    top = np.argsort(scores)[::-1][:TOP]
    groups = plays.factors.item_groups
    taste = plays.factors.w_rows(user, user + 1)[0]
    liked = ", ".join(f"{g} ({taste[g]:.2f})" for g in np.argsort(taste)[::-1][:2])
    print(f"user {user}: {seen.size} plays in training, {len(held)} held out; "
          f"tastes, groups {liked}")  # fmt: skip
    shown = ", ".join(f"{j}{'*' if j in held else ''} (group {groups[j]})" for j in top)
    print(f"top {TOP} for user {user}: {shown}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    size = LARGE if args.large else SMALL
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    start = time.perf_counter()
    plays = make_plays(
        out / "plays.zarr", size["users"], size["items"], K,
        plays_per_user=size["per_user"], tail=1.0, seed=0,
    )  # fmt: skip
    test = bignmf.convert(plays.test_path, out / "held_out.zarr")  # read by rows to score
    train = plays.store
    counts = train.read_rows(0, min(train.shape[0], 1000)).data
    print(f"{size['users']:,} users x {size['items']:,} items: {plays.n_train:,} plays to fit, "
          f"{plays.n_test:,} held out; play counts: median {np.median(counts):.0f}, "
          f"max {counts.max():,.0f} among the first 1,000 users")  # fmt: skip
    common = {"random_state": 0, "tol": 0, "max_iter": args.iterations, "alpha_W": args.alpha,
              "scheduler": "threads"}  # fmt: skip

    fit_start = time.perf_counter()
    implicit = bignmf.nmf(
        train, K, weights="implicit", implicit_alpha=args.implicit_alpha, implicit_f="log",
        checkpoint_dir=out / "run", **common,
    )  # fmt: skip
    seconds = time.perf_counter() - fit_start
    write_factors(implicit.W, implicit.H, out / "run")
    plain = bignmf.nmf(train, K, **common)
    print(f"fitted k={K}: implicit feedback ({implicit.n_iter} iterations, {seconds:.1f} s), "
          f"plain NMF of the counts")  # fmt: skip

    scorers = {
        "implicit feedback": factor_scorer(implicit),
        "plain NMF of the counts": factor_scorer(plain),
        "most played items": popularity_scorer(train),
    }
    for name, (area, recall) in evaluate(scorers, train, test, args.eval_users, args.pairs).items():
        print(f"held-out AUC, {name}: {area:.3f}")
        print(f"recall@{TOP}, {name}: {recall:.3f}")
    show_user(implicit, plays, test)
    print(f"in {time.perf_counter() - start:.1f} s; "
          f"the components' top items: bignmf top-features {out / 'run'}")  # fmt: skip


if __name__ == "__main__":
    main()
