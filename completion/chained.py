"""Chained (MICE-style) NTK regression: each column regressed on the other columns' estimates.

Rows mode with a per-column prior. Column j is a regression over the rows where it is observed;
the input of row i is its vector of the *other* columns' current estimates (observed values,
else the previous estimate), each column standardised over the rows and the whole scaled to
unit mean squared norm, so that the very entries being predicted never enter their own kernel.
The kernel ridge regression (NTK of a fully connected ReLU net) of the residual (values minus
the additive baseline) predicts the missing rows of column j, which immediately replace the
previous estimate (Gauss-Seidel order, as scikit-learn's IterativeImputer and MissForest do);
a round visits every column with a missing entry, and ``rounds`` rounds are run.

Each column's ridge is chosen before the first round by exact leave-one-out error
(eigendecomposition of its kernel on at most ``LOO_ROWS`` of its observed rows, inputs from the
baseline-filled matrix) over :data:`RIDGE_GRID`, and kept for every round: the regressor tunes
itself, as BayesianRidge does inside IterativeImputer. With more than ``LOO_COLUMNS`` columns to
fill, a random ``LOO_COLUMNS`` of them are tuned and the others take the median choice.
At most ``MAX_TRAIN_ROWS`` observed rows (a random subset) train each column's regression: a time
cap; the Gram matrix of the m rows is kept and updated by rank-one corrections (m x m floats).

The cols orientation is the same on the transposed matrix (:func:`chained_fit` with ``axis=1``).
"""
from __future__ import annotations

import numpy as np
import torch

from models.device import check_fits, parse_bytes

__all__ = ["chained_fit", "chained_flops", "loo_ridge", "RIDGE_GRID", "MAX_TRAIN_ROWS",
           "LOO_ROWS", "LOO_COLUMNS"]

RIDGE_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)  # relative to the mean kernel diagonal
MAX_TRAIN_ROWS = 1000
LOO_ROWS = 300
LOO_COLUMNS = 48


def _standardised_column(z):
    sd = z.std()
    return (z - z.mean()) / (sd if sd > 0 else 1.0)


def loo_ridge(K, y, grid=RIDGE_GRID):
    """The ridge of ``grid`` (relative to mean(diag K)) with the least leave-one-out squared
    error of kernel ridge regression on (K (t, t) tensor, y (t,) tensor): with
    K = V diag(s) V^T and H = (K + lam I)^{-1}, the LOO residual of point i is (H y)_i / H_ii."""
    s, V = torch.linalg.eigh(K)
    s = s.clamp(min=0.0)
    mean_diag = float(K.diagonal().mean())
    Vy = V.T @ y
    V2 = V * V
    errors = []
    for r in grid:
        inv = 1.0 / (s + r * mean_diag)
        errors.append(float(((V @ (Vy * inv)) / (V2 @ inv)).square().mean()))
    return grid[int(np.argmin(errors))]


def chained_flops(shape, mask, rounds, axis=0):
    """Rough flop count of :func:`chained_fit` (used by ``mode='auto'`` to skip it when too
    slow): per column and round, a Cholesky factor of its training rows, the kernel blocks and
    the Gram update; plus one LOO eigendecomposition per column."""
    m, n = shape if axis == 0 else shape[::-1]
    mask = mask if axis == 0 else mask.T
    missing_cols = int((~mask).any(0).sum())
    t = min(m, MAX_TRAIN_ROWS)
    per = t**3 / 3 + 30 * t * m + 2 * m * m + 3e7  # + Python overhead of a column, as flops
    return missing_cols * rounds * per + min(missing_cols, LOO_COLUMNS) * 10 * min(t, LOO_ROWS) ** 3


