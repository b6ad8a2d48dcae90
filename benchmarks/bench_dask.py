"""Dask against in-process: batch inpainting (``--prior noise``: the stationary kernel) and the
matrix CV grid.

Three measurements on generated images (smooth random fields with sharp discs) with generated
50 % pixel masks, and one on GDSC, one BLAS/OpenMP thread per process:

1. ``folder``: N images of S x S in this process, then on ``local:W`` (cluster start and close
   included); wall times, their ratio, the CPU seconds spent (this process; the workers), the
   machine's load, and whether both wrote the same pixels.
2. ``mixed``: images of several sizes on ``local:W``: how many kernels were computed (one per
   padded size class expected) and the wall time.
3. ``overhead``: the whole ``ntk-complete inpaint`` command on one S x S image, in-process and
   with ``--scheduler local:1``, alternated ``--rounds`` times (medians).
   ``startup``: where the time of a one-worker cluster goes, step by step in a fresh
   interpreter (the whole interpreter's time includes importing distributed and this script's
   imports): starting it (a worker process, or the worker thread in
   this process that ``local:1`` is), the first task (the worker imports torch and the solver),
   closing.
5. ``tiles``: one large kernel in this process and in tiles on ``local:W``: the NTK of
   ``--rows`` points (100 features, depth 2) and the banded CNTK table of a ``--size`` image
   (``C5,G8,C1`` on an image prior, band 9); wall times and the largest difference.
4. ``gdsc``: ``NTKImputer`` "auto" (with the genomic row features, as bench_gdsc.py) on GDSC
   with 10 % of the observed entries hidden (seed 0), in this process and with
   ``scheduler="local:W"``: the choice, the held-out RMSE, the largest difference of the
   completions, wall times (cluster start included) and their ratio.

    PYTHONPATH=$PWD python benchmarks/bench_dask.py                  # the image parts, 64 x 256^2
    PYTHONPATH=$PWD python benchmarks/bench_dask.py --part overhead --rounds 3
    PYTHONPATH=$PWD python benchmarks/bench_dask.py --part startup --rounds 2
    PYTHONPATH=$PWD python benchmarks/bench_dask.py --part gdsc --workers 2
    PYTHONPATH=$PWD python benchmarks/bench_dask.py --part tiles --workers 2
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch: one thread, as each worker has

import argparse
import dataclasses
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dask
import distributed  # noqa: F401 - loads its configuration defaults before dask.config.set
import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from completion.image_io import read_image  # noqa: E402
from completion.inpaint_jobs import Method, plan_jobs, run_batch  # noqa: E402
from completion.masks import generate_mask  # noqa: E402
from completion.scheduling import connect  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def make_folder(folder: Path, sizes, seed=0):
    """Images img000.png ... of the given (H, W) sizes with img000_mask.png (50 % pixels)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i, (h, w) in enumerate(sizes):
        field = gaussian_filter(rng.standard_normal((h, w)), sigma=6)
        r, c = np.mgrid[0:h, 0:w]
        for _ in range(3):
            cy, cx, rad = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(10, 40)
            field += 0.5 * (np.hypot(r - cy, c - cx) < rad) * rng.choice([-1, 1]) * field.std()
        img = (field - field.min()) / (field.max() - field.min())
        Image.fromarray(np.round(img * 255).astype(np.uint8)).save(folder / f"img{i:03d}.png")
        mask = generate_mask((h, w), 0.5, seed=i)
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"img{i:03d}_mask.png")


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def check_all_done(outcomes):
    failed = [o for o in outcomes if isinstance(o, Exception)]
    if failed:
        raise SystemExit(f"{len(failed)} images failed, first: {failed[0]!r}")


