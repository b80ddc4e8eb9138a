"""The command line as a user runs it: generate, convert, info, fit, top-features, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp
import zarr

import bignmf
from bignmf.cli import main
from bignmf.store import blockcache


def run(capsys, *args) -> tuple[int, str, str]:
    status = main([str(a) for a in args])
    out = capsys.readouterr()
    return status, out.out, out.err


def test_generate_then_info(tmp_path, capsys):
    status, out, _ = run(capsys, "generate", tmp_path / "g.zarr", "--rows", 3000, "--cols", 400,
                         "-k", 5, "--nnz-per-row", 20, "--no-progress")  # fmt: skip
    assert status == 0
    assert "3,000 x 400" in out
    assert "float32" in out
    status, out, _ = run(capsys, "info", tmp_path / "g.zarr", "--json")
    info = json.loads(out)
    assert info["shape"] == [3000, 400]
    assert info["nnz"] == bignmf.open_matrix(tmp_path / "g.zarr").nnz


def test_convert_mtx_refuses_overwrite_and_reports_bad_values(tmp_path, capsys):
    A = sp.random(120, 40, density=0.1, format="coo", random_state=0)
    scipy.io.mmwrite(tmp_path / "a.mtx", A)
    status, out, _ = run(
        capsys, "convert", tmp_path / "a.mtx", tmp_path / "a.zarr", "--no-progress"
    )
    assert status == 0
    assert "120 x 40" in out
    np.testing.assert_allclose(bignmf.open_matrix(tmp_path / "a.zarr").to_scipy().toarray(),
                               A.toarray())  # fmt: skip
    status, _, err = run(capsys, "convert", tmp_path / "a.mtx", tmp_path / "a.zarr")
    assert status == 2
    assert "already exists" in err
    B = A.tocsr()
    B.data[7] = -3.0
    scipy.io.mmwrite(tmp_path / "bad.mtx", B)
    status, _, err = run(capsys, "convert", tmp_path / "bad.mtx", tmp_path / "b.zarr",
                         "--no-progress")  # fmt: skip
    assert status == 2
    assert "bad.mtx" in err
    assert "1 negative values" in err
    assert not (tmp_path / "b.zarr").exists()


def test_fit_writes_outputs_and_top_features(tmp_path, capsys):
    A = sp.random(400, 30, density=0.2, format="csr", random_state=1)
    bignmf.convert(A, tmp_path / "docs.zarr")
    vocabulary = [f"term{j}" for j in range(30)]
    (tmp_path / "docs.zarr.vocab.txt").write_text("\n".join(vocabulary) + "\n")
    options = ("--scheduler", "threads", "--max-iter", 15, "--no-progress", "--top", 4)
    status, out, _ = run(capsys, "fit", tmp_path / "docs.zarr", "-k", 3, "--out", tmp_path / "run",
                         *options)  # fmt: skip
    assert status == 0
    assert "iterations" in out
    assert "component   0: term" in out
    run_dir = tmp_path / "run"
    for name in ("W.zarr", "H.zarr", "summary.json", "metrics.jsonl", "loss.png", "run.json"):
        assert (run_dir / name).exists(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    W = zarr.open_array(run_dir / "W.zarr")[...]
    H = zarr.open_array(run_dir / "H.zarr")[...]
    assert W.shape == (400, 3)
    assert H.shape == (3, 30)
    err = np.linalg.norm(A.toarray() - W @ H)
    assert summary["reconstruction_err"] == pytest.approx(err, rel=1e-4)
    status, out, _ = run(capsys, "top-features", run_dir, "-n", 2)
    assert out.count("component") == 3
    status, _, err = run(capsys, "fit", tmp_path / "docs.zarr", "-k", 3, "--out", run_dir)
    assert status == 2
    assert "already holds a run" in err


def test_transform_new_rows_against_a_run(tmp_path, capsys):
    rng = np.random.default_rng(4)
    W_true, H_true = rng.random((500, 3)), rng.random((3, 40))
    A = sp.csr_matrix(W_true @ H_true)
    bignmf.convert(A[:400], tmp_path / "train.zarr")
    options = ("--scheduler", "threads", "--max-iter", 300, "--tol", 0, "--no-progress")
    status, _, _ = run(capsys, "fit", tmp_path / "train.zarr", "-k", 3, "--out", tmp_path / "run",
                       *options)  # fmt: skip
    assert status == 0
    sp.save_npz(tmp_path / "new.npz", A[400:])
    status, out, _ = run(capsys, "transform", tmp_path / "run", tmp_path / "new.npz",
                         "--out", tmp_path / "new_W.zarr")  # fmt: skip
    assert status == 0
    assert "100 rows x 3 components" in out
    W = zarr.open_array(tmp_path / "new_W.zarr")[...]
    H = zarr.open_array(tmp_path / "run" / "H.zarr")[...]
    assert W.shape == (100, 3)
    rel = np.linalg.norm(A[400:].toarray() - W @ H) / np.linalg.norm(A[400:].toarray())
    assert rel < 1e-2
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    status, _, err = run(capsys, "transform", tmp_path / "run", tmp_path / "new.npz",
                         "--out", tmp_path / "new_W.zarr")  # fmt: skip
    assert status == 2
    assert "already exists" in err


def test_fit_converts_a_file_input_into_the_run(tmp_path, capsys):
    A = sp.random(200, 25, density=0.2, format="csr", random_state=2)
    sp.save_npz(tmp_path / "a.npz", A)
    status, _, err = run(capsys, "fit", tmp_path / "a.npz", "-k", 2, "--out", tmp_path / "run",
                         "--scheduler", "sync", "--max-iter", 5, "--no-progress")  # fmt: skip
    assert status == 0
    assert "converting" in err
    assert bignmf.open_matrix(tmp_path / "run" / "A.zarr").nnz == A.nnz


def test_fit_plan_only_prints_the_plan_and_starts_no_run(tmp_path, capsys):
    A = sp.random(300, 40, density=0.2, format="csr", random_state=4)
    sp.save_npz(tmp_path / "a.npz", A)
    out = tmp_path / "run"
    options = ["-k", 3, "--out", out, "--scheduler", "threads", "--no-progress"]
    status, printed, _ = run(capsys, "fit", tmp_path / "a.npz", *options, "--plan-only")
    assert status == 0
    lines = printed.splitlines()
    assert lines[0] == f"matrix: 300 x 40, {A.nnz} nonzeros, k = 3, 8-byte values"
    assert any(line.startswith("W: in memory") for line in lines)
    assert lines[-1] == "cache of A: off (not requested)"
    assert not (out / "run.json").exists()
    assert sorted(p.name for p in out.iterdir()) == [".bignmf-fit.json", "A.zarr"]
    # the fit that follows reuses the conversion; a store's plan leaves nothing at all
    status, _, err = run(capsys, "fit", tmp_path / "a.npz", *options, "--max-iter", 3)
    assert status == 0
    assert "converted from" in err
    elsewhere = tmp_path / "plan"
    options = ["-k", 3, "--out", elsewhere, "--scheduler", "threads", "--cache-a", "auto"]
    status, printed, _ = run(capsys, "fit", out / "A.zarr", *options, "--plan-only")
    assert status == 0
    assert "cache of A: " in printed
    assert "per process (auto: a quarter of" in printed
    assert not elsewhere.exists()


def test_fit_on_a_scheduler_address_equals_threads(tmp_path, capsys, dask_cluster):
    A = sp.random(600, 50, density=0.1, format="csr", random_state=3)
    bignmf.convert(A, tmp_path / "a.zarr", block_rows=64)
    common = ("-k", 3, "--init", "random", "--seed", 1, "--tol", 0, "--max-iter", 6,
              "--no-progress")  # fmt: skip
    for name, scheduler in (("t", "threads"), ("d", dask_cluster)):
        status, _, _ = run(capsys, "fit", tmp_path / "a.zarr", "--out", tmp_path / name,
                           "--scheduler", scheduler, *common)  # fmt: skip
        assert status == 0
    for name in ("W.zarr", "H.zarr"):
        threads = zarr.open_array(tmp_path / "t" / name)[...]
        distributed = zarr.open_array(tmp_path / "d" / name)[...]
        assert threads.tobytes() == distributed.tobytes()


QUIET = ("--scheduler", "threads", "--no-progress", "--top", 0)  # local, no output to read
FIT = (*QUIET, "--seed", 1, "--tol", 0)


def _resume(capsys, run_dir, *args) -> None:
    status, _, _ = run(capsys, "resume", run_dir, *args, *QUIET)
    assert status == 0


def _same_h(*runs) -> None:
    """The runs' final H are the same bits."""
    first, *others = (zarr.open_array(run / "H.zarr")[...] for run in runs)
    for other in others:
        assert other.tobytes() == first.tobytes()