def chained_fit(kernel, values, mask, baseline, rounds, ridge="loo", axis=0, random_state=0,
                memory_budget=None):
    """Completed (m, n) matrix (baseline + prediction at missing entries, observed values kept).

    ``kernel``: e.g. :class:`models.ntk.FullyConnectedNTK` (``ntk_from_gram``); ``values``
    (m, n) with anything where unobserved; ``mask`` (m, n) bool, True = observed; ``baseline``
    (m, n) additive fit (the start and the offset of every regression); ``rounds`` >= 1;
    ``ridge``: 'loo' (per column, module docstring) or a number relative to the mean kernel
    diagonal of the column's training rows; ``axis`` 0 regresses columns over rows, 1 rows over
    columns. Refused before any work when the (m x m) Gram matrix exceeds ``memory_budget``.
    """
    if axis == 1:
        return chained_fit(kernel, values.T, mask.T, baseline.T, rounds, ridge, 0, random_state,
                           memory_budget).T
    m, n = values.shape
    check_fits(8 * 3 * m * m, parse_bytes(memory_budget), f"chained fit ({m} x {m} row Gram matrix)",
               "Use mode 'rows' or 'cols', or raise memory_budget.")
    rng = np.random.default_rng(random_state)
    Z = np.where(mask, values, baseline)
    F = torch.from_numpy(np.stack([_standardised_column(Z[:, j]) for j in range(n)], 1))
    F /= max(n - 1, 1) ** 0.5
    G = F @ F.T
    todo = np.flatnonzero((~mask).any(0) & mask.any(0))
    ridges = _loo_ridges(kernel, G, F, values, mask, baseline, todo, rng) if ridge == "loo" \
        else dict.fromkeys(todo.tolist(), float(ridge))
    for _ in range(rounds):
        for j in todo:
            obs, miss = np.flatnonzero(mask[:, j]), np.flatnonzero(~mask[:, j])
            if obs.size > MAX_TRAIN_ROWS:
                obs = np.sort(rng.choice(obs, MAX_TRAIN_ROWS, replace=False))
            f = F[:, j]
            Gj = G - torch.outer(f, f)  # the other columns only
            sq = Gj.diagonal()
            o, mi = torch.from_numpy(obs), torch.from_numpy(miss)
            A = kernel.ntk_from_gram(Gj[o][:, o], sq[o], sq[o])
            A.diagonal().add_(ridges[j] * float(A.diagonal().mean()))
            L, info = torch.linalg.cholesky_ex(A)
            if int(info) != 0:
                raise ValueError(f"chained fit: the kernel of column {j} plus ridge {ridges[j]:g} "
                                 "is not positive definite; increase ridge")
            y = torch.from_numpy(values[obs, j] - baseline[obs, j])
            alpha = torch.cholesky_solve(y[:, None], L)[:, 0]
            K_mo = kernel.ntk_from_gram(Gj[mi][:, o], sq[mi], sq[o])
            Z[miss, j] = (K_mo @ alpha).numpy() + baseline[miss, j]
            new = torch.from_numpy(_standardised_column(Z[:, j])) / max(n - 1, 1) ** 0.5
            G += torch.outer(new, new) - torch.outer(f, f)
            F[:, j] = new
    return Z


def _loo_ridges(kernel, G, F, values, mask, baseline, todo, rng):
    """{column: ridge} by leave-one-out on at most LOO_ROWS rows, for at most LOO_COLUMNS
    columns of ``todo``; the others get the median of the tuned choices (as grid positions)."""
    tuned = todo if todo.size <= LOO_COLUMNS else rng.choice(todo, LOO_COLUMNS, replace=False)
    out = {}
    for j in tuned:
        obs = np.flatnonzero(mask[:, j])
        sub = torch.from_numpy(np.sort(rng.choice(obs, min(obs.size, LOO_ROWS), replace=False)))
        f = F[sub, j]
        Gs = G[sub][:, sub] - torch.outer(f, f)
        K = kernel.ntk_from_gram(Gs, Gs.diagonal(), Gs.diagonal())
        y = torch.from_numpy(values[sub.numpy(), j] - baseline[sub.numpy(), j])
        out[int(j)] = loo_ridge(K, y)
    if out:
        median = RIDGE_GRID[int(np.median([RIDGE_GRID.index(r) for r in out.values()]))]
        out.update({int(j): median for j in todo if int(j) not in out})
    return out
