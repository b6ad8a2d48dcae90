"""A small drug-screening-like matrix the project generates, completed on a hold-out split.

:func:`synthetic_screen` makes ``n_cells`` x ``n_drugs`` responses from a non-linear function of
cell-line features (a low-rank interaction of tanh-squashed feature projections, plus cell and
drug effects and noise), with a fraction missing. :func:`run_demo` writes it as CSV files,
hides 10% of the observed entries, completes the rest with :class:`NTKImputer` and returns the
scores next to the additive row + column-mean baseline; the completed file keeps every observed
value exactly (hidden ones included).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from .holdout import complete_with_holdout
from .matrix import NTKImputer
from .matrix_csv import write_matrix_csv

__all__ = ["synthetic_screen", "run_demo"]


def synthetic_screen(n_cells=200, n_drugs=60, n_features=20, rank=3, missing=0.2, noise=0.1,
                     seed=0):
    """(responses DataFrame with NaN, complete responses DataFrame, cell features DataFrame).

    Cells are labelled ``cell_<k>``, drugs ``drug_<k>``; features ``f<k>`` are standard normal.
    """
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((n_cells, n_features))
    proj = rng.standard_normal((n_features, rank)) / np.sqrt(n_features)
    cell_latent = np.tanh(2.0 * feats @ proj)
    drug_latent = rng.standard_normal((n_drugs, rank))
    truth = (cell_latent @ drug_latent.T + 0.3 * rng.standard_normal(n_drugs)[None, :]
             + 0.2 * np.tanh(feats[:, :1]) + noise * rng.standard_normal((n_cells, n_drugs)))
    observed = truth.copy()
    observed[rng.random(truth.shape) < missing] = np.nan
    cells = [f"cell_{k}" for k in range(n_cells)]
    drugs = [f"drug_{k}" for k in range(n_drugs)]
    frame = lambda a, cols: pd.DataFrame(a, index=pd.Index(cells, name="cell"), columns=cols)
    return (frame(observed, drugs), frame(truth, drugs),
            frame(feats, [f"f{k}" for k in range(n_features)]))


def run_demo(outdir, seed=0, holdout=0.1, verbose=0):
    """Generate the screen, write ``responses.csv`` and ``cell_features.csv`` under ``outdir``,
    complete a ``holdout`` fraction of the observed entries and write ``completed.csv``.

    Returns {'ntk': scores, 'additive': scores, 'chosen': dict, 'seconds': float, 'files': [..]}
    with scores = {'rmse', 'r2', 'pearson'} on the hidden entries.
    """
    outdir = Path(outdir)
    observed, _, feats = synthetic_screen(seed=seed)
    paths = [outdir / "responses.csv", outdir / "cell_features.csv", outdir / "completed.csv"]
    write_matrix_csv(observed, paths[0])
    write_matrix_csv(feats, paths[1])
    started = time.perf_counter()
    imputer = NTKImputer(mode="rows", row_features=feats, random_state=seed, verbose=verbose)
    completed, report = complete_with_holdout(imputer, observed, holdout, seed)
    seconds = time.perf_counter() - started
    write_matrix_csv(completed, paths[2])
    return {"ntk": report["ntk"], "additive": report["additive"], "chosen": imputer.chosen_,
            "seconds": seconds, "files": [str(p) for p in paths]}