def folder_run(tmp: Path, n, size, workers, method, profile):
    make_folder(tmp / "in", [(size, size)] * n)
    load = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), cpu_seconds()
    check_all_done(run_batch(plan_jobs(tmp / "in", tmp / "here"), method))
    here_wall, here_cpu = time.perf_counter() - t0, cpu_seconds() - c0
    rows = [("in-process (1 thread)", here_wall, f"{here_cpu:.1f}")]
    diff = 0.0
    for count in workers:
        t0 = time.perf_counter()
        with dask.config.set({"distributed.worker.profile.enabled": profile}), \
                connect(f"local:{count}") as client:
            up = time.perf_counter() - t0
            before = client.run(cpu_seconds)
            check_all_done(run_batch(plan_jobs(tmp / "in", tmp / f"dask{count}"), method,
                                     scheduler=client))
            worker_cpu = sum(client.run(cpu_seconds)[w] - before[w] for w in before)
        rows.append((f"local:{count} (start {up:.1f} s incl.)", time.perf_counter() - t0,
                     f"{worker_cpu:.1f} (workers)"))
        diff = max([diff] + [np.abs(read_image(tmp / "here" / p.name) - read_image(p)).max()
                             for p in sorted((tmp / f"dask{count}").glob("*.png"))])
    print(f"\n## {n} images of {size} x {size}, in-process vs local:{', local:'.join(map(str, workers))} "
          f"(load average {load:.1f} before, {os.getloadavg()[0]:.1f} after, {os.cpu_count()} cores; "
          f"Dask profiler {'on' if profile else 'off'})\n")
    print("| run | wall s | CPU s | s / image | in-process wall / wall |\n|---|---:|---:|---:|---:|")
    for name, wall, cpu in rows:
        print(f"| {name} | {wall:.1f} | {cpu} | {wall / n:.2f} | {here_wall / wall:.2f} |")
    print(f"\nlargest pixel difference between in-process and Dask outputs: {diff:.3g}")


@dataclasses.dataclass(frozen=True)
class CountingMethod(Method):
    """Leaves one file in ``marks`` per kernel computed (``prepared`` runs on the workers)."""
    marks: str = ""

    def prepared(self, key):
        Path(self.marks, f"{key[1][0]}x{key[1][1]}-{os.getpid()}-{time.time_ns()}").touch()
        return super().prepared(key)


def mixed_run(tmp: Path, workers, method):
    sizes = [(128, 128), (120, 128), (192, 192), (256, 192), (128, 120), (192, 180)] * 2
    make_folder(tmp / "in", sizes, seed=1)
    marks = tmp / "marks"
    marks.mkdir()
    counting = CountingMethod(**dataclasses.asdict(method), marks=str(marks))
    jobs = plan_jobs(tmp / "in", tmp / "out")
    classes = sorted(set(counting.kernel_groups(jobs).values()))
    t0 = time.perf_counter()
    check_all_done(run_batch(jobs, counting, scheduler=f"local:{workers}"))
    wall = time.perf_counter() - t0
    computed = sorted(p.name.split("-")[0] for p in marks.iterdir())
    print(f"\n## {len(sizes)} images of mixed sizes on local:{workers}\n")
    print(f"sizes {sorted(set(sizes))} -> padded size classes {[k[1] for k in classes]}")
    print(f"kernels computed: {len(computed)} ({', '.join(computed)}); wall {wall:.1f} s")


def children_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def overhead_run(tmp: Path, size, rounds, arch):
    """Wall and CPU seconds (the command and its worker processes) of the whole command."""
    make_folder(tmp / "in", [(size, size)])
    image, mask = tmp / "in" / "img000.png", tmp / "in" / "img000_mask.png"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    times = {"in-process": [], "local:1": []}
    loads = [os.getloadavg()[0]]
    for _ in range(rounds):
        for name, extra in (("in-process", []), ("local:1", ["--scheduler", "local:1"])):
            t0, c0 = time.perf_counter(), children_cpu_seconds()
            subprocess.run([sys.executable, str(ROOT / "cli.py"), "inpaint", str(image), "--mask",
                            str(mask), "-o", str(tmp / "out.png"), "--prior", "noise", "--arch",
                            arch, "-q", *extra], env=env, check=True, capture_output=True)
            times[name].append((time.perf_counter() - t0, children_cpu_seconds() - c0))
            loads.append(os.getloadavg()[0])
    med = {name: [statistics.median(t[i] for t in ts) for i in (0, 1)] for name, ts in times.items()}
    print(f"\n## the whole command on one {size} x {size} image ({rounds} rounds, medians; "
          f"load average {min(loads):.1f} to {max(loads):.1f})\n")
    print("| run | wall s (each round) | median wall | CPU s (each round) | median CPU |\n"
          "|---|---|---:|---|---:|")
    for name, ts in times.items():
        print(f"| {name} | {', '.join(f'{t[0]:.1f}' for t in ts)} | {med[name][0]:.1f} | "
              f"{', '.join(f'{t[1]:.1f}' for t in ts)} | {med[name][1]:.1f} |")
    print(f"\noverhead of local:1: {med['local:1'][0] - med['in-process'][0]:+.1f} s wall, "
          f"{med['local:1'][1] - med['in-process'][1]:+.1f} s CPU")


