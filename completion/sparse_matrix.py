"""Rows/cols-mode completion on observed entries given as index lists: the path
:class:`~completion.matrix.NTKImputer` takes for scipy.sparse input, where the matrix is mostly
missing and no dense m x n array is formed.

A sparse matrix's STORED entries are the observed ones (an explicit zero is an observed 0; NaN
may not be stored). The additive baseline is kept as a row and a column vector, the profile
prior as its Gram (:class:`~completion.prior_grams.ProfileGram`), the solver works on the entry
lists (:mod:`completion.solvers.per_output`: exact with the N x N kernel, or on a Nystrom
factor, :mod:`completion.solvers.nystrom`), and predictions are made at requested pairs.
Priors on sparse input: ``profile`` (from the observed entries; not refined: a refinement would
need the dense completed matrix), ``features``, ``features+identity:w`` and ``onehot``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from models.device import check_fits, format_bytes, parse_bytes, resolve_device

from .prior_grams import FeatureGram, ProfileGram, full_kernel, kernel_columns, kernel_diagonal
from .priors import build_prior, parse_prior
from .solvers.nystrom import check_nystrom_fits, default_rank, pivoted_nystrom
from .solvers.per_output import (predict_pairs_exact, predict_pairs_in_features,
                                 relative_lambda, solve_outputs_exact, solve_outputs_in_features)

__all__ = ["Entries", "observed_entries", "entry_baseline", "fit_entries", "EntryFit",
           "nystrom_factor_and_weights", "nystrom_dense_prediction", "SPARSE_BASES"]

SPARSE_BASES = ("profile", "features", "onehot")  # prior bases the entry path supports


@dataclass(frozen=True)
class Entries:
    """Observed entries of an (m, n) matrix: ``rows``, ``cols`` (int64) and ``values``
    (float64), each (k,), no (row, col) pair twice."""
    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray
    shape: tuple

    def subset(self, keep):
        return Entries(self.rows[keep], self.cols[keep], self.values[keep], self.shape)


def observed_entries(X):
    """Validated :class:`Entries` of a scipy.sparse matrix (stored entries = observed).

    Refused, naming the entry: NaN or inf stored, a (row, col) pair stored twice (COO input),
    complex or non-numeric values, a non-2-D or empty shape, no stored entry."""
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D sparse matrix, got {X.ndim} dimensions")
    m, n = X.shape
    if m == 0 or n == 0:
        raise ValueError(f"X is empty: shape {X.shape}")
    if np.issubdtype(X.dtype, np.complexfloating):
        raise ValueError("Complex data not supported: X must be real numbers")
    if not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
        raise ValueError(f"X must be numeric, got dtype {X.dtype}")
    coo = sp.coo_array(X)
    rows, cols = coo.coords if hasattr(coo, "coords") else (coo.row, coo.col)
    rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    values = np.asarray(coo.data, dtype=np.float64)
    if values.size == 0:
        raise ValueError("X has no stored (observed) entry")
    bad = ~np.isfinite(values)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise ValueError(f"X stores {values[k]} at row {rows[k]}, column {cols[k]}: in a sparse "
                         "matrix the stored entries are the observed ones; leave missing "
                         "entries out instead of storing NaN")
    key = rows * n + cols
    order = np.argsort(key, kind="stable")
    dup = np.flatnonzero(np.diff(key[order]) == 0)
    if dup.size:
        k = order[dup[0]]
        raise ValueError(f"X stores the entry (row {rows[k]}, column {cols[k]}) more than once; "
                         "give each observed entry once (e.g. X.sum_duplicates() if they add up)")
    return Entries(rows, cols, values, (m, n))


def entry_baseline(e):
    """(row (m,), col (n,)) of the additive baseline col[j] + row[i] of
    :func:`completion.matrix.additive_baseline`: column means (the global mean for an empty
    column), then row means of the residual (0 for an empty row)."""
    m, n = e.shape
    counts = np.bincount(e.cols, minlength=n)
    overall = e.values.mean()
    col = np.where(counts > 0, np.bincount(e.cols, e.values, n) / np.maximum(counts, 1), overall)
    rcounts = np.bincount(e.rows, minlength=m)
    row = np.bincount(e.rows, e.values - col[e.cols], m) / np.maximum(rcounts, 1)
    return row, col


def _prior_gram(spec, e, axis, features):
    """Gram of the prior of the rows (axis 0) or columns (axis 1) from the entries."""
    spec = parse_prior(spec)
    if spec.base not in SPARSE_BASES or spec.source is not None or not spec.scaled:
        raise ValueError(f"prior {str(spec)!r} is not available for sparse input; use one of "
                         f"{list(SPARSE_BASES)} (features may take +identity:w)")
    items, coords = (e.rows, e.cols) if axis == 0 else (e.cols, e.rows)
    N, U = e.shape[axis], e.shape[1 - axis]
    if spec.base == "profile" and spec.identity_weight is None:
        return ProfileGram(items, coords, e.values, N, U)
    if spec.base == "profile":
        raise ValueError("profile+identity is not available for sparse input")
    what = "row" if axis == 0 else "col"
    return FeatureGram(build_prior(spec, np.empty((N, 0)), None, features, None, what))


def nystrom_factor_and_weights(kernel, gram, items, outputs, y, n_outputs, ridge, rank, device,
                               memory_budget, random_state=0, sampling="rpcholesky",
                               diagonal_correction=True):
    """Nystrom rows/cols fit on entry lists: (F (N, r), W (r, T)) as float64 tensors, with
    ``rank`` landmarks at most (None: :func:`~completion.solvers.nystrom.default_rank`, 1000 or
    as many as fit ``memory_budget``); with ``diagonal_correction`` the
    approximate kernel is F F^T + diag(K - F F^T) (exact diagonal; see
    :func:`~completion.solvers.per_output.solve_outputs_in_features`; its gathers and products
    in float32: 1.5x faster with 1000 landmarks on 20,000 x 10,000 ratings, predictions within
    2.3e-5 of float64's, RESULTS.md "Sparse ratings at scale"). Refused before any kernel
    evaluation when F, W and one batch exceed ``memory_budget``."""
    N = gram.sq_norms.shape[0]
    rank = min(N, default_rank(N, n_outputs, memory_budget) if rank is None else rank)
    check_nystrom_fits(N, n_outputs, rank, memory_budget,
                       f"the Nystrom solve ({N} items x {rank} landmarks, {n_outputs} outputs)")
    dev = resolve_device(device)
    diag = kernel_diagonal(kernel, gram)
    lam, ridge = relative_lambda(diag, items, ridge)
    F, _, residual = pivoted_nystrom(lambda S: kernel_columns(kernel, gram, S, dev), diag, rank,
                           sampling=sampling, random_state=random_state,
                           memory_budget=memory_budget)
    return F, solve_outputs_in_features(F, items, outputs, y, n_outputs, lam, ridge,
                                        residual if diagonal_correction else None,
                                        products=torch.float32)


class EntryFit:
    """A fitted rows (axis 0) or cols (axis 1) model on entries: the baseline vectors and the
    kernel part, exact (dual coefficients on the observed entries and the N x N kernel) or
    Nystrom (F, W). :meth:`predict` at (row, col) pairs; :meth:`dense` the (m, n) completion
    of the model (no observed value kept)."""

    def __init__(self, axis, row_base, col_base, shape, *, features=None, exact=None):
        self.axis, self.row_base, self.col_base, self.shape = axis, row_base, col_base, shape
        self._features, self._exact = features, exact

    def predict(self, rows, cols):
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        items, outputs = (rows, cols) if self.axis == 0 else (cols, rows)
        if self._features is not None:
            kern = predict_pairs_in_features(*self._features, items, outputs)
        else:
            K, alpha, e_items, e_outputs = self._exact
            kern = predict_pairs_exact(K, alpha, e_items, e_outputs, self.shape[1 - self.axis],
                                       items, outputs)
        return self.row_base[rows] + self.col_base[cols] + kern

    def dense(self):
        m, n = self.shape
        if self._features is not None:
            F, W = self._features
            kern = (F @ W).numpy()
            kern = kern if self.axis == 0 else kern.T
            return self.row_base[:, None] + self.col_base[None, :] + kern
        rows, cols = np.indices((m, n)).reshape(2, -1)
        return self.predict(rows, cols).reshape(m, n)


def fit_entries(e, mode, prior, kernel, ridge, solver, *, row_features=None, col_features=None,
                device="auto", memory_budget=None, random_state=0, sampling="rpcholesky"):
    """Fit rows or cols ``mode`` on :class:`Entries` ``e``: returns an :class:`EntryFit`.

    ``solver``: ('shared', None) = exact (the N x N kernel and its Gram must fit
    ``memory_budget``: refused before work otherwise) or ('nystrom', rank) with landmark
    ``sampling`` (:func:`~completion.solvers.nystrom.pivoted_nystrom`)."""
    axis = 0 if mode == "rows" else 1
    row_base, col_base = entry_baseline(e)
    y = e.values - row_base[e.rows] - col_base[e.cols]
    items, outputs = (e.rows, e.cols) if axis == 0 else (e.cols, e.rows)
    N, T = e.shape[axis], e.shape[1 - axis]
    gram = _prior_gram(prior, e, axis, row_features if axis == 0 else col_features)
    name, rank = solver
    if name == "nystrom":
        F, W = nystrom_factor_and_weights(kernel, gram, items, outputs, y, T, ridge, rank,
                                          device, memory_budget, random_state, sampling)
        return EntryFit(axis, row_base, col_base, e.shape, features=(F, W))
    if name != "shared":
        raise ValueError(f"solver {name!r} does not apply to {mode} mode on sparse input; use "
                         "'shared' (exact) or 'nystrom'")
    check_fits(8 * N * N + 12 * 8 * N * 256, parse_bytes(memory_budget),
               f"the exact {mode}-mode solve (the {N} x {N} kernel)",
               f"Raise memory_budget or use solver='nystrom' (about {format_bytes(8 * N)} per "
               "landmark).")
    K = full_kernel(kernel, gram, resolve_device(device))
    lam, ridge = relative_lambda(K.diagonal().numpy(), items, ridge)
    alpha = solve_outputs_exact(K, items, outputs, y, T, lam, ridge)
    return EntryFit(axis, row_base, col_base, e.shape, exact=(K, alpha, items, outputs))


def nystrom_dense_prediction(kernel, P, resid, mask, axis, ridge, rank, device, random_state=0,
                             memory_budget=None):
    """Rows (axis 0) or cols (axis 1) mode by the Nystrom solver on a dense matrix: the (m, n)
    kernel prediction of ``resid`` (observed where ``mask``) with the dense prior ``P`` of the
    rows (cols)."""
    rows, cols = np.nonzero(mask)
    items, outputs = (rows, cols) if axis == 0 else (cols, rows)
    F, W = nystrom_factor_and_weights(kernel, FeatureGram(P), items, outputs, resid[rows, cols],
                                      mask.shape[1 - axis], ridge, rank, device, memory_budget,
                                      random_state)
    pred = (F @ W).numpy()
    return pred if axis == 0 else pred.T
