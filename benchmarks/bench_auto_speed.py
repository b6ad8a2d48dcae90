"""Where the default's time goes: ``NTKImputer(random_state=seed).fit`` on one bench_matrices
data set (its MCAR split of ``seed``), with its wall time, the process's CPU time, and the CPU
time of the main thread and of the thread that runs the final fits started ahead of the choice
(completion.fit_threads; with two or more threads; the cross-validation's two threads take the
rest of the process's CPU time). On a shared machine the per-thread CPU times
say what a quiet machine's wall time would be (the larger of the two, about); the wall time
says only how busy the machine was. ``--ops`` times the single operations of one chained column
step instead (one thread, CPU time, best of 7 x 10). ``--code DIR`` imports the package from
another checkout (e.g. main, for a before/after comparison run from the same script).

    OMP_NUM_THREADS=1 python benchmarks/bench_auto_speed.py --dataset digits --threads 1
    OMP_NUM_THREADS=2 python benchmarks/bench_auto_speed.py --dataset digits --threads 2
    OMP_NUM_THREADS=1 python benchmarks/bench_auto_speed.py --ops --code /work/main
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch


def fit_times(dataset, seed, threads):
    """One fit: (wall s, process CPU s, main-thread CPU s, ahead-thread CPU s, RMSE)."""
    from bench_matrices import ALL
    from completion.holdout import holdout_mask
    import completion.matrix as matrix
    ahead = []
    # FitsAhead: its name in older checkouts (--code)
    threads_class = getattr(matrix, "FitThreads", getattr(matrix, "FitsAhead", None))
    if threads_class is not None:
        class Timed(threads_class):
            def __init__(self, complete, threads):
                def timed(cfg, stop):
                    started = time.thread_time()
                    try:
                        return complete(cfg, stop)
                    finally:
                        ahead.append(time.thread_time() - started)
                super().__init__(timed, threads)
        setattr(matrix, threads_class.__name__, Timed)
    load, fraction, _ = ALL[dataset]
    X = load()
    observed = ~np.isnan(X)
    hidden = holdout_mask(observed, fraction, seed)
    wall, cpu, main = time.perf_counter(), time.process_time(), time.thread_time()
    done = matrix.NTKImputer(random_state=seed, threads=threads).fit(
        np.where(observed & ~hidden, X, np.nan)).completed_
    wall, cpu, main = time.perf_counter() - wall, time.process_time() - cpu, time.thread_time() - main
    rmse = float(np.sqrt(np.mean((done[hidden] - X[hidden]) ** 2)))
    return wall, cpu, main, sum(ahead), rmse


def column_step_ops(seed=0, column=20):
    """{operation: best CPU ms} for one chained column step on digits' training matrix."""
    import completion.chained as ch
    from bench_matrices import DATASETS
    from completion.holdout import holdout_mask
    from completion.matrix import additive_baseline
    from models.ntk import FullyConnectedNTK
    torch.set_num_threads(1)
    load, fraction, _ = DATASETS["digits"]
    X = load()
    X[holdout_mask(~np.isnan(X), fraction, seed)] = np.nan
    mask = ~np.isnan(X)
    base = additive_baseline(X, mask)
    Z = np.where(mask, X, base)
    n = X.shape[1]
    F = torch.from_numpy(np.stack([ch._standardised_column(Z[:, j]) for j in range(n)], 1))
    F *= (n - 1) ** -0.5
    kern = FullyConnectedNTK(1)
    skip = ch.LinearSkip(kern)
    rng = np.random.default_rng(0)
    obs = np.sort(rng.choice(np.flatnonzero(mask[:, column]), 1000, replace=False))
    miss = np.flatnonzero(~mask[:, column])
    Fa, Fb = ch._inputs(F, column, obs, False), ch._inputs(F, column, miss, False)
    G, Gb, sa, sb = Fa @ Fa.T, Fb @ Fa.T, (Fa * Fa).sum(1), (Fb * Fb).sum(1)
    y = torch.from_numpy(X[obs, column] - base[obs, column])
    new = hasattr(ch, "_solve_lower")
    sym = "lower" if new else True

    def solve(A):
        if new:
            return ch._solve_lower(A, y)
        return torch.cholesky_solve(y[:, None], torch.linalg.cholesky_ex(A)[0])[:, 0]

    def step():
        A, K_mo = ch._kernel_blocks(skip, False, F, column, obs, miss)
        A.diagonal().add_(0.01 * float(A.diagonal().mean()))
        return K_mo @ solve(A)

    A = ch._kernel_blocks(skip, False, F, column, obs, miss)[0]
    A.diagonal().add_(0.01 * float(A.diagonal().mean()))
    ops = {f"NTK map, 1000 x 1000 training block (symmetric={sym})":
           lambda: kern.ntk_from_gram(G, sa, sa, symmetric=sym),
           f"NTK map, {len(miss)} x 1000 prediction block": lambda: kern.ntk_from_gram(Gb, sb, sa),
           "solve of the 1000 x 1000 system": lambda: solve(A),
           "whole column step (kernel blocks, solve, prediction)": step}
    out = {}
    for name, op in ops.items():
        op()
        best = np.inf
        for _ in range(7):
            started = time.process_time()
            for _ in range(10):
                op()
            best = min(best, (time.process_time() - started) / 10)
        out[name] = 1e3 * best
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ops", action="store_true", help="time one chained column step's parts")
    parser.add_argument("--code", default=str(Path(__file__).resolve().parents[1]),
                        help="checkout whose package is imported (default: this one)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(Path(args.code).resolve()))
    import completion.chained  # noqa: F401  (before bench_matrices puts this checkout first)
    import completion.matrix  # noqa: F401
    import models.ntk
    code = Path(models.ntk.__file__).resolve().parents[1]
    if args.ops:
        for name, ms in column_step_ops(args.seed).items():
            print(f"{code}  {name:<56} {ms:7.2f} ms", flush=True)
        return
    torch.set_num_threads(args.threads)
    wall, cpu, main_cpu, ahead_cpu, rmse = fit_times(args.dataset, args.seed, args.threads)
    print(f"| {code} | {args.dataset} | {args.threads} | {rmse:.4f} | {wall:.1f} | {cpu:.1f} | "
          f"{main_cpu:.1f} | {ahead_cpu:.1f} | {os.getloadavg()[0]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
