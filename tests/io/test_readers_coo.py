"""The external bucket sort behind the coordinate readers (bignmf.io.coo.coo_source)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bignmf import InputError
from bignmf.io.coo import coo_source, plan_cuts

ROOT = Path(__file__).resolve().parents[2]


def stream(source):
    """Concatenate a Source's slabs, checking the contract of every slab on the way."""
    m, n = source.shape
    slabs = list(source.blocks())
    for slab in slabs:
        assert type(slab) is sp.csr_matrix
        assert slab.shape[1] == n
        assert slab.dtype == source.dtype
        if slab.nnz:
            assert slab.indices.min() >= 0
            assert slab.indices.max() < n
    assert sum(s.shape[0] for s in slabs) == m
    out = sp.vstack(slabs, format="csr") if slabs else sp.csr_matrix((m, n), dtype=source.dtype)
    return out, slabs


def canonical(A, dtype=None):
    A = sp.csr_matrix(A, dtype=dtype or A.dtype, copy=True)
    A.sum_duplicates()
    A.eliminate_zeros()
    A.sort_indices()
    return A


def assert_same(B, A):
    B, A = canonical(B), canonical(A, dtype=B.dtype)
    assert B.shape == A.shape
    np.testing.assert_array_equal(B.indptr, A.indptr)
    np.testing.assert_array_equal(B.indices, A.indices)
    np.testing.assert_array_equal(B.data, A.data)


def entries(m=400, n=150, nnz=3000, seed=0, duplicates=True):
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, m, nnz)
    cols = rng.integers(0, n, nnz)
    if not duplicates:
        key = np.unique(rows * n + cols)
        rows, cols = key // n, key % n
    vals = rng.integers(1, 2**20, rows.size) / 16  # sums of duplicates exact in any order
    rows[rows == 7] = 8  # an empty row
    return rows, cols, vals


def ordered(rows, cols, vals, order, seed=0):
    if order == "row":
        idx = np.lexsort((cols, rows))
    elif order == "row-unsorted-cols":
        idx = np.argsort(rows, kind="stable")
    elif order == "column":
        idx = np.lexsort((rows, cols))
    else:
        idx = np.random.default_rng(seed).permutation(rows.size)
    return rows[idx], cols[idx], vals[idx]


def piecewise(rows, cols, vals, size, calls=None):
    def pieces():
        if calls is not None:
            calls.append(1)
        for s in range(0, rows.size, size):
            yield rows[s : s + size], cols[s : s + size], vals[s : s + size]

    return pieces


def tmp_files(directory):
    return sorted(p.name for p in Path(directory).rglob("*"))


@pytest.mark.parametrize("order", ["row", "row-unsorted-cols", "column", "random"])
@pytest.mark.parametrize(("memory_nnz", "slab_nnz"), [(10**6, 10**6), (500, 120), (97, 13)])
def test_every_order_gives_the_matrix(tmp_path, order, memory_nnz, slab_nnz):
    m, n = 400, 150
    rows, cols, vals = entries(m, n)
    A = sp.coo_matrix((vals, (rows, cols)), shape=(m, n))
    r, c, v = ordered(rows, cols, vals, order)
    calls = []
    src = coo_source(
        "t",
        (m, n),
        np.float64,
        piecewise(r, c, v, 211, calls),
        tmpdir=tmp_path,
        memory_nnz=memory_nnz,
        slab_nnz=slab_nnz,
    )
    B, slabs = stream(src)
    assert_same(B, A)
    assert B.nnz == rows.size  # duplicates are left for the writer to sum
    for slab in slabs:  # a slab exceeds slab_nnz only when it is a single row
        assert slab.nnz <= slab_nnz or slab.shape[0] == 1
    # a stream sorted by row is read once; any other order twice (count, then distribute)
    assert len(calls) == (1 if order.startswith("row") else 2)
    assert tmp_files(tmp_path) == []


def test_bucket_sort_emits_rows_sorted_by_column(tmp_path):
    rows, cols, vals = ordered(*entries(duplicates=False), "random")
    src = coo_source("t", (400, 150), np.float64, piecewise(rows, cols, vals, 100), memory_nnz=300)
    for slab in src.blocks():
        assert slab.has_sorted_indices


