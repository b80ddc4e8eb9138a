"""Real-text datasets built offline: the docstrings of the installed Python modules.

Every machine that runs bignmf has a corpus of English technical prose on disk: the docstrings
of the standard library and of the installed packages. :func:`docstring_corpus` turns them into
a documents × terms count matrix, so that ``bignmf fit`` has real text to find topics in ("array
dtype shape axis", "file path directory", "thread lock queue"...) with no download:

* :func:`docstring_documents` finds the ``.py`` files under the roots (by default the ``stdlib``
  and ``purelib`` directories of :func:`sysconfig.get_paths`), parses each with :mod:`ast` (no
  module is imported, so nothing runs) and yields the docstrings of its module, classes and
  functions as ``(name, text)`` pairs, named ``module.qualname``.
* :func:`docstring_corpus` tokenises them (lowercase words of two letters or more, less
  :data:`STOP_WORDS`), keeps the terms within document-frequency limits and writes the term
  counts to a store, with the vocabulary and the document names in two text files beside it.

Files beside the store
----------------------
A store is a Zarr directory that holds nothing else, so the two text files go next to it, named
after it (see :func:`vocabulary_path` and :func:`titles_path`)::

    docs.zarr/               the matrix: one row per document, one column per term
    docs.zarr.vocab.txt      the terms, one per line: line j names column j
    docs.zarr.titles.txt     the document names, one per line: line i names row i

Both are UTF-8 with ``\\n`` line ends; :func:`load_vocabulary` reads either.
"""

from __future__ import annotations

import ast
import gc
import hashlib
import os
import re
import sysconfig
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from itertools import islice
from numbers import Integral, Real
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from bignmf.errors import InputError, StoreExistsError
from bignmf.io.vocabulary import load_vocabulary, titles_path, vocabulary_path
from bignmf.types import Source

if TYPE_CHECKING:
    from bignmf.store.csr import CSRStore

__all__ = [
    "SLAB_DOCUMENTS",
    "STOP_WORDS",
    "docstring_corpus",
    "docstring_documents",
    "load_vocabulary",
    "titles_path",
    "tokenize",
    "vocabulary_path",
]

#: Documents per CSR slab streamed to :func:`bignmf.store.csr.write_matrix`.
SLAB_DOCUMENTS = 2000

#: Common English function words (and the stubs the tokeniser leaves of contractions: "don't"
#: gives "don").
ENGLISH_STOP_WORDS = (
    "about",
    "above",
    "after",
    "again",
    "against",
    "all",
    "almost",
    "along",
    "already",
    "also",
    "although",
    "always",
    "am",
    "among",
    "an",
    "and",
    "another",
    "any",
    "anyone",
    "anything",
    "anyway",
    "anywhere",
    "are",
    "aren",
    "around",
    "as",
    "at",
    "be",
    "became",
    "because",
    "become",
    "becomes",
    "been",
    "before",
    "being",
    "below",
    "between",
    "both",
    "but",
    "by",
    "can",
    "cannot",
    "could",
    "couldn",
    "did",
    "didn",
    "do",
    "does",
    "doesn",
    "doing",
    "don",
    "done",
    "down",
    "during",
    "each",
    "either",
    "else",
    "enough",
    "etc",
    "even",
    "ever",
    "every",
    "few",
    "for",
    "from",
    "further",
    "had",
    "hadn",
    "has",
    "hasn",
    "have",
    "haven",
    "having",
    "he",
    "her",
    "here",
    "hers",
    "herself",
    "him",
    "himself",
    "his",
    "how",
    "however",
    "ie",
    "if",
    "in",
    "into",
    "is",
    "isn",
    "it",
    "its",
    "itself",
    "just",
    "least",
    "less",
    "ll",
    "many",
    "may",
    "me",
    "might",
    "more",
    "most",
    "much",
    "must",
    "my",
    "myself",
    "neither",
    "never",
    "no",
    "nor",
    "not",
    "now",
    "of",
    "off",
    "often",
    "on",
    "once",
    "only",
    "onto",
    "or",
    "other",
    "others",
    "otherwise",
    "our",
    "ours",
    "ourselves",
    "out",
    "over",
    "own",
    "per",
    "perhaps",
    "please",
    "rather",
    "re",
    "same",
    "several",
    "she",
    "should",
    "shouldn",
    "since",
    "so",
    "some",
    "something",
    "sometimes",
    "still",
    "such",
    "than",
    "that",
    "the",
    "their",
    "theirs",
    "them",
    "themselves",
    "then",
    "there",
    "therefore",
    "these",
    "they",
    "this",
    "those",
    "though",
    "through",
    "thus",
    "to",
    "together",
    "too",
    "toward",
    "towards",
    "under",
    "unless",
    "until",
    "up",
    "upon",
    "us",
    "ve",
    "very",
    "via",
    "vs",
    "was",
    "wasn",
    "we",
    "well",
    "were",
    "weren",
    "what",
    "whatever",
    "when",
    "whenever",
    "where",
    "whether",
    "which",
    "while",
    "who",
    "whoever",
    "whole",
    "whom",
    "whose",
    "why",
    "will",
    "with",
    "within",
    "without",
    "won",
    "would",
    "wouldn",
    "yet",
    "you",
    "your",
    "yours",
    "yourself",
    "yourselves",
)

