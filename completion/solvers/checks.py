"""Argument checks shared by the solvers: the relative ridge, targets, observed-entry indices."""
from __future__ import annotations

import math

import numpy as np


def check_ridge(ridge):
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float, np.floating, np.integer)) \
            or not math.isfinite(ridge) or ridge < 0:
        raise ValueError(f"ridge must be a finite number >= 0, got {ridge!r}")
    return float(ridge)


def validated_targets(y, n_observed):
    """y as float64, shape (n_observed,) or (n_observed, t), all finite; else ValueError."""
    y = np.asarray(y, dtype=np.float64)
    if y.ndim not in (1, 2) or y.shape[0] != n_observed:
        raise ValueError(f"y must have shape ({n_observed},) or ({n_observed}, t), got {y.shape}")
    if not np.isfinite(y).all():
        raise ValueError("y must be finite (no NaN or inf)")
    return y


def validated_entries(rows, cols, shape, what="observed"):
    rows = np.asarray(rows)
    cols = np.asarray(cols)
    if rows.ndim != 1 or cols.ndim != 1 or rows.shape != cols.shape:
        raise ValueError(f"{what} rows and cols must be 1-D of equal length, got shapes "
                         f"{rows.shape} and {cols.shape}")
    if rows.size and not (np.issubdtype(rows.dtype, np.integer) and np.issubdtype(cols.dtype, np.integer)):
        raise ValueError(f"{what} rows and cols must be integer indices")
    m, n = shape
    for name, idx, size in (("row", rows, m), ("column", cols, n)):
        if idx.size and (idx.min() < 0 or idx.max() >= size):
            k = int(np.flatnonzero((idx < 0) | (idx >= size))[0])
            raise ValueError(f"{what} entry {k} has {name} index {int(idx[k])}, outside 0..{size - 1}")
    return rows.astype(np.int64), cols.astype(np.int64)

