"""CPU threads: one matrix fit and one CNTK inpainting at 1 and 2 torch threads.

Each run is its own process (``NTK_THREADS`` = ``OMP_NUM_THREADS`` = the thread count, so both
the package's :func:`models.device.limited_threads` regions and torch's default see it); the
thread counts alternate run by run to spread the machine's background load evenly, and the
median of ``--repeats`` runs is reported with the ratio 2 threads / 1 thread.

Cases (synthetic, fixed seeds):

* ``matrix``: ``NTKImputer()`` (rows mode, prior, depth and ridge chosen by CV) on a 300 x 80
  low-rank-plus-noise matrix with 30% of entries missing at random;
* ``inpaint``: ``inpaint(image, mask)`` (CNTK defaults) on a smooth 64 x 64 grey image with
  50% of its pixels missing at random.

Usage::

    python benchmarks/bench_threads.py --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_case(case):
    rng = np.random.default_rng(0)
    if case == "matrix":
        from completion.matrix import NTKImputer
        X = rng.standard_normal((300, 5)) @ rng.standard_normal((5, 80)) \
            + 0.3 * rng.standard_normal((300, 80))
        X[rng.random(X.shape) < 0.3] = np.nan
        start = time.perf_counter()
        NTKImputer(random_state=0).fit_transform(X)
    else:
        from completion.image import inpaint
        yy, xx = np.mgrid[0:64, 0:64] / 64
        image = 0.5 + 0.25 * np.sin(6 * xx) * np.cos(4 * yy)
        start = time.perf_counter()
        inpaint(image, rng.random(image.shape) < 0.5)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps({"seconds": run_case(args.case)}))
        return
    times = {}
    for case in ("matrix", "inpaint"):
        for rep in range(args.repeats):
            for threads in ((1, 2) if rep % 2 == 0 else (2, 1)):
                env = dict(os.environ, NTK_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
                out = subprocess.run([sys.executable, __file__, "--case", case], env=env,
                                     capture_output=True, text=True, check=True).stdout
                times.setdefault((case, threads), []).append(
                    json.loads(out.strip().splitlines()[-1])["seconds"])
    print(f"{os.cpu_count()} cores; median of {args.repeats} runs per cell (seconds)")
    print("| case | 1 thread | 2 threads | 2 / 1 | runs (1 thread; 2 threads) |")
    print("|---|---|---|---|---|")
    for case in ("matrix", "inpaint"):
        one, two = (statistics.median(times[(case, t)]) for t in (1, 2))
        runs = "; ".join(", ".join(f"{x:.1f}" for x in times[(case, t)]) for t in (1, 2))
        print(f"| {case} | {one:.1f} | {two:.1f} | {two / one:.2f} | {runs} |")


if __name__ == "__main__":
    main()
