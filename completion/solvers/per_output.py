"""Rows/cols-mode regressions given as index lists: every output (a column in rows mode) is
regressed on its own observed items, all outputs sharing one kernel over items.

Observed entries are (``items[k]``, ``outputs[k]``, ``y[k]``), k < |Omega|; N items, T outputs.
Outputs are solved in batches of similar observed count |O_t| (padded to the batch's largest;
the exact solve takes one count per batch), one batched Cholesky per batch, so that many small
systems run as dense batched BLAS. Two
models: in the feature space of a factor K ~ F F^T (:func:`solve_outputs_in_features`, the
Nystrom solver), or with the kernel itself (:func:`solve_outputs_exact`, exact, needs the
N x N kernel). Both use the absolute ridge ``lam`` (see :func:`relative_lambda`).
"""
from __future__ import annotations

import numpy as np
import torch

from .checks import check_ridge
from .cholesky import not_positive_definite

__all__ = ["batches_by_count", "solve_outputs_in_features", "predict_pairs_in_features",
           "solve_outputs_exact", "predict_pairs_exact", "relative_lambda", "BATCH_BYTES"]

BATCH_BYTES = 64 * 1024**2  # gathered (batch x |O| x width) float64 per batched solve


def relative_lambda(diag, items, ridge):
    """(lam, ridge): ``ridge`` times the mean kernel diagonal over the observed entries, as in
    :func:`~completion.solvers.solve_shared_kernel`."""
    ridge = check_ridge(ridge)
    d = np.asarray(diag, dtype=np.float64)
    return ridge * float(np.mean(d[np.asarray(items)])), ridge


def _grouped(outputs, n_outputs):
    order = np.argsort(outputs, kind="stable")
    counts = np.bincount(outputs, minlength=n_outputs)
    return order, counts, np.concatenate([[0], np.cumsum(counts)])


def _padded(outs, order, counts, starts):
    """(B, L) entry positions of outputs ``outs``, padded with -1 to their largest count."""
    L = int(counts[outs].max()) if outs.size else 0
    offs = np.arange(L)
    pos = starts[outs][:, None] + offs
    return np.where(offs < counts[outs][:, None], order[np.minimum(pos, order.size - 1)], -1)


def batches_by_count(outputs, n_outputs, width, batch_bytes=BATCH_BYTES, same_count=False):
    """Group observed entries by output for batched solves.

    ``outputs``: (|Omega|,) output index of each entry. Yields (outs (B,), idx (B, L)) with idx
    the entry positions of each output padded with -1 to the batch's largest count L; outputs
    are taken in order of count so that padding stays small, and B * L * max(``width``, L)
    float64 stays near ``batch_bytes``. With ``same_count`` a batch holds outputs of one count
    only (no padding). Outputs without entries are skipped.
    """
    order, counts, starts = _grouped(outputs, n_outputs)
    by_count = np.argsort(counts, kind="stable")
    by_count = by_count[counts[by_count] > 0]
    sizes = counts[by_count].astype(np.float64)
    pos = 0
    while pos < by_count.size:
        ahead = sizes[pos:pos + (1 << 16)]  # the batch's largest count is its last one's
        if same_count:
            ahead = ahead[:np.searchsorted(ahead, ahead[0], side="right")]
        cost = np.arange(1, ahead.size + 1) * ahead * np.maximum(width, ahead) * 8
        B = max(1, int(np.searchsorted(cost, batch_bytes, side="right")))
        outs = by_count[pos:pos + min(B, ahead.size)]
        pos += outs.size
        yield outs, _padded(outs, order, counts, starts)


def _batched_ridge_solve(A, Y, shift, lam, ridge):
    """(A + diag(shift))^{-1} Y for a batch of SPD A (B, n, n) (its diagonal shifted; only its
    lower triangle is read), Y (B, n, 1);
    ``shift`` (B, n) or a scalar tensor; ``lam``, ``ridge`` are named in errors."""
    A.diagonal(dim1=-2, dim2=-1).add_(shift)
    factor, info = torch.linalg.cholesky_ex(A)
    if bool((info != 0).any()):
        raise not_positive_definite(lam, ridge)
    # two triangular solves: 3x faster than torch.cholesky_solve on such batches (measured)
    return torch.linalg.solve_triangular(
        factor.mT, torch.linalg.solve_triangular(factor, Y, upper=False), upper=True)