def _import_solver_seconds():
    t0 = time.perf_counter()
    import completion.image  # noqa: F401 - torch and the solver, as a first image task imports
    return time.perf_counter() - t0


def startup_steps(processes):
    """{step: seconds} of a one-worker LocalCluster's life in this (fresh) process."""
    import json
    import logging

    steps, t0 = {}, time.perf_counter()

    def mark(step):
        nonlocal t0
        steps[step] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()

    from completion.scheduling import _worker_environment
    with dask.config.set({"distributed.nanny.pre-spawn-environ": _worker_environment()}):
        cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=processes,
                                           dashboard_address=None, silence_logs=logging.ERROR)
    client = distributed.Client(cluster)
    mark("start the cluster")
    client.submit(_import_solver_seconds, pure=False).result()
    mark("first task (import torch, solver)")
    client.submit(os.getpid, pure=False).result()
    mark("a second task")
    client.close()
    cluster.close()
    mark("close")
    print(json.dumps(steps))


def startup_run(rounds):
    import json
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    runs = {}
    for _ in range(rounds):
        for kind in ("process", "thread"):
            started = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", "import sys; sys.argv[1:] = "
                                  f"['--startup-child', '{kind}']; import runpy; "
                                  f"runpy.run_path({str(Path(__file__))!r}, run_name='__main__')"],
                                 env=env, check=True, capture_output=True, text=True)
            steps = json.loads(out.stdout.strip().splitlines()[-1])
            steps["whole interpreter"] = round(time.perf_counter() - started, 2)
            runs.setdefault(kind, []).append(steps)
    print(f"\n## a one-worker cluster step by step, s ({rounds} rounds each, fresh interpreters, "
          f"alternated; load average {os.getloadavg()[0]:.1f})\n")
    print("| step | worker process | worker thread (local:1) |\n|---|---|---|")
    for step in runs["process"][0]:
        cells = [", ".join(f"{r[step]:.2f}" for r in runs[kind]) for kind in ("process", "thread")]
        print(f"| {step} | {cells[0]} | {cells[1]} |")


def tiles_run(workers, rows, size):
    import functools

    from completion.scheduling import map_tasks
    from models.cntk import Sequential
    from models.device import Compute
    from models.ntk import FullyConnectedNTK

    X = np.random.default_rng(0).standard_normal((rows, 100)) / 10
    net, cnet = FullyConnectedNTK(depth=2), Sequential.from_spec("C5,G8,C1")
    prior = np.random.default_rng(1).random((1, size, size))
    cases = {f"NTK {rows} x {rows} (100 features, depth 2)":
             lambda tiles: net.ntk(X, device="cpu", map_tiles=tiles),
             f"banded CNTK table, {size} x {size} image, band 9":
             lambda tiles: cnet.ntk_banded((size, size), prior, band=9,
                                           compute=Compute(device="cpu"),
                                           map_pieces=tiles).table}
    print(f"\n## one large kernel: in this process, then in tiles on local:W (load average "
          f"{os.getloadavg()[0]:.1f} before)\n")
    print("| kernel | run | wall s | in-process wall / wall | CPU s (here + workers) | largest "
          "difference |\n|---|---|---:|---:|---:|---:|")
    for name, compute in cases.items():
        t0, c0 = time.perf_counter(), cpu_seconds()
        here = compute(None)
        base = time.perf_counter() - t0
        print(f"| {name} | in-process | {base:.1f} | 1.00 | {cpu_seconds() - c0:.1f} | 0 |",
              flush=True)
        for count in workers:
            with connect(f"local:{count}") as client:
                client.submit(_import_solver_seconds, pure=False).result()  # torch loaded
                before = client.run(cpu_seconds)
                t0, c0 = time.perf_counter(), cpu_seconds()
                there = compute(functools.partial(map_tasks, scheduler=client))
                wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
                cpu += sum(client.run(cpu_seconds)[w] - before[w] for w in before)
            print(f"| {name} | local:{count} (started, torch imported) | {wall:.1f} | "
                  f"{base / wall:.2f} | {cpu:.1f} | {float(np.abs(there - here).max()):.2g} |",
                  flush=True)
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


