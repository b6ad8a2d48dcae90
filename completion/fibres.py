"""Vector-valued entries: a matrix whose entry (i, j) is a fibre X[i, j, :] of d numbers.

An (m, n, d) array is completed like an (m, n) matrix whose entries are vectors: a fibre is
observed (all d values given) or missing (all NaN); one kernel over (row, col) coordinates
serves all d outputs, which are d right-hand sides of the same solves. The functions here let
:class:`completion.matrix.NTKImputer` treat (m, n) and (m, n, d) values alike: the observed
pattern is always an (m, n) mask; values carry any trailing fibre axis.
"""
from __future__ import annotations

import numpy as np

__all__ = ["observed_fibres", "fibre_mask", "unfold", "fold"]


def observed_fibres(values, labels=None):
    """(m, n) bool mask of the observed entries of (m, n) or (m, n, d) ``values`` (NaN = missing).

    A fibre with some but not all of its d values NaN is refused (ValueError naming its row and
    column: ``labels`` = (row labels, col labels), positions by default)."""
    missing = np.isnan(values)
    if values.ndim == 2:
        return ~missing
    partial = missing.any(2) & ~missing.all(2)
    if partial.any():
        i, j = np.argwhere(partial)[0]
        row, col = (labels[0][i], labels[1][j]) if labels is not None else (i, j)
        gaps = int(missing[i, j].sum())
        raise ValueError(f"the entry at (row {row!r}, column {col!r}) is partly missing ({gaps} of "
                         f"{values.shape[2]} values NaN); a vector entry is observed whole or "
                         "missing whole (all NaN)")
    return ~missing[:, :, 0]


def fibre_mask(mask, values):
    """``mask`` (m, n) shaped to broadcast against ``values`` ((m, n) or (m, n, d))."""
    return mask.reshape(mask.shape + (1,) * (values.ndim - 2))


def unfold(values, mask):
    """(m, n, d) values and (m, n) mask -> the (m, n * d) matrix of each row's fibres side by side
    (column j * d + f holds feature f of column j) and its (m, n * d) mask; a 2-D matrix and its
    mask are returned as they are."""
    if values.ndim == 2:
        return values, mask
    m, n, d = values.shape
    return values.reshape(m, n * d), np.repeat(mask, d, axis=1)


def fold(Z, shape):
    """Inverse of :func:`unfold` for the values: (m, n * d) -> ``shape`` (m, n, d)."""
    return Z.reshape(shape)
