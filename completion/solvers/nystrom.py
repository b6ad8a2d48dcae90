"""Nystrom factor of a kernel over items for rows/cols mode at scale: K ~ F F^T with F (N, r),
r landmark items drawn by randomly pivoted Cholesky from kernel columns computed in blocks.

Each output t (a column in rows mode) with observed items O_t is then regressed on the
approximate kernel F F^T + diag(d), d = diag(K - F F^T) the factor's residual diagonal (the
diagonal correction of FITC: an item's own variance that the factor cannot express acts as
its ridge): alpha_t = (F_O F_O^T + diag(lam + d_O))^{-1} y_O, w_t = F_O^T alpha_t, predicting
F[a] . w_t at an item a (:func:`~completion.solvers.per_output.solve_outputs_in_features`).
With d = 0 this is FALKON's estimator f(x) = K(x, L) beta, min ||K_OL beta - y||^2 +
lam beta^T K_LL beta, in an orthonormal basis (w = R beta, R^T R = K_LL); with every item a
landmark (F F^T = K, d = 0) both are the exact kernel ridge regression of
:func:`~completion.solvers.solve_shared_kernel`.

Every output has its own observed set, so its normal matrix differs from the others'; the
outputs are solved directly, in batches of similar |O_t| (one batched Cholesky per batch, in
the r x r primal or the |O_t| x |O_t| dual form, whichever is smaller): the cost is
sum_t |O_t| min(|O_t|, r)^2 in dense batched BLAS, memory O(N r + r T). Block CG over all
outputs with per-output masks would cost |Omega| r per iteration, but in sampled sparse
products (SDDMM / SpMM), measured several times slower per multiply-add than the batched
dense products (benchmarks/RESULTS.md, "Sparse ratings at scale", the products case).
"""
from __future__ import annotations

import numpy as np
import torch

from models.device import check_fits, format_bytes, parse_bytes

from .per_output import BATCH_BYTES

__all__ = ["pivoted_nystrom", "check_nystrom_fits", "default_rank", "DEFAULT_RANK",
           "LANDMARK_SAMPLING"]

DEFAULT_RANK = 1000  # landmarks when the caller gives none: 1000 came to +1.45 % test RMSE over
# the exact solver on 20,000 x 10,000 ratings, 500 to +3.7 %, 200 to +6.3 %; 1000 on the
# 100,000 x 10,000 ratings took 366-470 s and 2.9 GB (RESULTS.md, "Sparse ratings at scale")
LANDMARK_SAMPLING = ("rpcholesky", "uniform")
_BLOCK = 50  # landmarks drawn per round (one block of kernel columns)


def pivoted_nystrom(columns, diag, rank, *, tol=1e-6, sampling="rpcholesky", random_state=0,
                    memory_budget=None):
    """(F, landmarks, residual): a rank-<=``rank`` factor F (N, r) with K ~ F F^T, the landmark
    items (r',) used, and the (N,) residual diagonal diag(K - F F^T) (>= 0, 0 at landmarks).

    ``columns(S)``: the (N, len(S)) kernel columns K[:, S] as a float64 tensor (computed by the
    caller in tiles on its device); ``diag``: (N,) kernel diagonal. Landmarks are drawn
    ``_BLOCK`` at a time, with probability proportional to the diagonal of the residual
    K - F F^T ('rpcholesky', randomly pivoted Cholesky: items the factor already explains are
    not drawn again) or uniformly among the items not drawn yet ('uniform'). Each block adds
    G H^+ G^T (G the residual columns, H their landmark rows; eigenvalues of H below 1e-12 of
    the largest are dropped, so duplicated items do not break it). Stops at ``rank`` landmarks
    or when the residual trace falls below ``tol`` times the trace. With rank = N the factor
    reproduces K (to rounding). ``memory_budget`` bounds F plus one block of columns (refused
    before any kernel evaluation).
    """
    if sampling not in LANDMARK_SAMPLING:
        raise ValueError(f"sampling must be one of {LANDMARK_SAMPLING}, got {sampling!r}")
    resid = torch.tensor(np.asarray(diag, dtype=np.float64))
    N = resid.numel()
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
        raise ValueError(f"rank (landmarks) must be an integer >= 1, got {rank!r}")
    rank = min(int(rank), N)
    check_fits(8 * N * (rank + 4 * _BLOCK), parse_bytes(memory_budget),
               f"the Nystrom factor ({N} items x {rank} landmarks)",
               "Raise memory_budget or use fewer landmarks.")
    rng = np.random.default_rng(random_state)
    total = float(resid.sum())
    landmarks = []
    drawn = np.zeros(N, dtype=bool)
    F = torch.zeros((N, 0), dtype=torch.float64)
    while len(landmarks) < rank and float(resid.sum()) > tol * total:
        weights = resid.clamp(min=0).numpy().copy() if sampling == "rpcholesky" \
            else (~drawn).astype(np.float64)
        weights[drawn] = 0.0
        b = min(_BLOCK, rank - len(landmarks), int((weights > 0).sum()))
        if b == 0:
            break
        S = np.sort(rng.choice(N, size=b, replace=False, p=weights / weights.sum()))
        drawn[S] = True
        G = columns(S).to(torch.float64)
        if F.shape[1]:
            G -= F @ F[S].T
        H = 0.5 * (G[S] + G[S].T)
        vals, vecs = torch.linalg.eigh(H)
        keep = vals > 1e-12 * max(float(vals.max()), 0.0)
        if not bool(keep.any()):
            resid[S] = 0.0
            continue
        new = G @ (vecs[:, keep] * vals[keep].rsqrt())
        F = torch.cat([F, new], dim=1)
        resid -= new.square().sum(1)
        resid[S] = 0.0
        landmarks.extend(S.tolist())
    return F, np.asarray(landmarks, dtype=np.int64), resid.clamp(min=0).numpy()


def nystrom_memory(n_items, n_outputs, rank):
    """Bytes the Nystrom solve holds: F (N, r), W (r, T) and one gathered batch."""
    return 8 * (n_items * rank + rank * n_outputs) + 3 * BATCH_BYTES


def default_rank(n_items, n_outputs, memory_budget):
    """:data:`DEFAULT_RANK` landmarks, or as many as fit ``memory_budget`` with F (N, r), W
    (r, T) and one batch (:func:`nystrom_memory`) when fewer; at least 1."""
    spare = parse_bytes(memory_budget) - nystrom_memory(n_items, n_outputs, 0)
    return int(max(1, min(DEFAULT_RANK, spare // (8 * (n_items + n_outputs)))))


def check_nystrom_fits(n_items, n_outputs, rank, memory_budget, what):
    need = nystrom_memory(n_items, n_outputs, rank)
    check_fits(need, parse_bytes(memory_budget), what,
               f"Raise memory_budget or use fewer landmarks (about {format_bytes(8 * n_items)} "
               "per landmark).")
    return need


