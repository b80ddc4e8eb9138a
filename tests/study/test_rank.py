"""``k='auto'``: the rank a cross-validated study chooses, in the CLI and the estimator (the
candidate ranks cut to three here, to keep the study short)."""

from __future__ import annotations

import json

import pytest
import scipy.sparse as sp

import bignmf.study.rank
from bignmf.cli import main
from tests.study.planted import planted_programs

K = 4


def _fit_auto(matrix, run, max_iter: int) -> list[str]:
    return ["fit", str(matrix), "-k", "auto", "--out", str(run), "--seed", "0",
            "--max-iter", str(max_iter), "--scheduler", "threads",
            "--no-progress", "--top", "0"]  # fmt: skip


@pytest.fixture
def few_ranks(monkeypatch):
    monkeypatch.setattr(bignmf.study.rank, "AUTO_KS", (3, 4, 6))


def test_the_ranks_tried_stop_at_min_m_n():
    assert bignmf.study.rank.auto_ks((500, 7)) == (2, 3, 4, 5, 6)
    assert bignmf.study.rank.auto_ks((1, 9)) == (1,)


def test_fit_k_auto_fits_the_rank_its_study_chose(few_ranks, tmp_path, capsys):
    A, _, _ = planted_programs(k=K)
    sp.save_npz(tmp_path / "a.npz", A)
    run = tmp_path / "run"
    argv = _fit_auto(tmp_path / "a.npz", run, 80)
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"k = {K}, chosen by {run / 'choose-k'}" in out
    assert json.loads((run / "summary.json").read_text())["n_components"] == K
    assert json.loads((run / "choose-k" / "summary.json").read_text())["chosen_k"] == K
    assert main(["fit", str(tmp_path / "a.npz"), "-k", "auto", "--out", str(tmp_path / "p"),
                 "--plan-only"]) == 2  # fmt: skip
    assert "--plan-only plans one k" in capsys.readouterr().err


def test_a_stopped_choice_of_k_is_finished_by_the_same_command(
    few_ranks, tmp_path, monkeypatch, capsys
):
    A, _, _ = planted_programs(k=K)
    sp.save_npz(tmp_path / "a.npz", A)
    run = tmp_path / "run"
    argv = _fit_auto(tmp_path / "a.npz", run, 40)
    import bignmf.fit.outputs as outputs

    calls = []
    original = outputs.finish_run

    def fail_on_the_fourth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(outputs, "finish_run", fail_on_the_fourth)
    assert main(argv) == 130  # interrupted at the fourth fit's outputs
    assert "the same `bignmf fit` command goes on" in capsys.readouterr().err
    assert (run / "choose-k" / "study.json").exists()
    monkeypatch.setattr(outputs, "finish_run", original)
    assert main(argv) == 0
    assert json.loads((run / "summary.json").read_text())["n_components"] == K


def test_the_estimator_chooses_n_components_by_cross_validation(few_ranks):
    from bignmf import NMF

    A, _, _ = planted_programs(k=K)
    model = NMF(n_components="cv", random_state=0, max_iter=80, scheduler="threads").fit(A)
    assert model.n_components_ == K
    assert model.components_.shape == (K, A.shape[1])
    assert [row.k for row in model.rank_table_] == [3, 4, 6]
    with pytest.raises(ValueError, match="not with missing"):
        NMF(n_components="cv", missing="zeros").fit(A)
