"""Stores whose attributes or arrays lie: a one-line error naming the place, never a crash.

A store is a directory anyone can edit, and SciPy's compiled kernels trust ``indptr`` and
``indices``: before these checks an ``n_cols`` smaller than the stored column indices made
``bignmf fit`` segfault with threads and hang with a LocalCluster (issue 17). Each lie is
caught where it is cheapest to see: the attributes against each other and the arrays' metadata
when the store opens, all of ``indptr`` in the fingerprint the fit takes before it computes,
and every row block as it is decoded (the guarantee: no bad block reaches a kernel).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import zarr

import bignmf
from bignmf import InputError, StoreFormatError, open_matrix
from bignmf.cli import main

M, N, BLOCK_ROWS, CHUNK = 600, 80, 100, 512


def matrix() -> sp.csr_matrix:
    # uniform values: (ΣA)² / (nnz·‖A‖²) is about 3/4, so a norm scaled by 1/4 breaks a bound
    return sp.random(M, N, density=0.1, format="csr", random_state=0, dtype=np.float32)


@pytest.fixture
def store(tmp_path):
    """A valid store of 6 row blocks over several chunks per array, to corrupt."""
    path = tmp_path / "a.zarr"
    bignmf.convert(matrix(), path, block_rows=BLOCK_ROWS, chunk_size=CHUNK)
    return path


def _group(path) -> zarr.Group:
    return zarr.open_group(path, mode="r+")


def _meta(group: zarr.Group, **changes) -> None:
    meta = dict(group.attrs["bignmf"])
    meta.update(changes)
    group.attrs["bignmf"] = meta


def _in_block_1(group: zarr.Group) -> int:
    """An entry of row block 1 (rows 100-199), the first of row 127."""
    return int(group["indptr"][127])


def _shift_row_offsets(g):
    _meta(g, row_offsets=[0, 90, 200, 300, 400, 500, 600])


def _shift_nnz_offsets(g):
    offsets = g.attrs["bignmf"]["nnz_offsets"]
    _meta(g, nnz_offsets=[0, offsets[1] + 1, *offsets[2:]])


def _undecodable(g):
    with open(os.path.join(g.store.root, "indices", "c", "1"), "wb") as f:
        f.write(b"not a blosc frame" * 4)


# id: (corrupt(group), error, where it is caught, the block read_block fails on, words)
LIES = {
    # every block lies: a parallel fit may stop at any of them first
    "n_cols": (
        lambda g: g.attrs.update(shape=[M, 40]),
        StoreFormatError, "read", 0, ["indices of row block ", "outside [0, 40)"],
    ),
    "index_past_n_cols": (
        lambda g: g["indices"].__setitem__(_in_block_1(g), N),
        StoreFormatError, "read", 1, ["indices of row block 1", f"first {N} at row 127"],
    ),
    "negative_index": (
        lambda g: g["indices"].__setitem__(_in_block_1(g), -1),
        StoreFormatError, "read", 1, ["indices of row block 1", "first -1 at row 127"],
    ),
    "indptr_decreasing": (
        lambda g: g["indptr"].__setitem__(150, int(g["indptr"][149]) - 1),
        StoreFormatError, "fingerprint", 1, ["indptr of row block 1", "decreases at row 150"],
    ),
    "indptr_last_not_nnz": (
        lambda g: g["indptr"].__setitem__(M, int(g["indptr"][M]) - 1),
        StoreFormatError, "open", None, ["indptr runs from 0 to", "hold"],
    ),
    "indptr_first_not_0": (
        lambda g: g["indptr"].__setitem__(0, 1),
        StoreFormatError, "open", None, ["indptr runs from 1 to"],
    ),
    "n_rows": (
        lambda g: g.attrs.update(shape=[500, N]),
        StoreFormatError, "open", None, ["shape [500, 80]", "indptr has 601 entries"],
    ),
    "shape_missing": (
        lambda g: g.attrs.__delitem__("shape"),
        StoreFormatError, "open", None, ["attribute shape is None"],
    ),
    "row_offsets_shifted": (
        _shift_row_offsets,
        StoreFormatError, "fingerprint", 1, ["indptr of row block 1", "row 90"],
    ),
    "row_offsets_past_n_rows": (
        lambda g: _meta(g, row_offsets=[0, 100, 200, 300, 400, 500, 700]),
        StoreFormatError, "open", None, ["bignmf.row_offsets", "from 0 to 600", "to 700"],
    ),
    "row_offsets_decreasing": (
        lambda g: _meta(g, row_offsets=[0, 200, 100, 300, 400, 500, 600]),
        StoreFormatError, "open", None, ["bignmf.row_offsets", "row block 1 runs from 200 to 100"],
    ),
    "nnz_offsets_shifted": (
        _shift_nnz_offsets,
        StoreFormatError, "fingerprint", 1, ["indptr of row block 1", "starts at entry"],
    ),
    "nnz_offsets_too_few": (
        lambda g: _meta(g, nnz_offsets=[0, g.attrs["bignmf"]["nnz_offsets"][-1]]),
        StoreFormatError, "open", None, ["list 7 and 2 offsets"],
    ),
    "frobenius_sq_quartered": (
        lambda g: _meta(g, frobenius_sq=g.attrs["bignmf"]["frobenius_sq"] * 0.25),
        StoreFormatError, "open", None, ["bignmf.frobenius_sq", "cannot both hold"],
    ),
    "frobenius_sq_nan": (
        lambda g: _meta(g, frobenius_sq=float("nan")),
        StoreFormatError, "open", None, ["bignmf.frobenius_sq is nan"],
    ),
    "data_shorter": (
        lambda g: g["data"].resize((1000,)),
        StoreFormatError, "open", None, ["data 1000, indices"],
    ),
    "indices_of_floats": (
        lambda g: g.create_array("indices", shape=g["data"].shape, dtype="f4", overwrite=True),
        StoreFormatError, "open", None, ["indices has dtype float32"],
    ),
    "negative_value": (
        lambda g: g["data"].__setitem__(_in_block_1(g), -2.5),
        InputError, "read", 1, ["data of row block 1", "-2.5 at row 127"],
    ),
    "nan_value": (
        lambda g: g["data"].__setitem__(_in_block_1(g), np.nan),
        InputError, "read", 1, ["data of row block 1", "nan at row 127"],
    ),
    "undecodable_chunk": (
        _undecodable,
        StoreFormatError, "read", 0, ["indices of row block 0", "cannot be read"],
    ),
}  # fmt: skip


def _assert_named(error: BaseException, path, words) -> None:
    message = str(error)
    assert "\n" not in message
    assert str(path) in message
    for word in words:
        assert word in message, (word, message)


@pytest.mark.parametrize("lie", list(LIES))
def test_each_lie_is_caught_and_named(store, lie):
    corrupt, error, stage, block, words = LIES[lie]
    corrupt(_group(store))
    if stage == "open":
        with pytest.raises(error) as caught:
            open_matrix(store)
        _assert_named(caught.value, store, words)
        return
    opened = open_matrix(store)
    if stage == "fingerprint":
        with pytest.raises(error) as caught:
            opened.fingerprint()
        _assert_named(caught.value, store, words)
        # a worker reads blocks without a fingerprint: the block's own check must hold too
        with pytest.raises(StoreFormatError, match=f"indptr of row block {block} "):
            open_matrix(store).read_block(block, opened.new_buffers())
        return
    opened.fingerprint()  # a lie of the block's contents is not indptr's
    with pytest.raises(error) as caught:
        opened.read_block(block, opened.new_buffers())
    _assert_named(caught.value, store, words)
    with pytest.raises(error):  # without buffers too (zarr allocates the arrays)
        open_matrix(store).read_block(block)


def _fit_args(store, out, scheduler: str) -> list[str]:
    return ["fit", str(store), "-k", "3", "--out", str(out), "--scheduler", scheduler,
            "--max-iter", "5", "--no-progress", "--top", "0"]  # fmt: skip


CLI_LIES = [
    "n_cols",
    "index_past_n_cols",
    "indptr_decreasing",
    "indptr_last_not_nnz",
    "n_rows",
    "row_offsets_shifted",
    "negative_value",
]


@pytest.mark.parametrize("lie", CLI_LIES)
def test_fit_with_threads_exits_2_with_one_line(store, tmp_path, capsys, lie):
    LIES[lie][0](_group(store))
    status = main(_fit_args(store, tmp_path / "run", "threads"))
    err = capsys.readouterr().err
    assert status == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("bignmf fit: error: ")
    _assert_named(lines[0], store, LIES[lie][4])


@pytest.mark.parametrize("lie", CLI_LIES)
def test_fit_on_a_local_cluster_ends_with_exit_2(store, tmp_path, lie):
    # the hang: workers that segfaulted were restarted and retried the same block
    # (each case measured 1-5 s: the cluster's start, then the first task's error)
    LIES[lie][0](_group(store))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    args = [*_fit_args(store, tmp_path / "run", "local"), "--workers", "2"]
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "bignmf", *args], capture_output=True,
                          text=True, timeout=120, env=env)  # fmt: skip
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("bignmf fit: error: ")
    _assert_named(last, store, LIES[lie][4])
    assert time.monotonic() - start < 120


def test_an_undecodable_data_chunk_is_named_before_any_compute(store, tmp_path, capsys):
    with open(store / "data" / "c" / "0", "wb") as f:
        f.write(b"not a blosc frame" * 4)
    with pytest.raises(StoreFormatError) as caught:
        open_matrix(store).fingerprint()  # samples data: taken before the fit computes
    _assert_named(caught.value, store, ["data of row block 0", "cannot be read"])
    assert main(_fit_args(store, tmp_path / "run", "threads")) == 2
    assert capsys.readouterr().err.count("\n") == 1


# ------------------------------------------------------------------------ valid stores


def test_valid_store_passes_every_check_and_fits(store, tmp_path, capsys):
    opened = open_matrix(store)
    opened.fingerprint()
    assert opened.frobenius_sq == pytest.approx(float(np.dot(matrix().data, matrix().data)))
    buffers = opened.new_buffers()
    for i in range(opened.n_blocks):
        r0, r1 = opened.block_rows(i)
        assert (opened.read_block(i, buffers) != matrix()[r0:r1]).nnz == 0
    assert main(_fit_args(store, tmp_path / "run", "threads")) == 0
    assert "error" not in capsys.readouterr().err


def test_negative_zero_is_a_valid_value(store):
    # the one-pass value check reads -0.0's sign bit as negative; the exact look clears it
    group = _group(store)
    group["data"][_in_block_1(group)] = -0.0
    block = open_matrix(store).read_block(1)
    assert block.data.min() == 0.0


def _anndata(path, A, zarr_format: int) -> None:
    with ad.settings.override(zarr_write_format=zarr_format):
        ad.AnnData(X=A).write_zarr(path)


@pytest.mark.filterwarnings("ignore:.*zarr v2 data will no longer be the default:UserWarning")
@pytest.mark.filterwarnings("ignore:.*autosharding will be the default:UserWarning")
@pytest.mark.filterwarnings("ignore:Consolidated metadata is currently not part:UserWarning")
@pytest.mark.parametrize("zarr_format", [2, 3])
def test_anndata_store_with_int32_indptr_reads_and_fits(tmp_path, capsys, zarr_format):
    A = matrix()
    _anndata(tmp_path / "cells.zarr", A, zarr_format)
    assert zarr.open_group(tmp_path / "cells.zarr/X")["indptr"].dtype == np.int32
    for block_nnz in (None, 500):  # one block: indptr's whole chunk goes into int64 buffers
        opened = open_matrix(tmp_path / "cells.zarr", block_nnz=block_nnz)
        opened.fingerprint()
        buffers = opened.new_buffers()
        for i in range(opened.n_blocks):
            r0, r1 = opened.block_rows(i)
            assert (opened.read_block(i, buffers) != A[r0:r1]).nnz == 0
    assert main(_fit_args(tmp_path / "cells.zarr", tmp_path / "run", "threads")) == 0
    assert "error" not in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:.*autosharding will be the default:UserWarning")
@pytest.mark.filterwarnings("ignore:Consolidated metadata is currently not part:UserWarning")
def test_anndata_store_lies_are_caught_too(tmp_path):
    A = matrix()
    _anndata(tmp_path / "cells.zarr", A, 3)
    X = zarr.open_group(tmp_path / "cells.zarr/X", mode="r+")
    data = X["data"][...]
    data[int(A.indptr[127])] = -1.0
    X["data"][...] = data
    # no block table, no stored norm: the statistics pass reads data, and names the entry
    with pytest.raises(InputError, match=r"data of row block \d+ .*-1\.0 at row 127"):
        open_matrix(tmp_path / "cells.zarr").frobenius_sq
    X["indptr"][300] = X["indptr"][299] - 1
    with pytest.raises(StoreFormatError, match=r"indptr decreases at row 300.*planning"):
        open_matrix(tmp_path / "cells.zarr")


# ------------------------------------------------------------------------ derived attributes


def test_a_plausible_but_wrong_norm_fails_the_fit(store, tmp_path, capsys):
    _meta(_group(store), frobenius_sq=_group(store).attrs["bignmf"]["frobenius_sq"] * 0.9)
    open_matrix(store)  # within (ΣA)² <= nnz·‖A‖² <= nnz·(ΣA)²: open cannot tell
    assert main(_fit_args(store, tmp_path / "run", "threads")) == 2
    assert "frobenius_sq" in capsys.readouterr().err


# ------------------------------------------------------------------------ chunk checksums


def _flip(path, offset=40) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x10
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("array", ["data", "indices", "indptr"])
def test_a_flipped_byte_in_any_chunk_is_named_by_info_verify_and_fit(
    store, tmp_path, capsys, array
):
    assert main(["info", str(store), "--verify"]) == 0
    assert "every chunk's checksum" in capsys.readouterr().out
    chunk = store / array / "c" / ("0" if array == "indptr" else "1")  # indptr: one chunk
    _flip(chunk)
    for args in (["info", str(store), "--verify"], _fit_args(store, tmp_path / "run", "threads")):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"chunk file {chunk} fails its crc32c checksum" in err
        assert f"{store}: {array}" in err
    assert not (tmp_path / "run").exists()


def test_info_verify_recomputes_the_norm(store, capsys):
    _meta(_group(store), frobenius_sq=_group(store).attrs["bignmf"]["frobenius_sq"] * 0.99)
    assert main(["info", str(store)]) == 0  # within the bounds open checks
    assert main(["info", str(store), "--verify"]) == 2
    assert "its recorded frobenius_sq is" in capsys.readouterr().err


def test_resume_refuses_a_store_changed_anywhere(store, tmp_path):
    """The fingerprint covers every chunk (their checksums), not three sampled windows."""
    run = {"max_iter": 2, "tol": 0, "random_state": 0, "scheduler": "sync"}
    bignmf.nmf(store, 3, checkpoint_dir=tmp_path / "run", **run)
    group = _group(store)
    p = _in_block_1(group) + 3  # far from the sampled windows at the start, middle and end
    group["data"][p] = group["data"][p] * 7  # zarr rewrites the chunk and its checksum
    with pytest.raises(bignmf.CheckpointError, match="was run on another matrix"):
        bignmf.resume(tmp_path / "run", max_iter=4)


@pytest.mark.filterwarnings("ignore:.*autosharding will be the default:UserWarning")
@pytest.mark.filterwarnings("ignore:Consolidated metadata is currently not part:UserWarning")
def test_a_store_without_checksums_is_fingerprinted_over_its_contents(tmp_path):
    A = matrix()
    path = tmp_path / "cells.zarr"
    _anndata(path, A, 3)
    first = open_matrix(path).fingerprint()
    assert "contents_crc32" in first
    assert open_matrix(path).fingerprint() == first
    changed = A.copy()
    changed.data[len(changed.data) // 3] *= 7
    _anndata(tmp_path / "other.zarr", changed, 3)
    assert open_matrix(tmp_path / "other.zarr").fingerprint() != first
