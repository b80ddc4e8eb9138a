"""The `bignmf` command as a new user meets it, run for real in a subprocess: help, one-line
errors with exit status 2, feature names, a closed pipe, a missing matplotlib."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import bignmf
from bignmf.cli import build_parser

QUIET = ("--scheduler", "threads", "--no-progress")


def _bignmf(*args, env=None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bignmf", *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def _one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "a.npz"
    sp.save_npz(path, sp.random(300, 40, density=0.1, format="csr", random_state=0))
    return path


@pytest.fixture(scope="module")
def run(npz, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli-run") / "run"
    done = _bignmf("fit", npz, "-k", 30, "--out", out, "--max-iter", 3, *QUIET)
    assert done.returncode == 0, done.stderr
    return out


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_option_of_every_command_says_what_it_does_and_its_default():
    parser = build_parser()
    for name, sub in _subparsers(parser).items():
        text = sub.format_help()
        for action in sub._actions:
            if not action.option_strings or action.dest == "help":
                continue
            assert action.help, (name, action.dest)
            shown = sub._get_formatter()._get_help_string(action)
            assert action.required or "default" in shown, (name, action.dest, shown)
        assert "(default: " in text


def test_main_help_ends_with_three_example_command_lines():
    done = _bignmf("--help")
    assert done.returncode == 0
    tail = done.stdout.strip().splitlines()[-3:]
    assert all(line.strip().startswith("bignmf ") for line in tail), tail


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (("fitt",), "invalid choice"),
        (("fit", "{npz}", "-k", "0", "--out", "{out}"), "-k/--components"),
        (("fit", "{npz}", "-k", "3", "--alpha-W", "-1", "--out", "{out}"), "--alpha-W"),
        (("fit", "{npz}", "-k", "3", "--max-iter", "-5", "--out", "{out}"), "--max-iter"),
        (("fit", "{npz}", "-k", "3", "--l1-ratio", "2", "--out", "{out}"), "--l1-ratio"),
        (("fit", "{npz}", "-k", "three", "--out", "{out}"), "integer"),
        (("fit", "{npz}", "-k", "3", "--checkpoint-seconds", "0", "--out", "{out}"),
         "--checkpoint-seconds"),
        (("fit", "{npz}", "-k", "3"), "--out"),
        (("fit", "{missing}", "-k", "3", "--out", "{out}"), "nosuch.npz"),
        (("info", "{npz}"), "bignmf convert"),
        (("info", "{missing}"), "nosuch.npz"),
        (("resume", "{missing}"), "nosuch.npz"),
        (("top-features", "{missing}"), "nosuch.npz"),
        (("convert", "{npz}", "{npz}"), "--overwrite"),
    ],
)  # fmt: skip
def test_user_errors_are_one_line_exit_2_and_write_nothing(npz, tmp_path, args, names):
    fill = {"npz": npz, "out": tmp_path / "out", "missing": tmp_path / "nosuch.npz"}
    line = _one_line_error(_bignmf(*(a.format(**fill) for a in args)))
    assert names in line
    assert not (tmp_path / "out").exists()


def test_messages_name_flags_not_python_keywords(npz, tmp_path):
    done = _bignmf("fit", npz, "-k", 3, "--out", tmp_path / "r", "--column-chunks", 100,
                   "--n-tasks", 1, *QUIET)  # fmt: skip
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    line = done.stderr.strip().splitlines()[-1]  # after the line saying the input converts
    assert "--column-chunks" in line
    assert "column_chunks" not in line


def test_verbose_is_accepted_after_the_command(run):
    done = _bignmf("top-features", run, "-n", 2, "-v")
    assert done.returncode == 0, done.stderr


def test_a_vocabulary_of_another_length_is_refused_naming_both_counts(run, tmp_path):
    vocab = tmp_path / "terms.txt"
    vocab.write_text("".join(f"t{j}\n" for j in range(39)))
    line = _one_line_error(_bignmf("top-features", run, "--vocab", vocab))
    assert "39" in line
    assert "40" in line


def test_top_features_without_a_vocabulary_says_how_to_give_one(run):
    done = _bignmf("top-features", run, "-n", 2)
    assert done.returncode == 0
    assert "--vocab" in done.stderr
    assert done.stdout.startswith("component   0: ")


def test_a_closed_pipe_ends_quietly(run):
    proc = subprocess.Popen([sys.executable, "-m", "bignmf", "top-features", str(run), "-n", "40"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    proc.stdout.close()  # as `| head` does, before the first line is written
    _, err = proc.communicate(timeout=120)
    assert b"BrokenPipeError" not in err
    assert b"Traceback" not in err


@pytest.mark.parametrize("suffix", [".h5ad", ".zarr"])
def test_anndata_var_names_name_the_features(tmp_path, suffix):
    anndata = pytest.importorskip("anndata")
    X = sp.random(200, 12, density=0.4, format="csr", dtype=np.float32, random_state=2)
    adata = anndata.AnnData(X)
    adata.var_names = [f"GENE{j}" for j in range(12)]
    path = tmp_path / f"cells{suffix}"
    if suffix == ".h5ad":
        adata.write_h5ad(path)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # anndata's notices about zarr format defaults
            adata.write_zarr(path)
    done = _bignmf("fit", path, "-k", 2, "--out", tmp_path / "run", "--top", 3, *QUIET)
    assert done.returncode == 0, done.stderr
    assert "component   0: GENE" in done.stdout
    done = _bignmf("top-features", tmp_path / "run", "-n", 3)
    assert done.stdout.splitlines()[1].startswith("component   1: GENE")
    assert "no vocabulary" not in done.stderr


def test_convert_keeps_anndata_var_names_as_the_vocabulary(tmp_path):
    anndata = pytest.importorskip("anndata")
    adata = anndata.AnnData(sp.random(20, 5, density=0.5, format="csr", dtype=np.float32))
    adata.var_names = list("abcde")
    adata.write_h5ad(tmp_path / "c.h5ad")
    bignmf.convert(tmp_path / "c.h5ad", tmp_path / "c.zarr")
    assert (tmp_path / "c.zarr.vocab.txt").read_text().split() == list("abcde")


def test_a_missing_matplotlib_is_said_not_silent(npz, tmp_path):
    fake = tmp_path / "fake" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('matplotlib hidden by the test')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "fake")}
    done = _bignmf("fit", npz, "-k", 2, "--out", tmp_path / "r", "--max-iter", 2, *QUIET, env=env)
    assert done.returncode == 0, done.stderr
    assert "loss curve skipped" in done.stderr
    assert "matplotlib" in done.stderr
    assert not (tmp_path / "r" / "loss.png").exists()


def test_the_quickstart_demo_leaves_everything_it_promises(tmp_path):
    """README's first command, smaller: a corpus, topics printed, and the run's outputs —
    factors, metrics, summary, loss curve and the report page; a second demo reuses the
    corpus and writes a new run beside the first."""
    small = ("--max-documents", 400, "-k", 4, "--max-iter", 10, *QUIET)
    done = _bignmf("demo", "--out", tmp_path, *small)
    assert done.returncode == 0, done.stderr
    assert "component   3:" in done.stdout
    run = tmp_path / "run-1"
    for name in ("W.zarr", "H.zarr", "metrics.jsonl", "summary.json", "loss.png", "report.html"):
        assert (run / name).exists(), name
    assert f"open {run / 'report.html'}" in done.stdout
    again = _bignmf("demo", "--out", tmp_path, *small)
    assert again.returncode == 0, again.stderr
    assert "using the corpus built before" in again.stdout
    assert (tmp_path / "run-2" / "report.html").exists()


def test_import_and_help_load_no_dask():
    """`import bignmf` loads no dask, distributed, zarr or SciPy (0.02 s, against 1.2 s when
    every name was imported eagerly), nor does building the command's parser, help and all
    (0.34 s for `bignmf --help` where SciPy and Zarr made it 0.62 s: the tables of names it
    lists live apart from the code that runs them, and the kernels import SciPy on first use)."""
    heavy = ("dask", "distributed", "zarr", "scipy.sparse", "scipy.linalg", "matplotlib")
    probe = "import sys; print(' '.join(m for m in {heavy!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", f"import bignmf; {probe.format(heavy=heavy)}"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert done.stdout.split() == []
    code = "import bignmf.cli, contextlib, io\nwith contextlib.redirect_stdout(io.StringIO()):\n"
    code += "    bignmf.cli.build_parser().format_help()\n" + probe.format(heavy=heavy)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == []
    assert bignmf.nmf is bignmf.fit.engine.nmf  # the lazy names are the real ones
    assert "nmf" in dir(bignmf)
