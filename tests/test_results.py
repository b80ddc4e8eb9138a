"""Each component's top features and top rows, from Python (:mod:`bignmf.results`) and as
`bignmf top-features/top-rows --format text|csv|json`, against dense NumPy over W and H read
whole; row names from a titles file or AnnData ``obs_names``, read lazily."""

from __future__ import annotations

import csv
import io
import json
import shutil
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import zarr

import bignmf
from bignmf.cli import main
from bignmf.fit.inspect import TopRows, open_factors, scan_rows
from bignmf.io.vocabulary import find_row_names, obs_names
from bignmf.results import top_features, top_rows
from tests.conftest import stopped_fit

M, N, K = 300, 40, 3
QUIET = ("--scheduler", "threads", "--no-progress", "--top", 0)


def run_cli(capsys, *args) -> tuple[int, str, str]:
    try:
        status = main([str(a) for a in args])
    except SystemExit as exit:  # argparse's refusals, exit status 2 in a real process
        status = exit.code
    out = capsys.readouterr()
    return status, out.out, out.err


def planted(seed: int = 0) -> sp.csr_matrix:
    """A noisy rank-K matrix with its last 5 rows empty (their W rows are zero)."""
    rng = np.random.default_rng(seed)
    A = rng.random((M, K)) ** 3 @ rng.random((K, N)) * (rng.random((M, N)) < 0.5)
    A[-5:] = 0
    return sp.csr_matrix(A)


def dense_top_rows(W: np.ndarray, n: int) -> list[list[int]]:
    """Per column, the rows of the n largest positive entries, ties to the lower row."""
    tops = []
    for c in range(W.shape[1]):
        order = np.lexsort((np.arange(W.shape[0]), -W[:, c]))
        tops.append([int(i) for i in order[:n] if W[i, c] > 0])
    return tops


def dense_top_columns(H: np.ndarray, n: int) -> list[list[int]]:
    return [[int(j) for j in np.argsort(-row, kind="stable")[:n] if row[j] > 0] for row in H]


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """A finished `bignmf fit` of a store with a vocabulary and a titles file beside it."""
    root = tmp_path_factory.mktemp("results")
    bignmf.convert(planted(), root / "docs.zarr", block_nnz=1500)  # several row blocks
    (root / "docs.zarr.vocab.txt").write_text("".join(f"term{j}\n" for j in range(N)))
    (root / "docs.zarr.titles.txt").write_text("".join(f"doc {i}\n" for i in range(M)))
    assert (
        main(
            [
                "fit",
                str(root / "docs.zarr"),
                "-k",
                str(K),
                "--out",
                str(root / "run"),
                "--seed",
                "0",
                "--max-iter",
                "20",
                *map(str, QUIET),
            ]
        )
        == 0
    )
    return root / "run"


def test_top_rows_stream_equals_a_dense_argsort_over_w(text_run):
    W = zarr.open_array(text_run / "W.zarr")[...]
    assert np.all(W[-5:] == 0)
    for rows in (7, 64, 1 << 16):  # slabs cut anywhere: the running top-n merges them
        top = top_rows(text_run, 6, rows=rows)
        assert [[r.index for r in c] for c in top.components] == dense_top_rows(W, 6)
        assert [[r.weight for r in c] for c in top.components] == [
            [float(W[i, c]) for i in rows_c] for c, rows_c in enumerate(dense_top_rows(W, 6))
        ]
    assert top.named
    assert top.components[0][0].name == f"doc {top.components[0][0].index}"
    assert top.origin == "W.zarr"


def test_row_scan_usage_equals_dense_numpy(text_run):
    W = zarr.open_array(text_run / "W.zarr")[...].astype(np.float64)
    H = zarr.open_array(text_run / "H.zarr")[...].astype(np.float64)
    scan = scan_rows(open_factors(text_run), 4, rows=11)
    usage = W * H.sum(axis=1)  # row i's share of (W·H)[i].sum() from each component
    np.testing.assert_allclose(scan.mass_share, usage.sum(0) / usage.sum(), rtol=1e-12)
    np.testing.assert_allclose(scan.mass_share.sum(), 1.0)
    np.testing.assert_allclose(scan.mass_share, (W * H.sum(1)).sum(0) / (W @ H).sum())
    used = usage.sum(axis=1) > 0
    assert scan.empty_rows == int((~used).sum()) >= 5
    assert scan.dominant.tolist() == np.bincount(usage[used].argmax(1), minlength=K).tolist()
    share = usage[used].max(1) / usage[used].sum(1)
    assert scan.dominant_share.tolist() == np.histogram(share, 20, (0, 1))[0].tolist()
    assert scan.dominant.sum() + scan.empty_rows == M


@pytest.mark.parametrize("seed", range(4))
def test_running_top_n_keeps_ties_to_the_lower_row_and_no_zeros(seed):
    rng = np.random.default_rng(seed)
    W = rng.integers(0, 4, size=(97, 5)).astype(np.float64)  # many ties and zeros
    for rows in (1, 5, 13, 97):
        top = TopRows(5, 8)
        for start in range(0, 97, rows):
            top.add(start, W[start : start + rows])
        assert [[i for i, _ in c] for c in top.result()] == dense_top_rows(W, 8)


