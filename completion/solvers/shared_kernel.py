"""Rows (or, transposed, cols) mode: one kernel over rows shared by every column; columns with
the same observed pattern share one factorisation (or one downdate of the full inverse)."""
from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from models.device import check_fits, limited_threads, parse_bytes

from .checks import check_ridge
from .cholesky import not_positive_definite, ridge_cholesky_solve

__all__ = ["solve_shared_kernel", "shared_kernel_flops"]

# (tile rows x observed rows) arrays alive while a block of a rows-mode prediction is evaluated
_SHARED_TILE_WORK = 10



def solve_shared_kernel(K_rows, Y, mask, ridge, memory_budget=None, progress=False, method="auto"):
    """Complete Y column by column with one kernel over rows; returns the prediction, shaped
    like Y: (m, n), or (m, n, d) for vector entries.

    ``K_rows``: the (m, m) kernel between rows (K((i, j), (i', j')) = [j == j'] K_rows[i, i']),
    either as an array or as a function ``K_rows(rows_a, rows_b)`` returning the
    (len(rows_a), len(rows_b)) block, so that large m never stores the m x m matrix (only the
    factor of each observed pattern and row tiles of the prediction).
    ``Y``: (m, n) values (anything, e.g. NaN, where unobserved), or (m, n, d): d outputs per
    entry (vector entries), all observed where ``mask``: (m, n) bool, True = observed. The d
    outputs are d right-hand sides of the same systems: each factorisation serves all of them. Column j is regressed on its observed rows and predicted at every row
    (K_rows[:, obs] alpha_j, which at the observed rows is y - lam alpha_j); a column with no
    observation is predicted as 0 (the prior mean).
    The ridge is relative to the mean of diag(K_rows) over all observed entries, as for the
    dense entry kernel, so this equals :func:`solve_exact` on that kernel. Columns with the same
    observed pattern share one Cholesky factorisation (float64). ``memory_budget`` bounds the
    largest factor, the prediction and the tiles (refused before allocating).

    ``method``: 'direct' (factor each pattern's observed block), 'downdate' (invert the full
    m x m system once, then factor each pattern's missing block; array ``K_rows`` only) or
    'auto' (the one with fewer flops, downdate only when 3 m^2 floats fit the budget). Many
    distinct patterns with few missing rows each (random missingness) favour 'downdate'.
    """
    if method not in ("auto", "direct", "downdate"):
        raise ValueError(f"method must be 'auto', 'direct' or 'downdate', got {method!r}")
    if method == "downdate" and callable(K_rows):
        raise ValueError("method='downdate' needs K_rows as an array")
    mask = np.asarray(mask)
    Y = np.asarray(Y, dtype=np.float64)
    if mask.dtype != bool:
        raise ValueError(f"mask must be boolean (True = observed), got dtype {mask.dtype}")
    if Y.ndim not in (2, 3) or mask.shape != Y.shape[:2]:
        raise ValueError(f"Y must be (m, n) or (m, n, d) and mask (m, n), got {Y.shape} and "
                         f"{mask.shape}")
    out_shape = Y.shape
    Y = Y.reshape(Y.shape[0], Y.shape[1], -1)  # (m, n, d); d = 1 for a plain matrix
    m, n, d = Y.shape
    if callable(K_rows):
        block = K_rows
    else:
        K = np.asarray(K_rows, dtype=np.float64)
        if K.shape != (m, m):
            raise ValueError(f"K_rows must have shape ({m}, {m}) to match Y and mask {Y.shape}, "
                             f"got {K.shape}")
        if not np.isfinite(K).all():
            raise ValueError("K_rows must be finite (no NaN or inf)")
        block = lambda a, b: K[np.ix_(a, b)]
    if not mask.any():
        raise ValueError("mask has no observed entry")
    bad = mask & ~np.isfinite(Y).all(2)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(f"Y is not finite at observed entry (row {i}, column {j})")
    ridge = check_ridge(ridge)

    # group columns by observed pattern
    _, first, group = np.unique(np.packbits(mask, axis=0).T, axis=0, return_index=True,
                                return_inverse=True)
    group = group.reshape(-1)
    largest = int(mask[:, first].sum(0).max())
    widest = int(np.bincount(group).max())
    budget = parse_bytes(memory_budget)
    fixed = 8 * (largest * largest + m * n * d + 2 * largest * widest * d)
    per_row = 8 * (_SHARED_TILE_WORK * largest + widest * d)
    check_fits(fixed + per_row, budget,
               f"rows-mode solve (largest factor {largest} x {largest}, prediction {m} x {n} x {d})",
               "Raise memory_budget, or complete fewer rows at once.")
    tile = int(min(m, (budget - fixed) // per_row))

    counts = mask.sum(1)
    used = np.flatnonzero(counts)
    diag = np.concatenate([np.diag(block(used[s:s + tile], used[s:s + tile]))
                           for s in range(0, used.size, tile)])
    lam = ridge * float(diag @ counts[used]) / float(counts.sum())

    if method == "auto" and not callable(K_rows):
        method = "downdate" if (_downdate_is_cheaper(mask, first, group, d)
                                and 8 * (3 * m * m + 2 * m * n * d) <= budget) else "direct"
    if method == "downdate":
        check_fits(8 * (3 * m * m + 2 * m * n * d), budget,
                   f"rows-mode downdate solve ({m} x {m} inverse)",
                   "Raise memory_budget or use method='direct'.")
        return _shared_by_downdates(K, Y, mask, first, group, lam, ridge, progress).reshape(out_shape)
    pred = np.zeros((m, n, d))
    for g in tqdm(range(first.size), desc="column patterns", disable=not progress, leave=False):
        obs = np.flatnonzero(mask[:, first[g]])
        if obs.size == 0:
            continue
        cols = np.flatnonzero(group == g)
        y_obs = Y[np.ix_(obs, cols)].reshape(obs.size, -1)  # (|O|, columns x d) right-hand sides
        alpha = ridge_cholesky_solve(np.array(block(obs, obs), dtype=np.float64), y_obs, lam, ridge)
        # at the observed rows K_oo alpha = y - lam alpha exactly; other rows from kernel tiles
        pred[np.ix_(obs, cols)] = (y_obs - lam * alpha).reshape(obs.size, cols.size, d)
        alpha = torch.from_numpy(alpha)
        unobserved = np.flatnonzero(~mask[:, first[g]])
        for start in range(0, unobserved.size, tile):
            rows = unobserved[start:start + tile]
            K_tile = torch.as_tensor(np.asarray(block(rows, obs), dtype=np.float64))
            pred[np.ix_(rows, cols)] = (K_tile @ alpha).numpy().reshape(rows.size, cols.size, d)
    return pred.reshape(out_shape)


def shared_kernel_flops(n_rows, observed, columns):
    """Estimated flops of the two rows-mode methods: returns (direct, downdate).

    ``n_rows``: m; ``observed``: observed rows |O| of each distinct column pattern;
    ``columns``: number of right-hand sides sharing each pattern (its columns times the
    outputs d per entry). Direct: sum |O|^3 / 3 + 2 m |O| t;
    downdate: m^3 (inverse) + sum |M|^3 / 3 + 2 |O| |M| t, + 2 m^2 n (products).
    """
    m = float(n_rows)
    obs = np.asarray(observed, dtype=np.float64)
    t = np.asarray(columns, dtype=np.float64)
    direct = float((obs**3 / 3 + 2 * m * obs * t).sum())
    downdate = float(m**3 + ((m - obs) ** 3 / 3 + 2 * obs * (m - obs) * t).sum() + 2 * m * m * t.sum())
    return direct, downdate


def _downdate_is_cheaper(mask, first, group, outputs):
    direct, downdate = shared_kernel_flops(mask.shape[0], mask[:, first].sum(0),
                                           outputs * np.bincount(group))
    return downdate < direct


def _shared_by_downdates(K, Y, mask, first, group, lam, ridge, progress):
    """Rows mode through B = (K + lam I)^{-1} over all m rows: for a column observed on O and
    missing on M, (K_OO + lam I)^{-1} = B_OO - B_OM B_MM^{-1} B_MO, so each pattern costs a
    factor of its (small) missing block instead of its (large) observed block. Y: (m, n, d)."""
    m, n, d = Y.shape
    A = torch.from_numpy(K.copy())
    A.diagonal().add_(lam)
    L, info = torch.linalg.cholesky_ex(A)
    if int(info) != 0:
        raise not_positive_definite(lam, ridge)
    del A
    # (cholesky_inverse was measured up to 20x slower than this under CPU contention)
    B = torch.cholesky_solve(torch.eye(m, dtype=torch.float64), L)
    del L
    # B[:, O] y_O for every column and output
    V = (B @ torch.from_numpy(np.where(mask[..., None], Y, 0.0).reshape(m, -1))).reshape(m, n, d)
    coef = torch.zeros((m, n, d), dtype=torch.float64)
    with limited_threads(1):  # many small factors: parallel regions cost more than they save
        _downdate_patterns(B, V, coef, mask, first, group, lam, ridge, progress)
    pred = (torch.from_numpy(K) @ coef.reshape(m, -1)).numpy().reshape(m, n, d)
    # at the observed entries K_OO alpha = y - lam alpha exactly
    pred[mask] = Y[mask] - lam * coef.numpy()[mask]
    return pred


def _downdate_patterns(B, V, coef, mask, first, group, lam, ridge, progress):
    """Fill coef[O, cols] = (B_OO - B_OM B_MM^{-1} B_MO) y_O for every column pattern
    (coef and V: (m, n, d) tensors)."""
    for g in tqdm(range(first.size), desc="column patterns", disable=not progress, leave=False):
        observed = mask[:, first[g]]
        obs, miss = np.flatnonzero(observed), np.flatnonzero(~observed)
        if obs.size == 0:
            continue
        cols = torch.from_numpy(np.flatnonzero(group == g))
        obs_t, miss_t = torch.from_numpy(obs), torch.from_numpy(miss)
        if miss.size == 0:
            coef[:, cols] = V[:, cols]
            continue
        B_m = B[miss_t]  # (|M|, m) rows; B is symmetric so B_OM = B_m[:, O]^T
        L_mm, info = torch.linalg.cholesky_ex(B_m[:, miss_t])
        if int(info) != 0:
            raise not_positive_definite(lam, ridge)
        W = torch.cholesky_solve(V[miss_t][:, cols].reshape(miss.size, -1), L_mm)
        coef[obs_t[:, None], cols] = V[obs_t][:, cols] - \
            (B_m[:, obs_t].T @ W).reshape(obs.size, cols.numel(), -1)

