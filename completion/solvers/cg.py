"""Preconditioned conjugate gradients (several right-hand sides at once, numpy or torch) and a
randomized-Nystrom preconditioner for K + mu I."""
from __future__ import annotations

import warnings

import numpy as np
import torch
from tqdm.auto import tqdm

__all__ = ["CGResult", "solve_cg", "nystrom_preconditioner"]


class CGResult:
    """Solution ``x`` (shaped like b), iterations ``n_iter``, final relative residual per
    right-hand side ``residual`` (array (t,)), and ``converged``."""

    def __init__(self, x, n_iter, residual, converged):
        self.x, self.n_iter, self.residual, self.converged = x, n_iter, residual, converged

    def __repr__(self):
        return (f"CGResult(n_iter={self.n_iter}, max residual={np.max(self.residual):.2e}, "
                f"converged={self.converged})")


def solve_cg(matvec, b, precond=None, tol=1e-8, maxiter=None, progress=False, return_info=False):
    """Preconditioned conjugate gradients for a symmetric positive definite operator.

    ``matvec(V)``: (N, t) -> (N, t) (called with 2-D blocks); ``b``: (N,) or (N, t), several
    right-hand sides iterate together; ``precond(R)``: (N, t) -> (N, t), an SPD approximation of
    the inverse (None = identity). Stops when every column has ||r|| <= tol * ||b||, or after
    ``maxiter`` (default 10 N) iterations with a RuntimeWarning. Works on numpy arrays or torch
    tensors (whatever ``b`` is). Returns x shaped like b, or a :class:`CGResult` when
    ``return_info``.
    """
    is_torch = isinstance(b, torch.Tensor)
    if is_torch:
        lib_norm, where = (lambda v: torch.linalg.vector_norm(v, dim=0)), torch.where
    else:
        lib_norm, where = (lambda v: np.linalg.norm(v, axis=0)), np.where
    one_d = b.ndim == 1
    B = b.reshape(-1, 1) if one_d else b
    if B.ndim != 2:
        raise ValueError(f"b must be 1-D or 2-D, got shape {tuple(b.shape)}")
    if not (tol > 0):
        raise ValueError(f"tol must be > 0, got {tol}")
    n = B.shape[0]
    maxiter = 10 * n if maxiter is None else int(maxiter)
    if maxiter < 1:
        raise ValueError(f"maxiter must be >= 1, got {maxiter}")
    apply_m = (lambda r: r) if precond is None else precond

    X = B * 0
    R = B.clone() if is_torch else B.copy()
    b_norm = lib_norm(B)
    b_norm = b_norm + (b_norm == 0)  # zero right-hand sides are converged at x = 0
    Z = apply_m(R)
    P = Z
    rz = (R * Z).sum(0)
    res = lib_norm(R) / b_norm
    it = 0
    bar = tqdm(total=maxiter, desc="CG", disable=not progress, leave=False)
    while it < maxiter and bool((res > tol).any()):
        active = res > tol
        AP = matvec(P)
        pap = (P * AP).sum(0)
        if bool(((pap <= 0) & active).any()):
            raise ValueError("CG met a non-positive curvature p^T A p <= 0: the operator is not "
                             "positive definite (increase the ridge)")
        step = where(active, rz / where(active, pap, 1.0), 0.0)  # converged columns stay put
        X = X + P * step
        R = R - AP * step
        Z = apply_m(R)
        rz_new = (R * Z).sum(0)
        P = Z + P * where(active, rz_new / where(active, rz, 1.0), 0.0)
        rz = rz_new
        res = lib_norm(R) / b_norm
        it += 1
        bar.update(1)
        if progress:
            bar.set_postfix(residual=f"{float(res.max()):.1e}")
    bar.close()
    converged = not bool((res > tol).any())
    if not converged:
        warnings.warn(f"CG stopped after {it} iterations with relative residual "
                      f"{float(res.max()):.2e} > tol {tol:g}", RuntimeWarning, stacklevel=2)
    x = X[:, 0] if one_d else X
    if return_info:
        res_np = res.cpu().numpy() if is_torch else np.asarray(res)
        return CGResult(x, it, res_np, converged)
    return x



def nystrom_preconditioner(columns, landmarks, mu):
    """Randomized-Nystrom preconditioner for K + mu I from ``columns`` = K[:, landmarks].

    K ~ U diag(lam) U^T from the landmark columns; the returned function applies
    P^{-1} r = r + U ((lam_min + mu) / (lam + mu) - 1) U^T r, which is SPD, and cheap
    (O(N * rank)). ``columns``: (N, l) tensor or ndarray; ``landmarks``: (l,) indices;
    ``mu`` > 0. The returned function takes and returns the same type as ``columns``.
    """
    if mu <= 0:
        raise ValueError(f"mu must be > 0 for the Nystrom preconditioner, got {mu}")
    is_np = not isinstance(columns, torch.Tensor)
    C = torch.as_tensor(columns)
    W = C[torch.as_tensor(landmarks, device=C.device)]
    W = 0.5 * (W + W.T)
    shift = 1e-10 * float(W.diagonal().abs().max()) * W.shape[0]  # numerical safety only
    L = torch.linalg.cholesky(W + shift * torch.eye(W.shape[0], dtype=W.dtype, device=W.device))
    B = torch.linalg.solve_triangular(L, C.T, upper=False).T  # C L^{-T}: K ~ B B^T
    U, sing, _ = torch.linalg.svd(B, full_matrices=False)
    lam = (sing.square() - shift).clamp_(min=0.0)
    weight = ((lam[-1] + mu) / (lam + mu) - 1.0)[:, None]

    def apply(R):
        Rt = torch.as_tensor(R)
        out = Rt + U @ (weight * (U.T @ Rt))
        return out.numpy() if is_np else out
    return apply