def test_top_features_equal_a_dense_argsort_over_h(text_run):
    H = zarr.open_array(text_run / "H.zarr")[...]
    top = top_features(text_run, 5)
    assert [[f.index for f in c] for c in top.components] == dense_top_columns(H, 5)
    assert [[f.name for f in c] for c in top.components] == [
        [f"term{j}" for j in c] for c in dense_top_columns(H, 5)
    ]
    assert top.named


def test_top_features_formats_agree(text_run, capsys):
    H = zarr.open_array(text_run / "H.zarr")[...]
    want = [[f"term{j}" for j in c] for c in dense_top_columns(H, 4)]
    status, text, _ = run_cli(capsys, "top-features", text_run, "-n", 4)
    assert status == 0
    assert text.splitlines() == [f"component {c:>3}: {' '.join(w)}" for c, w in enumerate(want)]
    status, out, _ = run_cli(capsys, "top-features", text_run, "-n", 4, "--format", "csv")
    assert status == 0
    table = list(csv.DictReader(io.StringIO(out)))
    assert list(table[0]) == ["component", "rank", "column", "feature", "weight"]
    assert len(table) == sum(map(len, want))
    for row in table:
        c, rank = int(row["component"]), int(row["rank"])
        assert row["feature"] == want[c][rank - 1] == f"term{row['column']}"
        assert float(row["weight"]) == H[c, int(row["column"])]
    status, out, _ = run_cli(capsys, "top-features", text_run, "-n", 4, "--format", "json")
    listed = json.loads(out)
    assert [entry["component"] for entry in listed] == list(range(K))
    assert [[f["feature"] for f in entry["columns"]] for entry in listed] == want
    assert [f["rank"] for f in listed[0]["columns"]] == [1, 2, 3, 4]


def test_top_rows_formats_agree(text_run, capsys):
    W = zarr.open_array(text_run / "W.zarr")[...]
    want = dense_top_rows(W, 3)
    status, out, _ = run_cli(capsys, "top-rows", text_run, "-n", 3, "--format", "json")
    assert status == 0
    listed = json.loads(out)
    assert [[r["row"] for r in entry["rows"]] for entry in listed] == want
    assert [[r["name"] for r in entry["rows"]] for entry in listed] == [
        [f"doc {i}" for i in c] for c in want
    ]
    status, out, _ = run_cli(capsys, "top-rows", text_run, "-n", 3, "--format", "csv")
    table = list(csv.DictReader(io.StringIO(out)))
    assert [(int(r["component"]), int(r["row"])) for r in table] == [
        (c, i) for c, rows in enumerate(want) for i in rows
    ]
    assert all(float(r["weight"]) == W[int(r["row"]), int(r["component"])] for r in table)
    status, out, err = run_cli(capsys, "top-rows", text_run, "-n", 3)
    lines = out.splitlines()
    assert lines[0] == "component   0:"
    assert lines[1].startswith(f"    1. row {want[0][0]}  doc {want[0][0]}  (")
    assert "no row names" not in err


def test_a_stopped_run_uses_its_newest_checkpoint(tmp_path, capsys):
    """A fit stopped after its checkpoint of iteration 5 (no W.zarr): the top rows are those
    of that checkpoint's W, read block by block, and row numbers stand in for names."""
    store = bignmf.convert(planted(1), tmp_path / "a.zarr", block_nnz=1500)
    assert store.n_blocks > 2

    stopped_fit(store, K, tmp_path / "run", 7, max_iter=50, random_state=0, checkpoint_every=5)
    run = tmp_path / "run"
    assert not (run / "W.zarr").exists()
    factors = open_factors(run)
    assert (factors.origin, factors.iteration, factors.n_rows) == ("ckpt-000005", 5, M)
    blocks = zarr.open_group(run / "ckpt-000005" / "W" / "0", mode="r")
    W = np.concatenate([blocks[str(i)][...] for i in range(store.n_blocks)])
    top = top_rows(run, 4, rows=9)
    assert [[r.index for r in c] for c in top.components] == dense_top_rows(W, 4)
    assert not top.named
    assert top.components[0][0].name == str(top.components[0][0].index)
    status, out, err = run_cli(capsys, "top-rows", run, "-n", 2)
    assert status == 0
    assert "no row names found" in err
    assert out.splitlines()[1] == f"    1. row {dense_top_rows(W, 1)[0][0]}  (" + (
        f"{W[dense_top_rows(W, 1)[0][0], 0]:.4g})"
    )
    H = zarr.open_group(run / "ckpt-000005", mode="r")["H"][...]
    assert [[f.index for f in c] for c in top_features(run, 3).components] == (
        dense_top_columns(H, 3)
    )