def gdsc_run(workers):
    import pandas as pd

    from bench_gdsc import load
    from completion.holdout import holdout_mask, scores
    from completion.matrix import NTKImputer, describe_choice

    ic50, genomic = load()
    X = ic50.to_numpy()
    observed = ~np.isnan(X)
    hidden = holdout_mask(observed, 0.1, 0)
    frame = pd.DataFrame(np.where(observed & ~hidden, X, np.nan), index=ic50.index,
                         columns=ic50.columns)
    rows, fits = [], {}
    for count in [None] + list(workers):
        name = "in-process" if count is None else f"local:{count}"
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        print(f"# {name}", file=sys.stderr)  # verbose: selection and final-fit times on stderr
        imp = NTKImputer(mode="auto", row_features=genomic, random_state=0, verbose=1,
                         scheduler=None if count is None else f"local:{count}").fit(frame)
        wall = time.perf_counter() - t0
        fits[name] = imp
        rmse = scores(imp.completed_[hidden], X[hidden])["rmse"]
        rows.append((name, wall, rmse, load_before, os.getloadavg()[0]))
    here = fits["in-process"]
    print(f"\n## GDSC {X.shape[0]} x {X.shape[1]}, auto, 10 % hidden (seed 0); "
          f"{os.cpu_count()} cores\n")
    print("| run | wall s | in-process wall / wall | held-out RMSE | same choice | largest "
          "completion difference | load before, after |\n|---|---:|---:|---:|---|---:|---|")
    for name, wall, rmse, before, after in rows:
        imp = fits[name]
        same = imp.chosen_ == here.chosen_ and imp.cv_results_ == here.cv_results_
        diff = float(np.abs(imp.completed_ - here.completed_).max())
        print(f"| {name} | {wall:.1f} | {rows[0][1] / wall:.2f} | {rmse:.12f} | {same} | "
              f"{diff:.3g} | {before:.1f}, {after:.1f} |")
    print(f"\nchosen: {describe_choice(here.chosen_)}; {len(here.cv_results_)} candidates scored")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--startup-child", choices=["process", "thread"],
                        help=argparse.SUPPRESS)  # startup_run's fresh interpreter
    parser.add_argument("--part", choices=["all", "folder", "mixed", "overhead", "startup", "gdsc",
                                           "tiles"],
                        default="all", help="all = the three image parts")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--workers", type=int, nargs="+", default=[2],
                        help="worker counts for the folder run (the mixed run uses the largest)")
    parser.add_argument("--no-profile", action="store_true",
                        help="folder run: Dask workers without their statistical profiler")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--arch", default="default")
    parser.add_argument("--rows", type=int, default=4096, help="tiles: points of the NTK")
    args = parser.parse_args()
    method = Method(arch=args.arch, prior="noise")
    if args.startup_child:
        return startup_steps(args.startup_child == "process")
    if args.part == "gdsc":
        return gdsc_run(args.workers)
    if args.part == "startup":
        return startup_run(args.rounds)
    if args.part == "tiles":
        return tiles_run(args.workers, args.rows, args.size)
    with tempfile.TemporaryDirectory(prefix="bench_dask_") as tmp:
        tmp = Path(tmp)
        if args.part in ("all", "folder"):
            folder_run(tmp / "folder", args.images, args.size, args.workers, method,
                       not args.no_profile)
        if args.part in ("all", "mixed"):
            mixed_run(tmp / "mixed", max(args.workers), method)
        if args.part in ("all", "overhead"):
            overhead_run(tmp / "overhead", args.size, args.rounds, args.arch)


if __name__ == "__main__":
    main()