def test_row_sorted_false_goes_straight_to_two_passes(tmp_path):
    rows, cols, vals = ordered(*entries(), "row")
    calls = []
    src = coo_source(
        "t",
        (400, 150),
        np.float64,
        piecewise(rows, cols, vals, 100, calls),
        memory_nnz=200,
        row_sorted=False,
        tmpdir=tmp_path,
    )
    assert_same(stream(src)[0], sp.coo_matrix((vals, (rows, cols)), shape=(400, 150)))
    assert len(calls) == 2


def test_row_sorted_true_rejects_an_unsorted_stream():
    rows, cols, vals = ordered(*entries(), "random")
    src = coo_source(
        "unsorted.bin", (400, 150), np.float64, piecewise(rows, cols, vals, 100), row_sorted=True
    )
    with pytest.raises(InputError, match=r"unsorted\.bin: entries are not sorted by row"):
        stream(src)


def test_late_disorder_in_rows_not_yet_streamed_is_recovered(tmp_path):
    m, n = 400, 150
    rows, cols, vals = ordered(*entries(m, n), "row")
    late = rows >= 300  # the last rows come shuffled, after slabs were already yielded
    perm = np.random.default_rng(3).permutation(late.sum())
    r = np.r_[rows[~late], rows[late][perm]]
    c = np.r_[cols[~late], cols[late][perm]]
    v = np.r_[vals[~late], vals[late][perm]]
    calls = []
    src = coo_source(
        "t",
        (m, n),
        np.float64,
        piecewise(r, c, v, 50, calls),
        memory_nnz=200,
        slab_nnz=60,
        tmpdir=tmp_path,
    )
    assert_same(stream(src)[0], sp.coo_matrix((vals, (rows, cols)), shape=(m, n)))
    assert len(calls) == 2
    assert tmp_files(tmp_path) == []


def test_late_entry_of_a_streamed_row_asks_for_row_sorted_false(tmp_path):
    m, n = 400, 150
    rows, cols, vals = ordered(*entries(m, n), "row")
    # the first entry moved to the very end: row 0 comes back after everything was streamed
    r, c, v = np.r_[rows[1:], rows[:1]], np.r_[cols[1:], cols[:1]], np.r_[vals[1:], vals[:1]]
    kwargs = {"memory_nnz": 200, "slab_nnz": 60, "tmpdir": tmp_path}
    src = coo_source("late.mtx", (m, n), np.float64, piecewise(r, c, v, 50), **kwargs)
    with pytest.raises(InputError, match=r"late\.mtx: .*partly sorted.*row_sorted=False"):
        stream(src)
    src = coo_source(
        "late.mtx", (m, n), np.float64, piecewise(r, c, v, 50), row_sorted=False, **kwargs
    )
    assert_same(stream(src)[0], sp.coo_matrix((vals, (rows, cols)), shape=(m, n)))
    assert tmp_files(tmp_path) == []


def test_unsorted_stream_within_memory_nnz_is_never_a_problem():
    """Nothing is yielded before memory_nnz entries were seen in order."""
    m, n = 400, 150
    rows, cols, vals = ordered(*entries(m, n), "row")
    r, c, v = np.r_[rows[1:], rows[:1]], np.r_[cols[1:], cols[:1]], np.r_[vals[1:], vals[:1]]
    src = coo_source("t", (m, n), np.float64, piecewise(r, c, v, 50), memory_nnz=10**6)
    assert_same(stream(src)[0], sp.coo_matrix((vals, (rows, cols)), shape=(m, n)))


def test_values_none_are_ones_and_values_are_cast():
    rows, cols = np.array([2, 0, 2]), np.array([1, 1, 0])
    src = coo_source("t", (3, 2), np.float32, lambda: iter([(rows, cols, None)]))
    B, _ = stream(src)
    assert B.dtype == np.float32
    np.testing.assert_array_equal(B.toarray(), [[0, 1], [0, 0], [1, 1]])
    src = coo_source("t", (3, 2), np.int64, lambda: iter([(rows, cols, np.array([1.0, 2, 3]))]))
    assert stream(src)[0].dtype == np.int64


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (0, 0), (6, 4)])
def test_no_entries(shape):
    src = coo_source("t", shape, np.float64, lambda: iter([]))
    B, _ = stream(src)
    assert B.shape == shape
    assert B.nnz == 0
    src = coo_source("t", shape, np.float64, lambda: iter([]), row_sorted=False)
    assert stream(src)[0].nnz == 0