def test_checkpoints_newer_than_the_finished_outputs_are_used(text_run, tmp_path):
    """While a resume runs after a finish, W.zarr is the earlier finish's: the newest
    checkpoint, of a later iteration than summary.json's, is shown instead."""
    run = tmp_path / "run"
    shutil.copytree(text_run, run)
    summary = json.loads((run / "summary.json").read_text())
    (newest,) = [p.name for p in run.glob("ckpt-*") if int(p.name[5:]) == summary["n_iter"]]
    assert open_factors(run).origin == "W.zarr"
    summary["n_iter"] -= 1  # as if W.zarr were of an iteration before that checkpoint
    (run / "summary.json").write_text(json.dumps(summary))
    factors = open_factors(run)
    assert (factors.origin, factors.iteration) == (newest, int(newest[5:]))


def test_a_damaged_checkpoint_block_is_refused(tmp_path, capsys):
    store = bignmf.convert(planted(2), tmp_path / "a.zarr")
    bignmf.nmf(
        store, K, max_iter=3, random_state=0, scheduler="sync", checkpoint_dir=tmp_path / "run"
    )
    (ckpt,) = [p for p in (tmp_path / "run").glob("ckpt-*")]
    block = zarr.open_array(ckpt / "W" / "0" / "0", mode="r+")
    block[0, 0] = block[0, 0] + 1.0
    status, _, err = run_cli(capsys, "top-rows", tmp_path / "run")
    assert status == 2
    assert "fails its checksum" in err
    assert len(err.strip().splitlines()) == 1


def test_errors_are_one_line_exit_2(text_run, tmp_path, capsys):
    for *args, says in (
        ("top-rows", tmp_path / "nosuch", "nosuch: no such directory"),
        ("top-features", tmp_path / "nosuch", "nosuch: no such directory"),
        ("top-rows", text_run, "--format", "xml", "invalid choice: 'xml'"),
        ("top-features", text_run, "--format", "yaml", "invalid choice: 'yaml'"),
    ):
        status, out, err = run_cli(capsys, *args)
        assert status == 2, args
        assert len(err.strip().splitlines()) == 1, err
        assert says in err
        assert out == ""
    not_yet = tmp_path / "not-yet"  # a run recorded, with no checkpoint yet
    not_yet.mkdir()
    shutil.copy(text_run / "run.json", not_yet / "run.json")
    for command in ("top-rows", "top-features", "report"):
        status, _, err = run_cli(capsys, command, not_yet)
        assert status == 2
        assert "neither W.zarr and H.zarr nor a checkpoint yet" in err


def test_a_titles_file_of_another_length_is_refused(tmp_path):
    bignmf.convert(planted(), tmp_path / "d.zarr")
    (tmp_path / "d.zarr.titles.txt").write_text("a\nb\n")
    with pytest.raises(bignmf.BigNMFError, match=r"has 2 lines; the matrix has 300 rows"):
        find_row_names(tmp_path / "d.zarr", M)
    (tmp_path / "d.zarr.titles.txt").write_text("a\nb")  # no final line end: still 2 lines
    with pytest.raises(bignmf.BigNMFError, match="has 2 lines"):
        find_row_names(tmp_path / "d.zarr", M)


def _anndata(tmp_path, suffix):
    anndata = pytest.importorskip("anndata")
    X = planted(3).astype(np.float32)
    adata = anndata.AnnData(X)
    adata.obs_names = [f"CELL-{i:04d}" for i in range(M)]
    adata.var_names = [f"GENE{j}" for j in range(N)]
    path = tmp_path / f"cells{suffix}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata's notices about zarr format defaults
        if suffix == ".h5ad":
            adata.write_h5ad(path)
        else:
            adata.write_zarr(path)
    return path


@pytest.mark.parametrize("suffix", [".h5ad", ".zarr"])
def test_obs_names_are_read_lazily(tmp_path, suffix):
    names = obs_names(_anndata(tmp_path, suffix))
    assert len(names) == M
    assert names.take([7, 3, 7, 299]) == ["CELL-0007", "CELL-0003", "CELL-0007", "CELL-0299"]
    with pytest.raises(IndexError):
        names.take([M])
    assert obs_names(tmp_path / "nosuch.h5ad") is None


@pytest.mark.parametrize("suffix", [".h5ad", ".zarr"])
def test_anndata_obs_names_name_the_top_rows(tmp_path, capsys, suffix):
    """An AnnData ``.zarr`` is fitted in place; an ``.h5ad`` is converted into the run, and
    its names are found in the file the fit was given."""
    path = _anndata(tmp_path, suffix)
    status, _, _ = run_cli(
        capsys,
        "fit",
        path,
        "-k",
        2,
        "--out",
        tmp_path / "run",
        "--seed",
        1,
        "--max-iter",
        10,
        *QUIET,
    )
    assert status == 0
    W = zarr.open_array(tmp_path / "run" / "W.zarr")[...]
    top = top_rows(tmp_path / "run", 3)
    assert top.named
    assert [[r.name for r in c] for c in top.components] == [
        [f"CELL-{i:04d}" for i in c] for c in dense_top_rows(W, 3)
    ]
    assert top_features(tmp_path / "run", 2).components[0][0].name.startswith("GENE")
