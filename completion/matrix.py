"""Matrix completion by kernel regression with the NTK of an infinitely wide fully connected net.

Every observed entry (i, j) is a training point; missing entries are predicted by kernel
regression. The values are first centred by the additive baseline mu + a_i + b_j (column means,
then row means of what is left, fitted on the observed entries; an empty column gets the global
mean, an empty row no offset) and the kernel regresses the residual. Ways to build the kernel
between entries (``mode``):

* ``"rows"``: K((i, j), (i', j')) = [j == j'] NTK(r_i, r_i'): a network maps row i's prior to the
  whole row; it predicts rows that are missing entirely from their features;
* ``"cols"``: the same with rows and columns swapped;
* ``"joint"``: K = NTK(z_ij, z_i'j') with z_ij = [a r_i ; b c_j], a = b = 1/sqrt(2) (priors have
  unit mean squared norm, so <z, z'> = a^2 <r_i, r_i'> + b^2 <c_j, c_j'>); with one-hot priors
  the kernel takes four values and the structured solver never forms the |Omega|^2 matrix;
* ``"rows-chained"`` / ``"cols-chained"``: rows (cols) mode with a per-column (per-row) prior
  that leaves the predicted column out, chained MICE-style (:mod:`completion.chained`); for a
  matrix whose rows (columns) are a sequence, the prior may also hold the predicted column's
  values at the neighbouring rows, chosen for the matrix by leave-one-out;
* ``"auto"`` (the default): the candidates above (with the priors ``profile`` and
  ``profile@softimpute``, features when given, and the SoftImpute completion itself) are scored
  on held-out observed entries, the chained ones first; a refined candidate whose first round
  is already more than ``SCREEN_MARGIN`` behind the best score so far is not refined further
  (screened out; judged where the first fold holds ``SCREEN_MIN_ENTRIES`` entries); the
  best few are combined with convex weights fitted on those entries (:mod:`completion.stacking`);
  then a second round: rows and cols mode with the profile (``profile`` and
  ``profile:unscaled``) of that combination's completion as the prior (``profile@stack``), their
  ridge walked along ``STACK_RIDGE_GRID``, scored on the same entries and ranked with the first
  round's fits for a second combination, which is taken where its held-out RMSE is the lower
  of the two; the chosen fits are then refitted on every observed entry. A chained mode is a
  candidate where its regressions average ``CHAINED_MIN_POINTS`` observed points and its
  estimated cost fits ``AUTO_CHAINED_FLOPS`` and ``AUTO_CHAINED_TOTAL_FLOPS``.

Priors are spec strings (see :mod:`completion.priors`). Data-derived priors (``profile``,
``lowrank:k``) are refined ``refine`` times: the prior is recomputed from the matrix completed
by the previous fit (observed values kept) and the regression is solved again.

Vector entries: X of shape (m, n, d) is completed as an (m, n) matrix whose entries are
d-vectors (a missing entry = a fibre X[i, j, :] all NaN): one kernel over (row, col), the d
outputs solved as d right-hand sides of each factorisation, a per-feature additive baseline, and
priors built from the unfolded (m, n * d) values (:mod:`completion.fibres`,
:func:`completion.priors.build_prior`); the chained modes do not apply.

Observed entries: ``transform``/``fit_transform`` return them unchanged and fill only the missing
ones. ``predict_entries(rows, cols)`` returns the fit itself, which at an observed entry equals the
observed value minus ridge * mean-diagonal * alpha in rows/cols/joint mode (exact interpolation
as ``ridge`` -> 0), and the observed value in the chained modes.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import math
import time
import warnings

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin

from models.device import (check_fits, limited_threads, parse_bytes, resolve_device,
                           threads_chosen_by_default, usable_cores)
from models.ntk import ACTIVATIONS, FullyConnectedNTK

from .chained import LinearSkip, chained_fit, chained_flops
from .cv_grid import CVGrid, entry_folds, uses_softimpute
from .fit_progress import FitProgress
from .fit_threads import FitThreads
from .fibres import fibre_mask, fold, observed_fibres, unfold
from .prior_grams import FeatureGram, full_kernel
from .priors import build_prior, parse_prior
from .scheduling import check_scheduler, connect
from .softimpute import FRACTIONS, column_means, soft_impute_cv, soft_impute_path
from .solvers import (JointKernelOperator, choose_solver, parse_solver, predict_onehot_joint,
                      solve_onehot_joint, solve_shared_kernel)
from .sparse_matrix import nystrom_dense_prediction, observed_entries
from .sparse_selection import fit_chosen, select_on_entries
from .stacking import convex_weights

__all__ = ["NTKImputer", "additive_baseline", "describe_choice", "MODES"]

log = logging.getLogger(__name__)

MODES = ("rows", "cols", "joint", "rows-chained", "cols-chained")
OUTPUTS = ("default", "pandas")  # set_output's containers
CHAINED_AXIS = {"rows-chained": 0, "cols-chained": 1}
DEPTH_GRID = (1, 2, 3)
RIDGE_GRID = (0.003, 0.01, 0.03, 0.1, 0.3)
DEFAULT_DEPTH = 1
DEFAULT_RIDGE = 0.03
# mode "auto" tunes the best kernel candidate on these smaller grids (speed)
AUTO_DEPTH_GRID = (1, 2)
AUTO_RIDGE_GRID = (0.01, 0.03, 0.1)
# bias variance of the chained fits' network: the inputs (unit mean squared norm, weight
# variance 2) and the bias add equally to the first layer's pre-activation variance, so the
# kernel is not positively homogeneous (a net without biases predicts |x| g(x / |x|): zero at the
# column means, linear along every ray); measured in benchmarks/RESULTS.md
CHAINED_BIAS_VAR = 2.0
# "auto" takes the chained modes, the one whose regressions have more observed points first,
# while their estimated costs (chained.chained_flops) add up to at most AUTO_CHAINED_TOTAL_FLOPS;
# the first may take all of it, the second at most AUTO_CHAINED_FLOPS, as may each of the
# column-mean-offset variants (at twice the cost, counted in the total too). One core fits
# about 1e10 of these flops a second: digits' rows-chained fit (1797 x 64, 9.8e10) 10-11 s,
# GDSC's (988 x 265, 3.2e11) 22-25 s, its cols-chained one (1.2e11, left out) 11 s; with GDSC's
# rows-chained candidate (its final fit beside the cross-validation on the second core) `auto`
# took 38-41 s on two cores instead of 18-22 (now 25-33 s), and its RMSE 0.8305 -> 0.8294
# (benchmarks/RESULTS.md)
AUTO_CHAINED_FLOPS = 1.5e11
AUTO_CHAINED_TOTAL_FLOPS = 3.5e11
# "auto" leaves out a chained mode whose regressions have fewer observed points than this on
# average. cols-chained regresses each row (a sample, in scikit-learn's convention) over the
# columns, on the other rows' values: on a table of a few columns each row has those few values
# (statecrime, 51 x 7: it scored 1.04 against 0.76 and took 21 of 29 s under 20-fold CV; on
# wine, 10.4 points, and star98, 17.6, admitting it took 4-6 times as long and did not help).
# rows-chained is IterativeImputer's orientation (a column over the samples) and is kept on
# tables of 13-25 rows: longley (16 x 7) 0.461 -> 0.343 (benchmarks/RESULTS.md)
CHAINED_MIN_POINTS = {"rows-chained": 10, "cols-chained": 20}
# scale="auto" fits on standardised columns where the columns' standard deviations (observed
# entries) spread by more than this factor (:func:`spread_ratio`, the 90th over the 10th
# percentile): columns in different units. A raw table of mixed units otherwise has an additive
# baseline whose row effects come from its widest columns (on ccard, 5 columns with standard
# deviations 0.48-316, a 0/1 column was predicted 26 units off) and CV scores that see only
# those columns. Matrices in one unit keep it: GDSC's 265 drugs spread 2.2 (standardising them
# gave 0.8341 against 0.8305, benchmarks/RESULTS.md), elnino's months 1.4, a synthetic drug
# screen with one nearly flat drug 2.4 (its max / min: 10.6); raw tables of mixed units 12-9000
SCALE_RATIO = 10.0
# solver "auto" on a dense matrix takes Nystrom for rows (cols) mode when the exact solver's
# N x N inverse over the N rows (cols) would cost more than this many flops, N^3 (N above about
# 4,600): statsmodels' fair table (6,366 rows) took 26 s per rows-mode fit exact, 5 s with
# Nystrom, held-out RMSE 0.8939 vs 0.8938 (benchmarks/RESULTS.md)
DENSE_SHARED_FLOPS = 1e11
# "auto" with vector entries leaves SoftImpute of the unfolded (m, n * d) matrix (the
# profile@softimpute prior and the softimpute component) out above this many flops per SVD,
# 4 m (n d) min(m, n d): its CV path on 500 x 300 x 5 (1.5e9) took 20 s CPU, on 500 x 300 x 20
# (6e9) 232 s CPU (benchmarks/RESULTS.md, vector-valued entries)
AUTO_UNFOLDED_SVD_FLOPS = 2e9
# "auto" stops refining a data-derived candidate whose held-out RMSE after its first round
# exceeds this multiple of the best RMSE so far (refinement gained at most ~3% while developing)
SCREEN_MARGIN = 1.10
# ... judged on the first fold's entries, and only where it holds at least this many: the RMSE
# of n entries has a relative standard error of about 1 / sqrt(2 n), 3% at 500 against the 10%
# margin (on iris' 24-entry fold, 14%: the chained fit with column-mean offsets, the best
# candidate there, was screened out on seeds 1 and 2; iris 0.5298 -> 0.4754 without it)
SCREEN_MIN_ENTRIES = 500
# "auto"'s second round (priors from the first combination) walks its ridge along this grid
STACK_RIDGE_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
STACK_PRIORS = ("profile@stack", "profile:unscaled@stack")
# the first round's completed training splits kept for the second round's sources (in this
# process; beyond this the second round refits the first combination's components)
KEPT_FITS_BYTES = 2**28
# robust z-score (|x - median| / (1.4826 MAD)) above which an observed value is reported
EXTREME_Z = 100.0


def spread_ratio(sds):
    """How much the positive entries of ``sds`` (column standard deviations) spread: their 90th
    percentile over their 10th (1.0 when fewer than two are positive)."""
    sds = np.asarray(sds, dtype=np.float64)
    sds = sds[np.isfinite(sds) & (sds > 0)]
    if sds.size < 2:
        return 1.0
    low, high = np.quantile(sds, [0.1, 0.9])
    return float(high / low)


def additive_baseline(values, mask):
    """(m, n) additive fit mu_j + a_i of the observed entries: column means (the global mean for
    an empty column), then the row means of the residual (0 for an empty row). ``values`` may
    hold anything where unobserved. For (m, n, d) values (vector entries, ``mask`` (m, n)):
    the same fit per feature, (m, n, d)."""
    mask = fibre_mask(mask, values)
    obs = np.where(mask, values, 0.0)
    counts = mask.sum(0)
    overall = obs.sum((0, 1)) / max(int(counts.sum()), 1)
    col = np.where(counts > 0, obs.sum(0) / np.maximum(counts, 1), overall)
    resid = np.where(mask, values - col, 0.0)
    rcounts = mask.sum(1)
    row = np.where(rcounts > 0, resid.sum(1) / np.maximum(rcounts, 1), 0.0)
    return col[None, :] + row[:, None]


def _check_choice(name, value, allowed, auto=True):
    ok = (auto and value == "auto") or value in allowed
    if not ok:
        raise ValueError(f"{name} must be {'auto or ' if auto else ''}one of {list(allowed)}, "
                         f"got {value!r}")


def _numerical_failure(err):
    """True for the errors a too small ridge causes (the solvers' 'not positive definite' and
    CG's 'non-positive curvature'): such a candidate is skipped; any other error propagates."""
    return "positive definite" in str(err) or "non-positive curvature" in str(err)


def describe_choice(cfg):
    """One line for a configuration of ``chosen_`` (a single fit or a weighted stack)."""
    if cfg.get("mode") == "stack":
        text = "stack of " + "; ".join(f"{c['weight']:.2f} x ({describe_choice(c['fit'])})"
                                       for c in cfg["components"])
        return text + (f" [@stack = {describe_choice(cfg['source'])}]" if "source" in cfg else "")
    return ", ".join(f"{k}={v}" for k, v in cfg.items())


def _ntk_between_items(kernel, P, device):
    """(k, k) float64 NTK between the rows of a prior P (k, p). A prior wider than tall (the
    unfolded n * d profile of vector entries) goes through its Gram matrix, filled in column
    blocks (:func:`completion.prior_grams.full_kernel`): ``ntk(P)`` would hold copies of the
    (k, p) prior."""
    if P.shape[1] <= P.shape[0]:
        return np.asarray(kernel.ntk(P, device=device), dtype=np.float64)
    return full_kernel(kernel, FeatureGram(P), resolve_device(device)).numpy()


def _mask_key(mask):
    """A key of a mask for the caches of completions fitted on it (the same in every process)."""
    return hashlib.sha1(mask.tobytes()).hexdigest()


def _family(cfg):
    """(mode, prior source): ``profile`` and ``profile:unscaled`` are one family."""
    return (cfg["mode"], str(cfg.get("prior")).replace(":unscaled", ""))


class NTKImputer(OneToOneFeatureMixin, TransformerMixin, BaseEstimator,
                 auto_wrap_output_keys=None):
    """Complete a matrix with missing entries by NTK kernel regression (a scikit-learn imputer).

    Parameters
    ----------
    mode : {"auto", "rows", "cols", "joint", "rows-chained", "cols-chained"}
        How entries are posed (module docstring). "auto" scores candidates by CV and may combine
        the best few (``stack``).
    prior : str or "auto"
        Prior of the rows (rows mode), columns (cols mode) or both (joint mode; a pair
        ``(row_prior, col_prior)`` is also accepted); see :mod:`completion.priors`. "auto" tries
        profile and profile@softimpute (and profile@matrix with ``prior_matrix``), plus features
        and features+identity:0.5 when features are given for that side (one-hot only in joint
        mode); with ``mode="auto"`` and ``stack`` > 1 also, in a second round, the profile of the
        first combination's completion (``profile@stack``, ``profile:unscaled@stack``; module
        docstring). Ignored by the chained modes (their prior is the other columns' estimates).
    depth : int >= 1 or "auto"
        Hidden layers of the network; "auto" chooses among 1, 2, 3 by CV (chained modes: 1,
        each column with or without a linear skip, by leave-one-out).
    ridge : float >= 0 or "auto"
        Ridge relative to the mean kernel diagonal; "auto" chooses on a grid by CV (chained
        modes: per column by leave-one-out, together with the NTK with or without a linear skip
        connection, and for the whole matrix the inputs with or without the neighbouring rows'
        values, see :mod:`completion.chained`).
    activation : {"relu", "leaky_relu", "erf"}
    row_features, col_features : DataFrame (indexed by labels) or array (matrix order), optional
    prior_matrix : (m, n) array or DataFrame, optional
        A completed matrix (no NaN) from any other method, for the ``@matrix`` priors.
    solver : {"auto", "shared", "structured", "exact", "cg", "nystrom"} or "nystrom:R"
        rows/cols mode: "shared" (exact) or "nystrom" (a rank-R Nystrom factor of the kernel
        over rows (cols), R landmarks drawn by randomly pivoted Cholesky, at most
        ``solvers.nystrom.DEFAULT_RANK`` unless given; memory O(N R)); "auto" takes "shared"
        while the N x N kernel fits the memory budget (and, for a dense matrix, while its
        N^3 inverse costs at most ``DENSE_SHARED_FLOPS``: N up to about 4,600), else "nystrom".
    device : torch device for kernel evaluation ("auto" = CUDA when present).
    threads : torch CPU threads for the fit (None: $NTK_THREADS, else
        ``models.device.default_threads()``).
    random_state : int or None, seeds the cross-validation folds.
    cv_folds : int >= 2, K of the K-fold split of the observed entries used by the "auto" choices
        (each validation fit leaves out 1/K of them: with the default 20, it sees nearly the
        final fit's missing entries).
    cv_max_folds : int >= 1 or "auto", at most this many of the K folds are evaluated: the
        fewest that hold out ``cv_grid.MIN_VALIDATION_ENTRIES`` entries (one on a large matrix,
        several on a small table; :func:`completion.cv_grid.evaluated_folds`); K = full K-fold
        CV; "auto": 4, more on a matrix with fewer than 2,500 observed entries.
    refine : int >= 0, refinement rounds for data-derived priors (profile, lowrank); the chained
        modes run 1 + refine rounds over the columns.
    stack : int >= 1, most fits ``mode="auto"`` combines (1 = the single best, and no second
        round).
    scale : "auto", "columns" or None
        "columns": every fit and CV score is on columns centred and divided by their standard
        deviation over the observed entries, and the completion is mapped back to the input's
        units; None: the input's units; "auto": "columns" where the columns' standard
        deviations spread more than ``SCALE_RATIO``-fold (:func:`spread_ratio`: columns in
        different units), else None.
        Dense 2-D input only (vector entries and sparse input keep their units).
    verbose : int, 0 silent, 1 logs the choices and CV scores (logger ``completion.matrix``,
        also printed to stderr when no handler is configured).
    progress : bool, show the fit's stage and elapsed time as one line on stderr, rewritten in
        place (the last of the messages ``verbose`` logs; :mod:`completion.fit_progress`).
    scheduler : None, "local:N", a Dask scheduler address or a ``distributed.Client``
        Where the CV grid's (candidate, fold) fits run (:mod:`completion.scheduling`; needs the
        ``[dask]`` extra): None in this process; else one task per pair on the Dask workers,
        with the same choice and completion as in this process. The final fit runs here.

    Attributes after ``fit``: ``chosen_`` (dict: mode, prior, depth, ridge, solver; or, for a
    combination, mode="stack" and ``components``: a list of {"weight", "fit"}, plus ``source``,
    the first combination, when a component's prior is @stack), ``cv_results_``
    (list of dicts: candidate and its CV RMSE, in standardised units when ``scale_`` is set),
    ``completed_`` ((m, n) array, or (m, n, d) for vector entries), ``baseline_``, ``scale_``
    (None, or the (means, standard deviations) of the columns the fit was made on),
    ``n_features_in_``, ``feature_names_in_`` (when fitted on a DataFrame with string column
    labels).

    Sparse input (scipy.sparse, stored entries = observed, explicit zeros included):
    rows/cols mode only (``mode="auto"`` chooses among them, :mod:`completion.sparse_selection`),
    no dense m x n array is formed (:mod:`completion.sparse_matrix`); data-derived priors are
    not refined. ``predict_entries`` is the way to read the completion; ``transform()`` returns
    the dense completed matrix only when it fits ``models.device.DEFAULT_MEMORY_BUDGET``
    (refused with its size otherwise); ``completed_`` and ``baseline_`` are not set.

    Kernel completion is transductive: ``transform(X)`` of the fitted matrix returns the stored
    completion; for a matrix with other rows (same columns) it completes the fitted rows stacked
    with X's rows under the configuration chosen by ``fit`` and returns X's rows, so that
    ``Pipeline`` and ``GridSearchCV`` over a downstream estimator work. A DataFrame gives a
    DataFrame; :meth:`set_output` (or a Pipeline's or ColumnTransformer's) with "pandas" makes
    every output one.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.outer(np.arange(1.0, 7.0), np.arange(1.0, 5.0)); X[2, 1] = np.nan
    >>> done = NTKImputer(mode="rows", prior="profile", depth=1, ridge=0.01).fit_transform(X)
    >>> bool(abs(done[2, 1] - 6.0) < 1.0), bool(np.isnan(done).any())
    (True, False)
    """

    def __init__(self, *, mode="auto", prior="auto", depth="auto", ridge="auto", activation="relu",
                 row_features=None, col_features=None, prior_matrix=None, solver="auto",
                 device="auto", random_state=None, cv_folds=20, cv_max_folds="auto", refine=2,
                 stack=3, scale="auto", verbose=0, progress=False, threads=None,
                 scheduler=None):
        self.mode = mode
        self.prior = prior
        self.depth = depth
        self.ridge = ridge
        self.activation = activation
        self.row_features = row_features
        self.col_features = col_features
        self.prior_matrix = prior_matrix
        self.solver = solver
        self.device = device
        self.random_state = random_state
        self.cv_folds = cv_folds
        self.cv_max_folds = cv_max_folds
        self.refine = refine
        self.stack = stack
        self.scale = scale
        self.verbose = verbose
        self.progress = progress
        self.threads = threads
        self.scheduler = scheduler

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        # stored entries = observed (class docstring); rows/cols mode only
        tags.input_tags.sparse = self.mode in ("auto", "rows", "cols")
        return tags

    # -- validation --------------------------------------------------------------------------
    def _validate_params(self):
        _check_choice("mode", self.mode, MODES)
        _check_choice("activation", self.activation, ACTIVATIONS, auto=False)
        parse_solver(self.solver)
        if self.depth != "auto" and (isinstance(self.depth, bool) or
                                     not isinstance(self.depth, (int, np.integer)) or self.depth < 1):
            raise ValueError(f"depth must be 'auto' or an integer >= 1, got {self.depth!r}")
        if self.ridge != "auto" and (isinstance(self.ridge, bool) or
                                     not isinstance(self.ridge, (int, float, np.number)) or
                                     not math.isfinite(self.ridge) or self.ridge < 0):
            raise ValueError(f"ridge must be 'auto' or a finite number >= 0, got {self.ridge!r}")
        for name, low in (("cv_folds", 2), ("cv_max_folds", 1), ("refine", 0), ("stack", 1)):
            value = getattr(self, name)
            if name == "cv_max_folds" and value == "auto":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be {'auto or ' if name == 'cv_max_folds' else ''}"
                                 f"an integer >= {low}, got {value!r}")
        _check_choice("scale", self.scale, ("columns", None))
        if self.prior != "auto":
            for p in (self.prior if isinstance(self.prior, tuple) else (self.prior,)):
                if parse_prior(p).source == "matrix" and self.prior_matrix is None:
                    raise ValueError(f"prior {p!r} needs prior_matrix (a completed matrix)")
                if parse_prior(p).source == "stack":
                    raise ValueError(f"prior {p!r}: @stack priors are chosen by prior='auto' "
                                     "only (the profile of auto's first combination)")
        check_scheduler(self.scheduler)

    @staticmethod
    def _validate_matrix(X):
        """-> (values (m, n) or (m, n, d) float64 with NaN, row labels, col labels, DataFrame or
        None)."""
        import pandas as pd

        frame = X if isinstance(X, pd.DataFrame) else None
        if frame is not None:
            non_numeric = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
            if non_numeric:
                raise ValueError(f"column(s) {non_numeric[:10]} are not numeric")
            values = frame.to_numpy(dtype=np.float64, na_value=np.nan)
            rows, cols = frame.index.copy(), frame.columns.copy()  # names kept
        else:
            if isinstance(X, torch.Tensor):
                X = X.detach().cpu().numpy()
            if hasattr(X, "toarray"):
                raise TypeError("a sparse matrix (stored entries = observed) is completed by "
                                "fit() itself, not by transform() of a dense fit; pass a dense "
                                "array with NaN, or fit the sparse matrix")
            arr = np.asarray(X)
            if arr.dtype == object:  # numbers held as objects are fine, anything else is not
                try:  # (a TypeError, e.g. for a dict, keeps numpy's message)
                    arr = arr.astype(np.float64)
                except ValueError:
                    raise ValueError("X must be numeric (NaN for missing entries), got dtype "
                                     "object with non-numeric values") from None
            if np.iscomplexobj(arr):
                raise ValueError("Complex data not supported: X must be real numbers")
            if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
                raise ValueError(f"X must be numeric (NaN for missing entries), got dtype "
                                 f"{arr.dtype}")
            if arr.ndim not in (2, 3):
                raise ValueError(f"X must be a 2-D matrix (or 3-D, (m, n, d) for vector "
                                 f"entries), got an array of shape {arr.shape}. Reshape your "
                                 "data (e.g. X.reshape(-1, 1) for a single column)")
            values = arr.astype(np.float64)
            rows, cols = list(range(values.shape[0])), list(range(values.shape[1]))
        for axis, what in ((0, "sample"), (1, "feature"), (2, "value per entry"))[:values.ndim]:
            if values.shape[axis] == 0:
                raise ValueError(f"X is empty: 0 {what}(s) (shape={values.shape}) while a minimum "
                                 "of 1 is required.")
        inf = np.isinf(values)
        if inf.any():
            i, j = np.argwhere(inf)[0][:2]
            raise ValueError(f"X contains inf at row {rows[i]!r}, column {cols[j]!r}; "
                             "use NaN for missing entries")
        if np.isnan(values).all():
            raise ValueError("X has no observed entry (all values are missing)")
        return values, rows, cols, frame

    def _validated_prior_matrix(self, shape, rows, cols):
        if self.prior_matrix is None:
            return None
        import pandas as pd
        P = self.prior_matrix
        if isinstance(P, pd.DataFrame):
            if [str(r) for r in P.index] != [str(r) for r in rows] or \
                    [str(c) for c in P.columns] != [str(c) for c in cols]:
                raise ValueError("prior_matrix must have the row and column labels of X, in order")
            P = P.to_numpy(dtype=np.float64, na_value=np.nan)
        P = np.asarray(P, dtype=np.float64)
        if P.shape != shape:
            raise ValueError(f"prior_matrix has shape {P.shape} but X has shape {shape}")
        bad = ~np.isfinite(P)
        if bad.any():
            i, j = np.argwhere(bad)[0][:2]
            raise ValueError(f"prior_matrix must be complete: NaN or inf at row {rows[i]!r}, "
                             f"column {cols[j]!r}")
        return P

    @staticmethod
    def _warn_unusual(values, mask, rows, cols):
        """Warn about empty rows/columns (filled from the additive baseline) and extreme values
        (robust z-score above :data:`EXTREME_Z`: distance to the column median over the column's
        scaled MAD, or over the whole matrix's where a column's MAD is 0, as in a sparse column
        of mostly zeros whose rare non-zero values are data, not typos). Vector entries get the
        empty row/column check only: the medians of an (m, n, d) array were measured to cost
        more than the fit itself (36 s of a 57 s fit at 500 x 300 x 100)."""
        for axis, labels, what, fill in ((0, cols, "column", "the global mean plus row effects"),
                                         (1, rows, "row", "the column means")):
            empty = np.flatnonzero(~mask.any(axis))
            if empty.size:
                names = ", ".join(repr(labels[k]) for k in empty[:10])
                more = f" and {empty.size - 10} more" if empty.size > 10 else ""
                warnings.warn(f"{what}(s) {names}{more} have no observed entry; their baseline "
                              f"is {fill} (the kernel adds what the priors predict)",
                              UserWarning, stacklevel=3)
        if values.ndim == 3:
            return
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # empty columns, reported above
            med = np.nanmedian(np.where(mask, values, np.nan), 0)
            dev = np.abs(values - med)
            observed_dev = np.where(mask, dev, np.nan)
            mad = 1.4826 * np.nanmedian(observed_dev, 0)
            overall = 1.4826 * np.nanmedian(observed_dev)
            if not overall > 0:
                overall = 1.2533 * np.nanmean(observed_dev)
            scale = np.where(mad > 0, mad, overall)
            z = np.where(mask & (scale > 0), dev / np.where(scale > 0, scale, 1.0), 0.0)
        extreme = np.argwhere(z > EXTREME_Z)
        if extreme.size:
            i, j = extreme[np.argmax(z[extreme[:, 0], extreme[:, 1]])]
            warnings.warn(f"{len(extreme)} extreme value(s), e.g. {values[i, j]:.6g} at row "
                          f"{rows[i]!r}, column {cols[j]!r} (robust z-score {z[i, j]:.3g} within "
                          "its column): a typo? Every fill of its column and the baseline move "
                          "with it", UserWarning, stacklevel=3)

    # -- public API ----------------------------------------------------------------------------
    def fit(self, X, y=None):
        """Fit on the observed entries of X ((m, n) array with NaN, DataFrame, (m, n, d) array
        of vector entries with missing fibres all NaN, or scipy.sparse matrix whose stored
        entries are the observed ones); returns self."""
        self._validate_params()
        if sp.issparse(X):
            return self._fit_sparse(X)
        self._entries = None
        values, rows, cols, frame = self._validate_matrix(X)
        mask = observed_fibres(values, (rows, cols))
        if values.ndim == 3 and self.mode in CHAINED_AXIS:
            raise ValueError(f"mode {self.mode!r} does not apply to vector entries (X of shape "
                             f"{values.shape}); use rows, cols, joint or auto")
        self._warn_unusual(values, mask, rows, cols)
        self.row_labels_, self.col_labels_ = rows, cols
        self.n_features_in_ = values.shape[1]
        if frame is not None and all(isinstance(c, str) for c in cols):
            self.feature_names_in_ = np.asarray(cols, dtype=object)
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        self._frame_type = frame is not None
        self.shape_ = mask.shape
        self._values, self._mask = values, mask
        self._row_feats = self._aligned("row", self.row_features, rows)
        self._col_feats = self._aligned("col", self.col_features, cols)
        self.scale_ = self._column_scale(values, mask)
        work = self._scaled(values)
        self._prior_values = self._validated_prior_matrix(values.shape, rows, cols)
        if self._prior_values is not None:
            self._prior_values = self._scaled(self._prior_values)
        self._softimpute_cache, self._softimpute_fraction = {}, None
        self._stack_cache, self._stack_source, self._kept_fits = {}, None, None
        with limited_threads(self._threads()), self._fit_threads(work, mask) as threads, \
                FitProgress(self.progress) as self._progress:
            started = time.perf_counter()
            with connect(self.scheduler) as client:  # the workers are released before the final fit
                self.chosen_, self.cv_results_ = self._choose(work, mask, client, threads)
            self._say(f"chosen: {describe_choice(self.chosen_)} "
                      f"(selection {time.perf_counter() - started:.1f} s)")
            started = time.perf_counter()
            self._stage("final fit")
            self.completed_ = self._unscaled(self._complete_chosen(work, mask, self.chosen_,
                                                                   threads))
            self._say(f"final fit: {time.perf_counter() - started:.1f} s")
        self._progress = None
        self.baseline_ = additive_baseline(values, mask)
        return self

    def transform(self, X=None):
        """X with its missing entries filled (observed entries unchanged), same type as X.

        ``X`` None or the fitted matrix: the completion made by ``fit``. Another matrix with the
        fitted columns: its rows are completed together with the fitted matrix under the chosen
        configuration (no new choice), and returned. After a sparse fit: the dense (m, n)
        completion of the fitted matrix, when it fits the memory budget."""
        self._check_fitted()
        if self._entries is not None:
            return self._dense_from_entries(X)
        fitted = np.where(fibre_mask(self._mask, self._values), self._values, self.completed_)
        if X is None:
            return self._as_output(fitted, self.row_labels_)
        values, rows, cols, frame = self._validate_matrix(X)
        if values.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {values.shape[1]} features, but NTKImputer is expecting "
                             f"{self.n_features_in_} features as input")
        if values.shape[2:] != self._values.shape[2:]:
            raise ValueError(f"X has entries of shape {values.shape[2:]}, but NTKImputer was "
                             f"fitted on entries of shape {self._values.shape[2:]}")
        mask = observed_fibres(values, (rows, cols))
        if mask.shape == self.shape_ and np.array_equal(mask, self._mask) \
                and np.array_equal(values[mask], self._values[mask]):
            return self._as_output(fitted, rows, frame is not None)
        both = np.concatenate([self._values, values])
        both_mask = observed_fibres(both)
        with limited_threads(self._threads()), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # fit has warned about the fitted rows
            self._softimpute_cache, self._stack_cache = {}, {}
            self._warn_unusual(values, mask, rows, cols)
            done = self._unscaled(self._complete_chosen(self._scaled(both), both_mask,
                                                        self.chosen_))[self.shape_[0]:]
        return self._as_output(np.where(np.isnan(values), done, values), rows, frame is not None)

    def fit_transform(self, X, y=None):
        return self.fit(X).transform()

    def predict_entries(self, rows, cols):
        """Predictions at entries (rows[k], cols[k]): integer positions when an array was
        fitted, labels when a DataFrame was fitted; returns a (len(rows),) array, or
        (len(rows), d) for vector entries. Observed entries get the fit (module docstring), not
        necessarily the observed value."""
        self._check_fitted()
        r = self._positions(rows, self.row_labels_, "row")
        c = self._positions(cols, self.col_labels_, "column")
        if r.shape != c.shape:
            raise ValueError(f"rows and cols must have the same length, got {r.size} and {c.size}")
        if self._entries is not None:
            return self._entry_fit.predict(r, c)
        return self.completed_[r, c]

    def _fit_sparse(self, X):
        """fit() for scipy.sparse X: rows/cols mode on the entry lists (class docstring)."""
        if self.prior_matrix is not None:
            raise ValueError("prior_matrix is not available for sparse input")
        e = observed_entries(X)
        m, n = e.shape
        self.scale_ = None  # sparse input keeps its units (class docstring)
        self.row_labels_, self.col_labels_ = range(m), range(n)
        self.n_features_in_, self.shape_, self._frame_type = n, e.shape, False
        for name in ("feature_names_in_", "completed_", "baseline_"):
            if hasattr(self, name):
                delattr(self, name)
        self._row_feats = self._aligned("row", self.row_features, range(m))
        self._col_feats = self._aligned("col", self.col_features, range(n))
        grids = {"default_depth": DEFAULT_DEPTH, "default_ridge": DEFAULT_RIDGE,
                 "ridge": RIDGE_GRID, "auto_ridge": AUTO_RIDGE_GRID, "depth": DEPTH_GRID,
                 "auto_depth": AUTO_DEPTH_GRID}
        with limited_threads(self._threads()), FitProgress(self.progress) as self._progress:
            started = time.perf_counter()
            self.chosen_, self.cv_results_ = select_on_entries(e, self, self._kernel, grids,
                                                               self._say)
            self._say(f"chosen: {describe_choice(self.chosen_)} "
                      f"(selection {time.perf_counter() - started:.1f} s)")
            started = time.perf_counter()
            self._stage("final fit")
            self._entry_fit = fit_chosen(e, self.chosen_, self, self._kernel)
            self._say(f"final fit: {time.perf_counter() - started:.1f} s")
        self._progress = None
        self._entries = e
        return self

    def _dense_from_entries(self, X):
        """transform() after a sparse fit: the dense completion, observed entries kept."""
        e = self._entries
        if X is not None and not (sp.issparse(X) and X.shape == e.shape and X.nnz == e.values.size):
            raise ValueError("after a sparse fit, transform() completes the fitted matrix only; "
                             "use predict_entries(rows, cols) for other entries")
        m, n = e.shape
        check_fits(3 * 8 * m * n, parse_bytes(None), f"the dense {m} x {n} completed matrix",
                   "Use predict_entries(rows, cols) for the entries you need.")
        done = self._entry_fit.dense()
        done[e.rows, e.cols] = e.values
        return self._as_output(done, self.row_labels_)

    # -- helpers ---------------------------------------------------------------------------------
    def _threads(self):
        """Torch threads for a fit: ``threads`` when given, else on a CPU models.device's default
        (or $NTK_THREADS, see models.device.resolve_threads); on a GPU the current setting."""
        if self.threads is not None:
            return self.threads
        return None if str(self.device) in ("auto", "cpu") else torch.get_num_threads()

    def _column_scale(self, values, mask):
        """``scale_`` for ``scale`` (class docstring): None, or the (n,) means and standard
        deviations of the columns' observed entries (1 where a column has no spread)."""
        if self.scale is None or values.ndim != 2:
            return None
        means = column_means(values, mask)
        sds = np.sqrt(column_means(np.square(values - means), mask))
        ratio = spread_ratio(sds)
        if self.scale == "auto" and ratio <= SCALE_RATIO:
            return None
        self._say(f"  columns standardised (their standard deviations spread {ratio:.3g}-fold, "
                  "90th over 10th percentile); CV RMSE in standardised units")
        return means, np.where(sds > 0, sds, 1.0)

    def _scaled(self, values):
        """``values`` (m, n) in the units of the fit (``scale_``)."""
        return values if self.scale_ is None else (values - self.scale_[0]) / self.scale_[1]

    def _unscaled(self, values):
        """``values`` (m, n) from the units of the fit back to the input's."""
        return values if self.scale_ is None else values * self.scale_[1] + self.scale_[0]

    def set_output(self, *, transform=None):
        """Container of what ``transform`` and ``fit_transform`` return (scikit-learn's
        set_output, through which a Pipeline or ColumnTransformer holding the imputer sets it):
        "default" (a DataFrame when a DataFrame was fitted or given, else an array), "pandas"
        (a DataFrame always: the fitted column labels, or :meth:`get_feature_names_out` after
        an array), or None (unchanged; until set, scikit-learn's global ``transform_output``
        applies where it is "pandas"). Returns the imputer."""
        if transform is None:
            return self
        if transform not in OUTPUTS:
            raise ValueError(f"NTKImputer.set_output: transform must be one of {OUTPUTS} or "
                             f"None, got {transform!r}")
        self._sklearn_output_config = {"transform": transform}  # (the name clone() copies)
        return self

    def _as_output(self, values, rows, frame=None):
        """``values`` (m, n) as returned to the caller: a DataFrame (index ``rows``) for a fitted
        DataFrame (``frame`` None), a given one (``frame`` True) or under "pandas" output (the
        imputer's set_output, else scikit-learn's global transform_output), else the array."""
        from sklearn import get_config
        output = getattr(self, "_sklearn_output_config", {}).get("transform")
        pandas = (output or get_config()["transform_output"]) == "pandas"
        framed = self._frame_type if frame is None else frame
        if not (pandas or framed):
            return values
        if values.ndim != 2:
            raise ValueError(f"set_output(transform='pandas') needs scalar entries; these are "
                             f"vectors of shape {values.shape[2:]}: use the default output")
        import pandas as pd
        columns = self.get_feature_names_out() if pandas and not self._frame_type \
            else self.col_labels_
        return pd.DataFrame(values, index=rows, columns=columns)

    def _check_fitted(self):
        from sklearn.utils.validation import check_is_fitted
        check_is_fitted(self, "chosen_",
                        msg="this NTKImputer is not fitted yet; call fit(X) first")

    def _positions(self, keys, labels, what):
        keys = np.atleast_1d(np.asarray(keys))
        if self._frame_type:  # a fitted DataFrame is addressed by its labels, never positions
            lookup = {str(lab): k for k, lab in enumerate(labels)}
            missing = [str(k) for k in keys if str(k) not in lookup]
            if missing:
                raise ValueError(f"unknown {what} label(s): {missing[:10]}")
            return np.array([lookup[str(k)] for k in keys], dtype=np.int64)
        if not np.issubdtype(keys.dtype, np.integer):
            raise ValueError(f"{what}s must be integer positions, got dtype {keys.dtype}")
        bad = (keys < 0) | (keys >= len(labels))
        if bad.any():
            raise ValueError(f"{what} index {int(keys[bad][0])} is outside 0..{len(labels) - 1}")
        return keys.astype(np.int64)

    @staticmethod
    def _aligned(what, features, labels):
        if features is None:
            return None
        from .priors import align_features
        return align_features(features, labels, what)

    def _stage(self, text):
        """Show ``text`` as the fit's stage (``progress``; none outside a fit)."""
        progress = getattr(self, "_progress", None)
        if progress is not None:
            progress.stage(text)

    def _say(self, message):
        """Log ``message`` (``verbose``) and show it as the fit's stage (``progress``)."""
        self._stage(message)
        if self.verbose:
            log.info(message)
            if not logging.getLogger().handlers and not log.handlers:
                import sys
                print(f"[NTKImputer] {message}", file=sys.stderr)

    # -- the model for one configuration ------------------------------------------------------
    def _kernel(self, depth, bias_var=0.0):
        return FullyConnectedNTK(depth=int(depth), activation=self.activation, bias_var=bias_var)

    def _prior(self, spec, values, mask, axis):
        """Prior of the rows (axis 0) or columns (axis 1) of the matrix."""
        feats = self._row_feats if axis == 0 else self._col_feats
        if spec.source is not None:
            values, mask = self._source_matrix(spec.source, values, mask), np.ones_like(mask)
        if (spec.base == "features" and feats is not None and len(feats) != values.shape[axis]):
            raise ValueError("transform of new rows cannot use a features prior of the rows: "
                             "their features are unknown; fit_transform the stacked matrix")
        if axis == 0:
            return build_prior(spec, values, mask, feats, None, "row")
        return build_prior(spec, np.swapaxes(values, 0, 1), mask.T, feats, None, "col")

    def _source_matrix(self, source, values, mask):
        """The completed matrix a ``@source`` prior is computed from."""
        if source == "matrix":
            if self._prior_values.shape != mask.shape:
                raise ValueError("transform of new rows cannot use a @matrix prior (prior_matrix "
                                 "covers the fitted rows only); fit_transform the stacked matrix")
            return self._prior_values
        if source == "stack":
            key = _mask_key(mask)
            if key not in self._stack_cache:
                self._stack_fits(values, mask)
            return self._stack_cache[key]
        return self._softimpute(values, mask)

    def _stack_fits(self, values, mask, fitted=None):
        """Cache, per mask, the weighted sum (observed values kept) of the completions of the
        components of ``self._stack_source`` (the first combination, read by the @stack priors)
        fitted on ``values[mask]``, for those priors. ``fitted``: optional {repr(fit): completed
        matrix} of fits already at hand; the others are taken from the CV's kept fits or fitted
        here."""
        source, key = self._stack_source, _mask_key(mask)
        fits = {}
        for c in source["components"]:
            name = repr(c["fit"])
            fits[name] = (fitted or {}).get(name)
            if fits[name] is None:
                fits[name] = (self._kept_fits or {}).get((name, key))
            if fits[name] is None:
                fits[name] = self._complete(values, mask, c["fit"])
        done = sum(c["weight"] * fits[repr(c["fit"])] for c in source["components"])
        self._stack_cache[key] = np.where(mask, values, done)

    def _softimpute(self, values, mask):
        """SoftImpute completion of ``values[mask]``, cached per mask. Its shrinkage is chosen
        on the first mask seen (a CV training split when ``auto`` runs) and reused after."""
        key = _mask_key(mask)
        if key not in self._softimpute_cache:
            flat, flat_mask = unfold(values, mask)  # vector entries: the (m, n * d) matrix
            if self._softimpute_fraction is None:
                Z, self._softimpute_fraction, _ = soft_impute_cv(flat, flat_mask, self.random_state)
            else:
                fractions = [f for f in FRACTIONS if f >= self._softimpute_fraction]
                *_, (_, Z) = soft_impute_path(flat, flat_mask, fractions)
            self._softimpute_cache[key] = fold(Z, values.shape)
        return self._softimpute_cache[key]

    def _softimpute_ahead(self, cfgs, splits):
        """SoftImpute's completion of each (values, mask) of ``splits`` (and so its shrinkage,
        on the first), here, when any of ``cfgs`` reads it: before fits that read it run on
        other threads or workers."""
        if any(uses_softimpute(cfg) for cfg in cfgs):
            for values, mask in splits:
                self._softimpute(values, mask)

    def _fit_threads(self, values, mask):
        """A :class:`~completion.fit_threads.FitThreads` for the final fits on ``values[mask]``
        and the cross-validation's fits, with the current torch threads on a CPU (one, so no
        other thread, on a GPU), and at least two where the thread count is the default and two
        cores are there: the load average may have given the fit one thread
        (``default_threads``: spinning OpenMP threads on busy cores), but the fits on other
        Python threads run one torch thread each, which do not spin."""
        threads = 1
        if resolve_device(self.device).type == "cpu":
            threads = torch.get_num_threads()
            if threads_chosen_by_default(self.threads):
                threads = max(threads, min(2, usable_cores()))
        return FitThreads(lambda cfg, stop: self._complete(values, mask, cfg, stop=stop, final=True),
                          threads)

    def _complete_chosen(self, values, mask, chosen, threads=None):
        """The completed matrix of ``chosen`` (a fit or a weighted stack of fits). A stack with a
        ``source`` (the first combination, read by its @stack priors) fits that source first and
        reuses its fits; the fits that ``threads`` (a :class:`~completion.fit_threads.FitThreads`)
        started ahead are taken from it (the others it started are stopped), the other fits of
        the source, then those of the chosen components, are fitted on its threads (one after
        the other without them)."""
        fits = [chosen] if chosen["mode"] != "stack" else [c["fit"] for c in chosen["components"]]
        source = [c["fit"] for c in chosen["source"]["components"]] if "source" in chosen else []
        if threads is not None:
            threads.keep(fits + source)
        early = threads.started if threads is not None else lambda cfg: False
        done = {}
        if source:
            self._stack_source = chosen["source"]
            done = self._fitted(values, mask, [f for f in source if not early(f)], threads)
            done.update({repr(f): threads.result(f) for f in source if early(f)})
            self._stack_fits(values, mask, done)
        done.update(self._fitted(values, mask, [f for f in fits if not early(f)
                                                and repr(f) not in done], threads))
        done.update({repr(f): threads.result(f) for f in fits if early(f) and repr(f) not in done})
        if chosen["mode"] != "stack":
            return done[repr(chosen)]
        return sum(c["weight"] * done[repr(c["fit"])] for c in chosen["components"])

    def _fitted(self, values, mask, cfgs, threads=None):
        """{repr(cfg): completed matrix} of each of ``cfgs`` fitted on ``values[mask]``, on the
        threads of ``threads`` (a :class:`~completion.fit_threads.FitThreads`) when it has them
        (SoftImpute's completion, which several may read, first, here)."""
        if threads is None or not threads.parallel or len(cfgs) < 2:
            return {repr(cfg): self._complete(values, mask, cfg, final=True) for cfg in cfgs}
        self._softimpute_ahead(cfgs, [(values, mask)])
        futures = threads.map(lambda cfg: self._complete(values, mask, cfg, final=True), cfgs)
        return {repr(cfg): future.result() for cfg, future in zip(cfgs, futures)}

    def _complete(self, values, mask, cfg, targets=None, screen=None, stop=None, final=False):
        """Completed (m, n) matrix (baseline + prediction) for configuration ``cfg``, fitted on
        ``values[mask]``; refined ``self.refine`` times for data-derived priors. ``targets``:
        optional (rows, cols) -> only those entries are returned (joint dense mode then
        predicts only them). ``screen``: optional test of the first round's predictions at
        ``targets`` before refining; when it returns True, None is returned instead.
        ``stop``: optional ``threading.Event``; a chained fit returns None once it is set.
        ``final``: a fit of the final completion: a chained one says its row-order choice (-v),
        which the cross-validation's fits do not (up to 20 folds of them)."""
        if cfg["mode"] == "softimpute":
            Z = self._softimpute(values, mask)
            return self._at(Z, mask, cfg, targets)
        baseline = additive_baseline(values, mask)
        if cfg["mode"] in CHAINED_AXIS:
            ridge = "loo" if cfg["ridge"] == "loo" else float(cfg["ridge"])
            kernel = self._kernel(cfg["depth"], CHAINED_BIAS_VAR)
            Z = chained_fit((kernel, LinearSkip(kernel)), values, mask, baseline,
                            1 + self.refine, ridge, CHAINED_AXIS[cfg["mode"]], self.random_state,
                            neighbours="loo",
                            say=(lambda line: self._say(f"    final fit ({describe_choice(cfg)}): "
                                                        + line)) if final else None,
                            screen=screen and (lambda Z: screen(Z[targets])), stop=stop,
                            offsets=cfg.get("offsets", "baseline"))
            return None if Z is None else self._at(Z, mask, cfg, targets)
        resid = values - baseline
        resid[~mask] = 0.0
        specs = [parse_prior(p) for p in cfg["prior"]] if isinstance(cfg["prior"], tuple) \
            else [parse_prior(cfg["prior"])]
        rounds = 1 + (self.refine if any(s.data_derived for s in specs) else 0)
        source, source_mask = values, mask
        for rnd in range(rounds):
            last = rnd == rounds - 1
            pred = self._residual_fit(source, source_mask, mask, resid, cfg, specs,
                                      targets if last else None)
            if not last:
                if rnd == 0 and screen is not None and screen((baseline + pred)[targets]):
                    return None
                source = np.where(fibre_mask(mask, values), values, baseline + pred)
                source_mask = np.ones_like(mask)
        if targets is not None and pred.shape != baseline.shape:  # joint mode at the targets
            return baseline[targets] + pred
        return self._at(baseline + pred, mask, cfg, targets)

    def _at(self, done, mask, cfg, targets):
        """``done`` (the completed matrix of ``cfg`` fitted on ``mask``) at ``targets`` (None:
        all of it). A CV fit (targets given) is kept for the second round's sources while
        ``self._kept_fits`` is a dict with room for it (KEPT_FITS_BYTES in all)."""
        if targets is None:
            return done
        kept = self._kept_fits
        if kept is not None and (len(kept) + 1) * done.nbytes <= KEPT_FITS_BYTES:
            kept[repr(self._normalised(cfg)), _mask_key(mask)] = done
        return done[targets]

    def _residual_fit(self, source, source_mask, mask, resid, cfg, specs, targets):
        """Kernel prediction of the residual ``resid`` (observed where ``mask``): shaped like
        ``resid`` ((m, n) or (m, n, d)), or (T,) / (T, d) at ``targets`` in joint dense mode. Priors are computed from ``source`` where
        ``source_mask`` (the observed values, or a completed matrix when refining). A prior
        that is zero for every item (e.g. the profiles of a tiny constant matrix) gives a zero
        kernel, which predicts no residual."""
        kernel = self._kernel(cfg["depth"])
        ridge = float(cfg["ridge"])
        if cfg["mode"] in ("rows", "cols"):
            axis = 0 if cfg["mode"] == "rows" else 1
            P = self._prior(specs[0], source, source_mask, axis)
            if not P.any():
                return np.zeros(resid.shape)
            name, rank = parse_solver(cfg["solver"])
            if name == "nystrom":
                if resid.ndim == 3:
                    raise ValueError("solver 'nystrom' does not take vector entries yet; use "
                                     "solver='shared' or 'auto'")
                return nystrom_dense_prediction(kernel, P, resid, mask, axis, ridge, rank,
                                                self.device, self.random_state or 0)
            K = _ntk_between_items(kernel, P, self.device)
            R, M = (resid, mask) if axis == 0 else (np.swapaxes(resid, 0, 1), mask.T)
            pred = solve_shared_kernel(K, R, M, ridge)
            return pred if axis == 0 else np.swapaxes(pred, 0, 1)
        # joint
        row_spec, col_spec = (specs * 2)[:2]
        rows, cols = np.nonzero(mask)
        y = resid[rows, cols]
        m, n = mask.shape
        if cfg["solver"] == "structured":
            a2 = b2 = 0.5
            values4 = [float(kernel.ntk_from_gram(g, 1.0, 1.0)) for g in (1.0, a2, b2, 0.0)]
            alpha = solve_onehot_joint(rows, cols, y, values4, ridge, (m, n))
            return predict_onehot_joint(rows, cols, alpha, values4, (m, n)).reshape(resid.shape)
        Pr = self._prior(row_spec, source, source_mask, 0)
        Pc = self._prior(col_spec, source, source_mask, 1)
        if not (Pr.any() or Pc.any()):
            return np.zeros(resid.shape) if targets is None \
                else np.zeros((len(targets[0]),) + resid.shape[2:])
        op = JointKernelOperator(kernel, 0.5 * Pr @ Pr.T, 0.5 * Pc @ Pc.T, rows, cols,
                                 device=self.device)
        if cfg["solver"] == "exact":
            alpha = op.solve_exact(y, ridge)
        else:
            alpha = op.solve(y, ridge, random_state=0)
        if targets is None:
            tr, tc = np.indices((m, n)).reshape(2, -1)
            return op.predict(alpha, tr, tc).reshape(resid.shape)
        return op.predict(alpha, np.asarray(targets[0]), np.asarray(targets[1]))

    # -- automatic choices ----------------------------------------------------------------------
    def _solver_for(self, mode, prior, n_observed):
        if mode in CHAINED_AXIS or mode == "softimpute":
            return None
        specs = prior if isinstance(prior, tuple) else (prior,)
        onehot = all(parse_prior(p).base == "onehot" for p in specs)
        if self.solver != "auto":
            if mode in ("rows", "cols") and parse_solver(self.solver)[0] not in ("shared", "nystrom"):
                raise ValueError(f"solver {self.solver!r} does not apply to mode {mode!r}; "
                                 "rows/cols mode uses 'shared' or 'nystrom'")
            if mode == "joint" and parse_solver(self.solver)[0] in ("shared", "nystrom"):
                raise ValueError(f"solver {self.solver!r} is for rows/cols mode")
            if mode == "joint" and self.solver == "structured" and not onehot:
                raise ValueError("solver 'structured' needs one-hot row and column priors")
            return self.solver
        return choose_solver(mode, self.shape_, n_observed, onehot=onehot)

    def _prior_candidates(self, mode):
        if mode in CHAINED_AXIS:
            return ["others"]
        if self.prior != "auto":
            return [self.prior]
        if mode == "joint":
            return [("onehot", "onehot")]
        feats = self._row_feats if mode == "rows" else self._col_feats
        cands = ["profile"] + (["profile@softimpute"] if self._softimpute_affordable() else [])
        if self._prior_values is not None:
            cands.append("profile@matrix")
        if feats is not None:
            cands += ["features", "features+identity:0.5"]
        return cands

    def _modes(self, mask):
        """[(mode, variants)]: the modes to try, each with the changes to its configuration that
        make its candidates (``({},)``: the configuration as it is). The given mode; for 'auto'
        with a given prior, the kernel modes it applies to; else every mode, the chained ones
        first (:meth:`_chained_modes`)."""
        if self.mode != "auto":
            return [(self.mode, ({},))]
        if self.prior != "auto":  # the kernel modes the given prior applies to
            specs = self.prior if isinstance(self.prior, tuple) else (self.prior, self.prior)
            has = {"rows": [self._row_feats is not None], "cols": [self._col_feats is not None],
                   "joint": [self._row_feats is not None, self._col_feats is not None]}
            uses = {"rows": [specs[0]], "cols": [specs[-1]], "joint": list(specs[:2])}
            modes = [mo for mo in ("rows", "cols", "joint")
                     if all(f or parse_prior(p).base != "features" for p, f in zip(uses[mo], has[mo]))]
            if not modes:
                raise ValueError(f"prior {self.prior!r} needs row_features (rows mode) or "
                                 "col_features (cols mode)")
            return [(mode, ({},)) for mode in modes]
        modes = [(mode, ({},)) for mode in ("rows", "cols", "joint")]
        if self._values.ndim == 3:  # vector entries: the chained modes do not apply
            return modes
        return self._chained_modes(mask) + modes  # scored first: on tables their score screens

    def _chained_modes(self, mask):
        """[(chained mode, variants)] that 'auto' fits: taken in order of their regressions'
        observed points (more first) while their estimated flops (:func:`chained_flops`) add up
        to at most AUTO_CHAINED_TOTAL_FLOPS, the second at most AUTO_CHAINED_FLOPS; each also
        with column-mean offsets (twice the flops; one family with the other, so the better of
        the two counts) where those fit in AUTO_CHAINED_FLOPS and what is left of the total.
        Listed in the order of CHAINED_AXIS; -v says why a mode is left out."""
        chained, spent = {}, 0.0
        points = {mode: float(mask.sum(axis).mean())  # a regression's observed points, on average
                  for mode, axis in CHAINED_AXIS.items()}
        for mode in sorted(CHAINED_AXIS, key=lambda mode: -points[mode]):
            flops = chained_flops(mask.shape, mask, 1 + self.refine, CHAINED_AXIS[mode])
            budget = min(AUTO_CHAINED_FLOPS if chained else AUTO_CHAINED_TOTAL_FLOPS,
                         AUTO_CHAINED_TOTAL_FLOPS - spent)
            if points[mode] < CHAINED_MIN_POINTS[mode]:
                self._say(f"  {mode} left out: its regressions have {points[mode]:.1f} observed "
                          f"points on average (fewer than {CHAINED_MIN_POINTS[mode]})")
            elif flops > budget:
                self._say(f"  {mode} left out: about {flops:.1e} flops (its budget {budget:.1e})")
            else:
                spent += flops
                chained[mode] = ({},)
                if 2 * flops <= min(AUTO_CHAINED_FLOPS, AUTO_CHAINED_TOTAL_FLOPS - spent):
                    spent += 2 * flops
                    chained[mode] = ({}, {"offsets": "means"})
        return [(mode, chained[mode]) for mode in CHAINED_AXIS if mode in chained]

    def _softimpute_affordable(self):
        """False for vector entries whose unfolded (m, n * d) matrix makes one SVD cost more
        than AUTO_UNFOLDED_SVD_FLOPS (SoftImpute's path takes some hundred SVDs)."""
        if self._values.ndim == 2:
            return True
        m, width = self._values.shape[0], self._values[0].size
        return 4.0 * m * width * min(m, width) <= AUTO_UNFOLDED_SVD_FLOPS

    def _dense_solver_for(self, mode, prior, mask):
        """:meth:`_solver_for` on a dense matrix observed where ``mask``: where it would take
        the exact 'shared' solver by itself, rows (cols) mode takes 'nystrom' once the N x N
        inverse over the N rows (cols) costs more than DENSE_SHARED_FLOPS."""
        solver = self._solver_for(mode, prior, int(mask.sum()))
        if solver == "shared" and self.solver == "auto" and \
                mask.shape[mode == "cols"] ** 3 > DENSE_SHARED_FLOPS:
            return "nystrom"
        return solver

    def _candidates(self, mask):
        depth = DEFAULT_DEPTH if self.depth == "auto" else int(self.depth)
        ridge = DEFAULT_RIDGE if self.ridge == "auto" else float(self.ridge)
        out = []
        for mode, variants in self._modes(mask):
            for prior in self._prior_candidates(mode):
                chained = mode in CHAINED_AXIS
                cfg = {"mode": mode, "prior": prior, "depth": 1 if chained and self.depth == "auto"
                       else depth, "ridge": "loo" if chained and self.ridge == "auto" else ridge}
                cfg["solver"] = self._dense_solver_for(mode, prior, mask)
                out += [dict(cfg, **change) for change in variants]
        if self.mode == "auto" and self.prior == "auto" and self.stack > 1 \
                and self._softimpute_affordable():
            out.append({"mode": "softimpute"})  # a component for the combination only
        return out

    def _choose(self, values, mask, client=None, threads=None):
        """Selection on held-out observed entries: every candidate at the default depth/ridge,
        then the ridge and the depth of the best kernel-mode (rows, cols, joint) candidate
        (on the smaller AUTO_ grids when the mode is 'auto' too);
        with ``stack`` > 1 the best fits of different families (mode, prior) are combined, and
        in mode 'auto' with prior 'auto' a second round of candidates reads that combination
        (:meth:`_second_round`). Nothing is cross-validated when there is a single fixed
        candidate. ``client``: the Dask client whose workers fit the (candidate, fold) pairs,
        or None (here); ``threads``: a :class:`~completion.fit_threads.FitThreads` that fits
        the cross-validation's candidates two at a time and, where the chained candidates are
        of one mode, starts their final fits before the cross-validation (in this process
        only; with both modes, the fits ahead cost fertility 28.6 s against 21.0 s without,
        benchmarks/RESULTS.md)."""
        candidates = self._candidates(mask)
        results = []
        fixed_ridge = self.ridge != "auto" or candidates[0]["mode"] in CHAINED_AXIS
        fixed_depth = self.depth != "auto" or candidates[0]["mode"] in CHAINED_AXIS
        if len(candidates) == 1 and fixed_ridge and fixed_depth:
            return self._normalised(candidates[0]), results
        folds = self._folds(mask)
        self._stage(f"cross-validation of {len(candidates)} candidates on {len(folds)} "
                    f"fold{'s' * (len(folds) > 1)} of held-out entries")
        chained = [c for c in candidates if c["mode"] in CHAINED_AXIS]
        if threads is not None and client is None and len({c["mode"] for c in chained}) == 1:
            threads.start(chained)  # (with both chained modes, most of such fits would be wasted)
        grid = CVGrid(self, values, mask, folds, client, None if client else threads)
        scored = {}  # repr(cfg) -> (cfg, rmse, held-out predictions)
        auto = self.mode == "auto"
        second = auto and self.prior == "auto" and self.stack > 1 and values.ndim == 2
        self._kept_fits = {} if second else None
        self._score(candidates, grid, scored, results)
        kernel_modes = ("rows", "cols", "joint")
        if self.ridge == "auto":
            for best in self._ranking(scored, kernel_modes)[:1]:
                ridges = AUTO_RIDGE_GRID if auto else RIDGE_GRID
                self._score([dict(best, ridge=r) for r in ridges], grid, scored, results)
        if self.depth == "auto":
            for best in self._ranking(scored, kernel_modes)[:1]:
                depths = AUTO_DEPTH_GRID if auto else DEPTH_GRID
                self._score([dict(best, depth=d) for d in depths], grid, scored, results)
        choice, rmse = self._combination(scored, values, folds)
        if choice["mode"] == "stack" and second:
            choice = self._second_round(choice, rmse, values, mask, folds, grid, scored, results)
        self._kept_fits, self._stack_cache = None, {}  # the final fit needs neither
        return choice, results

    def _combination(self, scored, values, folds):
        """The best ``stack`` families of ``scored`` (one fit each) combined with convex weights
        fitted on the held-out entries: (a single fit, or {"mode": "stack", "components"}; its
        held-out RMSE)."""
        ranking = self._ranking(scored)
        if not ranking:
            raise ValueError("every candidate configuration failed (the kernel plus ridge was "
                             "not positive definite); give a larger ridge explicitly")
        top = ranking[:self.stack]
        if len(top) == 1:
            if top[0]["mode"] == "softimpute":
                raise ValueError("no kernel configuration could be fitted")
            return self._normalised(top[0]), scored[repr(top[0])][1]
        truth = np.concatenate([values[np.nonzero(val)] for val in folds]).ravel()
        preds = np.column_stack([scored[repr(c)][2].ravel() for c in top])
        weights = convex_weights(preds, truth)
        keep = weights > 0.01
        if keep.sum() == 1:
            best = top[int(np.argmax(weights))]
            return self._normalised(best), scored[repr(best)][1]
        weights = weights[keep] / weights[keep].sum()
        rmse = float(np.sqrt(np.mean((preds[:, keep] @ weights - truth) ** 2)))
        self._say(f"  combination: held-out RMSE {rmse:.4f} (weights fitted on those entries)")
        components = [{"weight": float(w), "fit": self._normalised(c)}
                      for w, c in zip(weights, [c for c, k in zip(top, keep) if k])]
        return {"mode": "stack", "components": components}, rmse

    def _second_round(self, first, first_rmse, values, mask, folds, first_grid, scored, results):
        """Rows and cols mode with the priors of STACK_PRIORS, the profile of ``first`` (the
        first combination) completed on each training split, each mode's better prior with its
        ridge walked along STACK_RIDGE_GRID; ranked with the first round's fits and combined
        again; ``first`` (held-out RMSE ``first_rmse``) stays the choice unless that second
        combination's held-out RMSE is lower. The result keeps ``first`` as its ``source``
        when a component reads it.
        ``first_grid``: the first round's :class:`~completion.cv_grid.CVGrid` (the second round
        runs where it ran)."""
        self._stack_source, started = first, time.perf_counter()
        for val in folds:  # each split's source in this process, before the grid ships it
            train = mask & ~val
            self._source_matrix("stack", np.where(train, values, np.nan), train)
        self._kept_fits = None
        self._say("  second round, priors from the profile of that combination (its completion "
                  f"of the training split: {time.perf_counter() - started:.1f} s)")
        grid = CVGrid(self, values, mask, folds, first_grid.client, first_grid.threads)
        depth = DEFAULT_DEPTH if self.depth == "auto" else int(self.depth)
        ridge = DEFAULT_RIDGE if self.ridge == "auto" else float(self.ridge)
        cands = {mode: [{"mode": mode, "prior": p, "depth": depth, "ridge": ridge,
                         "solver": self._dense_solver_for(mode, p, mask)}
                        for p in STACK_PRIORS] for mode in ("rows", "cols")}
        self._score(cands["rows"] + cands["cols"], grid, scored, results)
        best = [min(pair, key=lambda c: scored[repr(c)][1]) for pair in cands.values()]
        if self.ridge == "auto":
            self._walk_ridges([c for c in best if np.isfinite(scored[repr(c)][1])], grid, scored,
                              results)
        choice, rmse = self._combination(scored, values, folds)
        if rmse >= first_rmse:
            self._say(f"  the first combination is kept (held-out RMSE {first_rmse:.4f}, the "
                      f"second {rmse:.4f})")
            return first
        parts = choice["components"] if choice["mode"] == "stack" \
            else [{"weight": 1.0, "fit": choice}]
        if not any(_family(c["fit"])[1].endswith("@stack") for c in parts):
            return choice
        return {"mode": "stack", "components": parts, "source": first}

    def _walk_ridges(self, cfgs, grid, scored, results):
        """Score each of ``cfgs`` at the ridges of STACK_RIDGE_GRID next to its own (on the
        grid), then on along its better direction two ridges at a time: to the better of the
        two while it beats the current one, on again from the farther one. The walks step
        together (each step's fits scored as one round, which the grid may run at once)."""
        ridges = STACK_RIDGE_GRID
        score = lambda cfg, i: scored[repr(dict(cfg, ridge=ridges[i]))][1]
        walks = []  # [cfg, its ridge's index, its step]
        for cfg in cfgs:
            at = ridges.index(cfg["ridge"])
            walks.append([cfg, at, [i for i in (at - 1, at + 1) if 0 <= i < len(ridges)]])
        self._score([dict(c, ridge=ridges[i]) for c, _, near in walks for i in near], grid,
                    scored, results)
        for walk in walks:
            cfg, at, near = walk
            walk[2] = min(near, key=functools.partial(score, cfg)) - at
            if score(cfg, at + walk[2]) >= score(cfg, at):
                walk[2] = 0  # neither neighbour is better: this walk ends here
            else:
                walk[1] += walk[2]
        while True:
            walks = [w for w in walks if w[2] and 0 <= w[1] + w[2] < len(ridges)]
            if not walks:
                return
            ahead = [[i for i in (at + step, at + 2 * step) if 0 <= i < len(ridges)]
                     for _, at, step in walks]
            self._score([dict(w[0], ridge=ridges[i]) for w, idx in zip(walks, ahead) for i in idx],
                        grid, scored, results)
            for walk, idx in zip(walks, ahead):
                cfg, at, step = walk
                best = min(idx, key=functools.partial(score, cfg))
                if score(cfg, best) >= score(cfg, at):
                    walk[2] = 0
                else:
                    walk[1] = best
                    walk[2] = step if best == idx[-1] and len(idx) == 2 else 0

    @staticmethod
    def _ranking(scored, modes=None):
        """Finite-score configurations, best first, one (the best) per family (mode, prior)."""
        order = sorted((v for v in scored.values() if np.isfinite(v[1])), key=lambda v: v[1])
        out, seen = [], set()
        for cfg, _, _ in order:
            if (modes is None or cfg["mode"] in modes) and _family(cfg) not in seen:
                seen.add(_family(cfg))
                out.append(cfg)
        return out

    @staticmethod
    def _normalised(cfg):
        cfg = dict(cfg)
        if cfg["mode"] in ("rows", "cols", "joint"):
            cfg["prior"] = tuple(str(parse_prior(p)) for p in cfg["prior"]) \
                if isinstance(cfg["prior"], tuple) else str(parse_prior(cfg["prior"]))
        return cfg

    def _folds(self, mask):
        """List of boolean (m, n) masks of validation entries (:func:`.cv_grid.entry_folds`:
        folds at random, an entry that is the only observed one of its row or column kept in
        training)."""
        rows, cols = np.nonzero(mask)
        out = []
        for sel in entry_folds(rows, cols, mask.shape, self.cv_folds, self.cv_max_folds,
                               self.random_state):
            val = np.zeros_like(mask)
            val[rows[sel], cols[sel]] = True
            out.append(val)
        return out

    def _screen(self, scored, values, val):
        """For mode 'auto': a test of first-round predictions at the entries of ``val``, True
        when their RMSE exceeds SCREEN_MARGIN x the best RMSE in ``scored`` (None: no test,
        also where ``val`` holds fewer than SCREEN_MIN_ENTRIES entries)."""
        best = min((v[1] for v in scored.values()), default=np.inf)
        if self.mode != "auto" or not np.isfinite(best) or int(val.sum()) < SCREEN_MIN_ENTRIES:
            return None
        truth = values[np.nonzero(val)]
        return lambda pred: float(np.sqrt(np.mean((pred - truth) ** 2))) > SCREEN_MARGIN * best

    def _out_of_running(self, cfg, grid, scored, why):
        """``cfg`` scores inf (``why`` said); its final fit started ahead, if any, is stopped."""
        self._say(f"  {why}")
        scored[repr(cfg)] = (cfg, np.inf, None)
        if grid.threads is not None:
            grid.threads.drop([cfg])

    def _score(self, cfgs, grid, scored, results):
        """Held-out RMSE of each configuration of ``cfgs`` not yet in ``scored`` over the folds
        of ``grid`` (a :class:`~completion.cv_grid.CVGrid`), cached in ``scored``, in order. A
        candidate that a too small ridge makes numerically impossible scores inf; so does one
        screened out (:meth:`_screen`, against the best score before it in this order); other
        errors propagate."""
        new = {}
        for cfg in cfgs:
            if repr(cfg) not in scored:
                new.setdefault(repr(cfg), cfg)
        data = grid.data
        truth = np.concatenate([data.values[np.nonzero(val)] for val in data.folds])
        screens = functools.partial(self._screen, scored, data.values, data.folds[0])
        for cfg, fold_preds in grid.predictions(list(new.values()), screens):
            key, started = repr(cfg), time.perf_counter()
            try:
                preds = list(fold_preds)
            except ValueError as err:
                if not _numerical_failure(err):
                    raise
                self._out_of_running(cfg, grid, scored, f"skipped {describe_choice(cfg)}: {err}")
                continue
            if preds[0] is None:
                self._out_of_running(cfg, grid, scored, "screened out after its first round: "
                                     + describe_choice(cfg))
                continue
            pred = np.concatenate(preds)
            rmse = float(np.sqrt(np.mean((pred - truth) ** 2)))
            scored[key] = (cfg, rmse, pred)
            results.append(dict(self._normalised(cfg), cv_rmse=rmse))
            took = f"{time.perf_counter() - started:.1f} s" if grid.client is None else "workers"
            self._say(f"  CV RMSE {rmse:.4f}  {describe_choice(self._normalised(cfg))} ({took})")