def test_runs_of_empty_rows_are_cut_into_bounded_slabs():
    m = 300_000
    rows, cols = np.array([5, m - 1]), np.array([0, 1])
    src = coo_source("t", (m, 2), np.float64, lambda: iter([(rows, cols, None)]), slab_nnz=10)
    B, slabs = stream(src)
    assert B.nnz == 2
    assert B[m - 1, 1] == 1
    assert max(s.shape[0] for s in slabs) <= 1 << 16


def test_index_out_of_range_is_named():
    src = coo_source("t.bin", (3, 3), np.float64, lambda: iter([([0, 3], [0, 0], [1.0, 1.0])]))
    with pytest.raises(InputError, match=r"t\.bin: piece 0: row index 3 outside \[0, 3\)"):
        stream(src)
    src = coo_source("t.bin", (3, 3), np.float64, lambda: iter([([0], [-1], [1.0])]))
    with pytest.raises(InputError, match=r"column index -1"):
        stream(src)
    src = coo_source("t.bin", (3, 3), np.float64, lambda: iter([([0, 1], [0], [1.0])]))
    with pytest.raises(InputError, match="2 rows, 1 columns and 1 values"):
        stream(src)


def test_a_stream_that_changes_between_passes_is_detected(tmp_path):
    rows, cols, vals = ordered(*entries(), "random")
    calls = []

    def pieces():
        calls.append(1)
        k = rows.size if len(calls) == 1 else rows.size - 10
        yield from piecewise(rows[:k], cols[:k], vals[:k], 100)()

    for memory_nnz in (100, 10**6):  # bucket files, and the in-memory sort
        calls.clear()
        src = coo_source(
            "t", (400, 150), np.float64, pieces, memory_nnz=memory_nnz, tmpdir=tmp_path
        )
        with pytest.raises(InputError, match="changed between passes"):
            stream(src)
    assert tmp_files(tmp_path) == []


def test_temporary_files_are_removed_on_error_and_on_close(tmp_path):
    rows, cols, vals = ordered(*entries(), "random")
    calls = []

    def failing():
        calls.append(1)
        for k, piece in enumerate(piecewise(rows, cols, vals, 100)()):
            if len(calls) == 2 and k == 20:
                raise OSError("disk on fire")
            yield piece

    src = coo_source("t", (400, 150), np.float64, failing, memory_nnz=300, tmpdir=tmp_path)
    with pytest.raises(OSError, match="disk on fire"):
        stream(src)
    assert tmp_files(tmp_path) == []

    src = coo_source(
        "t",
        (400, 150),
        np.float64,
        piecewise(rows, cols, vals, 100),
        memory_nnz=300,
        slab_nnz=50,
        tmpdir=tmp_path,
    )
    it = src.blocks()
    next(it)
    assert any(name.startswith("bignmf-sort-") for name in tmp_files(tmp_path))
    it.close()
    assert tmp_files(tmp_path) == []


def test_many_buckets_with_few_open_files(tmp_path, monkeypatch):
    import bignmf.io.coo as coo

    monkeypatch.setattr(coo, "MAX_OPEN_FILES", 3)
    m, n = 400, 150
    rows, cols, vals = ordered(*entries(m, n, nnz=5000), "random")
    src = coo_source(
        "t", (m, n), np.float64, piecewise(rows, cols, vals, 333), memory_nnz=60, tmpdir=tmp_path
    )
    assert_same(stream(src)[0], sp.coo_matrix((vals, (rows, cols)), shape=(m, n)))
    assert tmp_files(tmp_path) == []


