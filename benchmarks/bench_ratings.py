"""Sparse ratings at scale: cols mode with the profile prior on a synthetic ratings matrix held
as a scipy.sparse matrix (stored entries = observed), through NTKImputer's public API.

The data (seeded, generated here): rating(u, i) = 3.5 + b_u + c_i + <p_u, q_i> + noise with
b_u ~ N(0, 0.3^2), c_i ~ N(0, 0.5^2), p_u, q_i ~ N(0, I_k / k) scaled to signal sd 0.8,
noise ~ N(0, 0.5^2); continuous values (not rounded or clipped; ``--integer`` rounds and
clips to 1..5). Observed pairs: user activity ~ lognormal(0, 0.5), item popularity ~
lognormal(0, 0.7), pairs drawn with probability proportional to their product until
``density`` * m * n distinct pairs. ``holdout`` of the observed entries are held out (test).

Cases (each in its own process, so that its peak RSS is its own):

* ``full``: the whole matrix (default 100,000 x 10,000, 2% observed), cols mode, profile prior,
  ``--solver`` (default auto): wall time of fit + test predictions, peak RSS, test RMSE; the
  additive baseline's test RMSE for context.
* ``subsample``: a ``--sub-rows`` x ``--cols`` matrix from the same generator (same density and
  model; drawn directly rather than cut from the full one, which takes minutes to generate):
  exact (solver="shared") vs Nystrom at several landmark counts, RMSE and time each, and the
  landmark sampling (randomly pivoted Cholesky vs uniform, ``--uniform-landmarks``).

* ``products``: why the Nystrom solve factors per output instead of running block CG over all
  outputs: one CG product over |Omega| entries with r features is a sampled dense-dense
  product (SDDMM, torch.sparse.sampled_addmm) plus a sparse-dense one (SpMM, scipy), timed
  here against the batched dense products (torch bmm) a direct solve runs on; G multiply-adds
  per second each (``--entries``, ``--features``).

``--long-csv DIR``: also write the training entries as a long CSV (user,item,rating) and the
test pairs, and run ``cli.py matrix --long user,item,rating --predict`` on them with the same
mode, prior, depth, ridge and solver (wall time and peak memory of the command, RMSE).

Usage::

    OMP_NUM_THREADS=2 python benchmarks/bench_ratings.py --case full
    OMP_NUM_THREADS=2 python benchmarks/bench_ratings.py --case subsample
    python benchmarks/bench_ratings.py --case full --rows 10000 --cols 2000   # development size
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _peak_rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KB -> GB (Linux)


def ratings(m, n, density, rank=10, seed=0, integer=False):
    """(rows, cols, values) of the synthetic ratings (module docstring), sorted by row."""
    rng = np.random.default_rng(seed)
    want = int(round(density * m * n))
    act = rng.lognormal(0.0, 0.5, m)
    pop = rng.lognormal(0.0, 0.7, n)
    keys = np.empty(0, dtype=np.int64)
    while keys.size < want:
        k = int((want - keys.size) * 1.05) + 1000
        r = rng.choice(m, size=k, p=act / act.sum())
        c = rng.choice(n, size=k, p=pop / pop.sum())
        keys = np.unique(np.concatenate([keys, r.astype(np.int64) * n + c]))
    keys = rng.permutation(keys)[:want]
    keys.sort()
    rows, cols = keys // n, keys % n
    del keys
    P = rng.standard_normal((m, rank)) / np.sqrt(rank)
    Q = rng.standard_normal((n, rank))
    bu, ci = 0.3 * rng.standard_normal(m), 0.5 * rng.standard_normal(n)
    values = np.empty(want)
    step = 1 << 20
    for s in range(0, want, step):
        r, c = rows[s:s + step], cols[s:s + step]
        values[s:s + step] = 3.5 + bu[r] + ci[c] + 0.8 * np.einsum("ij,ij->i", P[r], Q[c]) \
            + 0.5 * rng.standard_normal(r.size)
    if integer:
        values = np.clip(np.round(values), 1, 5)
    return rows, cols, values


def split(rows, cols, values, shape, holdout, seed=1):
    """(training csr_array, test rows, test cols, test values)."""
    rng = np.random.default_rng(seed)
    test = rng.random(values.size) < holdout
    train = sp.csr_array((values[~test], (rows[~test], cols[~test])), shape=shape)
    return train, rows[test], cols[test], values[test]


def _rmse(a, b):
    return float(np.sqrt(np.mean((a - b) ** 2)))


def _fit_predict(train, tr, tc, solver, depth, ridge, seed=0):
    from completion.matrix import NTKImputer
    started = time.perf_counter()
    est = NTKImputer(mode="cols", prior="profile", depth=depth, ridge=ridge, solver=solver,
                     refine=0, random_state=seed).fit(train)
    pred = est.predict_entries(tr, tc)
    return pred, time.perf_counter() - started


def _baseline_rmse(train, tr, tc, tv):
    from completion.sparse_matrix import entry_baseline, observed_entries
    row, col = entry_baseline(observed_entries(train))
    return _rmse(row[tr] + col[tc], tv)


def case_full(args):
    started = time.perf_counter()
    rows, cols, values = ratings(args.rows, args.cols, args.density, args.rank, args.seed,
                                 args.integer)
    train, tr, tc, tv = split(rows, cols, values, (args.rows, args.cols), args.holdout)
    del rows, cols, values
    gen = time.perf_counter() - started
    rss_data = _peak_rss_gb()
    pred, secs = _fit_predict(train, tr, tc, args.solver, args.depth, args.ridge)
    out = {"case": "full", "shape": [args.rows, args.cols], "observed_train": int(train.nnz),
           "test": int(tv.size), "solver": args.solver, "generate_s": round(gen, 1),
           "fit_predict_s": round(secs, 1), "peak_rss_gb_after_data": round(rss_data, 2),
           "peak_rss_gb": round(_peak_rss_gb(), 2), "rmse": round(_rmse(pred, tv), 4),
           "rmse_additive": round(_baseline_rmse(train, tr, tc, tv), 4),
           "load_avg": os.getloadavg()}
    if args.long_csv:
        out["cli_long"] = _run_cli_long(Path(args.long_csv), train, tr, tc, tv, args)
    return out


def case_subsample(args):
    rows, cols, values = ratings(args.sub_rows, args.cols, args.density, args.rank, args.seed,
                                 args.integer)
    train, tr, tc, tv = split(rows, cols, values, (args.sub_rows, args.cols), args.holdout)
    del rows, cols, values
    table = [{"solver": "additive baseline", "rmse": round(_baseline_rmse(train, tr, tc, tv), 4)}]
    exact, secs = _fit_predict(train, tr, tc, "shared", args.depth, args.ridge)
    table.append({"solver": "exact (shared)", "seconds": round(secs, 1),
                  "rmse": round(_rmse(exact, tv), 4), "peak_rss_gb": round(_peak_rss_gb(), 2)})
    for r in args.sub_landmarks:
        pred, secs = _fit_predict(train, tr, tc, f"nystrom:{r}", args.depth, args.ridge)
        table.append({"solver": f"nystrom:{r}", "seconds": round(secs, 1),
                      "rmse": round(_rmse(pred, tv), 4),
                      "rmse_vs_exact_pct": round(100 * (_rmse(pred, tv) / _rmse(exact, tv) - 1), 2),
                      "max_abs_diff_to_exact": round(float(np.abs(pred - exact).max()), 4)})
    if args.uniform_landmarks:
        table.append(_uniform_landmarks(train, tr, tc, tv, args, exact))
    return {"case": "subsample", "shape": [args.sub_rows, args.cols],
            "observed_train": int(train.nnz), "test": int(tv.size), "load_avg": os.getloadavg(),
            "table": table}


def _uniform_landmarks(train, tr, tc, tv, args, exact):
    """Nystrom with uniformly drawn landmarks (instead of randomly pivoted Cholesky)."""
    from completion.solvers import parse_solver
    from completion.sparse_matrix import fit_entries, observed_entries
    from models.ntk import FullyConnectedNTK
    r = args.uniform_landmarks
    started = time.perf_counter()
    fit = fit_entries(observed_entries(train), "cols", "profile", FullyConnectedNTK(args.depth),
                      args.ridge, parse_solver(f"nystrom:{r}"), sampling="uniform")
    pred = fit.predict(tr, tc)
    secs = time.perf_counter() - started
    return {"solver": f"nystrom:{r} uniform landmarks", "seconds": round(secs, 1),
            "rmse": round(_rmse(pred, tv), 4),
            "rmse_vs_exact_pct": round(100 * (_rmse(pred, tv) / _rmse(exact, tv) - 1), 2)}


def case_products(args):
    """Throughput (G multiply-adds/s) of the sparse products block CG would need, against bmm."""
    import torch
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    N, T, k, r = args.cols, args.rows, args.entries, args.features
    items = rng.integers(0, N, k)
    outs = np.sort(rng.integers(0, T, k))
    Phi = torch.randn(N, r, dtype=torch.float64)
    W = torch.randn(T, r, dtype=torch.float64)
    crow = torch.as_tensor(np.searchsorted(outs, np.arange(T + 1)))
    S = torch.sparse_csr_tensor(crow, torch.as_tensor(items), torch.ones(k, dtype=torch.float64),
                                size=(T, N))
    started = time.perf_counter()
    torch.sparse.sampled_addmm(S, W, Phi.T.contiguous(), beta=0.0)
    sddmm = time.perf_counter() - started
    csr = sp.csr_array((np.ones(k), items, crow.numpy()), shape=(T, N))
    started = time.perf_counter()
    csr @ Phi.numpy()
    spmm = time.perf_counter() - started
    L = 180
    X = torch.randn(max(1, k // L), L, r, dtype=torch.float64)
    started = time.perf_counter()
    X.mT @ X
    bmm = time.perf_counter() - started
    return {"case": "products", "entries": k, "features": r, "threads": 1,
            "sddmm_gmacs": round(k * r / sddmm / 1e9, 2), "spmm_gmacs": round(k * r / spmm / 1e9, 2),
            "bmm_gmacs": round(X.shape[0] * L * r * r / bmm / 1e9, 2), "load_avg": os.getloadavg()}


def _run_cli_long(folder, train, tr, tc, tv, args):
    """Write the long CSVs, run the long-format CLI on them: {seconds, peak_rss_gb, rmse}."""
    import pandas as pd
    folder.mkdir(parents=True, exist_ok=True)
    coo = train.tocoo()
    pd.DataFrame({"user": coo.row, "item": coo.col, "rating": coo.data}).to_csv(
        folder / "ratings.csv", index=False)
    known = np.isin(tr, coo.row) & np.isin(tc, coo.col)  # the table names only rated labels
    tr, tc, tv = tr[known], tc[known], tv[known]
    pd.DataFrame({"user": tr, "item": tc}).to_csv(folder / "pairs.csv", index=False)
    out = folder / "predicted.csv"
    cmd = [sys.executable, str(ROOT / "cli.py"), "matrix", str(folder / "ratings.csv"),
           "--long", "user,item,rating", "--predict", str(folder / "pairs.csv"), "-o", str(out),
           "--mode", "cols", "--prior", "profile", "--depth", str(args.depth), "--ridge",
           str(args.ridge), "--solver", args.solver, "-q"]
    started = time.perf_counter()
    subprocess.run(cmd, check=True)
    seconds = time.perf_counter() - started
    child_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    got = pd.read_csv(out)
    truth = pd.DataFrame({"user": tr, "item": tc, "truth": tv})
    merged = truth.merge(got, on=["user", "item"])
    return {"seconds": round(seconds, 1), "peak_rss_gb": round(child_gb, 2),
            "rmse": round(_rmse(merged["rating"].to_numpy(), merged["truth"].to_numpy()), 4)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", choices=("full", "subsample", "products"), required=True)
    ap.add_argument("--entries", type=int, default=1_800_000, help="products case")
    ap.add_argument("--features", type=int, default=200, help="products case")
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--cols", type=int, default=10_000)
    ap.add_argument("--density", type=float, default=0.02)
    ap.add_argument("--rank", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--integer", action="store_true", help="round and clip ratings to 1..5")
    ap.add_argument("--holdout", type=float, default=0.1)
    ap.add_argument("--depth", type=int, default=1)
    ap.add_argument("--ridge", type=float, default=0.03)
    ap.add_argument("--solver", default="auto", help="full case: auto, shared or nystrom:R")
    ap.add_argument("--sub-rows", type=int, default=20_000)
    ap.add_argument("--sub-landmarks", type=int, nargs="+", default=[100, 200, 500])
    ap.add_argument("--uniform-landmarks", type=int, default=200, help="0: not run")
    ap.add_argument("--long-csv", help="folder for the long CSVs; runs the --long CLI on them")
    args = ap.parse_args(argv)
    out = {"full": case_full, "subsample": case_subsample, "products": case_products}[args.case](args)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