def test_fit_in_two_passes_then_resume_keeps_the_ranges(tmp_path, capsys):
    A = sp.random(300, 500, density=0.05, format="csr", random_state=2)
    bignmf.convert(A, tmp_path / "wide.zarr", block_rows=50)
    status, _, _ = run(capsys, "fit", tmp_path / "wide.zarr", "-k", 4, "--out", tmp_path / "run",
                       "--column-chunks", 3, "--n-tasks", 2, "--max-iter", 5, *FIT)  # fmt: skip
    assert status == 0
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["settings"]["column_chunks"] == 3
    _resume(capsys, tmp_path / "run", "--max-iter", 9, "--n-tasks", 5)
    status, _, _ = run(capsys, "fit", tmp_path / "wide.zarr", "-k", 4, "--out", tmp_path / "once",
                       "--column-chunks", 3, "--max-iter", 9, *FIT)  # fmt: skip
    assert status == 0
    _same_h(tmp_path / "run", tmp_path / "once")


def test_fit_with_a_block_cache_records_it_and_resume_may_change_it(tmp_path, capsys):
    A = sp.random(400, 60, density=0.1, format="csr", random_state=4)
    bignmf.convert(A, tmp_path / "A.zarr", block_rows=100)
    status, _, _ = run(capsys, "fit", tmp_path / "A.zarr", "-k", 3, "--out", tmp_path / "run",
                       "--cache-a", "16MiB", "--max-iter", 3, *FIT)  # fmt: skip
    assert status == 0
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["options"]["cache_a"] == 16 * 2**20
    _resume(capsys, tmp_path / "run", "--max-iter", 6, "--cache-a", "auto")
    before = blockcache.stats()
    _resume(capsys, tmp_path / "run", "--max-iter", 7, "--cache-a", "0")
    assert blockcache.stats()["hits"] == before["hits"]  # turned off for this resume
    status, _, _ = run(capsys, "fit", tmp_path / "A.zarr", "-k", 3, "--out", tmp_path / "once",
                       "--max-iter", 7, *FIT)  # fmt: skip
    assert status == 0
    _same_h(tmp_path / "run", tmp_path / "once")
    with pytest.raises(SystemExit):
        main(["fit", str(tmp_path / "A.zarr"), "-k", "3", "--out", str(tmp_path / "bad"),
              "--cache-a", "lots"])  # fmt: skip
    assert "--cache-a: cache_a must be a size" in capsys.readouterr().err