def test_the_source_can_be_read_twice(tmp_path):
    rows, cols, vals = ordered(*entries(), "column")
    src = coo_source("t", (400, 150), np.float64, piecewise(rows, cols, vals, 100), memory_nnz=300)
    first, second = stream(src)[0], stream(src)[0]
    assert_same(first, second)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    m=st.integers(1, 40),
    n=st.integers(1, 30),
    nnz=st.integers(0, 300),
    piece=st.integers(1, 80),
    memory_nnz=st.integers(1, 400),
    slab_nnz=st.integers(1, 100),
    order=st.sampled_from(["row", "row-unsorted-cols", "column", "random"]),
    seed=st.integers(0, 2**16),
)
def test_any_stream_any_sizes(m, n, nnz, piece, memory_nnz, slab_nnz, order, seed):
    rng = np.random.default_rng(seed)
    rows, cols = rng.integers(0, m, nnz), rng.integers(0, n, nnz)
    vals = rng.integers(1, 5, nnz).astype(np.float64)
    r, c, v = ordered(rows, cols, vals, order, seed)
    kwargs = {"memory_nnz": memory_nnz, "slab_nnz": slab_nnz}
    src = coo_source("t", (m, n), np.float64, piecewise(r, c, v, piece), **kwargs)
    try:
        B, slabs = stream(src)
        failure = None
    except InputError as err:
        failure = str(err)
    if failure is not None:
        # a stream found out of order only after memory_nnz entries in order, with entries of
        # rows already yielded: it must be read again, with row_sorted=False
        assert "row_sorted=False" in failure
        assert nnz > memory_nnz
        assert order in ("column", "random")
        src = coo_source(
            "t", (m, n), np.float64, piecewise(r, c, v, piece), row_sorted=False, **kwargs
        )
        B, slabs = stream(src)
    assert B.nnz == nnz
    assert_same(B, sp.coo_matrix((vals, (rows, cols)), shape=(m, n)))
    assert all(s.nnz <= slab_nnz or s.shape[0] == 1 for s in slabs)


def test_plan_cuts():
    cum = np.array([0, 5, 5, 5, 12, 13, 20])
    assert plan_cuts(cum, 6) == [0, 3, 4, 5, 6]  # row 3 alone holds 7 > 6
    assert plan_cuts(cum, 100) == [0, 6]
    assert plan_cuts(cum, 100, max_rows=4) == [0, 4, 6]
    assert plan_cuts(np.array([0]), 10) == [0]


# --------------------------------------------------------------------------- memory

MEMORY_SCRIPT = textwrap.dedent(
    """
    import sys
    from bignmf.io.mtx import from_mtx

    def status(field):  # kB, from the kernel's accounting of this process's memory
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))

    path, small = sys.argv[1], sys.argv[2]
    kwargs = dict(slab_nnz=50_000, memory_nnz=100_000)
    for slab in from_mtx(small, slab_nnz=10, memory_nnz=20).blocks():  # warm up every code path
        pass
    base = status("VmRSS")
    try:  # restart the high-water mark from here (ru_maxrss would count the parent's, too)
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    nnz, total = 0, 0.0
    for slab in from_mtx(path, **kwargs).blocks():
        nnz += slab.nnz
        total += float(slab.data.sum())
    print(nnz, repr(total), (status("VmHWM") - base) * 1024)
    """
)


def write_shuffled_mtx(path, m, n, nnz, seed):
    """A Matrix Market file whose entries are in random order, and its matrix."""
    import scipy.io

    rng = np.random.default_rng(seed)
    key = np.unique(rng.integers(0, m * n, int(nnz * 1.02)))[:nnz]
    rng.shuffle(key)
    A = sp.coo_matrix((rng.random(key.size) + 0.5, (key // n, key % n)), shape=(m, n))
    scipy.io.mmwrite(path, A)  # writes the COO entries in their (shuffled) order
    return A


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in kB is Linux's")
def test_memory_stays_bounded_on_a_shuffled_mtx(tmp_path):
    """2M shuffled entries (a 60 MB file) through the bucket sort in a 12 MB budget."""
    budget = 12 * 2**20
    big, small = tmp_path / "big.mtx", tmp_path / "small.mtx"
    A = write_shuffled_mtx(big, 100_000, 20_000, 2_000_000, seed=1)
    write_shuffled_mtx(small, 50, 40, 300, seed=2)
    assert big.stat().st_size >= 4 * budget
    with open(big) as fh:  # really shuffled
        fh.readline(), fh.readline()
        first_rows = [int(fh.readline().split()[0]) for _ in range(1000)]
    assert np.any(np.diff(first_rows) < 0)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(big), str(small)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    nnz, total, used = proc.stdout.split()
    assert int(nnz) == A.nnz
    assert float(total) == pytest.approx(A.data.sum(), rel=1e-12)
    assert 0 < int(used) < budget, f"peak RSS grew by {int(used) / 2**20:.1f} MiB"
