"""The engine's fast paths: W's raw chunk I/O, task placement on workers, cheap H keys."""

from __future__ import annotations

import itertools

import dask
import numpy as np
import pytest
import scipy.sparse as sp
import zarr
from distributed import get_task_stream

import bignmf
from bignmf.fit.graph import HState, assign_groups
from bignmf.store.factors import ZarrBlocks

K = 3


def test_w_blocks_written_raw_are_a_valid_zarr_array(tmp_path):
    offsets = np.array([0, 5, 9, 9, 12])
    blocks = ZarrBlocks(tmp_path / "W.zarr", offsets, K, np.float32).create()
    rng = np.random.default_rng(0)
    values = [rng.random((b - a, K), dtype=np.float32) for a, b in itertools.pairwise(offsets)]
    values[1][:] = 0  # an all-zero block: zarr itself would not store its chunk
    for i, v in enumerate(values):
        blocks.write(1, i, v)
    for i, v in enumerate(values):
        np.testing.assert_array_equal(blocks.read(1, i), v)
        np.testing.assert_array_equal(zarr.open_array(tmp_path / "W.zarr" / "1" / str(i))[...], v)
        np.testing.assert_array_equal(blocks.read(0, i), 0)  # never written: the fill value
    np.testing.assert_array_equal(blocks.to_dask(1).compute(), np.vstack(values))
    chunk = tmp_path / "W.zarr" / "1" / "0" / "c" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-4])  # truncated
    with pytest.raises(ValueError, match="bytes"):
        blocks.read(1, 0)


@pytest.mark.parametrize(
    ("weights", "workers", "counts"),
    [
        ([2, 2, 2, 2, 2, 2], {"a": 1, "b": 1}, {"a": 3, "b": 3}),
        ([2, 2, 2, 2, 2, 1], {"a": 1, "b": 1, "c": 1}, {"a": 2, "b": 2, "c": 2}),
        ([4, 1, 1, 1, 1], {"a": 1, "b": 1}, {"a": 1, "b": 4}),
        ([1] * 6, {"a": 2, "b": 1}, {"a": 4, "b": 2}),
    ],
)
def test_groups_are_balanced_across_workers(weights, workers, counts):
    chosen = assign_groups(weights, workers)
    assert {w: chosen.count(w) for w in workers} == counts
    assert assign_groups(weights, dict(reversed(workers.items()))) == chosen  # stable


def test_h_state_keys_are_cheap_and_stable():
    H = np.ones((K, 10), np.float32)
    a, b = HState.of(H), HState.of(H)
    assert dask.base.tokenize(a) == dask.base.tokenize(a)
    assert dask.base.tokenize(a) != dask.base.tokenize(b)


def test_fat_tasks_are_spread_evenly_over_the_workers(tmp_path, dask_client):
    A = sp.random(2400, 200, density=0.05, format="csr", random_state=1, dtype=np.float32)
    store = bignmf.convert(A, tmp_path / "A.zarr", block_rows=200)  # 12 blocks
    with get_task_stream(dask_client) as ts:
        bignmf.nmf(store, K, init="random", random_state=0, max_iter=3, tol=0,
                   scheduler=dask_client, workdir=tmp_path / "w")  # fmt: skip
    per_worker: dict[str, int] = {}
    for rec in ts.data:
        if "_group_task" in str(rec["key"]):
            per_worker[rec["worker"]] = per_worker.get(rec["worker"], 0) + 1
    assert len(per_worker) == 2
    assert len(set(per_worker.values())) == 1, per_worker