@pytest.mark.filterwarnings("default::bignmf.errors.MissingEntriesWarning")
def test_fit_on_the_stored_entries_only(tmp_path, capsys):
    from bignmf.datasets import make_ratings

    ratings = make_ratings(tmp_path / "r.zarr", 300, 60, 3, ratings_per_user=20, seed=1)
    options = ["-k", 3, "--missing", "zeros", "--scheduler", "threads", "--no-progress"]
    more = ["--out", tmp_path / "run", "--max-iter", 20, "--top", 0]
    status, out, err = run(capsys, "fit", ratings.train_path, *options, *more)
    assert status == 0
    assert "reconstruction error on the stored entries" in out
    # a user whose every rating is held out: one line, no code shown
    assert "bignmf fit: warning: 1 row has no stored entry (255): W is 0 there\n" in err
    assert "warnings.warn" not in err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["error_over"] == "stored entries"
    assert summary["settings"]["missing"] == "zeros"
    bpp = ["--solver", "bpp", "--out", tmp_path / "bpp"]
    status, _, err = run(capsys, "fit", ratings.train_path, *options, *bpp)
    assert status == 2
    assert "'bpp' cannot fit" in err
    assert not (tmp_path / "bpp").exists()


def test_fit_with_a_mask_file_converts_it_into_the_run_and_resumes(tmp_path, capsys):
    rng = np.random.default_rng(2)
    X = rng.random((400, 3)) @ rng.random((3, 50))
    held = sp.random(400, 50, density=0.1, format="coo", random_state=3)
    scipy.io.mmwrite(tmp_path / "held.mtx", held)
    sp.save_npz(tmp_path / "a.npz", sp.csr_matrix(X))
    run_dir = tmp_path / "run"
    options = ["-k", 3, *FIT]
    more = ["--mask", tmp_path / "held.mtx", "--out", run_dir, "--max-iter", 4]
    status, out, err = run(capsys, "fit", tmp_path / "a.npz", *options, *more)
    assert status == 0
    assert "reconstruction error on the entries off the mask" in out
    assert f"converting {tmp_path / 'held.mtx'} into {run_dir / 'mask.zarr'}" in err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["error_over"] == "entries off the mask"
    assert summary["settings"]["missing"] == "mask"
    status, _, _ = run(capsys, "resume", run_dir, "--max-iter", 8, "--no-progress", "--top", 0)
    assert status == 0
    whole = tmp_path / "whole"
    more = ["--mask", tmp_path / "held.mtx", "--out", whole, "--max-iter", 8]
    assert run(capsys, "fit", tmp_path / "a.npz", *options, *more)[0] == 0
    _same_h(run_dir, whole)  # the resumed run reopened the converted mask: the same bits
    bpp = ["--mask", tmp_path / "held.mtx", "--solver", "bpp", "--out", tmp_path / "bpp"]
    status, _, err = run(capsys, "fit", tmp_path / "a.npz", "-k", 3, *bpp)
    assert status == 2
    assert "cannot fit around unknown entries" in err