#: Words of docstring markup and Python boilerplate that say nothing of the topic.
CODE_STOP_WORDS = (
    "arg",
    "args",
    "argument",
    "arguments",
    "attr",
    "autosummary",
    "bool",
    "cls",
    "code",
    "com",
    "currentmodule",
    "default",
    "defaults",
    "doc",
    "eg",
    "example",
    "examples",
    "false",
    "float",
    "func",
    "given",
    "https",
    "int",
    "kwargs",
    "like",
    "meth",
    "none",
    "note",
    "notes",
    "obj",
    "one",
    "optional",
    "param",
    "parameter",
    "parameters",
    "params",
    "py",
    "raise",
    "raises",
    "ref",
    "res",
    "return",
    "returned",
    "returns",
    "rtype",
    "see",
    "seealso",
    "self",
    "str",
    "todo",
    "toctree",
    "true",
    "type",
    "types",
    "use",
    "used",
    "uses",
    "using",
    "value",
    "values",
    "versionadded",
    "versionchanged",
    "www",
    "xxx",
    "yield",
    "yields",
    # import aliases of code examples ("np.array", "pd.DataFrame"), not words
    "np",
    "pd",
    "plt",
    "nx",
    "mp",
    "sp",
    "tf",
)

#: Terms :func:`tokenize` drops: :data:`ENGLISH_STOP_WORDS` and :data:`CODE_STOP_WORDS`.
STOP_WORDS = frozenset(ENGLISH_STOP_WORDS) | frozenset(CODE_STOP_WORDS)

_WORD = re.compile(r"[a-z][a-z]+")
_SKIPPED_DIRECTORIES = frozenset({"__pycache__", "test", "tests", "idle_test", "_vendor"})
_DEFINITIONS = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
_SCOPES = (ast.Module, *_DEFINITIONS)
_BODIES = ("body", "handlers", "cases", "orelse", "finalbody")  # the fields holding statements
_COMPOUND = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.With, ast.AsyncWith, ast.Try)
_COMPOUND += (ast.TryStar, ast.excepthandler, ast.Match, ast.match_case)  # hold bodies


# --------------------------------------------------------------------------------------------
# Finding the module files
# --------------------------------------------------------------------------------------------


def _default_roots() -> list[str]:
    paths = sysconfig.get_paths()
    return [paths["stdlib"], paths["purelib"]]


def _is_test_file(stem: str) -> bool:
    return stem.startswith("test_") or stem.endswith("_test") or stem == "conftest"


