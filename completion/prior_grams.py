"""Inner products of priors, for kernels that only need <p_a, p_b> and |p_a|^2: the kernel
columns K[:, S] a Nystrom factor draws, and the full Gram matrix of an exact solve, without
forming a dense prior when the matrix is mostly missing.

* :class:`FeatureGram`: a dense prior array (N, d) (features, or any prior built densely);
* :class:`ProfileGram`: the ``profile`` prior (:func:`completion.priors.profile_prior` scaled to
  unit mean squared norm) of N items from their observed entries only. That prior is the
  residual R of the additive fit (coordinate means, then item offsets) at the observed entries
  (0 elsewhere; every item's residuals sum to 0, so centring per item leaves it unchanged),
  centred and standardised per coordinate: P = (R - 1 c^T) D (a coordinate with no observed
  entry is 0). Every inner product of P is a sparse product (R D)(R D)_S^T plus rank-one
  corrections, so the N x U prior is never formed.

Both give ``sq_norms`` (N,) and ``columns(S, start=0)`` -> (N - start, len(S)) float64
ndarray: the inner products of items start..N-1 with the items S.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["FeatureGram", "ProfileGram", "kernel_columns", "kernel_diagonal", "full_kernel"]

_FULL_BLOCK = 256  # kernel columns per block when the full N x N kernel is filled


class FeatureGram:
    """Gram of a dense prior ``P`` (N, d)."""

    def __init__(self, P):
        self.P = np.asarray(P, dtype=np.float64)
        self.sq_norms = np.einsum("ij,ij->i", self.P, self.P)

    def columns(self, S, start=0):
        return self.P[start:] @ self.P[np.asarray(S)].T


class ProfileGram:
    """Gram of the profile prior of N items, from observed entries (``items[k]``,
    ``coords[k]``, ``values[k]``) of an (N, U) matrix (items x coordinates: rows x columns for
    the row prior, transposed for the column prior). Equals ``P @ P.T`` for
    ``P = build_prior("profile", X, mask)`` on the dense matrix (to rounding)."""

    def __init__(self, items, coords, values, n_items, n_coords):
        N, U = int(n_items), int(n_coords)
        cnt_u = np.bincount(coords, minlength=U)
        col_mean = np.bincount(coords, values, U) / np.maximum(cnt_u, 1)
        r = values - col_mean[coords]
        offset = np.bincount(items, r, N) / np.maximum(np.bincount(items, minlength=N), 1)
        rp = r - offset[items]  # R at the observed entries; every item's sum is 0
        # so the per-item centring is the identity and P = (R - 1 c^T) D
        s1 = np.bincount(coords, rp * rp, U)
        c = np.bincount(coords, rp, U) / N  # coordinate means of R
        sd = np.sqrt(np.maximum(s1 / N - c * c, 0.0))
        d = np.where(cnt_u > 0, 1.0 / np.where(sd > 0, sd, 1.0), 0.0)  # unobserved: 0
        e = c * d
        self._R = sp.csr_array((rp * d[coords], (items, coords)), shape=(N, U))  # R D
        self._Re = self._R @ e
        self._ee = float(e @ e)
        sq = self._R.multiply(self._R).sum(1) - 2 * self._Re + self._ee
        mean_sq = float(np.mean(sq))
        self._scale = mean_sq if mean_sq > 0 else 1.0  # unit mean squared norm
        self.sq_norms = sq / self._scale

    def columns(self, S, start=0):
        """(R D)_{start:} (R D)_S^T -> P_{start:} P_S^T / scale, with P_a = (R D)_a - e."""
        S = np.asarray(S)
        G = (self._R[start:] @ self._R[S].T).toarray()
        G -= self._Re[start:, None] + self._Re[S][None, :] - self._ee
        return G / self._scale


def kernel_columns(kernel, gram, S, device, start=0):
    """(N - start, len(S)) float64 tensor K[start:, S] of ``kernel`` (``ntk_from_gram``) on the
    prior whose inner products ``gram`` holds; the elementwise map runs on ``device``."""
    sq = torch.as_tensor(gram.sq_norms, device=device)
    G = torch.as_tensor(gram.columns(S, start), device=device)
    return kernel.ntk_from_gram(G, sq[start:], sq[torch.as_tensor(np.asarray(S), device=device)]) \
        .to("cpu", torch.float64)


def full_kernel(kernel, gram, device):
    """(N, N) float64 tensor of the kernel, filled ``_FULL_BLOCK`` columns at a time, each
    block from its diagonal down (K[s:, S]) and mirrored into the rows S, so that every entry
    is computed once (peak: the kernel plus one (N, block) Gram block and its kernel work
    arrays)."""
    N = gram.sq_norms.shape[0]
    K = torch.empty((N, N), dtype=torch.float64)
    for s in range(0, N, _FULL_BLOCK):
        S = np.arange(s, min(N, s + _FULL_BLOCK))
        K[s:, s:s + S.size] = kernel_columns(kernel, gram, S, device, start=s)
        K[s:s + S.size, s + S.size:] = K[s + S.size:, s:s + S.size].T
    return K


def kernel_diagonal(kernel, gram):
    """(N,) kernel diagonal K[a, a]."""
    sq = gram.sq_norms
    return np.asarray(kernel.ntk_from_gram(sq, sq, sq), dtype=np.float64)
