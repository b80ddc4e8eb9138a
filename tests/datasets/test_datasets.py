"""Tests of the docstring corpus builder (bignmf.datasets.corpus)."""

from __future__ import annotations

import re
import sysconfig
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from bignmf.datasets.corpus import (
    STOP_WORDS,
    docstring_corpus,
    docstring_documents,
    load_vocabulary,
    titles_path,
    tokenize,
    vocabulary_path,
)
from bignmf.errors import InputError, StoreExistsError

INIT = "The package: readers and writers of the sample files, in one place."
ALPHA = "Alpha module: reading records from files, line after line, lazily."
READER = "A reader of records that reads the files one line at a time."
READ = "Read the next record from the underlying file and return it."
INNER = "A helper nested in a method: splits one line into its fields."
HELPER = "Defined inside an if block: still found, named after its module."
FETCH = "An asynchronous fetch of a remote record over the network."
BETA = "Beta module: holds a copy of the reader docstring, which is dropped."
TOP = "A top-level module that would exit the interpreter if it were imported."
SHORT = "Too short."

PACKAGE = {
    "mypkg/__init__.py": f'"""{INIT}"""\n',
    "mypkg/alpha.py": f'''
        """{ALPHA}"""
        import re

        PATTERN = re.compile("\\d+")  # an invalid escape: a warning when compiled


        class Reader:
            """{READER}"""

            def read(self):
                """{READ}"""

                def inner():
                    """{INNER}"""

                return inner

            def close(self):
                """{SHORT}"""


        if True:

            def helper():
                """{HELPER}"""


        async def fetch():
            """{FETCH}"""
    ''',
    "mypkg/beta.py": f'''
        """{BETA}"""


        def copy():
            """{READER}"""
    ''',
    "mypkg/broken.py": '"""A module with a syntax error after its docstring."""\ndef (:\n',
    "mypkg/tests/test_alpha.py": '"""A test module of the package: always skipped."""\n',
    "mypkg/test_gamma.py": '"""A test file outside tests/: skipped as well."""\n',
    "mypkg/conftest.py": '"""Pytest configuration of the package tests."""\n',
    "mypkg/__pycache__/cached.py": '"""A file in __pycache__, which is never read."""\n',
    "mypkg/sample-data/data.py": '"""In a directory that cannot be a package: skipped."""\n',
    "mypkg/notes.txt": '"""Not a Python file at all, whatever it holds."""\n',
    "toplevel.py": f'"""{TOP}"""\nraise SystemExit("imported")\n',
}

EXPECTED = [
    ("mypkg", INIT),
    ("mypkg.alpha", ALPHA),
    ("mypkg.alpha.Reader", READER),
    ("mypkg.alpha.Reader.read", READ),
    ("mypkg.alpha.Reader.read.inner", INNER),
    ("mypkg.alpha.helper", HELPER),
    ("mypkg.alpha.fetch", FETCH),
    ("mypkg.beta", BETA),
    ("toplevel", TOP),
]

WORDS = (
    "array", "matrix", "thread", "lock", "queue", "socket", "request", "header", "file", "path",
    "directory", "parser", "token", "graph", "node", "edge", "plot", "axis", "figure", "random",
    "seed", "sample",
)  # fmt: skip


def _write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return root


@pytest.fixture
def package(tmp_path) -> Path:
    return _write_tree(tmp_path / "site", PACKAGE)


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory) -> Path:
    """Sixty docstrings of random words (with stop words, markup and identifiers mixed in)."""
    rng = np.random.default_rng(3)
    files = {}
    for m in range(6):
        body = []
        for f in range(10):
            words = list(rng.choice(WORDS, size=int(rng.integers(3, 15))))
            words += ["the", "Returns", "self.value", "common"]
            if (m, f) == (0, 0):
                words.append("hapax")  # in one document only
            rng.shuffle(words)
            text = " ".join(words) + ": see ``read_csv2`` (CamelCase), 42 x."
            body.append(f'def f{f}():\n    """{text}"""\n')
        files[f"corpus/mod{m}.py"] = "\n\n".join(body)
    return _write_tree(tmp_path_factory.mktemp("corpus"), files)


