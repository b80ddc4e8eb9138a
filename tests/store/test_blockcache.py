"""Decoded row blocks of A kept in memory between passes (``cache_a``): same results, bounded."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import bignmf
from bignmf.store import blockcache
from bignmf.store.blockcache import CachedMatrix, parse_budget

K = 4


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    A = sp.random(2400, 180, density=0.05, format="csr", random_state=3, dtype=np.float64)
    return bignmf.convert(A, tmp_path_factory.mktemp("data") / "A.zarr", block_rows=300)


def _delta(before: dict, after: dict) -> dict:
    return {key: after[key] - before[key] for key in ("hits", "misses", "refused")}


@pytest.mark.parametrize(
    ("given", "parsed"),
    [(None, None), (0, None), ("0", None), (1000, 1000), ("4GiB", 4 * 2**30),
     ("2 MB", 2_000_000), ("auto", "auto"), (" AUTO ", "auto")],
)  # fmt: skip
def test_budget_is_parsed(given, parsed):
    assert parse_budget(given) == parsed


@pytest.mark.parametrize("bad", ["4XB", "lots", -1, 1.5, True])
def test_a_bad_budget_is_refused_with_its_value(bad):
    with pytest.raises(ValueError, match="cache_a"):
        parse_budget(bad)


def test_room_is_what_a_worker_has_below_its_spill_and_pause_thresholds():
    assert blockcache.has_room(20, ceiling=100, rss=80)
    assert not blockcache.has_room(21, ceiling=100, rss=80)
    assert blockcache.has_room(10**12, ceiling=None)  # not in a worker with a memory limit


def test_a_workers_ceiling_is_its_lowest_memory_threshold(dask_client):
    for address, info in dask_client.scheduler_info()["workers"].items():
        ceiling = dask_client.submit(blockcache._worker_ceiling, workers=[address], pure=False)
        ceilings = {address: ceiling.result()}  # in a task, as the reads are
        if info["memory_limit"]:
            assert ceilings[address] == int(0.6 * info["memory_limit"])  # distributed's target
        else:
            assert ceilings[address] is None


def test_only_stores_are_cached(store):
    memory = bignmf.store.matrix.MemoryMatrix(store.to_scipy())
    assert blockcache.cached(memory, 10**9) is memory
    assert blockcache.cached(store, None) is store
    kept = blockcache.cached(store, 1000)
    assert isinstance(kept, CachedMatrix)
    assert kept.budget == 1000


@pytest.mark.parametrize("scheduler", ["sync", "threads"])
@pytest.mark.parametrize(
    ("solver", "column_chunks"), [("hals", 1), ("mu", 1), ("hals", 3)], ids=["hals", "mu", "2pass"]
)
def test_results_are_unchanged_and_each_block_is_decoded_once(
    store, scheduler, solver, column_chunks
):
    options = dict(solver=solver, init="nndsvda", random_state=0, max_iter=6, tol=0,
                   scheduler=scheduler,
                   column_chunks=column_chunks)  # fmt: skip
    plain = bignmf.nmf(store, K, **options)
    before = blockcache.stats()
    held = []
    cached = bignmf.nmf(store, K, cache_a="64MiB", callback=lambda info: held.append(
        blockcache.stats()["bytes"]), **options)  # fmt: skip
    counts = _delta(before, blockcache.stats())
    assert cached.H.tobytes() == plain.H.tobytes()
    assert np.asarray(cached.W).tobytes() == np.asarray(plain.W).tobytes()
    assert counts["misses"] == store.n_blocks
    assert counts["refused"] == 0
    assert counts["hits"] > 6 * store.n_blocks  # every later pass, init's passes included
    whole = sum(blockcache._block_bytes(store, i) for i in range(store.n_blocks))
    assert held
    assert all(size == whole for size in held)
    assert blockcache.stats()["bytes"] == 0  # dropped when the fit ended


def test_the_budget_is_never_exceeded_and_blocks_beyond_it_are_read(store):
    one = max(blockcache._block_bytes(store, i) for i in range(store.n_blocks))
    budget = 3 * one
    plain = bignmf.nmf(store, K, init="random", random_state=0, max_iter=5, tol=0,
                       scheduler="threads")  # fmt: skip
    before = blockcache.stats()
    held = []
    cached = bignmf.nmf(store, K, init="random", random_state=0, max_iter=5, tol=0,
                        scheduler="threads", cache_a=budget,
                        callback=lambda info: held.append(blockcache.stats()))  # fmt: skip
    counts = _delta(before, blockcache.stats())
    assert cached.H.tobytes() == plain.H.tobytes()
    assert all(0 < s["bytes"] <= budget for s in held)
    assert all(s["blocks"] == 3 for s in held)
    assert counts["refused"] == counts["misses"] - 3 > 0


def test_cached_blocks_are_read_only_and_equal_to_the_store(store):
    reads = CachedMatrix(store, 10**9)
    try:
        for i in range(store.n_blocks):
            first, again = reads.read_block(i), reads.read_block(i, store.new_buffers())
            assert first is again
            assert not first.data.flags.writeable
            assert not first.indices.flags.writeable
            assert (first != store.read_block(i)).nnz == 0
    finally:
        assert blockcache.drop(store.path, store.key) > 0
    assert blockcache.drop(store.path, store.key) == 0


def test_a_rewritten_store_is_not_served_from_the_cache(tmp_path):
    A = sp.random(600, 50, density=0.1, format="csr", random_state=0)
    store = bignmf.convert(A, tmp_path / "A.zarr", block_rows=200)
    reads = CachedMatrix(store, 10**9)
    try:
        assert (reads.read_block(1) != A[200:400]).nnz == 0
        B = sp.random(600, 50, density=0.1, format="csr", random_state=1)
        rewritten = bignmf.convert(B, tmp_path / "A.zarr", block_rows=200, overwrite=True)
        again = CachedMatrix(rewritten, 10**9).read_block(1)
        assert (again != B[200:400]).nnz == 0
    finally:
        blockcache.drop(store.path, store.key)


def test_a_resumed_run_keeps_the_cache_setting(tmp_path, store):
    run = tmp_path / "run"
    bignmf.nmf(store, K, init="random", random_state=0, max_iter=2, tol=0, scheduler="threads",
               checkpoint_dir=run, checkpoint_every=1, cache_a="32MiB")  # fmt: skip
    before = blockcache.stats()
    bignmf.resume(run, max_iter=4)
    assert _delta(before, blockcache.stats())["hits"] > 0
    before = blockcache.stats()
    bignmf.resume(run, max_iter=6, cache_a=None)
    assert _delta(before, blockcache.stats())["hits"] == 0


def test_workers_keep_blocks_during_the_fit_and_drop_them_after(tmp_path, store, dask_client):
    plain = bignmf.nmf(store, K, init="random", random_state=0, max_iter=4, tol=0,
                       scheduler="threads")  # fmt: skip
    during = []

    def look(info):
        during.append(dask_client.run(blockcache.stats))

    cached = bignmf.nmf(store, K, init="random", random_state=0, max_iter=4, tol=0,
                        scheduler=dask_client, workdir=tmp_path, cache_a="auto",
                        callback=look)  # fmt: skip
    assert cached.H.tobytes() == plain.H.tobytes()
    assert np.asarray(cached.W).tobytes() == np.asarray(plain.W).tobytes()
    whole = sum(blockcache._block_bytes(store, i) for i in range(store.n_blocks))
    # every block is held by some worker, no worker holds more than the matrix
    assert all(sum(s["bytes"] for s in seen.values()) >= whole for seen in during)
    assert all(s["bytes"] <= whole for seen in during for s in seen.values())
    assert all(s["bytes"] == 0 for s in dask_client.run(blockcache.stats).values())


PEAK_SCRIPT = """
import sys
import bignmf