def _walk_root(root: str, other_roots: set[str]) -> Iterator[tuple[str, str]]:
    """``(path, module name)`` of the candidate files under one root (a real path).

    Directories that cannot be packages (``site-packages``, ``*.dist-info``...), tests,
    ``__pycache__``, vendored copies and the other roots (walked on their own, so that their
    modules get their proper names) are not entered, nor are links to directories, so every
    directory walked is a real path and every file is found once.
    """
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [
            d
            for d in dirnames
            if d.isidentifier()
            and d not in _SKIPPED_DIRECTORIES
            and os.path.join(dirpath, d) not in other_roots
        ]
        package = Path(os.path.relpath(dirpath, root)).parts if dirpath != root else ()
        for filename in filenames:
            stem, suffix = os.path.splitext(filename)
            if suffix != ".py" or not stem.isidentifier() or _is_test_file(stem):
                continue
            parts = package if stem == "__init__" else (*package, stem)
            yield os.path.join(dirpath, filename), ".".join(parts) or os.path.basename(root)


def _module_files(roots: Iterable[Any] | None) -> list[tuple[str, str]]:
    """``(path, module name)`` of every candidate file under the roots, sorted by path."""
    real_roots = {os.path.realpath(root) for root in (_default_roots() if roots is None else roots)}
    files = []
    for root in real_roots:
        if os.path.isdir(root):
            files.extend(_walk_root(root, real_roots - {root}))
    files.sort()
    return files


# --------------------------------------------------------------------------------------------
# Docstrings of one file
# --------------------------------------------------------------------------------------------


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: syntax trees are acyclic, and the collections their
    many nodes would trigger (walking every object of the process) take a third of the time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _parse(path: str) -> ast.Module | None:
    """The syntax tree of a file, or None if it cannot be read or is not valid Python."""
    try:
        with open(path, "rb") as file:
            source = file.read()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences and the like
            return ast.parse(source, filename=str(path))
    except (OSError, SyntaxError, ValueError, RecursionError):
        return None


def _named_docstrings(tree: ast.Module, module: str) -> Iterator[tuple[str, str]]:
    """``(module.qualname, docstring)`` of the module and of every class and function in it.

    In source order (depth first), with no recursion. Only statement bodies are searched (a
    definition is a statement), so definitions nested in ``if``, ``try``, ``with``... blocks are
    found and expressions are never walked.
    """
    stack: list[tuple[ast.AST, str]] = [(tree, module)]
    while stack:
        node, name = stack.pop()
        if isinstance(node, _SCOPES):
            text = ast.get_docstring(node, clean=True)
            if text:
                yield name, text
        children = []
        for field in _BODIES:
            for child in getattr(node, field, ()):
                if isinstance(child, _DEFINITIONS):
                    children.append((child, f"{name}.{child.name}"))
                elif isinstance(child, _COMPOUND):
                    children.append((child, name))
        stack.extend(reversed(children))


def _file_documents(path: str, module: str, min_chars: int) -> list[tuple[str, str]]:
    """The docstrings of one file at least ``min_chars`` long; none if it does not parse."""
    with _gc_paused():
        tree = _parse(path)
        if tree is None:
            return []
        documents = _named_docstrings(tree, module)
        found = [(name, text) for name, text in documents if len(text) >= min_chars]
        del tree, documents  # freed while the collector is paused: it never sees the nodes
    return found


