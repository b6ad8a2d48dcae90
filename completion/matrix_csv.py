"""CSV matrices for the command line, hold-out splits and the scores printed for them.

A matrix CSV has the row labels in its first column and the column labels in its header; blank
cells and pandas' default NA tokens (plus any extra ``na_values``) are missing entries.
"""
from __future__ import annotations

import io
import sys

import numpy as np
import pandas as pd

from .io import atomic_output
from .matrix import additive_baseline

__all__ = ["read_matrix_csv", "read_features_csv", "write_matrix_csv", "holdout_mask", "scores",
           "baseline_scores"]


def _read_labelled(path, na_values, what):
    try:
        frame = pd.read_csv(path, index_col=0, na_values=na_values or None, dtype=str,
                            keep_default_na=True)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read {what} {path}: {err}") from None
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ValueError(f"{what} {path} has no data (expected row labels in the first column "
                         "and column labels in the header)")
    if frame.index.hasnans:
        raise ValueError(f"{what} {path}: a row has no label in the first column")
    for axis, labels in (("row", frame.index), ("column", frame.columns)):
        if labels.has_duplicates:
            dup = list(labels[labels.duplicated()].unique()[:5])
            raise ValueError(f"{what} {path}: duplicated {axis} label(s) {dup}")
    return frame


def read_matrix_csv(path, na_values=None) -> pd.DataFrame:
    """Float DataFrame (NaN = missing) from a labelled CSV; a non-numeric cell raises
    ValueError naming its row label and column."""
    frame = _read_labelled(path, na_values, "matrix")
    numeric = frame.apply(pd.to_numeric, errors="coerce")
    bad = numeric.isna() & frame.notna()
    if bad.to_numpy().any():
        i, j = np.argwhere(bad.to_numpy())[0]
        raise ValueError(f"{path}: non-numeric value {frame.iat[i, j]!r} at row "
                         f"{frame.index[i]!r}, column {frame.columns[j]!r} (blank cells and NA "
                         "tokens are missing; add other tokens with --na-values)")
    return numeric.astype(np.float64)


def read_features_csv(path, na_values=None) -> pd.DataFrame:
    """Feature table indexed by the labels of its first column; numeric columns become floats,
    other columns stay categorical (one-hot encoded by the priors)."""
    frame = _read_labelled(path, na_values, "feature file")
    out = frame.copy()
    for col in frame.columns:
        converted = pd.to_numeric(frame[col], errors="coerce")
        if not (converted.isna() & frame[col].notna()).any():
            out[col] = converted
    return out


def write_matrix_csv(frame, path):
    """Write ``frame`` as CSV to ``path`` atomically, or to stdout when ``path`` is '-'."""
    if str(path) == "-":
        frame.to_csv(sys.stdout)
        return
    text = io.StringIO()
    frame.to_csv(text)
    with atomic_output(path, "w") as fh:
        fh.write(text.getvalue())


def holdout_mask(mask, fraction, seed):
    """Boolean mask of ``round(fraction * observed)`` observed entries chosen at random
    (at least one); ``mask`` True = observed."""
    if not 0 < fraction < 1:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}")
    rows, cols = np.nonzero(mask)
    count = int(round(fraction * rows.size))
    if count < 1 or count >= rows.size:
        raise ValueError(f"holdout {fraction} of {rows.size} observed entries leaves no entry "
                         "to score or none to fit")
    pick = np.random.default_rng(seed).choice(rows.size, size=count, replace=False)
    hidden = np.zeros_like(mask)
    hidden[rows[pick], cols[pick]] = True
    return hidden


def scores(predicted, truth):
    """{'rmse', 'r2', 'pearson'} of 1-D predictions against the true values."""
    predicted = np.asarray(predicted, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    err = predicted - truth
    ss_tot = float(np.sum((truth - truth.mean()) ** 2))
    r2 = 1.0 - float(np.sum(err**2)) / ss_tot if ss_tot > 0 else float("nan")
    if predicted.std() > 0 and truth.std() > 0:
        pearson = float(np.corrcoef(predicted, truth)[0, 1])
    else:
        pearson = float("nan")
    return {"rmse": float(np.sqrt(np.mean(err**2))), "r2": r2, "pearson": pearson}


def baseline_scores(values, train_mask, hidden):
    """Scores of the additive row + column mean baseline fitted on ``train_mask``."""
    base = additive_baseline(values, train_mask)
    return scores(base[hidden], values[hidden])
