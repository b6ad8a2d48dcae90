"""CNTK inpainting quality and speed against scikit-image's biharmonic fill.

Dev images ``../shared/data/images/*.png`` (256 x 256 grey), Bernoulli masks with 50 % missing,
seeds 0-2: mean PSNR / SSIM / seconds per image for each architecture, plus biharmonic; then
the time to inpaint a 512 x 512 image (scikit-image's astronaut, grey).

    python benchmarks/bench_inpaint.py                       # default architecture
    python benchmarks/bench_inpaint.py --arch default --arch ed4+avg --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from completion.image import CNTKInpainter, inpaint
from completion.image_io import read_image
from completion.masks import generate_mask
from completion.metrics import psnr, ssim

IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "images"


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
    parser.add_argument("--no-512", action="store_true", help="skip the 512 x 512 timing")
    parser.add_argument("--only-512", action="store_true", help="only the 512 x 512 timing")
    args = parser.parse_args()
    torch.set_num_threads(2)
    images = sorted(IMAGES.glob("*.png"))
    methods = {"biharmonic": lambda img, m: inpaint(img, m, method="biharmonic")}
    for arch in args.arch or ["default"]:
        options = {} if args.ridge is None else {"ridge": args.ridge}
        inpainter = CNTKInpainter(arch, **options)   # one per architecture: kernel reused across images
        methods[f"cntk {arch}"] = inpainter.inpaint
    print(f"50% missing pixels, seeds {args.seeds}; PSNR dB / SSIM / seconds per image (2 threads)")
    print(f"{'method':<28}" + "".join(f"{p.stem:>22}" for p in images) + f"{'mean PSNR':>11}")
    for name, fill in ({} if args.only_512 else methods).items():
        rows = score(fill, images, args.seeds)
        cells = "".join(f"{r[0]:>9.2f} {r[1]:.3f} {r[2]:>5.1f}s" for r in rows.values())
        print(f"{name:<28}{cells}{np.mean([r[0] for r in rows.values()]):>11.2f}", flush=True)
    if not args.no_512:
        from skimage import color, data
        img = color.rgb2gray(data.astronaut())
        mask = generate_mask(img.shape, 0.5, 0)
        # float32: the 5-level kernel's periodic table at 512 x 512 is 2 GB in float64
        inpainter = CNTKInpainter((args.arch or ["default"])[0], dtype="float32")
        t0 = time.perf_counter()
        out = inpainter.inpaint(img, mask)
        info = inpainter.last_info
        print(f"512x512 astronaut (grey, float32), 50% missing: {time.perf_counter() - t0:.1f} s total "
              f"(kernel {info['kernel_seconds']:.1f} s, solve {info['solve_seconds']:.1f} s, "
              f"{info['iterations']} CG iterations), PSNR {psnr(np.clip(out, 0, 1), img):.2f} dB; "
              f"biharmonic {psnr(inpaint(img, mask, method='biharmonic'), img):.2f} dB")


if __name__ == "__main__":
    main()
