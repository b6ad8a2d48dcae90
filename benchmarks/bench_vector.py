"""Vector-valued entries: one multi-output fit of an (m, n, d) tensor against d scalar fits.

The tensor is synthetic (seeded): per-feature levels, row and column effects, a rank-``rank``
(row, column, feature) interaction X_ijf = sum_k U_ik V_jk W_kf / sqrt(rank), and Gaussian noise;
``--missing`` of the fibres X[i, j, :] are hidden (all d values NaN). Rows have features (a noisy
view of U plus unrelated columns), as cell lines have genomic features.

Timed in one process, one torch thread (NTK_THREADS=1):

* ``vector``: ``NTKImputer(mode="rows", prior="features", depth=1, ridge=0.03).fit(X)`` on the
  (m, n, d) tensor (one kernel, one Cholesky per column pattern for all d features);
* ``scalar``: the same configuration fitted on ``--sample`` single features X[:, :, f] (chosen
  at random), timed and extrapolated linearly to all d features (978 scalar fits would take the
  whole budget); the largest difference to the vector fit's numbers on those features is
  reported;
* ``vector-profile``: mode="rows", prior="profile" (the data-derived prior of vector entries:
  each row's unfolded n x d profile, refined twice) on the tensor;
* ``vector-auto`` (``--auto``): the default ``NTKImputer()`` (CV over rows/cols/joint candidates
  on held-out fibres, then the final fit).

Hidden-fibre RMSE is reported next to the additive (per-feature row + column mean) baseline.

Usage::

    OMP_NUM_THREADS=1 NTK_THREADS=1 python benchmarks/bench_vector.py            # 500 x 300 x 978
    OMP_NUM_THREADS=1 NTK_THREADS=1 python benchmarks/bench_vector.py --auto
    python benchmarks/bench_vector.py --shape 60 40 50 --sample 5                 # a quick check
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FIXED = {"mode": "rows", "prior": "features", "depth": 1, "ridge": 0.03}


def synthetic_tensor(m, n, d, rank, missing, seed):
    """-> (X (m, n, d) with hidden fibres NaN, truth (m, n, d), hidden (m, n) bool, row
    features (m, 2 * rank)), all float64."""
    rng = np.random.default_rng(seed)
    U, V, W = (rng.standard_normal((k, rank)) for k in (m, n, d))
    truth = rng.standard_normal(d) + 0.5 * rng.standard_normal((m, 1, d)) \
        + 0.5 * rng.standard_normal((1, n, d))
    truth += np.einsum("ik,jk,fk->ijf", U, V, W, optimize=True) / np.sqrt(rank)
    truth += 0.3 * rng.standard_normal((m, n, d))
    hidden = rng.random((m, n)) < missing
    X = truth.copy()
    X[hidden] = np.nan
    features = np.hstack([U + 0.3 * rng.standard_normal(U.shape), rng.standard_normal((m, rank))])
    return X, truth, hidden, features


def _peak_rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KB -> GB (Linux)


def _rmse(Z, truth, hidden):
    return float(np.sqrt(np.mean((Z[hidden] - truth[hidden]) ** 2)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(500, 300, 978), metavar=("M", "N", "D"))
    parser.add_argument("--rank", type=int, default=5)
    parser.add_argument("--missing", type=float, default=0.3)
    parser.add_argument("--sample", type=int, default=20, help="scalar fits timed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--auto", action="store_true", help="also time mode='auto'")
    parser.add_argument("--no-profile", action="store_true", help="skip the profile-prior fit")
    args = parser.parse_args(argv)

    import torch
    torch.set_num_threads(1)
    from completion.matrix import NTKImputer, additive_baseline

    m, n, d = args.shape
    started = time.perf_counter()
    X, truth, hidden, feats = synthetic_tensor(m, n, d, args.rank, args.missing, args.seed)
    print(f"tensor {m} x {n} x {d}, {hidden.mean():.1%} of fibres hidden, rank {args.rank} "
          f"(generated in {time.perf_counter() - started:.1f} s)")
    base_rmse = _rmse(additive_baseline(X, ~hidden), truth, hidden)
    rows = []

    cpu = {}

    def timed(name, imputer, data):
        t0, c0 = time.perf_counter(), time.process_time()
        imputer.fit(data)
        cpu[name] = cpu.get(name, 0.0) + time.process_time() - c0
        return imputer, time.perf_counter() - t0

    vec, t_vec = timed("vector", NTKImputer(**FIXED, row_features=feats), X)
    rows.append(("vector (rows, features)", t_vec, _rmse(vec.completed_, truth, hidden),
                 f"1 fit, {cpu['vector']:.1f} s CPU"))

    pick = np.sort(np.random.default_rng(args.seed + 1).choice(d, size=min(args.sample, d),
                                                                 replace=False))
    times, diff = [], 0.0
    for f in pick:
        one, t = timed("scalar", NTKImputer(**FIXED, row_features=feats), X[:, :, f])
        times.append(t)
        diff = max(diff, float(np.abs(one.completed_ - vec.completed_[:, :, f]).max()))
    t_scalar = float(np.mean(times)) * d
    del vec
    rows.append((f"{d} scalar fits (extrapolated)", t_scalar, float("nan"),
                 f"{len(pick)} timed, {np.mean(times):.3f} s each, "
                 f"{cpu['scalar'] / len(pick) * d:.1f} s CPU extrapolated"))

    if not args.no_profile:
        prof, t_prof = timed("profile", NTKImputer(mode="rows", prior="profile", depth=1,
                                                   ridge=0.03), X)
        rows.append(("vector (rows, profile)", t_prof, _rmse(prof.completed_, truth, hidden),
                     f"refine=2, {cpu['profile']:.1f} s CPU"))
        del prof
    if args.auto:
        auto, t_auto = timed("auto", NTKImputer(random_state=0, verbose=1), X)
        from completion.matrix import describe_choice
        rows.append(("vector (auto)", t_auto, _rmse(auto.completed_, truth, hidden),
                     describe_choice(auto.chosen_)))

    print(f"\n{'fit':<34} {'time (s)':>9} {'hidden RMSE':>12}  note")
    for name, t, err, note in rows:
        print(f"{name:<34} {t:9.1f} {err:12.4f}  {note}")
    print(f"{'additive baseline':<34} {'':>9} {base_rmse:12.4f}")
    print(f"\nspeed-up of the vector fit over {d} scalar fits: {t_scalar / t_vec:.1f}x wall, "
          f"{cpu['scalar'] / len(pick) * d / cpu['vector']:.1f}x CPU time")
    print(f"largest |vector - scalar| on the {len(pick)} sampled features: {diff:.2e}")
    print(f"peak RSS {_peak_rss_gb():.2f} GB")


if __name__ == "__main__":
    main()
