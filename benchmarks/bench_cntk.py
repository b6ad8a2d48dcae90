"""Benchmark of the CNTK kernel engine (models.cntk).

Times kernel construction with the structured engine on 256 x 256 and 512 x 512 grids for
encoder-decoders with s levels (preset ``ed<s>``, the reference notebook's shape), the default
inpainting kernel (``sym5+avg``: phase-averaged, computed tile by tile) up to 1024 x 1024, the reference
notebook net at 16 / 32 / 64 with both engines, and compares against a per-pixel-pair Python
loop in the style of the public reference implementation (its algorithm: float32 arrays, one
pixel pair and one window offset at a time; single process), measured in the same run.

    python benchmarks/bench_cntk.py                # full table (a few minutes on 2 cores)
    python benchmarks/bench_cntk.py --quick        # skip 512 x 512, 64 x 64 dense, 32 x 32 loop
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models.cntk import Conv, Downsample, Sequential, Upsample  # noqa: E402
from models.device import Compute  # noqa: E402


def best_time(fn, repeat=3):
    """Best wall time of ``repeat`` calls (seconds) and the last result."""
    best, out = math.inf, None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


# ---- per-pixel-pair loop (the reference implementation's algorithm) ------------------------
def _kap(x, slope):
    x = min(1.0, max(-1.0, x))
    theta = math.acos(x)
    c = 2 * slope / (math.pi * (slope ** 2 + 1))
    k0 = (math.pi - theta) / math.pi + c * theta
    k1 = (x * (math.pi - theta) + math.sqrt(1 - x * x)) / math.pi + \
        c * (x * theta - math.sqrt(1 - x * x))
    return k0, k1


def pair_loop_ntk(net, d):
    """NTK (d, d, d, d) computed one pixel pair and one window offset at a time, on float32
    arrays, nearest upsampling only (as the reference notebook)."""
    S = np.full((d, d, d, d), 1 / 400, dtype="float32")
    for i in range(d):
        for j in range(d):
            S[i, j, i, j] = 1 / 300
    dS = np.zeros_like(S)
    K = np.zeros_like(S)
    layers = net.layers
    first = True
    for idx, layer in enumerate(layers):
        if isinstance(layer, Conv):
            h = (layer.k - 1) // 2
            last = idx == len(layers) - 1
            slope = 0.0 if last else layers[idx + 1].slope
            Kn, Sn, dSn = (np.zeros_like(S) for _ in range(3))
            for r1 in range(d):
                for c1 in range(d):
                    for r2 in range(d):
                        for c2 in range(d):
                            kk = a = n1 = n2 = 0.0
                            for m in range(-h, h + 1):
                                for n in range(-h, h + 1):
                                    p = ((r1 + m) % d, (c1 + n) % d)
                                    q = ((r2 + m) % d, (c2 + n) % d)
                                    s = S[p + q]
                                    kk += s + dS[p + q] * K[p + q]
                                    a += s
                                    n1 += S[p + p]
                                    n2 += S[q + q]
                            Kn[r1, c1, r2, c2] = a if first else kk
                            if last or n1 == 0 or n2 == 0:
                                continue
                            k0, k1 = _kap(a / math.sqrt(n1 * n2), slope)
                            Sn[r1, c1, r2, c2] = k1 * math.sqrt(n1 * n2) / layer.k ** 2
                            dSn[r1, c1, r2, c2] = k0 / layer.k ** 2
            if last:
                return Kn
            S, dS, K, first = Sn, dSn, Kn, False
        elif isinstance(layer, Downsample):
            d //= 2
            S, dS, K = (X[::2, ::2, ::2, ::2].copy() for X in (S, dS, K))
        elif isinstance(layer, Upsample):
            if layer.mode != "nearest":
                raise ValueError("the pair loop implements nearest upsampling only")
            new = []
            for X in (S, dS, K):
                Y = np.zeros((2 * d,) * 4, dtype="float32")
                for r1 in range(2 * d):
                    for c1 in range(2 * d):
                        for r2 in range(2 * d):
                            for c2 in range(2 * d):
                                Y[r1, c1, r2, c2] = X[r1 // 2, c1 // 2, r2 // 2, c2 // 2]
                new.append(Y)
            S, dS, K = new
            d *= 2
    raise AssertionError("unreachable")


# ---- table ------------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="skip the largest rows")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                    help="torch threads for the large kernels")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["NTK_THREADS"] = str(torch.get_num_threads())  # the package's setting too
    rows = []

    def row(what, size, engine, dtype, seconds, note=""):
        rows.append((what, size, engine, dtype, seconds, note))
        print(f"{what:<34} {size:>9} {engine:<10} {dtype:<8} {seconds:9.3f} s  {note}", flush=True)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"{'kernel':<34} {'size':>9} {'engine':<10} {'dtype':<8} {'time':>11}")
    cases = [(256, 3), (256, 4), (256, 5), (512, 4), (512, 5)]
    for n, s in cases:
        if args.quick and n == 512:
            continue
        for dt in (torch.float64, torch.float32):
            if n * 2 ** s > 8192 and dt == torch.float64:
                continue   # a 2 GB float64 table: beyond this machine's per-process share
            net = Sequential.from_spec(f"ed{s}")
            budget = "3GB"
            try:
                t, kern = best_time(lambda: net.ntk((n, n), compute=Compute(dtype=dt, memory_budget=budget)),
                                    repeat=1 if n == 512 else 2)
            except MemoryError as e:
                print(f"ed{s} {n}: refused ({e})")
                continue
            row(f"ed{s} (s={s} levels)", f"{n}x{n}", "structured", str(dt)[6:], t,
                f"period {kern.period}")
            del kern
    default = Sequential.from_spec("sym5")
    for n in (256, 512) if args.quick else (256, 512, 1024):
        for dt in (torch.float32, torch.float64):
            t, kern = best_time(lambda: default.ntk((n, n), compute=Compute(dtype=dt), average_phases=True),
                                repeat=2 if n == 256 else 1)
            row("default (sym5+avg)", f"{n}x{n}", "structured", str(dt)[6:], t,
                "phase-averaged, tiled")
            del kern
    # small kernels: one thread, like the pair loop (and immune to thread contention on a
    # shared machine, which slows many small parallel ops by 10x)
    torch.set_num_threads(1)
    os.environ["NTK_THREADS"] = str(torch.get_num_threads())  # the package's setting too
    ref = Sequential.from_spec("reference")
    fast = {}
    for n in (16, 32, 64):
        t, kern = best_time(lambda: ref.ntk((n, n), engine="structured"), repeat=7)
        fast[n] = (t, kern)
        row("reference net (1 thread)", f"{n}x{n}", "structured", "float64", t)
    for n in (32, 64):
        if args.quick and n == 64:
            continue
        t, _ = best_time(lambda: ref.ntk((n, n), engine="dense", compute=Compute(memory_budget="3GB")), repeat=3)
        row("reference net (1 thread)", f"{n}x{n}", "dense", "float64", t)
    # per-pixel-pair loop, same run
    t16, K16 = best_time(lambda: pair_loop_ntk(ref, 16), repeat=1)
    err = np.abs(K16 / fast[16][1].dense() - 1).max()
    row("reference net, pair loop", "16x16", "loop", "float32", t16,
        f"speed-up x{t16 / fast[16][0]:,.0f}; max rel diff {err:.1e}")
    if not args.quick:   # ~30 s on an idle 2-core machine (the loop's cost grows ~ d^4)
        t32, K32 = best_time(lambda: pair_loop_ntk(ref, 32), repeat=1)
        err = np.abs(K32 / fast[32][1].dense() - 1).max()
        row("reference net, pair loop", "32x32", "loop", "float32", t32,
            f"speed-up x{t32 / fast[32][0]:,.0f}; max rel diff {err:.1e}")
    print(f"load average during the run: {os.getloadavg()[0]:.1f} (1 min)")
    return rows


if __name__ == "__main__":
    main()
