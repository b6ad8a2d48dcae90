"""DIP vs CNTK (and biharmonic, Telea) inpainting benchmark.

Two parts, run separately because a full-size DIP curve takes hours on a CPU:

``curve``: one DIP training run on a dev image (50% Bernoulli mask), streaming its
PSNR-vs-iteration history to ``benchmarks/out/dip_curve_IMAGE_seedN.csv`` as it goes (so a run
that is stopped early still leaves its curve)::

    nohup python benchmarks/bench_compare.py curve --image cameraman --seed 0 \\
        --iterations 3000 --threads 1 > benchmarks/out/curve.log 2>&1 &

``table``: every method on the dev images (50% Bernoulli, seeds 0-2) and on scikit-image's
astronaut (RGB 512 x 512) with a text mask and a large box; prints a Markdown table of PSNR,
SSIM and wall time and writes ``benchmarks/out/compare_table.csv``::

    python benchmarks/bench_compare.py table --methods cntk,biharmonic,telea --seeds 0 1 2

``summary``: the curve so far against the CNTK's row of the table (plot + time ratio)::

    python benchmarks/bench_compare.py summary --image cameraman --seed 0
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from completion.compare import compare_methods, first_reaching, parse_methods, plot_dip_curve  # noqa: E402,E501
from completion.dip import HistoryPoint, dip_inpaint  # noqa: E402
from completion.image_io import read_image  # noqa: E402
from completion.masks import generate_mask  # noqa: E402
from devdata import IMAGES  # noqa: E402

OUT = ROOT / "benchmarks" / "out"
DEV_IMAGES = ("cameraman", "house", "peppers", "montage")
PUBLISHED_DIP_PSNR = {"cameraman": 29.8, "house": 39.16, "peppers": 33.05, "montage": 34.54}


def run_curve(args) -> None:
    torch.set_num_threads(args.threads)
    os.environ["NTK_THREADS"] = str(torch.get_num_threads())  # the package's setting too
    image = read_image(IMAGES / f"{args.image}.png")
    mask = generate_mask(image.shape, 0.5, seed=args.seed, mask_type="pixels")
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"dip_curve_{args.image}_seed{args.seed}.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["iteration", "loss", "psnr", "seconds"])

        def stream(point):
            writer.writerow([point.iteration, f"{point.loss:.6g}", f"{point.psnr:.4f}",
                             f"{point.seconds:.2f}"])
            fh.flush()

        result = dip_inpaint(image, mask, iterations=args.iterations, lr=args.lr, seed=args.seed,
                             reference=image, log_every=args.log_every, progress=False,
                             callback=stream, device=args.device)
    print(f"{args.image} seed {args.seed}: {args.iterations} iterations in {result.seconds:.0f} s, "
          f"PSNR {result.psnr:.2f} dB (raw network output {result.psnr_output:.2f} dB; published "
          f"{PUBLISHED_DIP_PSNR.get(args.image, float('nan'))}), backtracks {result.backtracks}")


def cases(seeds, astronaut_masks):
    """(name, mask kind, seed, image, mask): dev images at 50% Bernoulli for each seed, then
    astronaut (RGB 512 x 512) with each of ``astronaut_masks`` ('text', 'box')."""
    for name in DEV_IMAGES:
        image = read_image(IMAGES / f"{name}.png")
        for seed in seeds:
            yield name, "pixels 50%", seed, image, generate_mask(image.shape, 0.5, seed=seed)
    if astronaut_masks:
        from skimage import data
        image = data.astronaut().astype(float) / 255.0
        fractions = {"text": 0.15, "box": 0.25}  # text strokes cover 15%; box = centre 256 x 256
        for kind in astronaut_masks:
            mask = generate_mask(image.shape, fractions[kind], seed=0, mask_type=kind)
            yield "astronaut", f"{kind} {fractions[kind]:.0%}", 0, image, mask


def run_table(args) -> None:
    torch.set_num_threads(args.threads)
    os.environ["NTK_THREADS"] = str(torch.get_num_threads())  # the package's setting too
    methods = parse_methods(args.methods)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / args.csv
    fields = ["image", "mask", "seed", "method", "psnr_db", "ssim", "seconds", "peak_rss_mb", "note"]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        print("| image | mask | seed | method | PSNR (dB) | SSIM | time (s) |")
        print("|---|---|---|---|---|---|---|")
        for name, kind, seed, image, mask in cases(args.seeds, args.astronaut):
            cntk_options = {"device": args.device}
            if args.cntk_dtype:
                cntk_options["dtype"] = args.cntk_dtype
            runs = compare_methods(image, mask, methods, reference=image, progress=False,
                                   dip_options={"iterations": args.dip_iterations, "seed": seed,
                                                "device": args.device},
                                   cntk_options=cntk_options)
            for r in runs:
                note = "" if r.method != "dip" else f"{args.dip_iterations} iterations"
                writer.writerow({"image": name, "mask": kind, "seed": seed, "method": r.method,
                                 "psnr_db": f"{r.psnr:.3f}", "ssim": f"{r.ssim:.4f}",
                                 "seconds": f"{r.seconds:.2f}", "peak_rss_mb":
                                 "" if r.peak_mb is None else f"{r.peak_mb:.0f}", "note": note})
                fh.flush()
                print(f"| {name} | {kind} | {seed} | {r.method} | {r.psnr:.2f} | {r.ssim:.4f} | "
                      f"{r.seconds:.1f} |", flush=True)


def run_summary(args) -> None:
    """Read a (possibly still growing) curve CSV and the table CSV: plot the curve against the
    CNTK on the same image and seed, and print when DIP reaches the CNTK's PSNR."""
    name = f"dip_curve_{args.image}_seed{args.seed}"
    with open(OUT / f"{name}.csv") as fh:
        history = [HistoryPoint(int(r["iteration"]), float(r["loss"]), float(r["psnr"]),
                                float(r["seconds"])) for r in csv.DictReader(fh)]
    with open(OUT / "compare_table.csv") as fh:
        cntk = next(r for r in csv.DictReader(fh) if r["image"] == args.image and r["method"] ==
                    "cntk" and int(r["seed"]) == args.seed and r["mask"].startswith("pixels"))
    cntk_psnr, cntk_seconds = float(cntk["psnr_db"]), float(cntk["seconds"])
    plot_dip_curve(OUT / f"{name}.png", history, cntk_psnr, cntk_seconds)
    last, best = history[-1], max(history, key=lambda p: p.psnr)
    print(f"DIP {args.image} seed {args.seed}: {last.iteration} iterations in {last.seconds:.0f} s "
          f"({last.seconds / last.iteration:.2f} s/iteration); PSNR at the last log "
          f"{last.psnr:.2f} dB, best {best.psnr:.2f} dB at iteration {best.iteration}; "
          f"published {PUBLISHED_DIP_PSNR.get(args.image)} dB")
    hit = first_reaching(history, cntk_psnr)
    if hit is None:
        print(f"DIP has not reached the CNTK's {cntk_psnr:.2f} dB ({cntk_seconds:.1f} s) within "
              f"{last.iteration} iterations / {last.seconds:.0f} s: CNTK/DIP time ratio < "
              f"{cntk_seconds / last.seconds:.3g} (upper bound)")
    else:
        print(f"DIP first reaches the CNTK's {cntk_psnr:.2f} dB at iteration {hit.iteration} "
              f"after {hit.seconds:.0f} s; CNTK wall time {cntk_seconds:.1f} s; CNTK/DIP time "
              f"ratio at equal PSNR {cntk_seconds / hit.seconds:.3g}")
    for every in (100, 250, 500, 1000, 2000, 3000):
        point = next((p for p in history if p.iteration == every), None)
        if point is not None:
            print(f"  iteration {every}: {point.psnr:.2f} dB after {point.seconds:.0f} s")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="part", required=True)
    curve = sub.add_parser("curve", help="one long DIP run with a streamed PSNR curve")
    curve.add_argument("--image", default="cameraman", choices=DEV_IMAGES)
    curve.add_argument("--seed", type=int, default=0)
    curve.add_argument("--iterations", type=int, default=3000)
    curve.add_argument("--lr", type=float, default=0.01)
    curve.add_argument("--log-every", type=int, default=10)
    curve.add_argument("--threads", type=int, default=1)
    curve.add_argument("--device", default="auto")
    table = sub.add_parser("table", help="all methods on the dev images and astronaut")
    table.add_argument("--methods", default="cntk,dip,biharmonic,telea")
    table.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2],
                       help="seeds of the dev-image masks (none: astronaut only)")
    table.add_argument("--astronaut", nargs="*", default=["text", "box"], choices=["text", "box"])
    table.add_argument("--dip-iterations", type=int, default=3000)
    table.add_argument("--cntk-dtype", choices=["float64", "float32"], default=None,
                       help="CNTK kernel precision (float32 fits 512 x 512 in the default budget)")
    table.add_argument("--csv", default="compare_table.csv", help="file name under benchmarks/out")
    table.add_argument("--threads", type=int, default=1)
    table.add_argument("--device", default="auto", help="for the CNTK and DIP (auto: CUDA if present)")
    summary = sub.add_parser("summary", help="plot a curve against the CNTK row of the table")
    summary.add_argument("--image", default="cameraman", choices=DEV_IMAGES)
    summary.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    {"curve": run_curve, "table": run_table, "summary": run_summary}[args.part](args)


if __name__ == "__main__":
    main()