def solve_outputs_in_features(F, items, outputs, y, n_outputs, lam, ridge=float("nan"),
                              residual=None, products=torch.float64):
    """W (r, T): per output t, the weights w_t = F_O^T alpha of the kernel ridge regression
    alpha = (F_O F_O^T + diag(lam + residual_O))^{-1} y_O over its entries.

    ``F``: (N, r) float64 tensor; ``items``, ``outputs``: (|Omega|,) int arrays; ``y``:
    (|Omega|,) float64; ``lam`` > 0 (``ridge`` is only named in errors); ``residual``: (N,)
    diag(K - F F^T) >= 0 or None (0): with it the approximate kernel is exact on the diagonal
    (Nystrom with a diagonal correction, as FITC), which keeps an item's own variance that
    the factor cannot express acting as a per-item ridge. Each batch is solved in the dual
    (|O| x |O|) or, when its outputs have more than r entries, the primal form
    w = (F_O^T Lam^-1 F_O + I)^{-1} F_O^T Lam^-1 y (r x r), Lam = diag(lam + residual_O): the cost
    is sum_t |O_t| min(|O_t|, r)^2. Outputs without entries get w = 0. ``products``: the dtype
    the rows F_O are gathered and multiplied in (float32 halves the two dominant costs, the
    gather and F_O F_O^T); the factorisations, solves and W are float64.
    """
    N, r = F.shape
    F_pad = torch.cat([F, torch.zeros((1, r), dtype=F.dtype)]).to(products)  # row N: padding
    y_pad = torch.cat([torch.as_tensor(y, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
    noise = np.full(N + 1, float(lam))
    if residual is not None:
        noise[:N] += residual
    noise_pad = torch.as_tensor(noise[np.append(items, N)])
    item_pad = torch.as_tensor(np.append(items, N))
    W = torch.zeros((r, n_outputs), dtype=torch.float64)
    for outs, idx in batches_by_count(outputs, n_outputs, r):
        idx_t = torch.as_tensor(np.where(idx < 0, len(items), idx))
        X = F_pad[item_pad[idx_t]]  # (B, L, r); padded rows are zero and get zero weight
        Y = y_pad[idx_t].unsqueeze(-1)
        lam_b = noise_pad[idx_t]  # (B, L)
        if X.shape[1] <= r:
            alpha = _batched_ridge_solve((X @ X.mT).double(), Y, lam_b, lam, ridge)
            sol = X.mT @ alpha.to(products)
        else:
            Xw = X / lam_b.unsqueeze(-1).to(products)
            sol = _batched_ridge_solve((Xw.mT @ X).double(), (Xw.mT @ Y.to(products)).double(),
                                       torch.ones((), dtype=torch.float64), lam, ridge)
        W[:, torch.as_tensor(outs)] = sol.squeeze(-1).T.double()
    return W


def predict_pairs_in_features(F, W, items, outputs, chunk_bytes=BATCH_BYTES):
    """(k,) predictions F[items[k]] . W[:, outputs[k]] at requested (item, output) pairs, taken
    in chunks of rows F[items] of about ``chunk_bytes``."""
    items = torch.as_tensor(np.asarray(items, dtype=np.int64))
    outputs = torch.as_tensor(np.asarray(outputs, dtype=np.int64))
    out = torch.empty(items.numel(), dtype=F.dtype)
    Wt = W.T.contiguous()
    chunk = max(1, chunk_bytes // (F.element_size() * F.shape[1]))
    for s in range(0, items.numel(), chunk):
        out[s:s + chunk] = (F[items[s:s + chunk]] * Wt[outputs[s:s + chunk]]).sum(1)
    return out.numpy()


def solve_outputs_exact(K, items, outputs, y, n_outputs, lam, ridge=float("nan")):
    """(|Omega|,) dual coefficients: alpha_O = (K[O, O] + lam I)^{-1} y_O for every output's
    observed items O. ``K``: (N, N) float64 tensor (not copied). Cost sum_t |O_t|^3 / 3.

    Outputs are solved in batches of one count L (no padding): only the lower triangles of
    their K[O, O] are gathered (what the Cholesky factorisation reads), from flat positions
    into K computed in numpy (several times faster than torch's advanced indexing), then one
    batched Cholesky factorisation."""
    items = np.asarray(items, dtype=np.int64)
    y = torch.as_tensor(np.asarray(y, dtype=np.float64))
    K_flat = K.reshape(-1)
    alpha = torch.zeros(items.size, dtype=K.dtype)
    for _, idx in batches_by_count(outputs, n_outputs, 1, same_count=True):
        B, L = idx.shape
        low_r, low_c = np.tril_indices(L)
        at = items[idx]  # (B, L) item of each entry
        flat = torch.as_tensor((at[:, low_r] * K.shape[1] + at[:, low_c]).reshape(-1))
        A = torch.zeros((B, L * L), dtype=K.dtype)
        A.index_copy_(1, torch.as_tensor(low_r * L + low_c), K_flat.index_select(0, flat).view(B, -1))
        idx_t = torch.as_tensor(idx.reshape(-1))
        sol = _batched_ridge_solve(A.view(B, L, L), y[idx_t].view(B, L, 1),
                                   torch.tensor(float(lam), dtype=K.dtype), lam, ridge)
        alpha[idx_t] = sol.reshape(-1)
    return alpha.numpy()


def predict_pairs_exact(K, alpha, items, outputs, n_outputs, want_items, want_outputs,
                        chunk_bytes=BATCH_BYTES):
    """(k,) predictions sum_{b in O_t} K[a, b] alpha_b at requested pairs (a, t) =
    (``want_items[k]``, ``want_outputs[k]``); ``alpha`` from :func:`solve_outputs_exact`.
    Pairs are taken in order of their output's count, each chunk padded to its largest."""
    order, counts, starts = _grouped(outputs, n_outputs)
    want_items = np.asarray(want_items, dtype=np.int64)
    want_outputs = np.asarray(want_outputs, dtype=np.int64)
    out = np.zeros(want_items.size)
    item_of = np.append(items, 0)
    alpha_pad = np.append(alpha, 0.0)
    by_count = np.argsort(counts[want_outputs], kind="stable")
    pos = 0
    while pos < by_count.size:
        ahead = counts[want_outputs[by_count[pos:pos + (1 << 16)]]]
        step = max(1, int(np.searchsorted(np.arange(1, ahead.size + 1) * ahead * 24,
                                          chunk_bytes, side="right")))
        take = by_count[pos:pos + step]
        pos += take.size
        idx = _padded(want_outputs[take], order, counts, starts)
        if idx.shape[1] == 0:
            continue
        idx = np.where(idx < 0, len(items), idx)
        flat = torch.as_tensor((want_items[take] * K.shape[1])[:, None] + item_of[idx])
        k_rows = K.reshape(-1).index_select(0, flat.reshape(-1)).view(flat.shape)
        out[take] = (k_rows.numpy() * alpha_pad[idx]).sum(1)
    return out
