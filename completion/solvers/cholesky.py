"""Dense ridge solves by Cholesky in float64: (K + lam I)^{-1} Y, factoring in place."""
from __future__ import annotations

import numpy as np
import torch

from .checks import check_ridge

__all__ = ["solve_exact"]


def not_positive_definite(lam, ridge):
    return ValueError(
        f"the kernel plus ridge (lambda = {lam:.3g}, ridge = {ridge:g} x mean diagonal) is not "
        "positive definite; increase ridge")


def ridge_cholesky_solve(A, B, lam, ridge):
    """X = (A + lam I)^{-1} B for SPD A ((n, n) float64 ndarray, overwritten by its factor),
    B (n,) or (n, t); float64.

    A Fortran-ordered (column-major) A is factored truly in place: LAPACK's layout, so the peak
    is A itself. A C-ordered A is overwritten too, but torch factors a column-major copy of it
    (one more n x n array while factoring). Either way only the lower triangle of A is read.

    Dense factorisations and products run in torch: in a process that has just run torch's
    OpenMP-parallel kernels, OpenBLAS calls (numpy/scipy) compete with the spinning OpenMP
    threads and were measured 5-15x slower on 2 cores.
    """
    column_major = A.flags.f_contiguous and not A.flags.c_contiguous
    L = torch.from_numpy(A.T).T if column_major else torch.from_numpy(A)
    L.diagonal().add_(lam)
    info = torch.empty((), dtype=torch.int32)
    torch.linalg.cholesky_ex(L, out=(L, info))  # the lower triangle becomes the factor
    if int(info) != 0:
        raise not_positive_definite(lam, ridge)
    Bt = torch.as_tensor(np.ascontiguousarray(B, dtype=np.float64))
    B2 = Bt.reshape(Bt.shape[0], -1)
    if column_major:  # two triangular solves on the factor as it lies (cholesky_solve copies it)
        X = torch.linalg.solve_triangular(
            L.mT, torch.linalg.solve_triangular(L, B2, upper=False), upper=True)
    else:
        X = torch.cholesky_solve(B2, L)
    return X.reshape(Bt.shape).numpy()


def solve_exact(K, Y, ridge, overwrite=False):
    """alpha = (K + ridge * mean(diag K) * I)^{-1} Y by Cholesky in float64.

    K: (n, n) symmetric positive semi-definite; Y: (n,) or (n, t). Returns alpha shaped like Y.
    ``overwrite=True`` overwrites a writeable float64 K with its factor instead of copying it
    (K is destroyed): a Fortran-ordered K then needs no n x n array besides itself, a C-ordered
    one one while factoring (see :func:`ridge_cholesky_solve`).
    """
    K = np.asarray(K, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    ridge = check_ridge(ridge)
    if K.ndim != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(f"K must be a square matrix, got shape {K.shape}")
    if Y.ndim not in (1, 2) or Y.shape[0] != K.shape[0]:
        raise ValueError(f"Y must have shape ({K.shape[0]},) or ({K.shape[0]}, t), got {Y.shape}")
    if not (np.isfinite(K).all() and np.isfinite(Y).all()):
        raise ValueError("K and Y must be finite (no NaN or inf)")
    lam = ridge * float(np.mean(np.diag(K)))
    inplace = overwrite and (K.flags.c_contiguous or K.flags.f_contiguous) and K.flags.writeable
    return ridge_cholesky_solve(K if inplace else K.copy(), Y, lam, ridge)

