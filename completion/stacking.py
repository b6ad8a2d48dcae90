"""Convex combination of completions, the weights fitted on held-out observed entries.

Given the predictions P (T, k) of k completions at T held-out entries and the true values y
(T,), :func:`convex_weights` returns w >= 0 with sum(w) = 1 minimising |P w - y|^2 (a
non-negative least-squares problem with the sum constraint enforced by a heavily weighted extra
row). With k of 2-4 and T in the hundreds or more the k weights cannot overfit much.
"""
from __future__ import annotations

import numpy as np
import scipy.optimize

__all__ = ["convex_weights"]


def convex_weights(P, y):
    """(T, k) predictions and (T,) targets -> (k,) weights, >= 0, summing to 1 (see module)."""
    P = np.asarray(P, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if P.ndim != 2 or y.shape != (P.shape[0],) or P.shape[1] < 1:
        raise ValueError(f"P must be (T, k) and y (T,), got {P.shape} and {y.shape}")
    if not (np.isfinite(P).all() and np.isfinite(y).all()):
        raise ValueError("predictions and targets must be finite")
    if P.shape[1] == 1:
        return np.ones(1)
    big = 1e3 * max(float(np.sqrt(np.mean(P * P))), 1e-12) * np.sqrt(P.shape[0])
    A = np.vstack([P, np.full((1, P.shape[1]), big)])
    b = np.concatenate([y, [big]])
    w, _ = scipy.optimize.nnls(A, b)
    total = w.sum()
    return w / total if total > 0 else np.full(P.shape[1], 1.0 / P.shape[1])
