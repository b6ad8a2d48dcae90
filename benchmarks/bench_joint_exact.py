"""Peak memory of the exact joint solve (dense priors): the whole N x N block formed at once (the
old path: ``op.block(rows, cols)`` then ``solve_exact``) against ``JointKernelOperator.solve_exact``
(kernel filled in row tiles into a Fortran-ordered array, factored in place).

Each variant runs in its own process; the peak resident set is reset (``/proc/self/clear_refs``)
after the set-up, so the figure is the solve's own peak above what was resident before it,
reported in MB and in units of N^2 float64 (8 N^2 bytes). The two answers are compared bit for bit.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_joint_exact.py --n-observed 4000
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _status_kb(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def run_variant(variant, n_observed, out):
    import torch

    from completion.solvers import JointKernelOperator, solve_exact
    from models.ntk import FullyConnectedNTK

    torch.set_num_threads(1)
    os.environ["NTK_THREADS"] = str(torch.get_num_threads())  # the package's setting too
    rng = np.random.default_rng(0)
    m, n = 200, 100
    lin = np.sort(rng.choice(m * n, size=n_observed, replace=False))
    rows, cols = lin // n, lin % n
    R, C = rng.standard_normal((m, 8)) / 4, rng.standard_normal((n, 8)) / 4
    op = JointKernelOperator(FullyConnectedNTK(depth=2), R @ R.T, C @ C.T, rows, cols, device="cpu")
    y = rng.standard_normal(n_observed)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
    before = _status_kb("VmRSS")
    start = time.perf_counter()
    if variant == "whole block":
        alpha = solve_exact(op.block(rows, cols).numpy(), y, 0.01)
    else:
        alpha = op.solve_exact(y, 0.01)
    seconds = time.perf_counter() - start
    peak_mb = (_status_kb("VmHWM") - before) / 1024
    np.save(out, alpha)
    print(json.dumps({"variant": variant, "N": n_observed, "peak_mb": peak_mb,
                      "peak_n2": peak_mb * 1024**2 / (8 * n_observed**2), "seconds": seconds}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-observed", type=int, default=4000)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        return run_variant(args.variant, args.n_observed, args.out)
    rows, answers = [], []
    for k, variant in enumerate(("whole block", "tiled, in place")):
        out = f"/tmp/bench_joint_exact_{k}.npy"
        res = subprocess.run([sys.executable, __file__, "--n-observed", str(args.n_observed),
                              "--variant", variant, "--out", out],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        answers.append(np.load(out))
    print(f"N = {args.n_observed} observed entries (8 N^2 bytes = "
          f"{8 * args.n_observed**2 / 1024**2:.0f} MB); 1 thread")
    print("| path | peak above set-up (MB) | in N^2 floats | seconds |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['peak_mb']:.0f} | {r['peak_n2']:.2f} | {r['seconds']:.1f} |")
    print(f"answers identical: {np.array_equal(answers[0], answers[1])}")


if __name__ == "__main__":
    main()
