"""Consensus NMF's pieces against references: cNMF's formulas in dense NumPy, scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest

from bignmf.study.consensus import (
    consensus,
    kmeans,
    local_density,
    neighbours,
    silhouette,
    unit_rows,
)

sklearn = pytest.importorskip("sklearn")


def _blobs(seed=0, centres=5, per=40, width=0.3, dims=6):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(c, width, size=(per, dims)) for c in range(centres)])


def test_silhouette_is_scikit_learns():
    from sklearn.metrics import silhouette_score

    X = _blobs()
    labels = np.repeat(np.arange(5), 40)
    assert silhouette(X, labels) == pytest.approx(silhouette_score(X, labels), abs=1e-8)
    noisy = np.random.default_rng(1).integers(0, 4, X.shape[0])
    noisy[0] = 7  # a cluster of one scores 0
    assert silhouette(X, noisy) == pytest.approx(silhouette_score(X, noisy), abs=1e-8)


def test_kmeans_finds_scikit_learns_partition_and_is_seeded():
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    X = _blobs(width=0.2)
    ours = kmeans(X, 5, seed=1)
    theirs = KMeans(5, n_init=10, random_state=1).fit_predict(X)
    assert adjusted_rand_score(ours, theirs) == 1.0
    assert np.array_equal(kmeans(X, 5, seed=1), ours)
    with pytest.raises(ValueError, match="cannot cluster"):
        kmeans(X[:3], 5)


def test_local_density_is_cnmfs_mean_distance_to_the_nearest_neighbours():
    X = unit_rows(np.random.default_rng(2).random((37, 9)))
    D = np.sqrt(((X[:, None, :] - X[None, :, :]) ** 2).sum(-1))
    L = neighbours(37, 3, 0.3)
    order = np.argsort(D, axis=1)[:, 1 : L + 1]  # cNMF: the L nearest besides itself
    want = np.take_along_axis(D, order, axis=1).mean(axis=1)
    np.testing.assert_allclose(local_density(X, L), want, atol=1e-12)
    assert L == 3  # 30% of 37 // 3 = 12 replicates


def test_consensus_drops_the_outliers_and_takes_the_medians():
    rng = np.random.default_rng(3)
    programs = rng.random((3, 20)) ** 4
    replicates = [programs[rng.permutation(3)] * rng.uniform(0.5, 2.0, (3, 1)) for _ in range(8)]
    replicates[2] = replicates[2].copy()
    replicates[2][0] = rng.random(20)  # one spectrum of one replicate is noise
    made = consensus(replicates, 3, density_threshold=0.5)
    assert made.outliers == 1
    assert not made.kept[2 * 3 + 0]
    assert made.labels[2 * 3 + 0] == -1
    np.testing.assert_allclose(made.spectra.sum(axis=1), 1.0)
    found = sorted(np.argmax(np.corrcoef(np.vstack([programs, made.spectra]))[:3, 3:], axis=1))
    assert found == [0, 1, 2]
    assert made.stability > 0.9


def test_too_many_outliers_for_k_leave_no_consensus_and_say_why():
    rng = np.random.default_rng(4)
    made = consensus([rng.random((4, 30)) for _ in range(3)], 4, density_threshold=1e-9)
    assert made.spectra is None
    assert "raise the density threshold" in made.problem
    assert made.outliers == 12
    assert np.isnan(made.stability)


def test_one_replicate_is_its_own_consensus():
    H = np.random.default_rng(5).random((3, 10))
    made = consensus([H], 3)
    assert made.outliers == 0
    assert np.isnan(made.stability)
    found = np.corrcoef(np.vstack([H, made.spectra]))[:3, 3:]
    assert np.allclose(np.sort(found.max(axis=1)), 1.0)
