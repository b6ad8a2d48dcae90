"""CNTK inpainting quality and speed against scikit-image's biharmonic fill.

Dev images ``../shared/data/images/*.png`` (256 x 256 grey), Bernoulli masks with 50 % missing,
seeds 0-2: mean PSNR / SSIM / seconds per image for each architecture, plus biharmonic; then
the time to inpaint larger images (scikit-image's astronaut, grey, 512 x 512 and resized).

    python benchmarks/bench_inpaint.py                       # default architecture
    python benchmarks/bench_inpaint.py --arch default --arch ed4+avg --seeds 0 1 2
    python benchmarks/bench_inpaint.py --only-large --large 512 1024
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from completion.image import CNTKInpainter, inpaint
from completion.image_io import read_image
from completion.masks import generate_mask
from completion.metrics import psnr, ssim
from devdata import dev_image_paths



def score(fill, images, seeds):
    rows = {}
    for path in images:
        img = read_image(path)
        vals = []
        for seed in seeds:
            mask = generate_mask(img.shape, 0.5, seed)
            t0 = time.perf_counter()
            out = np.clip(fill(img, mask), 0, 1)
            vals.append((psnr(out, img), ssim(out, img), time.perf_counter() - t0))
        rows[path.stem] = np.mean(vals, axis=0)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", action="append", help="architecture(s) to score (default: 'default')")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ridge", type=float, default=None)
    parser.add_argument("--large", type=int, nargs="*", default=[512],
                        help="sides of the large-image timings (none: skip them)")
    parser.add_argument("--only-large", action="store_true", help="only the large-image timings")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["NTK_THREADS"] = str(torch.get_num_threads())  # the package's setting too
    images = dev_image_paths()
    methods = {"biharmonic": lambda img, m: inpaint(img, m, method="biharmonic")}
    for arch in args.arch or ["default"]:
        options = {} if args.ridge is None else {"ridge": args.ridge}
        inpainter = CNTKInpainter(arch, **options)   # one per architecture: kernel reused across images
        methods[f"cntk {arch}"] = inpainter.inpaint
    print(f"50% missing pixels, seeds {args.seeds}; PSNR dB / SSIM / seconds per image "
          f"({args.threads} threads)")
    print(f"{'method':<28}" + "".join(f"{p.stem:>22}" for p in images) + f"{'mean PSNR':>11}")
    for name, fill in ({} if args.only_large else methods).items():
        rows = score(fill, images, args.seeds)
        cells = "".join(f"{r[0]:>9.2f} {r[1]:.3f} {r[2]:>5.1f}s" for r in rows.values())
        print(f"{name:<28}{cells}{np.mean([r[0] for r in rows.values()]):>11.2f}", flush=True)
    for side in args.large:
        time_large(side, (args.arch or ["default"])[0])


def time_large(side, arch):
    """Inpaint scikit-image's astronaut (grey), resized to side x side, 50% missing."""
    from skimage import color, data, transform
    img = color.rgb2gray(data.astronaut())
    if side != img.shape[0]:
        img = transform.resize(img, (side, side), order=3, anti_aliasing=True).clip(0, 1)
    mask = generate_mask(img.shape, 0.5, 0)
    inpainter = CNTKInpainter(arch)
    t0 = time.perf_counter()
    out = inpainter.inpaint(img, mask)
    total = time.perf_counter() - t0
    info = inpainter.last_info
    t0 = time.perf_counter()
    bih = inpaint(img, mask, method="biharmonic")
    t_bih = time.perf_counter() - t0
    print(f"{side}x{side} astronaut (grey), 50% missing, cntk {arch}: {total:.1f} s total (kernel "
          f"{info['kernel_seconds']:.1f} s, solve {info['solve_seconds']:.1f} s, "
          f"{info['iterations']} CG iterations), PSNR {psnr(np.clip(out, 0, 1), img):.2f} dB; "
          f"biharmonic {psnr(bih, img):.2f} dB in {t_bih:.1f} s", flush=True)


if __name__ == "__main__":
    main()
