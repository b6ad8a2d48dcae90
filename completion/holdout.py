"""Hold-out scoring of a matrix completion: hide some observed entries, fit on the rest, score
the hidden ones next to the additive row + column-mean baseline.

:func:`complete_with_holdout` is the one place the ``matrix --holdout`` command and the demo do
this; the completed matrix it returns keeps every observed value, hidden ones included.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .matrix import additive_baseline

__all__ = ["holdout_mask", "scores", "baseline_scores", "complete_with_holdout"]


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


def complete_with_holdout(imputer, frame: pd.DataFrame, fraction: float, seed: int):
    """Hide ``fraction`` of the observed entries of ``frame`` (chosen with ``seed``), complete
    the rest with ``imputer.fit_transform`` and score the hidden entries.

    Returns (completed frame: the observed values of ``frame`` exactly, hidden ones included,
    and the fit elsewhere; report {'hidden': int, 'observed': int, 'ntk': scores, 'additive':
    scores}) with scores = {'rmse', 'r2', 'pearson'}.
    """
    values = frame.to_numpy(dtype=np.float64)
    mask = ~np.isnan(values)
    hidden = holdout_mask(mask, fraction, seed)
    completed = imputer.fit_transform(frame.mask(hidden))
    report = {"hidden": int(hidden.sum()), "observed": int(mask.sum()),
              "ntk": scores(completed.to_numpy()[hidden], values[hidden]),
              "additive": baseline_scores(values, mask & ~hidden, hidden)}
    return completed.where(~mask, frame), report
