"""Matrix completion by kernel regression with the NTK of an infinitely wide fully connected net.

Every observed entry (i, j) is a training point; missing entries are predicted by kernel
regression. The values are first centred by the additive baseline mu + a_i + b_j (column means,
then row means of what is left, fitted on the observed entries; an empty row/column gets 0) and
the kernel regresses the residual. Three ways to build the kernel between entries (``mode``):

* ``"rows"``: K((i, j), (i', j')) = [j == j'] NTK(r_i, r_i'): a network maps row i's prior to the
  whole row; it predicts rows that are missing entirely from their features;
* ``"cols"``: the same with rows and columns swapped;
* ``"joint"``: K = NTK(z_ij, z_i'j') with z_ij = [a r_i ; b c_j], a = b = 1/sqrt(2) (priors have
  unit mean squared norm, so <z, z'> = a^2 <r_i, r_i'> + b^2 <c_j, c_j'>); with one-hot priors
  the kernel takes four values and the structured solver never forms the |Omega|^2 matrix.

Priors are spec strings (see :mod:`completion.priors`). Data-derived priors (``profile``,
``lowrank:k``) are refined ``refine`` times: the prior is recomputed from the matrix completed
by the previous fit (observed values kept) and the regression is solved again.

Observed entries: ``transform``/``fit_transform`` return them unchanged and fill only the missing
ones. ``predict(rows, cols)`` returns the kernel fit itself, which at an observed entry equals the
observed value minus ridge * mean-diagonal * alpha (exact interpolation as ``ridge`` -> 0).
"""
from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch

from models.device import limited_threads
from models.ntk import ACTIVATIONS, FullyConnectedNTK

from .priors import build_prior, parse_prior
from .solvers import (SOLVERS, JointKernelOperator, choose_solver, predict_onehot_joint,
                      solve_onehot_joint, solve_shared_kernel)

__all__ = ["NTKImputer", "additive_baseline", "MODES"]

log = logging.getLogger(__name__)

MODES = ("rows", "cols", "joint")
DEPTH_GRID = (1, 2, 3)
RIDGE_GRID = (0.003, 0.01, 0.03, 0.1, 0.3)
DEFAULT_DEPTH = 1
DEFAULT_RIDGE = 0.03


def additive_baseline(values, mask):
    """(m, n) additive fit mu_j + a_i of the observed entries: column means, then the row means
    of the residual (0 for an empty row or column). ``values`` may hold anything where unobserved."""
    obs = np.where(mask, values, 0.0)
    counts = mask.sum(0)
    col = np.where(counts > 0, obs.sum(0) / np.maximum(counts, 1), 0.0)
    resid = np.where(mask, values - col, 0.0)
    rcounts = mask.sum(1)
    row = np.where(rcounts > 0, resid.sum(1) / np.maximum(rcounts, 1), 0.0)
    return col[None, :] + row[:, None]


def _check_choice(name, value, allowed, auto=True):
    ok = (auto and value == "auto") or value in allowed
    if not ok:
        raise ValueError(f"{name} must be {'auto or ' if auto else ''}one of {list(allowed)}, "
                         f"got {value!r}")


