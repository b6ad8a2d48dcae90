"""Plain against preconditioned CG for the inpainting solve, by mask type.

The preconditioner r -> P (K + mu I)^-1 P r is one division in Fourier space for the stationary
default kernel. The solve alone (kernel excluded) is timed with both settings in the same run::

    python benchmarks/bench_cg.py --threads 1
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import torch

from completion.image import CNTKInpainter
from completion.image_io import read_image
from completion.masks import generate_mask
from completion.metrics import psnr
from devdata import IMAGES



def cases():
    """(name, image, mask kind, missing fraction)."""
    from skimage import data
    astronaut = data.astronaut().astype(float) / 255.0
    for kind, fraction in (("text", 0.15), ("box", 0.25), ("pixels", 0.5)):
        yield "astronaut RGB 512", astronaut, kind, fraction
    cameraman = read_image(IMAGES / "cameraman.png")
    for kind, fraction in (("pixels", 0.5), ("pixels", 0.8), ("text", 0.15)):
        yield "cameraman 256", cameraman, kind, fraction


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["NTK_THREADS"] = str(torch.get_num_threads())  # the package's setting too
    print("| image | mask | CG | PSNR (dB) | solve (s) | iterations |")
    print("|---|---|---|---|---|---|")
    for name, img, kind, fraction in cases():
        mask = generate_mask(img.shape[:2], fraction, seed=0, mask_type=kind)
        for precondition in (False, True):
            inp = CNTKInpainter(precondition=precondition, maxiter=2000)
            out = inp.inpaint(img, mask)
            info = inp.last_info   # solve_seconds: solve and prediction, kernel excluded
            print(f"| {name} | {kind} {fraction:.0%} | {'preconditioned' if precondition else 'plain'}"
                  f" | {psnr(np.clip(out, 0, 1), img):.3f} | {info['solve_seconds']:.2f} | "
                  f"{info['iterations']} |", flush=True)


if __name__ == "__main__":
    main()
