"""scikit-learn's ``NMF`` estimator over bignmf's out-of-core engine.

A front end: it validates parameters and input, calls :func:`bignmf.nmf` (fit) and
:func:`bignmf.fit.transform.transform` (transform), and keeps the fitted attributes. No algorithm
code lives here. scikit-learn is needed only by this module.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_array, check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, check_non_negative, validate_data

from bignmf import registry
from bignmf.fit.driver import IterationInfo
from bignmf.fit.engine import nmf
from bignmf.fit.settings import IMPLICIT_ALPHA
from bignmf.fit.transform import transform as transform_rows
from bignmf.kernels.solvers import MASKED_SOLVERS
from bignmf.store.csr import CSRStore
from bignmf.store.matrix import MemoryMatrix, as_block_matrix

__all__ = ["NMF"]

#: scikit-learn's solver names mapped to the engine's, with the HALS sweeps they imply.
_SOLVERS = registry.estimator_solvers()


def _nan_as_unknown(X, missing: str | None):
    """X with its NaNs as zeros, and their pattern (None when there is none): the entries a
    fit must not see. With ``missing='zeros'`` a NaN is simply not stored (no mask needed)."""
    if sp.issparse(X):
        X = X.tocsr()
        nan = np.isnan(X.data)
        if not nan.any():
            return X, None
        rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))[nan]
        cols = X.indices[nan]
        X = X.copy()
        X.data[nan] = 0
        X.eliminate_zeros()
    else:
        nan = np.isnan(X)
        if not nan.any():
            return X, None
        rows, cols = np.nonzero(nan)
        X = np.where(nan, 0, X)
    unknown = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=X.shape)
    return X, (None if missing is not None else unknown)


def _is_store(X: Any) -> bool:
    return isinstance(X, str | os.PathLike | CSRStore)


def _seed(random_state: Any) -> int | None:
    """The engine's seed: an int as is, a RandomState draws one, None stays None."""
    if random_state is None or isinstance(random_state, Integral):
        return random_state
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


def _print_progress(info: IterationInfo) -> None:
    print(f"Iteration {info.iteration:4d}: loss {info.loss:.6g} ({info.seconds:.3f} s)")