def _reference(documents, min_df, max_df, max_features=None):
    """Vocabulary and dense counts, computed the simple way."""
    tokens = [
        [w for w in re.findall(r"[a-z][a-z]+", text.lower()) if w not in STOP_WORDS]
        for _, text in documents
    ]
    df = Counter(w for doc in tokens for w in set(doc))
    tf = Counter(w for doc in tokens for w in doc)
    n = len(documents)
    low = min_df if isinstance(min_df, int) else min_df * n
    high = max_df if isinstance(max_df, int) else max_df * n
    vocabulary = [w for w in df if low <= df[w] <= high]
    if max_features is not None:
        vocabulary = sorted(vocabulary, key=lambda w: (-tf[w], w))[:max_features]
    vocabulary = sorted(vocabulary)
    column = {w: j for j, w in enumerate(vocabulary)}
    counts = np.zeros((n, len(vocabulary)), dtype=np.float32)
    for i, doc in enumerate(tokens):
        for w in doc:
            if w in column:
                counts[i, column[w]] += 1
    return vocabulary, counts


# ---------------------------------------------------------------------------------------------
# Documents
# ---------------------------------------------------------------------------------------------


def test_documents_found_in_order_without_tests_duplicates_or_broken_files(package):
    documents = list(docstring_documents(roots=[package], min_chars=30))
    assert documents == EXPECTED


def test_documents_are_deterministic(package):
    first = list(docstring_documents(roots=[package], min_chars=30))
    assert list(docstring_documents(roots=[package, package / "."], min_chars=30)) == first


def test_min_chars_drops_short_docstrings(package):
    names = [name for name, _ in docstring_documents(roots=[package], min_chars=1)]
    assert "mypkg.alpha.Reader.close" in names
    longest = max(len(text) for _, text in EXPECTED)
    long_only = docstring_documents(roots=[package], min_chars=longest)
    assert list(long_only) == [(name, text) for name, text in EXPECTED if len(text) == longest]


def test_a_root_inside_another_is_searched_as_its_own_root(package):
    documents = docstring_documents(roots=[package, package / "mypkg"], min_chars=30)
    names = [name for name, _ in documents]
    # mypkg/__init__.py is the top of its root: named after the directory
    expected = [name.removeprefix("mypkg.") for name, _ in EXPECTED]
    assert names == expected


def test_max_documents_is_a_seeded_sample(package):
    everything = {text for _, text in docstring_documents(roots=[package], min_chars=30)}
    sample = list(docstring_documents(roots=[package], min_chars=30, max_documents=4, seed=5))
    assert len(sample) == 4
    assert {text for _, text in sample} <= everything
    again = docstring_documents(roots=[package], min_chars=30, max_documents=4, seed=5)
    assert list(again) == sample
    many = docstring_documents(roots=[package], min_chars=30, max_documents=100, seed=1)
    assert {text for _, text in many} == everything


def test_bad_arguments_are_refused(package):
    for kwargs in ({"max_documents": 0}, {"min_chars": -1}, {"seed": 1.5}):
        with pytest.raises(InputError):
            docstring_documents(roots=[package], **kwargs)


def test_tokenize():
    assert tokenize("Return the array's dtype, see ``read_csv2`` (NDArray).") == [
        "array",
        "dtype",
        "read",
        "csv",
        "ndarray",
    ]