def _is_new(text: str, seen: set[bytes]) -> bool:
    """Whether ``text`` was not seen before (remembered by a 16-byte digest)."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
    if digest in seen:
        return False
    seen.add(digest)
    return True


def _all_documents(files: list[tuple[str, str]], min_chars: int) -> Iterator[tuple[str, str]]:
    seen: set[bytes] = set()
    for path, module in files:
        for name, text in _file_documents(path, module, min_chars):
            if _is_new(text, seen):
                yield name, text


def _sampled_documents(
    files: list[tuple[str, str]], min_chars: int, max_documents: int, seed: int
) -> list[tuple[str, str]]:
    """The first ``max_documents`` documents of the files visited in a seeded random order,
    then put back in the order of the files (and of the source within a file)."""
    seen: set[bytes] = set()
    picked: list[tuple[int, int, str, str]] = []
    for f in np.random.default_rng(seed).permutation(len(files)):
        for position, (name, text) in enumerate(_file_documents(*files[f], min_chars)):
            if _is_new(text, seen):
                picked.append((int(f), position, name, text))
                if len(picked) == max_documents:
                    break
        if len(picked) == max_documents:
            break
    picked.sort(key=lambda item: item[:2])
    return [(name, text) for _, _, name, text in picked]


def _check_count(name: str, value: Any, low: int, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
        raise InputError(f"{name} must be an integer >= {low}, got {value!r}")


# --------------------------------------------------------------------------------------------
# Tokens and vocabulary
# --------------------------------------------------------------------------------------------


def tokenize(text: str) -> list[str]:
    """The terms of a text, in order: lowercase ``[a-z][a-z]+`` words not in :data:`STOP_WORDS`.

    Parameters
    ----------
    text : str

    Returns
    -------
    list of str
        ``"Return the array's dtype"`` gives ``["array", "dtype"]``; identifiers split at
        underscores and digits (``"read_csv2"`` gives ``["read", "csv"]``).
    """
    return [word for word in _WORD.findall(text.lower()) if word not in STOP_WORDS]


def _document_limit(name: str, value: Any, n_documents: int) -> float:
    """A document-frequency limit as a count: integers are counts, floats shares of documents."""
    if isinstance(value, Integral) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if isinstance(value, Real) and not isinstance(value, Integral) and 0.0 <= value <= 1.0:
        return float(value) * n_documents
    raise InputError(f"{name} must be an integer >= 0 or a float in [0, 1], got {value!r}")


def _select_vocabulary(
    df: Counter, tf: Counter, n_documents: int, min_df: Any, max_df: Any, max_features: Any
) -> list[str]:
    """The terms in ``min_df <= df <= max_df``, the ``max_features`` most frequent, sorted."""
    low = _document_limit("min_df", min_df, n_documents)
    high = _document_limit("max_df", max_df, n_documents)
    if high < low:
        raise InputError(
            f"max_df={max_df!r} allows fewer documents ({high:g}) than min_df={min_df!r} ({low:g})"
        )
    kept = [term for term, count in df.items() if low <= count <= high]
    if max_features is not None and len(kept) > max_features:
        kept = sorted(kept, key=lambda term: (-tf[term], term))[:max_features]
    return sorted(kept)


# --------------------------------------------------------------------------------------------
# The two passes
# --------------------------------------------------------------------------------------------


def _first_pass(
    documents: Iterable[tuple[str, str]], tokens_file: Path, titles_file: Path
) -> tuple[int, Counter, Counter]:
    """Tokenise the documents once, spooling their terms and names to files.

    Returns the number of documents, the document frequency and the total frequency of every
    term. Memory: the two counters, ``O(vocabulary)``.
    """
    df: Counter = Counter()
    tf: Counter = Counter()
    n_documents = 0
    with (
        open(tokens_file, "w", encoding="utf-8", newline="\n") as tokens,
        open(titles_file, "w", encoding="utf-8", newline="\n") as titles,
    ):
        for name, text in documents:
            terms = tokenize(text)
            counts = Counter(terms)
            df.update(counts.keys())
            tf.update(counts)
            tokens.write(" ".join(terms) + "\n")
            titles.write(name + "\n")
            n_documents += 1
    return n_documents, df, tf


def _slab(lines: list[str], index: dict[str, int], n_terms: int) -> sp.csr_matrix:
    """The term counts of some documents (one line of spooled terms each) as a CSR slab."""
    lengths = []
    columns: list[int] = []
    for line in lines:
        ids = [index[term] for term in line.split() if term in index]
        lengths.append(len(ids))
        columns.extend(ids)
    indptr = np.zeros(len(lines) + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    data = np.ones(len(columns), dtype=np.float32)
    slab = sp.csr_matrix(
        (data, np.asarray(columns, dtype=np.int32), indptr), shape=(len(lines), n_terms)
    )
    slab.sum_duplicates()  # the counts: duplicates summed, columns sorted
    return slab


def _iter_slabs(
    tokens_file: Path, index: dict[str, int], n_terms: int, slab_documents: int
) -> Iterator[sp.csr_matrix]:
    """Second pass: the spooled documents as consecutive CSR slabs of term counts."""
    with open(tokens_file, encoding="utf-8", newline="\n") as tokens:
        while lines := list(islice(tokens, slab_documents)):
            yield _slab(lines, index, n_terms)


def _write_lines(path: Path, lines: Iterable[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as out:
        out.writelines(line + "\n" for line in lines)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def docstring_documents(
    *,
    max_documents: int | None = None,
    min_chars: int = 200,
    roots: Iterable[str | os.PathLike] | None = None,
    seed: int = 0,
) -> Iterator[tuple[str, str]]:
    """The docstrings of the Python modules under some directories, read without importing.

    Every ``.py`` file under the roots is parsed with :mod:`ast`; the docstrings of its module,
    classes and functions (methods and nested definitions included) are the documents. Skipped:
    directories named ``tests``, ``test``, ``idle_test``, ``__pycache__`` or ``_vendor`` (vendored
    copies of other packages), directories whose names are not identifiers (``site-packages``
    seen from the standard library, ``*.dist-info``...), test files (``test_*.py``,
    ``*_test.py``, ``conftest.py``), files that cannot be read or parsed, docstrings shorter
    than ``min_chars`` characters and exact duplicates of a docstring already yielded.

    Parameters
    ----------
    max_documents : int, optional
        At most this many documents. ``None`` (default) yields them all, lazily, file after file
        in the order of their paths. Otherwise the files are visited in a random order drawn from
        ``seed`` and the first ``max_documents`` documents found are kept (whole files, the last
        one cut short, so a sample spread over all the packages), then yielded in the order of
        their paths: memory holds these documents, and the files beyond are never parsed.
    min_chars : int, default 200
        Shortest docstring kept, in characters, once cleaned of indentation
        (:func:`ast.get_docstring`).
    roots : iterable of path, optional
        Directories to search, each the top of an import path (its ``a/b.py`` is module
        ``a.b``). Default: the ``stdlib`` and ``purelib`` paths of :func:`sysconfig.get_paths`.
        Missing directories are ignored; a root inside another is searched as its own root only.
    seed : int, default 0
        Seed of the sample of files when ``max_documents`` is given; unused otherwise.

    Returns
    -------
    iterator of (str, str)
        ``(name, text)``: the name is ``module.qualname`` (``json.decoder.JSONDecoder.decode``),
        the text the cleaned docstring. The same files and arguments give the same documents in
        the same order. Of duplicate texts, the copy met first in the visiting order is kept.

    Raises
    ------
    bignmf.errors.InputError
        If ``max_documents``, ``min_chars`` or ``seed`` is not a non-negative integer (or
        ``max_documents`` is 0).
    """
    _check_count("max_documents", max_documents, 1, allow_none=True)
    _check_count("min_chars", min_chars, 0)
    _check_count("seed", seed, 0)
    files = _module_files(roots)
    if max_documents is None:
        return _all_documents(files, int(min_chars))
    return iter(_sampled_documents(files, int(min_chars), int(max_documents), int(seed)))


def docstring_corpus(
    dst: str | os.PathLike,
    *,
    max_documents: int | None = 20000,
    min_df: float = 5,
    max_df: float = 0.5,
    max_features: int | None = 20000,
    min_chars: int = 200,
    roots: Iterable[str | os.PathLike] | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: Any = None,
) -> tuple[CSRStore, list[str]]:
    """Write the documents × terms counts of the installed docstrings to a store.

    Documents come from :func:`docstring_documents`; their terms from :func:`tokenize`. A first
    pass counts the document frequency of every term and spools the terms to a temporary file
    beside ``dst``; the vocabulary is the terms within ``[min_df, max_df]`` (the
    ``max_features`` most frequent of them, ties broken alphabetically), sorted alphabetically.
    A second pass streams the counts to :func:`bignmf.store.csr.write_matrix` in slabs of
    :data:`SLAB_DOCUMENTS` rows. Memory: the counters (``O(vocabulary)``) and one slab, plus the
    sampled documents when ``max_documents`` is given.

    Parameters
    ----------
    dst : str or path-like
        Where to write the store. The vocabulary goes to ``<dst>.vocab.txt`` and the document
        names to ``<dst>.titles.txt``, beside it (:func:`vocabulary_path`, :func:`titles_path`).
    max_documents : int or None, default 20000
        Passed to :func:`docstring_documents`: a seeded sample of this many documents, or all of
        them for ``None``.
    min_df : int or float, default 5
        Drop the terms found in fewer documents: an integer is a number of documents, a float in
        ``[0, 1]`` a share of them.
    max_df : int or float, default 0.5
        Drop the terms found in more documents (integer: a number, float: a share).
    max_features : int or None, default 20000
        Keep at most this many terms, those most frequent over the whole corpus.
    min_chars, roots, seed
        Passed to :func:`docstring_documents`.
    overwrite : bool, default False
        Replace an existing store at ``dst`` (and the files beside it).
    progress : callable, optional
        Passed to :func:`bignmf.store.csr.write_matrix`: called with the number of rows written
        after each row block.

    Returns
    -------
    store : bignmf.store.csr.CSRStore
        Row ``i`` is document ``i`` (line ``i`` of the titles file), column ``j`` term ``j`` of
        the vocabulary; the values are float32 term counts. A document whose terms all fell out
        of the vocabulary is an empty row.
    vocabulary : list of str
        The terms, as written to ``<dst>.vocab.txt``.

    Raises
    ------
    bignmf.errors.StoreExistsError
        If ``dst`` exists and ``overwrite`` is false (checked before any work).
    bignmf.errors.InputError
        If the arguments are invalid, no document is found or no term is left.
    """
    from bignmf.store.csr import write_matrix

    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise StoreExistsError(dst)
    _check_count("max_features", max_features, 1, allow_none=True)
    _document_limit("min_df", min_df, 0)  # fail before the work, not after
    _document_limit("max_df", max_df, 0)
    documents = docstring_documents(
        max_documents=max_documents, min_chars=min_chars, roots=roots, seed=seed
    )
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dst.name}.corpus-", dir=dst.parent) as work:
        tokens_file, titles_file = Path(work, "tokens.txt"), Path(work, "titles.txt")
        n_documents, df, tf = _first_pass(documents, tokens_file, titles_file)
        if n_documents == 0:
            raise InputError(f"no docstring of {min_chars} characters or more under the roots")
        vocabulary = _select_vocabulary(df, tf, n_documents, min_df, max_df, max_features)
        if not vocabulary:
            raise InputError(
                f"no term of the {len(df)} in {n_documents} documents is within "
                f"min_df={min_df!r} and max_df={max_df!r}"
            )
        index = {term: j for j, term in enumerate(vocabulary)}
        source = Source(
            name=f"<docstrings: {n_documents} documents x {len(vocabulary)} terms>",
            shape=(n_documents, len(vocabulary)),
            dtype=np.dtype(np.float32),
            blocks=partial(_iter_slabs, tokens_file, index, len(vocabulary), SLAB_DOCUMENTS),
        )
        vocabulary_file = Path(work, "vocab.txt")
        _write_lines(vocabulary_file, vocabulary)
        store = write_matrix(source, dst, overwrite=overwrite, progress=progress)
        os.replace(vocabulary_file, vocabulary_path(dst))
        os.replace(titles_file, titles_path(dst))
    return store, vocabulary
