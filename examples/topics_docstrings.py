"""Topics of a real text corpus built offline: the docstrings of the installed Python packages.

Every machine that runs bignmf has English technical prose on disk: the docstrings of the
standard library and of the packages installed next to bignmf (NumPy, SciPy, Dask, pandas...).
This example turns them into a documents × terms count matrix (a bignmf store, no download),
factorizes it into topics, A ≈ W·H, and prints each topic's top words (the largest entries of
its row of H) and the documents that use it most (the largest entries of its column of W).

Run it::

    python examples/topics_docstrings.py                 # 6,000 documents, 15 topics, ~10 s
    python examples/topics_docstrings.py --large         # every docstring (~30,000), 30 topics
    python examples/topics_docstrings.py --scheduler local   # on an embedded Dask cluster

It writes, under ``--out`` (default ``./bignmf-examples/topics``):

* ``docs-<N>.zarr`` (``docs-all.zarr`` with ``--large``) — the corpus as a sparse store, with
  ``docs-<N>.zarr.vocab.txt`` (line j names column j) and ``docs-<N>.zarr.titles.txt`` (line i
  names row i, ``module.qualname``); it is reused when the example runs again;
* ``run/`` — the run directory (``run.json``, ``metrics.jsonl``, checkpoints) with the factors
  ``W.zarr`` and ``H.zarr``, so that ``bignmf top-features <out>/run`` prints the topics again;
* ``topics.txt`` — the topics as printed.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np

import bignmf
from bignmf.cluster.config import scheduler_for
from bignmf.datasets.corpus import docstring_corpus, load_vocabulary, titles_path, vocabulary_path
from bignmf.fit.outputs import top_features, write_factors

SMALL = {"documents": 6_000, "topics": 15, "max_iter": 100}
LARGE = {"documents": None, "topics": 30, "max_iter": 300}  # None: every docstring


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bignmf-examples/topics", help="output directory")
    parser.add_argument("--large", action="store_true", help="every docstring, 30 topics")
    parser.add_argument("-k", "--topics", type=int, help="number of topics")
    parser.add_argument("--documents", type=int, help="documents sampled from the docstrings")
    parser.add_argument("--words", type=int, default=8, help="top words printed per topic")
    parser.add_argument("--scheduler", default="threads",
                        help="threads (default), sync, local (an embedded Dask cluster) or "
                             "a scheduler address tcp://host:8786")  # fmt: skip
    return parser.parse_args(argv)


def build_corpus(
    out: Path, n_documents: int | None
) -> tuple[bignmf.CSRStore, list[str], list[str]]:
    """The documents × terms store, its vocabulary and its document names (reused if built)."""
    path = out / f"docs-{n_documents or 'all'}.zarr"
    if path.exists():
        store = bignmf.open_matrix(path)
        print(f"using the corpus built before: {path}")
    else:
        how_many = f"{n_documents:,}" if n_documents else "all the"
        print(f"building a corpus of {how_many} docstrings of the installed packages...")
        # Terms in fewer than 5 documents are noise, terms in more than half say nothing.
        store, _ = docstring_corpus(path, max_documents=n_documents, min_df=5, max_df=0.5)
    m, n = store.shape
    print(f"corpus: {m:,} documents x {n:,} terms, {store.nnz:,} nonzeros ({path})")
    return store, load_vocabulary(vocabulary_path(path)), load_vocabulary(titles_path(path))


def fit_topics(store, k: int, max_iter: int, scheduler: str, run_dir: Path):
    """Factorize the counts into k topics; the run directory keeps the checkpoints."""
    shutil.rmtree(run_dir, ignore_errors=True)  # a run directory is started afresh each time
    start = time.perf_counter()
    with scheduler_for(scheduler) as where:  # 'threads', 'local' (a LocalCluster), an address
        result = bignmf.nmf(store, k, random_state=0, max_iter=max_iter, scheduler=where,
                            checkpoint_dir=run_dir)  # fmt: skip
    seconds = time.perf_counter() - start
    write_factors(result.W, result.H, run_dir)  # W.zarr and H.zarr, read by `bignmf top-features`
    relative = result.reconstruction_err / np.sqrt(store.frobenius_sq)
    state = "converged" if result.converged else "stopped at max_iter"
    print(f"{k} topics: {result.n_iter} iterations ({state}) in {seconds:.1f}s, "
          f"relative error ‖A − WH‖/‖A‖ = {relative:.3f}")  # fmt: skip
    return result


def describe_topics(result, vocabulary: list[str], titles: list[str], n_words: int) -> list[str]:
    """One line per topic: its top words, then the document that uses the topic most."""
    W = np.asarray(result.W)  # NumPy already when W was kept in memory (a Dask array otherwise)
    words = [" ".join(vocabulary[j] for j, _ in top) for top in top_features(result.H, n_words)]
    width = max(map(len, words))
    lines = []
    for topic, top_words in enumerate(words):
        example = titles[int(np.argmax(W[:, topic]))]
        lines.append(f"topic {topic:2d}: {top_words:<{width}}  e.g. {example}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    size = LARGE if args.large else SMALL
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store, vocabulary, titles = build_corpus(out, args.documents or size["documents"])
    k = args.topics or size["topics"]
    result = fit_topics(store, k, size["max_iter"], args.scheduler, out / "run")
    lines = describe_topics(result, vocabulary, titles, args.words)
    print("\n".join(lines))
    (out / "topics.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"saved {out / 'topics.txt'}; `bignmf top-features {out / 'run'}` prints them again")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
