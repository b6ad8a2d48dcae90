"""Benchmark of the banded CNTK engine (``Sequential.ntk_banded``, models.cntk.banded).

For an image prior (a synthetic 1-channel image: timings do not depend on its content), times
the banded kernel of a few architectures for bands R = 5, 10, 15 on 256 x 256 and 512 x 512
grids in float32 (float64 for some), its peak memory (the process's peak resident set above what it
held before the kernel), one ``matvec`` of a 1-channel image and one of the Wendland-tapered
kernel. Every row runs in a fresh subprocess so that its peak memory is its own.

    python benchmarks/bench_banded.py                # full table (~5 minutes on a quiet core)
    python benchmarks/bench_banded.py --quick        # 256 x 256 only
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from models.cntk import Sequential  # noqa: E402
from models.device import Compute, MemoryBudgetError  # noqa: E402

ARCHS = {"shallow": "C5,G8,C1", "two-layer": "C5,G8,C3,L,C1", "ed2": "ed2"}
# (size, kernel, band, dtype): every band in float32 at 256 x 256, float64 where it is cheap
ROWS = ([(256, "shallow", r, dt) for r in (5, 10, 15) for dt in ("float32", "float64")] +
        [(256, "two-layer", r, "float32") for r in (5, 10, 15)] +
        [(256, "two-layer", 10, "float64")] +
        [(256, "ed2", r, "float32") for r in (5, 10, 15)] +
        [(512, "shallow", r, "float32") for r in (5, 10, 15)] + [(512, "shallow", 10, "float64")] +
        [(512, "two-layer", 10, "float32"), (512, "ed2", 10, "float32")])


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # Linux: kilobytes


def one_row(spec: str, size: int, band: int, dtype: str, threads: int) -> dict:
    """Kernel time, extra peak memory and matvec times of one configuration (this process)."""
    torch.set_num_threads(threads)
    os.environ["NTK_THREADS"] = str(torch.get_num_threads())  # the package's setting too
    image = np.random.default_rng(0).random((1, size, size))
    net = Sequential.from_spec(spec)
    net.ntk_banded((32, 32), image[:, :32, :32], 2, compute=Compute(dtype=dtype))         # warm up the code paths
    before = peak_rss_bytes()
    t = time.perf_counter()
    try:
        kern = net.ntk_banded((size, size), image, band, compute=Compute(dtype=dtype))
    except MemoryBudgetError as err:
        return {"refused": str(err).split(" but ")[0]}
    seconds = time.perf_counter() - t
    extra = peak_rss_bytes() - before
    v = torch.randn(1, size, size, dtype=kern.dtype)
    t = time.perf_counter()
    kern.matvec(v)
    matvec = time.perf_counter() - t
    tap = kern.tapered()
    t = time.perf_counter()
    tap.matvec(v)
    tapered = time.perf_counter() - t
    return {"seconds": seconds, "extra_bytes": extra, "table_bytes":
            kern.table.numel() * kern.table.element_size(), "matvec": matvec,
            "tapered_matvec": tapered}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="256 x 256 only")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--one", help=argparse.SUPPRESS)   # internal: one row, JSON out
    args = ap.parse_args()
    if args.one:
        spec, size, band, dtype = args.one.split(";")
        print(json.dumps(one_row(spec, int(size), int(band), dtype, args.threads)))
        return
    print(f"torch {torch.__version__}, {args.threads} thread(s), "
          f"{platform.processor() or platform.machine()}; default memory budget 2 GB; load "
          f"average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("| kernel | spec | size | R | dtype | kernel time | peak extra memory | table | "
          "matvec | tapered matvec |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for size, name, band, dtype in ROWS:
        if args.quick and size > 256:
            continue
        spec = ARCHS[name]
        out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--one",
                              f"{spec};{size};{band};{dtype}"], capture_output=True, text=True,
                             check=True, cwd=ROOT)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        head = f"| {name} | `{spec}` | {size}x{size} | {band} | {dtype} |"
        if "refused" in row:
            print(f"{head} refused: {row['refused']} | | | | |", flush=True)
            continue
        print(f"{head} {row['seconds']:.2f} s | {row['extra_bytes'] / 2**20:.0f} MB | "
              f"{row['table_bytes'] / 2**20:.0f} MB | {row['matvec']:.3f} s | "
              f"{row['tapered_matvec']:.3f} s |", flush=True)


if __name__ == "__main__":
    main()