def test_fit_with_weights_implicit_or_a_file_records_them_and_transform_needs_them(
    tmp_path, capsys
):
    from tests.fit.test_weights import planted_counts

    A = planted_counts()
    scipy.io.mmwrite(tmp_path / "plays.mtx", A)
    C = A.copy()
    C.data = 1.0 + np.arange(A.nnz) % 3
    scipy.io.mmwrite(tmp_path / "c.mtx", C)
    options = ["-k", 3, *FIT, "--max-iter", 4]
    implicit = ["--weights", "implicit", "--implicit-alpha", 5, "--implicit-f", "log"]
    run_dir = tmp_path / "implicit"
    status, out, _ = run(
        capsys, "fit", tmp_path / "plays.mtx", *options, *implicit, "--out", run_dir
    )
    assert status == 0
    assert "reconstruction error on the weighted entries (implicit feedback's confidence)" in out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["settings"]["weights"] == "implicit"
    assert (summary["settings"]["implicit_alpha"], summary["settings"]["implicit_f"]) == (5, "log")
    status, _, _ = run(capsys, "resume", run_dir, "--max-iter", 6, "--no-progress", "--top", 0)
    assert status == 0
    w_out = ["--out", tmp_path / "W.zarr"]
    assert run(capsys, "transform", run_dir, tmp_path / "plays.mtx", *w_out)[0] == 0

    given = tmp_path / "given"
    weights = ["--weights", tmp_path / "c.mtx", "--out", given]
    status, _, err = run(capsys, "fit", tmp_path / "plays.mtx", *options, *weights)
    assert status == 0
    assert f"converting {tmp_path / 'c.mtx'} into {given / 'weights.zarr'}" in err
    status, _, err = run(
        capsys, "transform", given, tmp_path / "plays.mtx", "--out", tmp_path / "G"
    )
    assert status == 2
    assert "give the new rows' weights as --weights FILE" in err
    more = ["--out", tmp_path / "G", "--weights", tmp_path / "c.mtx"]
    assert run(capsys, "transform", given, tmp_path / "plays.mtx", *more)[0] == 0

    other = sp.random(*A.shape, density=0.1, format="coo", random_state=3)
    scipy.io.mmwrite(tmp_path / "other.mtx", other)
    for value, message in [
        (tmp_path / "other.mtx", "the --weights do not have A's sparsity pattern: row 0"),
        ("implict", "--weights implict: neither 'implicit' nor a file or store"),
    ]:
        bad = ["--weights", value, "--out", tmp_path / "bad"]
        status, _, err = run(capsys, "fit", tmp_path / "plays.mtx", *options, *bad)
        assert status == 2
        assert message in err
        assert "Traceback" not in err
    implicit_zeros = ["--weights", "implicit", "--missing", "zeros", "--out", tmp_path / "z"]
    status, _, err = run(capsys, "fit", tmp_path / "plays.mtx", *options, *implicit_zeros)
    assert status == 2
    assert "cannot be combined with --missing='zeros'" in err
