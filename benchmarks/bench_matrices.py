"""Matrices of different kinds: the NTK default against the common imputers, in one run.

Protocol (issue 9): for each data set and seed, a random 20% of the observed entries are hidden
(MCAR), every method fits on the rest and is scored on the hidden entries (RMSE; wall time
includes every choice made by cross-validation). Data sets:

* scikit-learn's breast_cancer (569 x 30), wine (178 x 13), diabetes (442 x 10, features only)
  and digits (1797 x 64), columns standardised (constant columns of digits are centred only);
  RMSE in standardised units;
* statsmodels' elnino (61 years x 12 months, sea surface temperature in degrees C, smooth);
* GDSC v17 log IC50 (988 x 265, 18% missing) with its own protocol: 10% hidden, 5 seeds
  (``--gdsc-seeds``);
* sanity sets not used while developing (``--sanity``): statsmodels' macrodata (203 quarters x
  12 series, standardised) and scikit-learn's make_friedman1 (500 x 10 features + target,
  standardised);
* check sets added after the defaults were chosen (``--check``, see ``CHECK``), small
  tables added in session 9 (``--small``, see ``SMALL``) and the session-11 checks: more small
  tables, synthetic matrices of known structure, an image and a wide matrix (``--fresh``, see
  ``FRESH``).

Methods: NTKImputer() with its defaults (what ``ntk-complete matrix`` runs), SoftImpute with its
shrinkage chosen by CV (:mod:`completion.softimpute`), scikit-learn's IterativeImputer with
BayesianRidge and with ExtraTreesRegressor (MissForest-style), KNNImputer, column means.

Run (repository root; one thread):
    python benchmarks/bench_matrices.py                       # the five small sets, 3 seeds
    python benchmarks/bench_matrices.py --datasets gdsc       # GDSC, 10% hidden, 5 seeds
    python benchmarks/bench_matrices.py --sanity              # the two sanity sets
    python benchmarks/bench_matrices.py --check               # the session-6 check sets
    python benchmarks/bench_matrices.py --small               # the session-9 small tables
    python benchmarks/bench_matrices.py --fresh               # the session-11 checks
    OMP_NUM_THREADS=2 python benchmarks/bench_matrices.py --threads 2 --only NTK   # two cores
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from completion.matrix import NTKImputer  # noqa: E402
from completion.holdout import holdout_mask  # noqa: E402
from completion.softimpute import soft_impute_cv  # noqa: E402
from devdata import SHARED_DATA  # noqa: E402


def _standardised(X):
    """Columns centred and divided by their standard deviation (constant columns centred only)."""
    X = np.asarray(X, dtype=np.float64)
    sd = X.std(0)
    return (X - X.mean(0)) / np.where(sd > 0, sd, 1.0)


def _sklearn(name):
    import sklearn.datasets as ds
    return _standardised(getattr(ds, f"load_{name}")().data)


def _elnino():
    import statsmodels.api as sm
    return sm.datasets.elnino.load_pandas().data.set_index("YEAR").to_numpy(dtype=np.float64)


def _gdsc():
    return pd.read_csv(SHARED_DATA / "gdsc" / "IC50_v17.csv.gz", index_col=0).to_numpy()


def _macrodata():
    import statsmodels.api as sm
    data = sm.datasets.macrodata.load_pandas().data.drop(columns=["year", "quarter"])
    return _standardised(data.to_numpy())


def _friedman():
    from sklearn.datasets import make_friedman1
    X, y = make_friedman1(n_samples=500, n_features=10, noise=0.5, random_state=0)
    return _standardised(np.column_stack([X, y]))


def _statsmodels_table(name, drop=(), rows=None):
    """statsmodels' table ``name``: its numeric columns but ``drop``, standardised; ``rows``:
    a random sample of that many rows (seed 0)."""
    import statsmodels.api as sm
    data = getattr(sm.datasets, name).load_pandas().data.select_dtypes("number")
    values = data.drop(columns=list(drop)).to_numpy(dtype=np.float64)
    if rows is not None:
        values = values[np.random.default_rng(0).choice(len(values), rows, replace=False)]
    return _standardised(values)


def _fertility():
    import statsmodels.api as sm
    data = sm.datasets.fertility.load_pandas().data.set_index("Country Name")
    values = data.select_dtypes("number").to_numpy(dtype=np.float64)
    values = values[:, ~np.isnan(values).all(0)]  # the last two years are empty
    return values[~np.isnan(values).all(1)]


def _linnerud():
    import sklearn.datasets as ds
    data = ds.load_linnerud()
    return _standardised(np.column_stack([data.data, data.target]))


def _shuffled_wine():
    X = _sklearn("wine")
    return X[np.random.default_rng(7).permutation(X.shape[0])]


# name -> (loader, hidden fraction, default seeds)
DATASETS = {
    "breast_cancer": (lambda: _sklearn("breast_cancer"), 0.2, 3),
    "wine": (lambda: _sklearn("wine"), 0.2, 3),
    "diabetes": (lambda: _sklearn("diabetes"), 0.2, 3),
    "digits": (lambda: _sklearn("digits"), 0.2, 3),
    "elnino": (_elnino, 0.2, 3),
    "gdsc": (_gdsc, 0.1, 5),
}
SANITY = {
    "macrodata": (_macrodata, 0.2, 3),
    "friedman1": (_friedman, 0.2, 3),
}
# checks added in session 6, after the defaults they check were chosen (``--check``): wine with
# its rows in random order (the table is sorted by class), statsmodels' fertility (countries x
# years 1960-2011, births per woman, raw values, 10% hidden: the protocol of issue 9's
# country-by-year matrix) and four statsmodels tables, numeric columns standardised: star98
# (303 x 22 school districts), anes96 (944 x 10, survey answers on small integer scales),
# statecrime (51 x 7), fair (6366 x 9, ordinal answers), and scikit-learn's iris (150 x 4)
CHECK = {
    "wine_shuffled": (_shuffled_wine, 0.2, 3),
    "fertility": (_fertility, 0.1, 3),
    "star98": (lambda: _statsmodels_table("star98"), 0.2, 3),
    "anes96": (lambda: _statsmodels_table("anes96", drop=("logpopul",)), 0.2, 3),
    "statecrime": (lambda: _statsmodels_table("statecrime"), 0.2, 3),
    "fair": (lambda: _statsmodels_table("fair"), 0.2, 3),
    "iris": (lambda: _sklearn("iris"), 0.2, 3),
}
# more checks, added in session 9 (``--small``; numeric columns standardised, 20% hidden): ten
# small statsmodels tables and scikit-learn's linnerud (exercise and physiology, 20 x 6). After
# their first run two choices read them: rows-chained's lower point count (longley, committee,
# linnerud, cpunish) and the second round taken only where it scores better
SMALL = {
    "modechoice": (lambda: _statsmodels_table("modechoice", drop=("individual",)), 0.2, 3),
    "randhie": (lambda: _statsmodels_table("randhie", rows=2000), 0.2, 3),
    "scotland": (lambda: _statsmodels_table("scotland"), 0.2, 3),
    "cpunish": (lambda: _statsmodels_table("cpunish"), 0.2, 3),
    "copper": (lambda: _statsmodels_table("copper"), 0.2, 3),
    "ccard": (lambda: _statsmodels_table("ccard"), 0.2, 3),
    "danish_data": (lambda: _statsmodels_table("danish_data"), 0.2, 3),
    "longley": (lambda: _statsmodels_table("longley"), 0.2, 3),
    "grunfeld": (lambda: _statsmodels_table("grunfeld"), 0.2, 3),
    "committee": (lambda: _statsmodels_table("committee"), 0.2, 3),
    "linnerud": (_linnerud, 0.2, 3),
}


def _low_rank():
    """300 x 200, rank 8 plus noise of a third of its entries' spread, standardised."""
    rng = np.random.default_rng(11)
    X = rng.normal(size=(300, 8)) @ rng.normal(size=(8, 200))
    return _standardised(X + 0.5 * rng.normal(size=X.shape))


