"""SoftImpute: low-rank matrix completion by nuclear-norm shrinkage, the shrinkage chosen by CV.

Mazumder, Hastie & Tibshirani (2010), "Spectral regularization algorithms for learning large
incomplete matrices". The observed entries are column-centred; then, for a decreasing path of
shrinkages lambda with warm starts, Z <- SVT_lambda(P_obs(X) + P_miss(Z)) until the relative
change is below ``tol`` (SVT: singular values soft-thresholded by lambda). Lambda is written as a
fraction of the top singular value of the zero-filled centred matrix; the fraction is chosen on a
random 10% of the observed entries (never on anything else) and the path is then rerun on all of
them.

Used as a completion method of its own and as the source of the ``profile@softimpute`` and
``lowrank:k@softimpute`` priors of :class:`completion.matrix.NTKImputer`.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["soft_impute_path", "soft_impute_cv", "singular_value_thresholded", "column_means",
           "FRACTIONS", "PATIENCE"]

# lambda / top singular value, from strong to weak shrinkage (warm-started in this order)
FRACTIONS = (0.5, 0.3, 0.2, 0.15, 0.1, 0.07, 0.05, 0.03, 0.02, 0.015, 0.01)
PATIENCE = 2


def column_means(X, mask):
    """(n,) means of the observed entries (``mask`` True) of each column of X, 0 for a column
    with none."""
    counts = mask.sum(0)
    return np.where(counts > 0, np.where(mask, X, 0.0).sum(0) / np.maximum(counts, 1), 0.0)


def singular_value_thresholded(A, lam):
    """A (m, n tensor) with its singular values s replaced by max(s - lam, 0): U diag(1 - lam /
    s) U^T A over the left singular vectors U whose s exceed lam (A^T's for m > n), from the
    eigendecomposition of the smaller Gram matrix A A^T (its eigenvalues s^2). As the SVD, at
    a fraction of its cost on a wide matrix (943 x 1682: 0.28 s against 0.75 s); the squared
    spectrum loses no accuracy where it matters: s near or above lam."""
    if A.shape[0] > A.shape[1]:
        return singular_value_thresholded(A.T, lam).T
    e, U = torch.linalg.eigh(A @ A.T)
    s = e.clamp(min=0.0).sqrt()
    keep = s > lam
    U, s = U[:, keep], s[keep]
    return (U * (1.0 - lam / s)) @ (U.T @ A)


def soft_impute_path(X, mask, fractions=FRACTIONS, max_iter=100, tol=1e-4):
    """Yield (fraction, completed (m, n) float64 array) along ``fractions`` (decreasing).

    ``X``: (m, n) values (anything where unobserved); ``mask``: (m, n) bool, True = observed.
    The completed matrix is the low-rank fit plus the column means, at every entry (observed
    ones included: the fit, not the observed value).
    """
    mean = column_means(X, mask)
    R = np.where(mask, X - mean, 0.0)
    top = float(np.linalg.norm(R, 2)) if R.any() else 0.0
    # torch, not numpy: OpenBLAS after torch's OpenMP kernels was measured 5-20x slower here
    Rt, M = torch.from_numpy(R), torch.from_numpy(np.asarray(mask, dtype=bool))
    Z = torch.zeros_like(Rt)
    for frac in fractions:
        lam = frac * top
        for _ in range(max_iter):
            Z_new = singular_value_thresholded(torch.where(M, Rt, Z), lam)
            change = float((Z_new - Z).square().sum()) / max(float(Z.square().sum()), 1e-12)
            Z = Z_new
            if change < tol:
                break
        yield frac, Z.numpy() + mean


def soft_impute_cv(X, mask, random_state=None, fractions=FRACTIONS, val_fraction=0.1):
    """SoftImpute with the shrinkage chosen on ``val_fraction`` of the observed entries.

    The path stops once ``PATIENCE`` fractions in a row score worse than the best so far.
    Returns (completed (m, n) array fitted on all observed entries, chosen fraction,
    {fraction: validation RMSE}). With fewer than 10 observed entries nothing can be held out:
    the weakest shrinkage of ``fractions`` is used and the scores are empty.
    """
    X = np.asarray(X, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    rows, cols = np.nonzero(mask)
    count = int(round(val_fraction * rows.size))
    scores = {}
    if count >= 1 and rows.size >= 10:
        pick = np.random.default_rng(random_state).choice(rows.size, size=count, replace=False)
        val = np.zeros_like(mask)
        val[rows[pick], cols[pick]] = True
        for frac, Z in soft_impute_path(X, mask & ~val, fractions):
            scores[frac] = float(np.sqrt(np.mean((Z[val] - X[val]) ** 2)))
            if len(scores) >= PATIENCE + 1 and \
                    min(list(scores.values())[-PATIENCE:]) > min(scores.values()):
                break  # worse for PATIENCE fractions in a row: weaker shrinkage only overfits
        best = min(scores, key=scores.get)
    else:
        best = min(fractions)
    *_, (_, Z) = soft_impute_path(X, mask, [f for f in fractions if f >= best])
    return Z, best, scores
