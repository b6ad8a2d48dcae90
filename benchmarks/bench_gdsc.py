"""GDSC drug-screening matrix completion: NTK kernel regression against standard imputers.

Protocol: ``../shared/data/gdsc/IC50_v17.csv.gz`` (988 cell lines x 265 drugs, log IC50, 18%
missing); for each seed, 10% of the observed entries are hidden, every method fits on the rest
and is scored on the hidden entries (RMSE, R^2, Pearson r) with its wall time (fit included,
cross-validation included for the methods that choose hyper-parameters).

Methods: additive row + column means; scikit-learn KNNImputer(k=10) over cell lines;
SoftImpute (nuclear-norm regularised completion, the shrinkage chosen on a validation split of
the training entries); NTKImputer in each mode/prior with fixed depth/ridge; NTKImputer with
everything "auto" (mode, prior, depth, ridge by CV).

Run (from the repository root; ~10 min on 2 cores for 5 seeds):
    python benchmarks/bench_gdsc.py --seeds 0 1 2 3 4
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from completion.matrix import NTKImputer, additive_baseline  # noqa: E402
from completion.holdout import holdout_mask, scores  # noqa: E402
from completion.softimpute import soft_impute_cv  # noqa: E402
from devdata import SHARED_DATA  # noqa: E402
DATA = SHARED_DATA / "gdsc"


def load():
    ic50 = pd.read_csv(DATA / "IC50_v17.csv.gz", index_col=0)
    genomic = pd.read_csv(DATA / "genomic_features_v17.csv.gz", index_col=0)
    return ic50, genomic.loc[ic50.index]


# -- methods -------------------------------------------------------------------------------------
def methods(ic50, genomic):
    def additive(X, mask, seed):
        return additive_baseline(X, mask), ""

    def knn(X, mask, seed):
        from sklearn.impute import KNNImputer
        return KNNImputer(n_neighbors=10).fit_transform(np.where(mask, X, np.nan)), ""

    def soft(X, mask, seed):
        Z, frac, _ = soft_impute_cv(X, mask, seed + 1000)
        return Z, f"lambda={frac:g} x top singular value"

    def ntk(**kw):
        def run(X, mask, seed):
            imp = NTKImputer(random_state=seed, **kw)
            frame = pd.DataFrame(np.where(mask, X, np.nan), index=ic50.index, columns=ic50.columns)
            done = imp.fit(frame).completed_
            return done, ", ".join(f"{k}={v}" for k, v in imp.chosen_.items()
                                   if k in ("mode", "prior", "depth", "ridge"))
        return run

    fixed = {"depth": 1, "ridge": 0.01}
    return {
        "additive": additive,
        "KNN (k=10)": knn,
        "SoftImpute (CV)": soft,
        "NTK joint onehot": ntk(mode="joint", prior="onehot", **fixed),
        "NTK rows profile": ntk(mode="rows", prior="profile", depth=1, ridge=0.3),
        "NTK rows genomic+identity:0.5": ntk(mode="rows", prior="features+identity:0.5",
                                             row_features=genomic, depth=1, ridge=0.3),
        "NTK rows lowrank:10": ntk(mode="rows", prior="lowrank:10", depth=1, ridge=0.3),
        "NTK cols lowrank:10": ntk(mode="cols", prior="lowrank:10", **fixed),
        "NTK cols profile": ntk(mode="cols", prior="profile", **fixed),
        "NTK auto (mode, prior, depth, ridge by CV)": ntk(mode="auto", row_features=genomic),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--only", nargs="*", help="substrings of the method names to run")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as measured on the shared machine: see models.device.default_threads
    os.environ["NTK_THREADS"] = str(torch.get_num_threads())  # the package's setting too
    ic50, genomic = load()
    X = ic50.to_numpy()
    observed = ~np.isnan(X)
    table = {}
    for name, run in methods(ic50, genomic).items():
        if args.only and not any(s.lower() in name.lower() for s in args.only):
            continue
        for seed in args.seeds:
            hidden = holdout_mask(observed, 0.1, seed)
            started = time.perf_counter()
            done, note = run(X, observed & ~hidden, seed)
            seconds = time.perf_counter() - started
            s = scores(done[hidden], X[hidden])
            table.setdefault(name, []).append((s["rmse"], s["r2"], s["pearson"], seconds))
            print(f"{name:<44} seed {seed}: RMSE {s['rmse']:.4f}  R^2 {s['r2']:.4f}  "
                  f"r {s['pearson']:.4f}  {seconds:6.1f} s  {note}", flush=True)
    print(f"\n| method | RMSE seed 0 | RMSE mean +- sd ({len(args.seeds)} seeds) | R^2 | Pearson r "
          "| wall s (mean) |")
    print("|---|---|---|---|---|---|")
    for name, rows in table.items():
        a = np.array(rows)
        print(f"| {name} | {a[0, 0]:.4f} | {a[:, 0].mean():.4f} +- {a[:, 0].std():.4f} | "
              f"{a[:, 1].mean():.4f} | {a[:, 2].mean():.4f} | {a[:, 3].mean():.1f} |")


if __name__ == "__main__":
    main()