def _manifold():
    """400 points of a swiss roll (3-D) through a random tanh layer to 12 columns, plus noise."""
    rng = np.random.default_rng(12)
    t = rng.uniform(0, 3 * np.pi, (400, 2))
    roll = np.column_stack([t[:, 0] * np.cos(t[:, 0]), t[:, 1], t[:, 0] * np.sin(t[:, 0])])
    X = np.tanh(roll @ rng.normal(size=(3, 12)) / 4)
    return _standardised(X + 0.05 * rng.normal(size=X.shape))


def _clusters():
    """scikit-learn's make_classification: 500 x 15, 3 clusters per class, 4 redundant columns."""
    from sklearn.datasets import make_classification
    X, _ = make_classification(500, 15, n_informative=8, n_redundant=4, n_clusters_per_class=3,
                               random_state=3)
    return _standardised(X)


def _linear():
    """scikit-learn's make_regression (200 x 10 of effective rank 4) and its target."""
    from sklearn.datasets import make_regression
    X, y = make_regression(200, 10, n_informative=10, effective_rank=4, noise=5, random_state=4)
    return _standardised(np.column_stack([X, y]))


def _camera():
    """scikit-image's camera, 128 x 128 (anti-aliased), grey levels in [0, 1], as a matrix."""
    from skimage import data, transform
    return transform.resize(data.camera(), (128, 128), anti_aliasing=True)