class NMF(TransformerMixin, ClassNamePrefixFeaturesOutMixin, BaseEstimator):
    """Non-negative matrix factorization X ≈ W·H of stored or in-memory sparse data.

    A drop-in for :class:`sklearn.decomposition.NMF` (same parameter names, defaults and
    objective) that also fits matrices stored on disk, out of core, on any Dask scheduler.

    Parameters
    ----------
    n_components : int, 'auto', 'cv' or None, default='auto'
        Rank k. None: n_features. 'auto': inferred from H with ``init='custom'``, else
        n_features (as scikit-learn 1.9). 'cv': chosen by cross-validation before the fit —
        a study (:func:`bignmf.sweep`) of the ranks 2 to 50 up to min(n_samples,
        n_features), 3 replicates each, on all but a speckled 5% of the entries; the
        smallest k within one standard error of the lowest held-out RMSE
        (:mod:`bignmf.study.rank`); Frobenius loss, every entry observed. Its table is
        ``rank_table_``. (Not 'auto': that is scikit-learn's default, and its meaning.)
    init : {'random', 'nndsvd', 'nndsvda', 'nndsvdar', 'custom'} or None, default=None
        As scikit-learn: None is 'nndsvda' when ``k <= min(n_samples, n_features)``, else
        'random'. The NNDSVD family comes from an out-of-core randomized SVD.
    solver : {'hals', 'cd', 'mu', 'bpp'}, default='hals'
        'hals': accelerated HALS (``n_inner`` sweeps per pass over X); 'cd': scikit-learn's
        name for HALS with one sweep (coordinate descent without shuffling); 'mu':
        multiplicative updates (any ``beta_loss``); 'bpp': alternating NNLS by block principal
        pivoting.
    beta_loss : float or {'frobenius', 'kullback-leibler', 'itakura-saito'}, \
            default='frobenius'
        β-divergence minimised; other than Frobenius needs ``solver='mu'``. For β <= 0, X
        must have no zeros.
    tol : float, default=1e-4
        Tolerance of scikit-learn's multiplicative-update stopping rule, applied to every
        solver: every 10 iterations, stop when the error ``sqrt(2·objective)`` fell since the
        last check by less than ``tol`` times a reference error (see Notes for how it differs
        from scikit-learn's). 0 runs ``max_iter`` iterations.
    max_iter : int, default=200
        Maximum number of iterations (passes over X).
    random_state : int, RandomState instance or None, default=None
        Seed of the random and NNDSVD initialisations.
    alpha_W : float, default=0.0
        Regularisation of W, scaled by n_features as in scikit-learn.
    alpha_H : float or 'same', default='same'
        Regularisation of H, scaled by n_samples; 'same' takes ``alpha_W``.
    l1_ratio : float, default=0.0
        L1 share of the regularisation (0: L2 only, 1: L1 only).
    verbose : int, default=0
        Print the loss after every iteration.
    n_inner : int or None, default=None
        HALS sweeps per pass over X (None: 1). Only ``solver='hals'``.
    missing : {None, 'zeros'}, default=None
        ``'zeros'``: only X's stored entries are observed, every other one is unknown
        (ratings): the fit and ``transform`` minimise the error on the stored entries only
        (see :func:`bignmf.nmf`); ``solver`` 'hals', 'cd' or 'mu', Frobenius loss. Give an
        L2 penalty (``alpha_W``) when rows or columns have fewer stored entries than
        ``n_components``.
    weights : {None, 'implicit'}, default=None
        ``'implicit'``: X holds implicit feedback (counts, plays, clicks); the fit and
        ``transform`` minimise ``½·Σ c_ij (p_ij − (WH)_ij)²`` with preference ``p = 1`` where X
        stores a value a and 0 elsewhere, and confidence ``c = 1 + implicit_alpha·f(a)`` on
        the stored entries, 1 elsewhere (Hu, Koren & Volinsky; see :func:`bignmf.nmf`, which
        also takes a matrix of per-entry weights). ``solver`` 'hals', 'cd' or 'mu'.
    implicit_alpha : float, default=40.0
        α of ``weights='implicit'``.
    implicit_f : {'linear', 'log'}, default='linear'
        f of ``weights='implicit'``: ``f(a) = a`` or ``log(1 + a)``.
    w_storage : {'auto', 'memory', 'zarr'}, default='auto'
        Keep W in (worker) memory or in Zarr blocks on disk; 'auto' keeps it in memory when it
        fits easily.
    workdir : str, path or None, default=None
        Where W's Zarr blocks go (default: a new temporary directory).
    n_tasks : int or None, default=None
        Tasks per pass over X (default 4 per scheduler thread).
    cache_a : int, str or None, default=None
        When X is a store, keep its decoded row blocks in each worker's memory between
        iterations, up to this many bytes per worker ('4GiB', or 'auto': a quarter of its
        memory limit); see :func:`bignmf.nmf`. Off by default.
    scheduler : optional, default=None
        Passed to ``dask.compute``: 'threads', 'sync', a ``distributed.Client``... (default:
        Dask's current scheduler).
    block_nnz : int or None, default=None
        Target nonzeros per row block (re-plans the blocks of in-memory X or of a store).

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
        H.
    n_components_ : int
        Number of components.
    rank_table_ : list of bignmf.study.summary.KRow
        With ``n_components='cv'``: the study's table per k (held-out RMSE, stability...).
    reconstruction_err_ : float
        ‖X − WH‖_F for Frobenius (exact, of the final factors); for other β, ``sqrt(2·D)`` of
        the last iteration's divergence (of W after its last update and the previous H).
    n_iter_ : int
        Iterations run.
    loss_history_ : ndarray of shape (n_iter_,)
        β-divergence after every iteration's W update.
    objective_history_ : ndarray of shape (n_iter_,)
        The objective minimised after every iteration's W update: ``loss_history_`` plus the
        penalties ``l1_W·ΣW + ½·l2_W·‖W‖²_F + l1_H·ΣH + ½·l2_H·‖H‖²_F`` (scikit-learn's
        scaling of ``alpha_W``, ``alpha_H``, ``l1_ratio``), of the same ``(W_t, H_{t-1})``.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of the features, when X was a DataFrame with string column names.

    See Also
    --------
    bignmf.nmf : The functional engine.
    bignmf.fit.transform.transform : W of new rows against fixed components.
    sklearn.decomposition.NMF : The in-memory original.

    Notes
    -----
    X may be a NumPy array or a scipy.sparse matrix (W is returned as NumPy), or a bignmf store
    — a path or a :class:`bignmf.CSRStore` from :func:`bignmf.open_matrix` — in which case W is
    what :func:`bignmf.nmf` returns: NumPy when kept in memory, a lazy Dask array over Zarr
    blocks when ``w_storage`` is (or 'auto' resolves to) 'zarr'. Dask arrays must be written to
    a store first with :func:`bignmf.convert`.

    Memory: the driver holds H (k×n), a few n×k partial sums and, when kept in memory, W
    (m×k); each task holds one row block of X and its rows of W. X itself is read block by
    block once per iteration and never held whole (in-memory X is of course already held).

    ``transform`` solves each row exactly for Frobenius (non-negative least squares by BPP,
    whatever the fitting solver) and runs scikit-learn's W-only multiplicative updates for
    ``solver='mu'``. Differences from scikit-learn: no ``shuffle``; the random initialisation
    draws from NumPy's ``Generator`` per row block, so factors differ from scikit-learn's for
    the same seed; and the stopping rule (``stopping='sklearn'`` of :func:`bignmf.nmf`,
    :func:`bignmf.fit.stopping.sklearn_decrease`):

    - scikit-learn's ``solver='mu'`` checks every 10 iterations whether
      ``(e_{t-10} − e_t) / e_0 < tol``, ``e_t`` the error ``sqrt(2·D)`` of ``(W_t, H_t)`` and
      ``e_0`` that of the initial factors. bignmf checks ``(e_{t-10} − e_t) / e_1 < tol`` on
      the error of ``(W_t, H_{t-1})``, which each iteration measures anyway, against the
      error after the first iteration (``e_0`` would cost a pass over X), starting from
      ``e_1`` instead of ``e_0``. From the same initial factors the iterates are the same;
      ``e_1 <= e_0`` makes the later checks stricter (and the first one, at iteration 10,
      laxer). Measured with ``solver='mu'``, ``tol=1e-4`` from the same random factors
      (150×80 counts, k = 6, six seeds): ``n_iter_`` 0 to 30 iterations above
      scikit-learn's (70–130).
    - the error is of the objective (divergence + penalties), which the solvers decrease;
      scikit-learn's is of the divergence alone, which penalties may make rise — and
      scikit-learn stops on a rise. Here a rise is never convergence: the fit goes on, with
      one :class:`~bignmf.ObjectiveIncreaseWarning`.
    - for ``solver='cd'`` scikit-learn stops when the sum of the projected-gradient
      violations of a coordinate-descent iteration falls under ``tol`` times that of the
      first; bignmf has no such sum (it would cost a pass over X) and uses the rule above
      for 'cd', 'hals' and 'bpp' too, so ``tol`` means the same for every solver.

    ``ConvergenceWarning`` is raised exactly when ``tol > 0`` and ``max_iter`` iterations ran
    without the rule stopping the fit.

    Examples
    --------
    >>> import numpy as np
    >>> from bignmf.estimator import NMF
    >>> X = np.array([[1, 1], [2, 1], [3, 1.2], [4, 1], [5, 0.8], [6, 1]])
    >>> model = NMF(n_components=2, init="random", random_state=0, max_iter=1000)
    >>> W = model.fit_transform(X)
    >>> H = model.components_
    """

    _parameter_constraints: ClassVar[dict] = {
        "n_components": [
            Interval(Integral, 1, None, closed="left"),
            None,
            StrOptions({"auto", "cv"}),
        ],
        "init": [StrOptions(set(registry.names("init"))), None],
        "solver": [StrOptions(set(_SOLVERS))],
        "beta_loss": [StrOptions(set(registry.names("beta_loss"))), Real],
        "tol": [Interval(Real, 0, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
        "alpha_W": [Interval(Real, 0, None, closed="left")],
        "alpha_H": [Interval(Real, 0, None, closed="left"), StrOptions({"same"})],
        "l1_ratio": [Interval(Real, 0, 1, closed="both")],
        "verbose": ["verbose"],
        "n_inner": [Interval(Integral, 1, None, closed="left"), None],
        "missing": [StrOptions(set(registry.names("missing"))), None],
        "weights": [StrOptions({"implicit"}), None],
        "implicit_alpha": [Interval(Real, 0, None, closed="left")],
        "implicit_f": [StrOptions(set(registry.names("implicit_f")))],
        "w_storage": [StrOptions(set(registry.names("w_storage")))],
        "workdir": [str, os.PathLike, None],
        "n_tasks": [Interval(Integral, 1, None, closed="left"), None],
        "cache_a": [Interval(Integral, 0, None, closed="left"), str, None],
        "scheduler": "no_validation",
        "block_nnz": [Interval(Integral, 1, None, closed="left"), None],
    }

    def __init__(
        self,
        n_components="auto",
        *,
        init=None,
        solver="hals",
        beta_loss="frobenius",
        tol=1e-4,
        max_iter=200,
        random_state=None,
        alpha_W=0.0,
        alpha_H="same",
        l1_ratio=0.0,
        verbose=0,
        n_inner=None,
        missing=None,
        weights=None,
        implicit_alpha=IMPLICIT_ALPHA,
        implicit_f="linear",
        w_storage="auto",
        workdir=None,
        n_tasks=None,
        cache_a=None,
        scheduler=None,
        block_nnz=None,
    ):
        self.n_components = n_components
        self.init = init
        self.solver = solver
        self.beta_loss = beta_loss
        self.tol = tol
        self.max_iter = max_iter
        self.random_state = random_state
        self.alpha_W = alpha_W
        self.alpha_H = alpha_H
        self.l1_ratio = l1_ratio
        self.verbose = verbose
        self.n_inner = n_inner
        self.missing = missing
        self.weights = weights
        self.implicit_alpha = implicit_alpha
        self.implicit_f = implicit_f
        self.w_storage = w_storage
        self.workdir = workdir
        self.n_tasks = n_tasks
        self.cache_a = cache_a
        self.scheduler = scheduler
        self.block_nnz = block_nnz

    # ---------------------------------------------------------------- public API

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, W=None, H=None):
        """Learn an NMF model of X.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features), path or CSRStore
            Training data, in memory or as a bignmf store. A NaN in memory is an unknown
            entry: the fit minimises the error on the other entries only (``mask=`` of
            :func:`bignmf.nmf`; solvers 'hals', 'cd', 'mu').
        y : Ignored
            Not used, present for API consistency by convention.
        W : array-like of shape (n_samples, n_components), default=None
            Initial W for ``init='custom'``.
        H : array-like of shape (n_components, n_features), default=None
            Initial H for ``init='custom'``.

        Returns
        -------
        self : object
            The fitted estimator.

        Notes
        -----
        W is discarded: when it goes to disk, it is written to a temporary directory (inside
        ``workdir`` if given) that is removed afterwards.
        """
        self._fit_transform(X, W=W, H=H, keep_w=False)
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def fit_transform(self, X, y=None, W=None, H=None):
        """Learn an NMF model of X and return W.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features), path or CSRStore
            Training data, in memory or as a bignmf store. A NaN in memory is an unknown
            entry: the fit minimises the error on the other entries only (``mask=`` of
            :func:`bignmf.nmf`; solvers 'hals', 'cd', 'mu').
        y : Ignored
            Not used, present for API consistency by convention.
        W : array-like of shape (n_samples, n_components), default=None
            Initial W for ``init='custom'``.
        H : array-like of shape (n_components, n_features), default=None
            Initial H for ``init='custom'``.

        Returns
        -------
        W : ndarray or dask.array.Array of shape (n_samples, n_components)
            NumPy for in-memory X; for a store, a lazy Dask array over W's Zarr blocks when W
            was kept on disk.
        """
        return self._fit_transform(X, W=W, H=H, keep_w=True)

    def transform(self, X):
        """W of the rows of X against the fitted components.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features), path or CSRStore
            Data, in memory or as a bignmf store; a NaN is an unknown entry, as in ``fit``.

        Returns
        -------
        W : ndarray or dask.array.Array of shape (n_samples, n_components)
            NumPy for in-memory X; for a store, a lazy Dask array when W goes to disk
            (``w_storage``).

        Notes
        -----
        One pass over X (see :func:`bignmf.fit.transform.transform`): exact non-negative least
        squares per row for Frobenius, W-only multiplicative updates for ``solver='mu'``; with
        ``missing='zeros'``, ``max_iter`` sweeps of coordinate descent on each row's stored
        entries.
        Memory: one row block of X per task, H, and W when kept in memory.
        """
        check_is_fitted(self)
        matrix, in_memory, unknown = self._matrix(X, reset=False)
        return transform_rows(
            matrix,
            self.components_,
            solver="mu" if self.solver == "mu" else "bpp",
            beta_loss=self.beta_loss,
            alpha_W=self.alpha_W,
            l1_ratio=self.l1_ratio,
            max_iter=self.max_iter,
            tol=self.tol,
            w_storage="memory" if in_memory else self.w_storage,
            workdir=self.workdir,
            n_tasks=self.n_tasks,
            scheduler=self.scheduler,
            missing=self.missing,
            mask=unknown,
            **self._weights(),
        )

    def inverse_transform(self, X):
        """Data back in the original space: ``W·H``.

        Parameters
        ----------
        X : {ndarray, sparse matrix, dask array} of shape (n_samples, n_components)
            W, e.g. from :meth:`transform`.

        Returns
        -------
        X_original : ndarray or dask.array.Array of shape (n_samples, n_features)
            Dense; lazy when W is a Dask array.

        Notes
        -----
        The result is dense (n_samples × n_features): for a lazy W it stays lazy, to be
        computed chunk by chunk.
        """
        check_is_fitted(self)
        if not hasattr(X, "__dask_graph__"):
            X = check_array(X, accept_sparse=("csr", "csc"), dtype=[np.float64, np.float32])
        return X @ self.components_

    @property
    def _n_features_out(self):
        """Number of transformed output features."""
        return self.components_.shape[0]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True
        tags.input_tags.sparse = True
        tags.input_tags.allow_nan = self._takes_nan()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    # ---------------------------------------------------------------- private

    def _weights(self) -> dict:
        """The entry-weight arguments of :func:`bignmf.nmf` and ``transform``."""
        return {
            "weights": self.weights,
            "implicit_alpha": self.implicit_alpha,
            "implicit_f": self.implicit_f,
        }

    def _takes_nan(self) -> bool:
        """Whether a NaN in X may mean an unknown entry: the solver can fit around a mask."""
        return _SOLVERS.get(self.solver, (None,))[0] in MASKED_SOLVERS

    def _matrix(self, X, *, reset: bool):
        """X as a block matrix, and whether it is held in memory; sets ``n_features_in_``."""
        if hasattr(X, "__dask_graph__"):
            raise TypeError(
                "NMF does not take Dask arrays: write it to a store first with "
                "bignmf.convert(x, 'A.zarr') (it streams one row stripe at a time), then pass "
                "the path or bignmf.open_matrix('A.zarr')"
            )
        if not _is_store(X):
            X = validate_data(
                self,
                X,
                accept_sparse=("csr", "csc"),
                dtype=[np.float64, np.float32],
                reset=reset,
                ensure_all_finite="allow-nan" if self._takes_nan() else True,
            )
            X, unknown = _nan_as_unknown(X, self.missing)
            check_non_negative(X, f"{type(self).__name__} (input X)")
            return MemoryMatrix(X, block_nnz=self.block_nnz), True, unknown
        matrix = as_block_matrix(X, block_nnz=self.block_nnz)
        n = matrix.shape[1]
        if reset:
            self.n_features_in_ = n
            if hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
        elif n != self.n_features_in_:
            raise ValueError(
                f"X has {n} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input."
            )
        return matrix, False, None

    def _cross_validated_rank(self, matrix, unknown, solver: str, n_inner) -> int:
        """``n_components='cv'``: the k of a cross-validated study (in a temporary directory
        under ``workdir``); its table kept as ``rank_table_``."""
        from bignmf.study.rank import choose_rank

        if self.missing is not None or self.weights is not None or unknown is not None:
            raise ValueError(
                "n_components='cv' holds out entries of a fully observed X: not with missing, "
                "weights or NaN in X"
            )
        if self.init == "custom":
            raise ValueError("n_components='cv' chooses k: not with init='custom'")
        if self.workdir is not None:
            os.makedirs(self.workdir, exist_ok=True)
        seed = _seed(self.random_state)
        seed = int(np.random.SeedSequence().entropy % 2**31) if seed is None else seed
        with tempfile.TemporaryDirectory(prefix="bignmf-rank-", dir=self.workdir) as where:
            study = choose_rank(
                matrix,
                out=os.path.join(where, "study"),
                seed=seed,
                scheduler=self.scheduler,
                solver=solver,
                beta_loss=self.beta_loss,
                tol=self.tol,
                stopping="sklearn",
                max_iter=self.max_iter,
                alpha_W=self.alpha_W,
                alpha_H=self.alpha_H,
                l1_ratio=self.l1_ratio,
                n_inner=self.n_inner if n_inner is None else n_inner,
            )
        self.rank_table_ = study.table
        return study.chosen_k

    def _n_components_for(self, n_features: int, H) -> int:
        if self.n_components is None:
            return n_features
        if self.n_components == "cv":
            return n_features  # the study chooses it once X is checked
        if self.n_components == "auto":
            return H.shape[0] if self.init == "custom" and H is not None else n_features
        return int(self.n_components)

    def _initial_factors(self, shape, dtype, W, H):
        """Checked custom W and H (None otherwise), and the number of components."""
        m, n = shape
        if self.init != "custom":
            if W is not None or H is not None:
                warnings.warn(
                    "When init!='custom', provided W or H are ignored. Set init='custom' to "
                    "use them as initialization.",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return None, None, self._n_components_for(n, None)
        if W is None or H is None:
            raise ValueError("init='custom' needs both W and H")
        # no dtype conversion: a W or H of another dtype than X is refused, not cast
        H = check_array(H, input_name="H")
        W = check_array(W, input_name="W")
        k = self._n_components_for(n, H)
        for name, X, expected in (("H", H, (k, n)), ("W", W, (m, k))):
            if X.shape != expected:
                raise ValueError(f"initial {name} must have shape {expected}, got {X.shape}")
        if H.dtype != dtype or W.dtype != dtype:
            raise TypeError(
                f"H and W should have the same dtype as X ({dtype}). Got H.dtype = {H.dtype} "
                f"and W.dtype = {W.dtype}."
            )
        return W, H, k

    def _fit_transform(self, X, W=None, H=None, *, keep_w: bool = True):
        """Fit on X; return W (None unless ``keep_w``). Parameters are already validated."""
        matrix, in_memory, unknown = self._matrix(X, reset=True)
        m, n = matrix.shape
        W, H, k = self._initial_factors((m, n), matrix.dtype, W, H)
        solver, n_inner = _SOLVERS[self.solver]
        if self.n_components == "cv":
            k = self._cross_validated_rank(matrix, unknown, solver, n_inner)
        if n_inner is not None and self.n_inner not in (None, n_inner):
            raise ValueError(
                f"solver='cd' is HALS with one sweep (n_inner=1), got n_inner={self.n_inner}; "
                "use solver='hals' for more sweeps"
            )
        beta = registry.beta_value(self.beta_loss)
        if solver != "mu" and beta != 2:
            raise ValueError(
                f"Invalid beta_loss parameter: solver {self.solver!r} does not handle "
                f"beta_loss = {self.beta_loss!r}; use solver='mu'"
            )
        if solver == "mu" and self.init == "nndsvd":
            warnings.warn(
                "The multiplicative update ('mu') solver cannot update zeros present in the "
                "initialization, and so leads to poorer results when used jointly with "
                "init='nndsvd'. You may try init='nndsvda' or init='nndsvdar' instead.",
                UserWarning,
                stacklevel=3,
            )
        if beta <= 0 and matrix.nnz < m * n:
            raise ValueError(
                "When beta_loss <= 0 and X contains zeros, the solver may diverge. Please add "
                "small values to X, or use a positive beta_loss."
            )
        scratch_w = in_memory or not keep_w  # W is materialised or dropped: its files are not kept
        with contextlib.ExitStack() as stack:
            workdir = self.workdir
            if scratch_w:
                if workdir is not None:
                    os.makedirs(workdir, exist_ok=True)
                workdir = stack.enter_context(
                    tempfile.TemporaryDirectory(prefix="bignmf-fit-", dir=workdir)
                )
            result = nmf(
                matrix,
                k,
                solver=solver,
                beta_loss=self.beta_loss,
                init=self.init,
                W=W,
                H=H,
                tol=self.tol,
                stopping="sklearn",
                max_iter=self.max_iter,
                random_state=_seed(self.random_state),
                alpha_W=self.alpha_W,
                alpha_H=self.alpha_H,
                l1_ratio=self.l1_ratio,
                n_inner=self.n_inner if n_inner is None else n_inner,
                missing=self.missing,
                mask=unknown,
                **self._weights(),
                w_storage=self.w_storage,
                workdir=workdir,
                n_tasks=self.n_tasks,
                cache_a=self.cache_a,
                scheduler=self.scheduler,
                callback=_print_progress if self.verbose else None,
            )
            W_out = result.W
            if keep_w and in_memory and not isinstance(W_out, np.ndarray):
                W_out = np.asarray(W_out.compute(scheduler=self.scheduler))
        if not result.converged and self.tol > 0:
            warnings.warn(
                f"Maximum number of iterations {self.max_iter} reached. Increase it to "
                "improve convergence.",
                ConvergenceWarning,
                stacklevel=3,
            )
        self.components_ = result.H
        self.n_components_ = result.H.shape[0]
        self.reconstruction_err_ = float(result.reconstruction_err)
        self.n_iter_ = int(result.n_iter)
        self.loss_history_ = np.asarray(result.loss_history, dtype=np.float64)
        self.objective_history_ = np.asarray(result.objective_history, dtype=np.float64)
        return W_out if keep_w else None
