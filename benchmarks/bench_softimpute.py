"""SoftImpute's thresholding step: the smaller Gram matrix's eigendecomposition (the code's) against
the SVD it replaced, in one run, on a dense ratings-like matrix and (when ../shared/data or
$NTK_SHARED_DATA has it) GDSC.

The ratings matrix: bench_ratings' synthetic ratings, 943 users x 1682 items (MovieLens 100k's
shape), 6.3% rated, integers 1-5, given dense with NaN where unrated; 10% of the observed
entries hidden. Prints, per matrix and step, the time of ``soft_impute_cv`` (and with ``--auto``
of ``NTKImputer(random_state=0).fit``, the default) and the RMSE at the hidden entries.

    python benchmarks/bench_softimpute.py            # about 2 minutes on 2 cores
    python benchmarks/bench_softimpute.py --auto     # about 6 minutes more
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ratings import ratings  # noqa: E402
from completion import softimpute  # noqa: E402
from completion.holdout import holdout_mask  # noqa: E402


def svd_thresholded(A, lam):
    """The step before: the full SVD, singular values soft-thresholded."""
    U, s, Vt = torch.linalg.svd(A, full_matrices=False)
    s = (s - lam).clamp_(min=0.0)
    k = int((s > 0).sum())
    return (U[:, :k] * s[:k]) @ Vt[:k]


def dense_ratings():
    m, n = 943, 1682
    rows, cols, values = ratings(m, n, 0.063, seed=0, integer=True)
    X = np.full((m, n), np.nan)
    X[rows, cols] = values
    return X


def matrices():
    out = {"ratings 943 x 1682": dense_ratings()}
    try:
        from bench_matrices import DATASETS
        out["GDSC 988 x 265"] = DATASETS["gdsc"][0]()
    except (OSError, KeyError, FileNotFoundError) as err:
        print(f"# GDSC skipped: {err}")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--auto", action="store_true", help="also time NTKImputer's default fit")
    args = parser.parse_args(argv)
    steps = {"svd (before)": svd_thresholded,
             "gram eigh (now)": softimpute.singular_value_thresholded}
    print("| matrix | step | soft_impute_cv s | RMSE | auto fit s | auto RMSE |")
    print("|---|---|---|---|---|---|")
    for name, X in matrices().items():
        mask = ~np.isnan(X)
        hide = holdout_mask(mask, 0.1, 0)
        train = np.where(hide, np.nan, X)
        rmse = lambda Z: float(np.sqrt(np.mean((Z[hide] - X[hide]) ** 2)))  # noqa: E731
        for label, step in steps.items():
            softimpute.singular_value_thresholded = step
            started = time.perf_counter()
            Z, _, _ = softimpute.soft_impute_cv(train, mask & ~hide, random_state=0)
            took, auto = time.perf_counter() - started, ("-", "-")
            if args.auto:
                from completion.matrix import NTKImputer
                started = time.perf_counter()
                done = NTKImputer(random_state=0).fit(train).completed_
                auto = (f"{time.perf_counter() - started:.1f}", f"{rmse(done):.4f}")
            print(f"| {name} | {label} | {took:.1f} | {rmse(Z):.4f} | {auto[0]} | {auto[1]} |",
                  flush=True)
    softimpute.singular_value_thresholded = steps["gram eigh (now)"]


if __name__ == "__main__":
    main()