def _digits_wide():
    """The first 300 digits as columns: the 55 pixels that vary (rows, each standardised over
    the images, as genes in an expression matrix) x 300 images."""
    import sklearn.datasets as ds
    X = ds.load_digits().data[:300]
    return _standardised(X[:, X.std(0) > 0]).T


# more checks, added in session 11 (``--fresh``), after every default was chosen and read by
# no choice: four more small statsmodels tables (numeric columns standardised), four synthetic
# matrices of known structure, an image as a matrix and a wide matrix (55 x 300)
FRESH = {
    "stackloss": (lambda: _statsmodels_table("stackloss"), 0.2, 3),
    "spector": (lambda: _statsmodels_table("spector"), 0.2, 3),
    "interest_inflation": (lambda: _statsmodels_table("interest_inflation"), 0.2, 3),
    "heart": (lambda: _statsmodels_table("heart"), 0.2, 3),
    "low_rank": (_low_rank, 0.2, 3),
    "manifold": (_manifold, 0.2, 3),
    "clusters": (_clusters, 0.2, 3),
    "camera128": (_camera, 0.2, 3),
    "digits_wide": (_digits_wide, 0.2, 3),
    "linear": (_linear, 0.2, 3),
}
ALL = {**DATASETS, **SANITY, **CHECK, **SMALL, **FRESH}


# -- methods: (X with NaN, seed) -> completed matrix ------------------------------------------------
def ntk_default(X, seed):
    return NTKImputer(random_state=seed).fit(X).completed_


def softimpute(X, seed):
    return soft_impute_cv(X, ~np.isnan(X), random_state=seed)[0]


def iterative(estimator):
    def run(X, seed):
        from sklearn.experimental import enable_iterative_imputer  # noqa: F401
        from sklearn.impute import IterativeImputer
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "did not converge" after max_iter
            return IterativeImputer(estimator=estimator(seed), max_iter=10,
                                    random_state=seed).fit_transform(X)
    return run


def bayesian_ridge(seed):
    from sklearn.linear_model import BayesianRidge
    return BayesianRidge()


def extra_trees(seed):
    from sklearn.ensemble import ExtraTreesRegressor
    # 30 trees (missForest has 100: time), every feature a split candidate (scikit-learn's
    # default; missForest's sqrt(p) was 9% worse on breast_cancer)
    return ExtraTreesRegressor(n_estimators=30, n_jobs=1, random_state=seed)


def knn(X, seed):
    from sklearn.impute import KNNImputer
    return KNNImputer(n_neighbors=5).fit_transform(X)