class NTKImputer:
    """Complete a matrix with missing entries by NTK kernel regression (scikit-learn style).

    Parameters
    ----------
    mode : {"rows", "cols", "joint", "auto"}
        How entries are posed (module docstring). "auto" chooses rows/cols/joint by CV.
    prior : str or "auto"
        Prior of the rows (rows mode), columns (cols mode) or both (joint mode; a pair
        ``(row_prior, col_prior)`` is also accepted); see :mod:`completion.priors`. "auto" tries
        profile, plus features and features+identity:0.5 when features are given for that side
        (one-hot only in joint mode). (lowrank:k lost to profile on every data set tried, and is
        left out of "auto" to keep it fast.)
    depth : int >= 1 or "auto"
        Hidden layers of the network; "auto" chooses among 1, 2, 3 by CV.
    ridge : float >= 0 or "auto"
        Ridge relative to the mean kernel diagonal; "auto" chooses on a grid by CV.
    activation : {"relu", "leaky_relu", "erf"}
    row_features, col_features : DataFrame (indexed by labels) or array (matrix order), optional
    solver : {"auto", "shared", "structured", "exact", "cg"}
    device : torch device for kernel evaluation ("auto" = CUDA when present).
    random_state : int or None, seeds the cross-validation folds.
    cv_folds : int >= 2, K of the K-fold split of the observed entries used by the "auto" choices.
    cv_max_folds : int, how many of the K folds are evaluated (1 = a single validation split,
        the fast default; K = full K-fold CV).
    refine : int >= 0, refinement rounds for data-derived priors (profile, lowrank).
    verbose : int, 0 silent, 1 logs the choices and CV scores (logger ``completion.matrix``,
        also printed to stderr when no handler is configured).

    Attributes after ``fit``: ``chosen_`` (dict: mode, prior, depth, ridge, solver), ``cv_results_``
    (list of dicts: candidate and its CV RMSE), ``completed_`` ((m, n) array), ``baseline_``.
    """

    def __init__(self, mode="rows", prior="auto", depth="auto", ridge="auto", activation="relu",
                 row_features=None, col_features=None, solver="auto", device="auto",
                 random_state=None, cv_folds=5, cv_max_folds=1, refine=2, verbose=0):
        self.mode = mode
        self.prior = prior
        self.depth = depth
        self.ridge = ridge
        self.activation = activation
        self.row_features = row_features
        self.col_features = col_features
        self.solver = solver
        self.device = device
        self.random_state = random_state
        self.cv_folds = cv_folds
        self.cv_max_folds = cv_max_folds
        self.refine = refine
        self.verbose = verbose

    # -- validation --------------------------------------------------------------------------
    def _validate_params(self):
        _check_choice("mode", self.mode, MODES)
        _check_choice("activation", self.activation, ACTIVATIONS, auto=False)
        _check_choice("solver", self.solver, SOLVERS)
        if self.depth != "auto" and (isinstance(self.depth, bool) or
                                     not isinstance(self.depth, (int, np.integer)) or self.depth < 1):
            raise ValueError(f"depth must be 'auto' or an integer >= 1, got {self.depth!r}")
        if self.ridge != "auto" and (isinstance(self.ridge, bool) or
                                     not isinstance(self.ridge, (int, float, np.number)) or
                                     not math.isfinite(self.ridge) or self.ridge < 0):
            raise ValueError(f"ridge must be 'auto' or a finite number >= 0, got {self.ridge!r}")
        for name in ("cv_folds", "cv_max_folds", "refine"):
            value = getattr(self, name)
            low = {"cv_folds": 2, "cv_max_folds": 1, "refine": 0}[name]
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.prior != "auto":
            for p in (self.prior if isinstance(self.prior, tuple) else (self.prior,)):
                parse_prior(p)

    @staticmethod
    def _validate_matrix(X):
        """-> (values (m, n) float64 with NaN, row labels, col labels, DataFrame or None)."""
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
            arr = np.asarray(X)
            if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
                raise ValueError(f"X must be numeric (NaN for missing entries), got dtype {arr.dtype}")
            if arr.ndim != 2:
                raise ValueError(f"X must be a 2-D matrix, got an array of shape {arr.shape}; "
                                 "reshape it (e.g. X.reshape(-1, 1) for a single column)")
            values = arr.astype(np.float64)
            rows, cols = list(range(values.shape[0])), list(range(values.shape[1]))
        if values.shape[0] == 0 or values.shape[1] == 0:
            raise ValueError(f"X is empty (shape {values.shape})")
        inf = np.isinf(values)
        if inf.any():
            i, j = np.argwhere(inf)[0]
            raise ValueError(f"X contains inf at row {rows[i]!r}, column {cols[j]!r}; "
                             "use NaN for missing entries")
        if np.isnan(values).all():
            raise ValueError("X has no observed entry (all values are missing)")
        return values, rows, cols, frame

    # -- public API ----------------------------------------------------------------------------
    def fit(self, X, y=None):
        """Fit on the observed entries of X ((m, n) array with NaN, or DataFrame); returns self."""
        self._validate_params()
        values, rows, cols, frame = self._validate_matrix(X)
        mask = ~np.isnan(values)
        self.row_labels_, self.col_labels_ = rows, cols
        self._frame_type = frame is not None
        self.shape_ = values.shape
        self._values, self._mask = values, mask
        self._row_feats = self._aligned("row", self.row_features, rows)
        self._col_feats = self._aligned("col", self.col_features, cols)
        # CPU: models.device's default, or $NTK_THREADS (see models.device.resolve_threads)
        threads = None if str(self.device) in ("auto", "cpu") else torch.get_num_threads()
        with limited_threads(threads):
            started = time.perf_counter()
            self.chosen_, self.cv_results_ = self._choose(values, mask)
            self._say(f"chosen: {self._describe(self.chosen_)} "
                      f"(selection {time.perf_counter() - started:.1f} s)")
            started = time.perf_counter()
            self.completed_ = self._complete(values, mask, self.chosen_)
            self._say(f"final fit: {time.perf_counter() - started:.1f} s")
        self.baseline_ = additive_baseline(values, mask)
        return self

    def transform(self, X=None):
        """X with its missing entries filled (observed entries unchanged), same type as the
        fitted X. Only the matrix seen by ``fit`` can be transformed."""
        self._check_fitted()
        if X is not None:
            values, *_ = self._validate_matrix(X)
            same = values.shape == self.shape_ and np.array_equal(np.isnan(values), ~self._mask) \
                and np.array_equal(values[self._mask], self._values[self._mask])
            if not same:
                raise ValueError("transform(X) needs the matrix given to fit (kernel completion "
                                 "is transductive); call fit_transform(X) on the new matrix")
        out = np.where(self._mask, self._values, self.completed_)
        if self._frame_type:
            import pandas as pd
            return pd.DataFrame(out, index=self.row_labels_, columns=self.col_labels_)
        return out

    def fit_transform(self, X, y=None):
        return self.fit(X).transform()

    def predict(self, rows, cols):
        """Kernel predictions at entries (rows[k], cols[k]): integer positions when an array was
        fitted, labels when a DataFrame was fitted; returns a (len(rows),) array. Observed
        entries get the kernel fit (module docstring), not the observed value."""
        self._check_fitted()
        r = self._positions(rows, self.row_labels_, "row")
        c = self._positions(cols, self.col_labels_, "column")
        if r.shape != c.shape:
            raise ValueError(f"rows and cols must have the same length, got {r.size} and {c.size}")
        return self.completed_[r, c]

    # -- helpers ---------------------------------------------------------------------------------
    def _check_fitted(self):
        if not hasattr(self, "completed_"):
            raise ValueError("this NTKImputer is not fitted yet; call fit(X) first")

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

    def _say(self, message):
        if self.verbose:
            log.info(message)
            if not logging.getLogger().handlers and not log.handlers:
                import sys
                print(f"[NTKImputer] {message}", file=sys.stderr)

    @staticmethod
    def _describe(cfg):
        return ", ".join(f"{k}={v}" for k, v in cfg.items())

    # -- the model for one configuration ------------------------------------------------------
    def _kernel(self, depth):
        return FullyConnectedNTK(depth=int(depth), activation=self.activation)

    def _prior(self, spec, values, mask, axis):
        """Prior of the rows (axis 0) or columns (axis 1) of the matrix."""
        if axis == 0:
            return build_prior(spec, values, mask, self._row_feats, None, "row")
        return build_prior(spec, values.T, mask.T, self._col_feats, None, "col")

    def _complete(self, values, mask, cfg, targets=None, refine=None):
        """Completed (m, n) matrix (baseline + kernel prediction) for configuration ``cfg``,
        fitted on ``values[mask]``; refined ``self.refine`` times for data-derived priors.
        ``targets``: optional (rows, cols) -> only those entries are returned (joint dense mode
        then predicts only them); ``refine`` overrides ``self.refine``."""
        baseline = additive_baseline(values, mask)
        resid = np.where(mask, values - baseline, 0.0)
        specs = [parse_prior(p) for p in cfg["prior"]] if isinstance(cfg["prior"], tuple) \
            else [parse_prior(cfg["prior"])]
        refine = self.refine if refine is None else refine
        rounds = 1 + (refine if any(s.data_derived for s in specs) else 0)
        source, source_mask = values, mask
        for rnd in range(rounds):
            last = rnd == rounds - 1
            pred = self._residual_fit(source, source_mask, mask, resid, cfg, specs,
                                      targets if last else None)
            if not last:
                source, source_mask = np.where(mask, values, baseline + pred), np.ones_like(mask)
        if targets is not None:
            return (baseline[targets] + pred) if pred.ndim == 1 else (baseline + pred)[targets]
        return baseline + pred

    def _residual_fit(self, source, source_mask, mask, resid, cfg, specs, targets):
        """Kernel prediction of the residual ``resid`` (observed where ``mask``): (m, n), or (T,)
        at ``targets`` in joint dense mode. Priors are computed from ``source`` where
        ``source_mask`` (the observed values, or a completed matrix when refining)."""
        kernel = self._kernel(cfg["depth"])
        ridge = float(cfg["ridge"])
        if cfg["mode"] in ("rows", "cols"):
            axis = 0 if cfg["mode"] == "rows" else 1
            P = self._prior(specs[0], source, source_mask, axis)
            K = kernel.ntk(P, device=self.device)
            K = np.asarray(K, dtype=np.float64)
            R, M = (resid, mask) if axis == 0 else (resid.T, mask.T)
            pred = solve_shared_kernel(K, R, M, ridge)
            return pred if axis == 0 else pred.T
        # joint
        row_spec, col_spec = (specs * 2)[:2]
        rows, cols = np.nonzero(mask)
        y = resid[rows, cols]
        m, n = mask.shape
        if cfg["solver"] == "structured":
            a2 = b2 = 0.5
            values4 = [float(kernel.ntk_from_gram(g, 1.0, 1.0)) for g in (1.0, a2, b2, 0.0)]
            alpha = solve_onehot_joint(rows, cols, y, values4, ridge, (m, n))
            return predict_onehot_joint(rows, cols, alpha, values4, (m, n))
        Pr = self._prior(row_spec, source, source_mask, 0)
        Pc = self._prior(col_spec, source, source_mask, 1)
        op = JointKernelOperator(kernel, 0.5 * Pr @ Pr.T, 0.5 * Pc @ Pc.T, rows, cols,
                                 device=self.device)
        if cfg["solver"] == "exact":
            alpha = op.solve_exact(y, ridge)
        else:
            alpha = op.solve(y, ridge, random_state=0)
        if targets is None:
            tr, tc = np.indices((m, n)).reshape(2, -1)
            return op.predict(alpha, tr, tc).reshape(m, n)
        return op.predict(alpha, np.asarray(targets[0]), np.asarray(targets[1]))

    # -- automatic choices ----------------------------------------------------------------------
    def _solver_for(self, mode, prior, n_observed):
        specs = prior if isinstance(prior, tuple) else (prior,)
        onehot = all(parse_prior(p).base == "onehot" for p in specs)
        if self.solver != "auto":
            if mode in ("rows", "cols") and self.solver != "shared":
                raise ValueError(f"solver {self.solver!r} does not apply to mode {mode!r}; "
                                 "rows/cols mode uses 'shared'")
            if mode == "joint" and self.solver == "shared":
                raise ValueError("solver 'shared' is for rows/cols mode")
            if mode == "joint" and self.solver == "structured" and not onehot:
                raise ValueError("solver 'structured' needs one-hot row and column priors")
            return self.solver
        return choose_solver(mode, self.shape_, n_observed, onehot=onehot)

    def _prior_candidates(self, mode):
        if self.prior != "auto":
            return [self.prior]
        if mode == "joint":
            return [("onehot", "onehot")]
        feats = self._row_feats if mode == "rows" else self._col_feats
        cands = ["profile"]
        if feats is not None:
            cands += ["features", "features+identity:0.5"]
        return cands

    def _choose(self, values, mask):
        """Staged selection by CV: (mode, prior) at default depth/ridge, then depth, then ridge.
        Candidates are scored without refinement rounds (speed); the final fit refines.
        Nothing is cross-validated when nothing is 'auto'."""
        n_obs = int(mask.sum())
        modes = list(MODES) if self.mode == "auto" else [self.mode]
        stage1 = [{"mode": mo, "prior": pr} for mo in modes for pr in self._prior_candidates(mo)]
        depth = DEFAULT_DEPTH if self.depth == "auto" else int(self.depth)
        ridge = DEFAULT_RIDGE if self.ridge == "auto" else float(self.ridge)
        base = [dict(c, depth=depth, ridge=ridge) for c in stage1]
        for c in base:
            c["solver"] = self._solver_for(c["mode"], c["prior"], n_obs)
        results = []
        if len(base) == 1 and self.depth != "auto" and self.ridge != "auto":
            return self._normalised(base[0]), results
        folds = self._folds(mask)
        seen = {}
        best = self._best(base, values, mask, folds, results, seen)
        if self.depth == "auto":
            best = self._best([dict(best, depth=d) for d in DEPTH_GRID], values, mask, folds,
                              results, seen)
        if self.ridge == "auto":
            best = self._best([dict(best, ridge=r) for r in RIDGE_GRID], values, mask, folds,
                              results, seen)
        return self._normalised(best), results

    @staticmethod
    def _normalised(cfg):
        cfg = dict(cfg)
        cfg["prior"] = tuple(str(parse_prior(p)) for p in cfg["prior"]) \
            if isinstance(cfg["prior"], tuple) else str(parse_prior(cfg["prior"]))
        return cfg

    def _folds(self, mask):
        """List of boolean (m, n) masks of validation entries (``cv_max_folds`` of K folds).
        Entries are assigned to folds at random, but an entry that is the only observed one of
        its row or column always stays in training."""
        rng = np.random.default_rng(self.random_state)
        rows, cols = np.nonzero(mask)
        fold = rng.permutation(rows.size) % self.cv_folds
        alone = (np.bincount(rows, minlength=mask.shape[0])[rows] == 1) | \
            (np.bincount(cols, minlength=mask.shape[1])[cols] == 1)
        fold[alone] = -1
        out = []
        for f in range(min(self.cv_max_folds, self.cv_folds)):
            val = np.zeros_like(mask)
            val[rows[fold == f], cols[fold == f]] = True
            train = mask & ~val
            if not train.any() or not val.any():
                raise ValueError(f"too few observed entries ({mask.sum()}) for {self.cv_folds}-fold "
                                 "cross-validation; give depth, ridge and prior explicitly")
            out.append(val)
        return out

    def _best(self, candidates, values, mask, folds, results, seen):
        """Best of ``candidates`` by CV RMSE; ``seen`` caches scores by configuration."""
        scores = []
        for cfg in candidates:
            key = repr(sorted(cfg.items()))
            if key in seen:
                scores.append(seen[key])
                continue
            started = time.perf_counter()
            errors = []
            for val in folds:
                train = mask & ~val
                tr, tc = np.nonzero(val)
                try:
                    pred = self._complete(np.where(train, values, np.nan), train, cfg, (tr, tc),
                                          refine=0)
                except ValueError as err:  # e.g. not positive definite at a tiny ridge
                    self._say(f"  skipped {self._describe(cfg)}: {err}")
                    errors = [np.inf]
                    break
                errors.append(np.mean((pred - values[tr, tc]) ** 2))
            rmse = float(np.sqrt(np.mean(errors)))
            seen[key] = rmse
            scores.append(rmse)
            results.append(dict(self._normalised(cfg), cv_rmse=rmse))
            self._say(f"  CV RMSE {rmse:.4f}  {self._describe(self._normalised(cfg))} "
                      f"({time.perf_counter() - started:.1f} s)")
        if not np.isfinite(min(scores)):
            raise ValueError("every candidate configuration failed; give ridge explicitly (larger)")
        return candidates[int(np.argmin(scores))]
