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

    python benchmarks/bench_compare.py table --dip-iterations 100 --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from completion.dip import dip_inpaint  # noqa: E402
from completion.image_io import read_image  # noqa: E402
from completion.masks import generate_mask  # noqa: E402

IMAGES = ROOT.parent / "shared" / "data" / "images"
OUT = ROOT / "benchmarks" / "out"
DEV_IMAGES = ("cameraman", "house", "peppers", "montage")
PUBLISHED_DIP_PSNR = {"cameraman": 29.8, "house": 39.16, "peppers": 33.05, "montage": 34.54}


def run_curve(args) -> None:
    torch.set_num_threads(args.threads)
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
    args = parser.parse_args(argv)
    if args.part == "curve":
        run_curve(args)


if __name__ == "__main__":
    main()
