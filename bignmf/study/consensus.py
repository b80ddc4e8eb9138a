"""Consensus NMF from the spectra of many replicates (Kotliar et al., eLife 2019), in NumPy.

For one k, the R replicates' H rows (R·k spectra over the n columns) are normalised to unit
length; a spectrum whose mean distance to its nearest neighbours (its local density) is above
a threshold is an outlier and dropped; the rest are clustered into k groups by k-means
(k-means++ starts, seeded, the best of several); each group's median is a consensus spectrum,
normalised to sum 1; the silhouette of the clustering is the stability of k. Everything here
works on the spectra, an (R·k) × n array, never on A: the consensus's W is refitted from A
afterwards (:func:`bignmf.fit.transform.transform`). Distances are made a slab of rows at a
time, so nothing is (R·k)² unless it is small.

References
----------
Kotliar, D. et al., "Identifying gene expression programs of cell-type identity and cellular
activity with single-cell RNA-Seq", eLife 8:e43803, 2019.
Arthur, D. & Vassilvitskii, S., "k-means++: the advantages of careful seeding", SODA 2007.
Rousseeuw, P. J., "Silhouettes: a graphical aid to the interpretation and validation of
cluster analysis", J. Comput. Appl. Math. 20, 1987.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DENSITY_THRESHOLD",
    "LOCAL_NEIGHBORHOOD",
    "Consensus",
    "consensus",
    "kmeans",
    "local_density",
    "neighbours",
    "silhouette",
    "unit_rows",
]

#: cNMF's suggested outlier threshold on the local density (distances of unit vectors: 0-2).
DENSITY_THRESHOLD = 0.5
#: cNMF's neighbourhood: the nearest 30% of the replicates.
LOCAL_NEIGHBORHOOD = 0.30
#: k-means++ starts tried; the lowest inertia is kept (scikit-learn's and cNMF's 10).
N_INIT = 10
#: Lloyd iterations at most per start (they stop when no label changes).
MAX_ITER = 300
#: Rows of a slab of distances (slab × N float64).
SLAB_ROWS = 512


@dataclass(frozen=True)
class Consensus:
    """The consensus of one k.

    Attributes
    ----------
    k : int
    spectra : ndarray, shape (k, n), or None
        Consensus spectra (H), each the median of its cluster, rows summing to 1; None when
        fewer than k spectra passed the density filter (``problem`` says so).
    density : ndarray, shape (R·k,)
        Local density of every replicate spectrum (mean distance to its neighbours).
    kept : ndarray of bool, shape (R·k,)
        Spectra at or below the density threshold, the ones clustered.
    labels : ndarray of int, shape (R·k,)
        Cluster of each spectrum, -1 for an outlier.
    stability : float
        Silhouette of the clustering of the kept spectra (Euclidean, -1 to 1; NaN when
        k = 1, where it is undefined).
    threshold : float
    neighbors : int
        Neighbours of the local density.
    """

    k: int
    spectra: np.ndarray
    density: np.ndarray
    kept: np.ndarray
    labels: np.ndarray
    stability: float
    threshold: float
    neighbors: int
    #: Why there is no consensus (``spectra`` None): fewer than k spectra were kept.
    problem: str | None = None

    @property
    def outliers(self) -> int:
        """Spectra dropped as outliers."""
        return int((~self.kept).sum())


def unit_rows(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit Euclidean length, in float64 (an all-zero row stays zero)."""
    X = np.asarray(X, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", X, X))
    return X / np.where(norms > 0, norms, 1.0)[:, None]


def _distance_slabs(X: np.ndarray, Y: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """Euclidean distances of X's rows to Y's, ``(first row, slab)`` at a time."""
    y_sq = np.einsum("ij,ij->i", Y, Y)
    for start in range(0, X.shape[0], SLAB_ROWS):
        part = X[start : start + SLAB_ROWS]
        sq = np.einsum("ij,ij->i", part, part)[:, None] + y_sq[None, :] - 2.0 * (part @ Y.T)
        yield start, np.sqrt(np.maximum(sq, 0.0))


def neighbours(n_spectra: int, k: int, local_neighborhood: float = LOCAL_NEIGHBORHOOD) -> int:
    """Neighbours of the local density: ``local_neighborhood`` of the replicates (R = N/k),
    at least 1 and at most N - 1."""
    replicates = n_spectra // max(k, 1)
    return int(min(max(int(local_neighborhood * replicates), 1), max(n_spectra - 1, 1)))


def local_density(X: np.ndarray, n_neighbors: int) -> np.ndarray:
    """Each row's mean distance to its ``n_neighbors`` nearest other rows."""
    N = X.shape[0]
    if N < 2:
        return np.zeros(N)
    n_neighbors = min(n_neighbors, N - 1)
    out = np.empty(N)
    for start, D in _distance_slabs(X, X):
        rows = np.arange(D.shape[0])
        D[rows, start + rows] = np.inf  # not its own neighbour
        nearest = np.partition(D, n_neighbors - 1, axis=1)[:, :n_neighbors]
        out[start : start + D.shape[0]] = nearest.mean(axis=1)
    return out


def _plus_plus(X: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ starting centres."""
    centres = [X[rng.integers(X.shape[0])]]
    closest = np.sum((X - centres[0]) ** 2, axis=1)
    for _ in range(1, k):
        total = closest.sum()
        if total > 0:
            pick = int(np.searchsorted(np.cumsum(closest), rng.random() * total, side="right"))
            pick = min(pick, X.shape[0] - 1)
        else:  # every point sits on a centre already
            pick = int(rng.integers(X.shape[0]))
        centres.append(X[pick])
        closest = np.minimum(closest, np.sum((X - X[pick]) ** 2, axis=1))
    return np.array(centres)


def _lloyd(X: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, float]:
    """Lloyd's iterations from ``centres`` until no label changes; (labels, inertia)."""
    k = centres.shape[0]
    x_sq = np.einsum("ij,ij->i", X, X)
    labels = None
    for _ in range(MAX_ITER):
        sq = x_sq[:, None] + np.einsum("ij,ij->i", centres, centres)[None, :] - 2 * X @ centres.T
        new = np.argmin(sq, axis=1)
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        for c in range(k):
            members = labels == c
            if members.any():  # an emptied cluster keeps its centre
                centres[c] = X[members].mean(axis=0)
    inertia = float(np.sum((X - centres[labels]) ** 2))
    return labels, inertia


def kmeans(X: np.ndarray, k: int, seed: int = 1, n_init: int = N_INIT) -> np.ndarray:
    """Labels of a k-means clustering of the rows of X: the lowest inertia of ``n_init``
    k-means++ starts drawn from ``seed``."""
    if not 1 <= k <= X.shape[0]:
        raise ValueError(f"cannot cluster {X.shape[0]} spectra into {k} groups")
    rng = np.random.default_rng(seed)
    best, best_inertia = None, np.inf
    for _ in range(n_init):
        labels, inertia = _lloyd(X, _plus_plus(X, k, rng))
        full = np.unique(labels).size == k  # a start that emptied a cluster is no answer
        if full and inertia < best_inertia:
            best, best_inertia = labels, inertia
    if best is None:
        raise ValueError(f"k-means left a group empty in each of {n_init} starts (k = {k})")
    return best


def silhouette(X: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette of a clustering (Euclidean; a point alone in its cluster scores 0, as
    scikit-learn's ``silhouette_score``). NaN with fewer than 2 clusters."""
    groups, labels = np.unique(labels, return_inverse=True)
    if groups.size < 2:
        return float("nan")
    one_hot = np.zeros((X.shape[0], groups.size))
    one_hot[np.arange(X.shape[0]), labels] = 1.0
    sizes = one_hot.sum(axis=0)
    scores = np.empty(X.shape[0])
    for start, D in _distance_slabs(X, X):
        rows = np.arange(start, start + D.shape[0])
        sums = D @ one_hot  # distance of each point to each cluster, summed
        own = labels[rows]
        peers = sizes[own] - 1
        a = sums[np.arange(rows.size), own] / np.maximum(peers, 1)
        others = sums / sizes[None, :]
        others[np.arange(rows.size), own] = np.inf
        b = others.min(axis=1)
        s = (b - a) / np.maximum(np.maximum(a, b), np.finfo(float).tiny)
        scores[start : start + rows.size] = np.where(peers > 0, s, 0.0)
    return float(scores.mean())


def consensus(
    spectra: Sequence[np.ndarray],
    k: int,
    *,
    density_threshold: float = DENSITY_THRESHOLD,
    local_neighborhood: float = LOCAL_NEIGHBORHOOD,
    seed: int = 1,
) -> Consensus:
    """The consensus spectra of one k from its replicates' H.

    Parameters
    ----------
    spectra : sequence of ndarray, each (k, n)
        The replicates' H.
    k : int
    density_threshold : float
        Spectra whose local density (mean distance to the nearest neighbours, unit vectors:
        0 to 2) is above this are outliers; 2 or more keeps every spectrum. With one
        replicate nothing is dropped and the stability is undefined (NaN): the consensus is
        that fit's spectra.
    local_neighborhood : float
        Neighbours of the local density, as a fraction of the replicates (:func:`neighbours`).
    seed : int
        Seed of the k-means starts.

    Returns
    -------
    Consensus
        Without spectra (and saying why) when fewer than k spectra are left after dropping
        the outliers: the replicates do not agree at this k, or the threshold is too low.
    """
    X = unit_rows(np.concatenate([np.asarray(H) for H in spectra], axis=0))
    n_neighbors = neighbours(X.shape[0], k, local_neighborhood)
    density = local_density(X, n_neighbors)
    alone = X.shape[0] < 2 * k  # one replicate: its spectra have no neighbours but each other
    kept = np.ones(X.shape[0], dtype=bool) if alone else density <= density_threshold
    labels = np.full(X.shape[0], -1, dtype=np.int64)
    if kept.sum() < k:
        problem = (
            f"only {int(kept.sum())} of {X.shape[0]} spectra have a local density within "
            f"{density_threshold:g}, fewer than k: the replicates disagree (or raise the "
            "density threshold)"
        )
        args = (density, kept, labels, float("nan"), float(density_threshold), n_neighbors)
        return Consensus(k, None, *args, problem)
    labels[kept] = kmeans(X[kept], k, seed)
    medians = np.stack([np.median(X[labels == c], axis=0) for c in range(k)])
    totals = medians.sum(axis=1, keepdims=True)
    medians = medians / np.where(totals > 0, totals, 1.0)
    stability = silhouette(X[kept], labels[kept]) if k > 1 and not alone else float("nan")
    return Consensus(
        k, medians, density, kept, labels, stability, float(density_threshold), n_neighbors
    )
