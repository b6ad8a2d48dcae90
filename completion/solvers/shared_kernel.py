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
# entries of the arrays of one batch of equally shaped column patterns in a downdate solve
_BATCH_ENTRIES = 1 << 22



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
    # one thread: MKL's multithreaded inverse took 1.66 s at 1797 x 1797 on 2 threads, 0.46 s
    # on one, and the solve against the identity (twice the flops) 0.82 s
    with limited_threads(1):
        B = torch.cholesky_inverse(L)
    del L
    B = B.mT  # B is symmetric and comes column-major: rows are then gathered contiguously
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
    """Fill coef[O, cols] = (B_OO - B_OM B_MM^{-1} B_MO) y_O = V_O - B_OM B_MM^{-1} V_M for
    every column pattern (coef and V: (m, n, d) tensors, V = B[:, O] y_O). Patterns with the
    same number of missing rows k and of columns c go through one batched factorisation and
    solve (random missingness over few rows gives thousands of tiny patterns, whose one-by-one
    factors cost mostly Python), in chunks of at most :data:`_BATCH_ENTRIES` entries."""
    m = B.shape[0]
    missing = ~mask[:, first]  # (m, patterns)
    k_of = missing.sum(0)
    c_of = np.bincount(group, minlength=first.size)
    complete = np.isin(group, np.flatnonzero(k_of == 0))
    coef[:, torch.from_numpy(complete)] = V[:, torch.from_numpy(complete)]
    todo = np.flatnonzero((k_of > 0) & (k_of < m))  # (an all-missing pattern predicts 0)
    keys = sorted(set(zip(k_of[todo].tolist(), c_of[todo].tolist())))
    by_pattern = np.argsort(group, kind="stable")  # columns of each pattern, in order
    starts = np.concatenate([[0], np.cumsum(c_of)])
    for k, c in tqdm(keys, desc="column patterns", disable=not progress, leave=False):
        pats = todo[(k_of[todo] == k) & (c_of[todo] == c)]
        chunk = max(1, _BATCH_ENTRIES // (k * (m + k + c * V.shape[2])))
        for s in range(0, pats.size, chunk):
            p = pats[s:s + chunk]
            miss = torch.from_numpy(np.nonzero(missing[:, p].T)[1].reshape(p.size, k))  # (b, k)
            cols = torch.from_numpy(by_pattern[starts[p][:, None] + np.arange(c)])  # (b, c)
            B_m = B[miss]  # (b, k, m): B_MO and B_MM rows (B symmetric)
            L, info = torch.linalg.cholesky_ex(torch.take_along_dim(B_m, miss[:, None, :], 2))
            if int(info.abs().max()) != 0:
                raise not_positive_definite(lam, ridge)
            rhs = V[miss[:, :, None], cols[:, None, :]]  # (b, k, c, d)
            W = torch.cholesky_solve(rhs.reshape(p.size, k, -1), L)
            # over every row: at the missing rows V_M - B_MM B_MM^{-1} V_M = 0
            fit = V[:, cols] - (B_m.mT @ W).reshape(p.size, m, c, -1).transpose(0, 1)
            fit[miss.T[:, :, None], torch.arange(p.size)[None, :, None], torch.arange(c)] = 0.0
            coef[:, cols] = fit
