"""The ``"auto"`` choices of :class:`~completion.matrix.NTKImputer` on sparse input, by held-out
observed entries: a smaller search than the dense one, restricted to what scales.

Candidates: rows and cols mode (the given one when ``mode`` is not "auto"; joint and the
chained modes are left out: their cost grows with |Omega|^2 or with dense columns) with the
priors ``profile`` and, for a side with features, ``features``; each at the default depth and
ridge, then the ridge and then the depth of the best on the grids of the dense search. No
stacking (the stacked components, SoftImpute among them, are dense). The solver of each
candidate is the estimator's (the given one, checked against the mode before any fit, or
:func:`~completion.solvers.choose_solver`'s).
"""
from __future__ import annotations

import time

import numpy as np

from .cv_grid import entry_folds
from .solvers import parse_solver
from .sparse_matrix import fit_entries

__all__ = ["select_on_entries", "fit_chosen"]


def select_on_entries(e, est, kernel_of, grids, say):
    """(chosen configuration, cv results) for the estimator ``est``'s parameters on
    :class:`~completion.sparse_matrix.Entries` ``e``.

    ``kernel_of(depth)``: the NTK; ``grids``: dict with default_depth, default_ridge and the
    ridge and depth grids (auto and explicit-mode variants); ``say``: a logger function."""
    modes = ["rows", "cols"] if est.mode == "auto" else [est.mode]
    if est.mode not in ("auto", "rows", "cols"):
        raise ValueError(f"mode {est.mode!r} is not available for sparse input; use 'rows', "
                         "'cols' or 'auto' (module completion.sparse_selection)")
    depth = grids["default_depth"] if est.depth == "auto" else int(est.depth)
    ridge = grids["default_ridge"] if est.ridge == "auto" else float(est.ridge)
    feats = {"rows": est.row_features, "cols": est.col_features}
    candidates = []
    for mode in modes:
        priors = [est.prior] if est.prior != "auto" else \
            ["profile"] + (["features"] if feats[mode] is not None else [])
        for prior in priors:
            candidates.append({"mode": mode, "prior": prior, "depth": depth, "ridge": ridge,
                               "solver": est._solver_for(mode, prior, e.values.size)})
    if len(candidates) == 1 and est.depth != "auto" and est.ridge != "auto":
        return candidates[0], []
    folds = entry_folds(e.rows, e.cols, e.shape, est.cv_folds, est.cv_max_folds,
                        est.random_state)
    scored, results = {}, []

    def score(cfg):
        if repr(cfg) in scored:
            return
        started = time.perf_counter()
        sq, count = 0.0, 0
        try:
            for val in folds:
                fit = fit_chosen(e.subset(~val), cfg, est, kernel_of)
                pred = fit.predict(e.rows[val], e.cols[val])
                sq += float(np.sum((pred - e.values[val]) ** 2))
                count += int(val.sum())
        except ValueError as err:
            if "positive definite" not in str(err):
                raise
            say(f"  skipped {cfg}: {err}")
            scored[repr(cfg)] = (cfg, np.inf)
            return
        rmse = float(np.sqrt(sq / count))
        scored[repr(cfg)] = (cfg, rmse)
        results.append(dict(cfg, cv_rmse=rmse))
        say(f"  CV RMSE {rmse:.4f}  {cfg} ({time.perf_counter() - started:.1f} s)")

    def best():
        finite = [v for v in scored.values() if np.isfinite(v[1])]
        if not finite:
            raise ValueError("every candidate configuration failed (the kernel plus ridge was "
                             "not positive definite); give a larger ridge explicitly")
        return min(finite, key=lambda v: v[1])[0]

    for cfg in candidates:
        score(cfg)
    auto = est.mode == "auto"
    if est.ridge == "auto":
        top = best()
        for r in grids["auto_ridge"] if auto else grids["ridge"]:
            score(dict(top, ridge=r))
    if est.depth == "auto":
        top = best()
        for d in grids["auto_depth"] if auto else grids["depth"]:
            score(dict(top, depth=d))
    return best(), results


def fit_chosen(e, cfg, est, kernel_of):
    """Fit configuration ``cfg`` on :class:`~completion.sparse_matrix.Entries` ``e`` with the
    estimator ``est``'s features and device: an :class:`~completion.sparse_matrix.EntryFit`."""
    return fit_entries(e, cfg["mode"], cfg["prior"], kernel_of(cfg["depth"]), cfg["ridge"],
                       parse_solver(cfg["solver"]), row_features=est._row_feats,
                       col_features=est._col_feats, device=est.device,
                       random_state=est.random_state or 0)