def peak():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))

path, budget = sys.argv[1], sys.argv[2]
options = dict(init="random", random_state=0, tol=0, scheduler="threads", w_storage="memory")
# Imports, pools and buffers, without the cache: a warm-up that held the cache would leave its
# freed blocks resident in malloc's arenas, and the measured fit would not grow at all.
bignmf.nmf(path, 8, max_iter=1, cache_a=None, **options)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # peak RSS := current RSS
base = peak()
bignmf.nmf(path, 8, max_iter=3, cache_a=None if budget == "off" else budget, **options)
print(peak() - base)
"""


def _peak_growth(path, budget: str) -> int:
    import os
    import subprocess
    import sys

    # A fixed mmap threshold: large arrays are mapped and unmapped, not kept in the heap.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**17)}
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(path), budget], check=True,
                         capture_output=True, text=True, timeout=300, env=env).stdout  # fmt: skip
    return int(out.split()[-1])


def test_peak_memory_grows_by_at_most_the_budget(tmp_path):
    from bignmf.datasets.synthetic import make_planted

    store = make_planted(tmp_path / "A.zarr", 160_000, 5_000, 8, nnz_per_row=50, seed=0,
                         dtype="float32", chunk_size=2**18)  # fmt: skip
    whole = sum(blockcache._block_bytes(store, i) for i in range(store.n_blocks))
    MiB = 2**20
    assert whole > 48 * MiB
    off, small, large = (_peak_growth(store.path, b) for b in ("off", "16MiB", "1GiB"))
    assert small - off <= 16 * MiB + 8 * MiB
    assert large - off >= 0.8 * whole  # the measure sees the cache when it holds everything