# ---------------------------------------------------------------------------------------------
# Corpus
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("min_df", "max_df", "max_features"),
    [(1, 1.0, None), (2, 0.5, None), (0.1, 30, None), (1, 1.0, 5)],
)
def test_corpus_matches_a_reference_count(corpus_root, tmp_path, min_df, max_df, max_features):
    documents = list(docstring_documents(roots=[corpus_root], min_chars=1))
    assert len(documents) == 60
    store, vocabulary = docstring_corpus(
        tmp_path / "docs.zarr",
        roots=[corpus_root],
        min_chars=1,
        max_documents=None,
        min_df=min_df,
        max_df=max_df,
        max_features=max_features,
    )
    expected_vocabulary, expected_counts = _reference(documents, min_df, max_df, max_features)
    assert vocabulary == expected_vocabulary
    assert store.shape == expected_counts.shape
    matrix = store.to_scipy()
    assert matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix.toarray(), expected_counts)
    assert ("hapax" in vocabulary) == (min_df == 1 and max_features is None)  # in 1 document
    assert ("common" in vocabulary) == (max_df == 1.0)  # in every document
    assert not STOP_WORDS & set(vocabulary)


def test_files_beside_the_store(corpus_root, tmp_path):
    dst = tmp_path / "out" / "docs.zarr"
    _, vocabulary = docstring_corpus(dst, roots=[corpus_root], min_chars=1, min_df=1)
    assert vocabulary_path(dst) == tmp_path / "out" / "docs.zarr.vocab.txt"
    assert titles_path(dst) == tmp_path / "out" / "docs.zarr.titles.txt"
    assert load_vocabulary(vocabulary_path(dst)) == vocabulary
    names = [name for name, _ in docstring_documents(roots=[corpus_root], min_chars=1)]
    assert load_vocabulary(titles_path(dst)) == names
    assert sorted(p.name for p in dst.parent.iterdir()) == [
        "docs.zarr",
        "docs.zarr.titles.txt",
        "docs.zarr.vocab.txt",
    ]  # no temporary file left behind
    assert not any(p.suffix == ".txt" for p in dst.rglob("*"))  # nothing inside the store


def test_existing_store_is_refused_unless_overwrite(corpus_root, tmp_path):
    dst = tmp_path / "docs.zarr"
    docstring_corpus(dst, roots=[corpus_root], min_chars=1, min_df=1, max_features=10)
    with pytest.raises(StoreExistsError):
        docstring_corpus(dst, roots=[corpus_root], min_chars=1)
    store, vocabulary = docstring_corpus(
        dst, roots=[corpus_root], min_chars=1, min_df=1, overwrite=True
    )
    assert store.shape[1] == len(vocabulary) > 10
    assert load_vocabulary(vocabulary_path(dst)) == vocabulary


def test_corpus_errors(corpus_root, tmp_path):
    with pytest.raises(InputError, match="no docstring"):
        docstring_corpus(tmp_path / "a.zarr", roots=[tmp_path / "missing"])
    with pytest.raises(InputError, match="max_df"):
        docstring_corpus(tmp_path / "b.zarr", roots=[corpus_root], min_chars=1, min_df=0.6)
    with pytest.raises(InputError, match="min_df"):
        docstring_corpus(tmp_path / "c.zarr", roots=[corpus_root], min_chars=1, min_df=-1)
    with pytest.raises(InputError, match="no term"):  # no term is in 50 to 55 documents
        docstring_corpus(
            tmp_path / "d.zarr", roots=[corpus_root], min_chars=1, min_df=50, max_df=55
        )
    assert list(tmp_path.iterdir()) == []


def test_standard_library_sample(tmp_path):
    """300 docstrings of the real standard library (a few dozen of its files are parsed)."""
    stdlib = sysconfig.get_paths()["stdlib"]
    store, vocabulary = docstring_corpus(
        tmp_path / "stdlib.zarr", roots=[stdlib], max_documents=300, min_df=2
    )
    assert store.shape == (300, len(vocabulary))
    assert len(vocabulary) >= 500
    matrix = store.to_scipy()
    assert (np.diff(matrix.indptr) > 0).mean() > 0.9  # nearly every document has terms
    assert matrix.nnz >= 300 * 10
    assert {"file", "path", "string"} <= set(vocabulary)
    titles = load_vocabulary(titles_path(tmp_path / "stdlib.zarr"))
    assert len(titles) == 300
    assert all("test" not in title.split(".") for title in titles)