def column_mean(X, seed):
    return np.where(np.isnan(X), np.nanmean(X, 0), X)


METHODS = {
    "NTK default (auto)": ntk_default,
    "SoftImpute-CV": softimpute,
    "IterativeImputer(BayesianRidge)": iterative(bayesian_ridge),
    "MissForest-style (IterativeImputer+ExtraTrees)": iterative(extra_trees),
    "KNNImputer(k=5)": knn,
    "column mean": column_mean,
}


def run(datasets, methods, seeds_override=None):
    """-> {dataset: {method: [(rmse, seconds) per seed]}}; prints one line per fit."""
    table = {}
    for name, (load, fraction, n_seeds) in datasets.items():
        X = load()
        observed = ~np.isnan(X)
        seeds = range(seeds_override or n_seeds)
        print(f"# {name}: {X.shape[0]} x {X.shape[1]}, {observed.sum()} observed, "
              f"{fraction:.0%} hidden, seeds {list(seeds)}", flush=True)
        for method, fit in methods.items():
            for seed in seeds:
                hidden = holdout_mask(observed, fraction, seed)
                started = time.perf_counter()
                done = fit(np.where(observed & ~hidden, X, np.nan), seed)
                seconds = time.perf_counter() - started
                rmse = float(np.sqrt(np.mean((done[hidden] - X[hidden]) ** 2)))
                table.setdefault(name, {}).setdefault(method, []).append((rmse, seconds))
                print(f"{name:<14} {method:<48} seed {seed}: RMSE {rmse:.4f} {seconds:7.1f} s",
                      flush=True)
    return table


def report(table):
    """Markdown: RMSE mean (rank) and wall time per dataset and method, then mean ranks."""
    methods = list(next(iter(table.values())))
    print("\n| method | " + " | ".join(table) + " | mean rank |")
    print("|---|" + "---|" * (len(table) + 1))
    ranks = {m: [] for m in methods}
    means = {d: {m: np.mean([r for r, _ in v]) for m, v in row.items()} for d, row in table.items()}
    for d, row in means.items():
        order = sorted(row, key=row.get)
        for m in row:
            ranks[m].append(order.index(m) + 1)
    for m in methods:
        cells = [f"{means[d][m]:.4f} ({ranks[m][k]}), {np.mean([s for _, s in table[d][m]]):.1f} s"
                 for k, d in enumerate(table)]
        print(f"| {m} | " + " | ".join(cells) + f" | {np.mean(ranks[m]):.2f} |")
    print("\ncells: mean RMSE over seeds (rank among the methods), mean wall time per fit")
    ntk = methods[0]
    for d, row in means.items():
        others = ", ".join(f"{m.split(' ')[0]} {100 * (row[ntk] / row[m] - 1):+.1f}%"
                           for m in methods[1:])
        print(f"{d}: NTK vs {others}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+",
                        choices=list(ALL),
                        default=[d for d in DATASETS if d != "gdsc"])
    parser.add_argument("--sanity", action="store_true", help="run the sanity sets instead")
    parser.add_argument("--check", action="store_true",
                        help="run the check sets (added after the defaults were chosen) instead")
    parser.add_argument("--small", action="store_true",
                        help="run the small tables added in session 9 instead")
    parser.add_argument("--fresh", action="store_true",
                        help="run the check matrices added in session 11 instead")
    parser.add_argument("--seeds", type=int, help="number of seeds (default: per data set)")
    parser.add_argument("--only", nargs="*", help="substrings of the method names to run")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for every method (default 1; run with "
                             "OMP_NUM_THREADS set to the same number)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ["NTK_THREADS"] = str(torch.get_num_threads())  # the package's setting too
    names = list(SANITY) if args.sanity else list(CHECK) if args.check else \
        list(SMALL) if args.small else list(FRESH) if args.fresh else args.datasets
    methods = {k: v for k, v in METHODS.items()
               if not args.only or any(s.lower() in k.lower() for s in args.only)}
    report(run({n: ALL[n] for n in names}, methods, args.seeds))


if __name__ == "__main__":
    main()
