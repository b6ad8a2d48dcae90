"""Image-adaptive CNTK inpainting (``prior="auto"``) against the stationary default
(``prior="noise"``) and scikit-image's biharmonic fill, per image, with what ``auto`` chose.

Case sets (``--set``, repeatable):

* ``dev``: the dev images (256 x 256 grey), 50 % Bernoulli masks, ``--seeds``;
* ``skimage``: scikit-image's camera, astronaut (grey), coffee, chelsea (RGB) and brick at full
  size, 50 % Bernoulli, seed 0;
* ``astronaut``: astronaut 512 x 512, grey and RGB, with 50 % pixels, text (15 %) and the
  centred box (25 %) masks (those of benchmarks/bench_compare.py).

Every method fills the same mask; PSNR on the whole image (data range 1, outputs clipped);
wall / CPU seconds per image including the kernel and the selection (a fresh inpainter per
case, so nothing is reused across images; on a shared machine the CPU time of the one-thread
process is the load-independent figure); peak RSS of the process is printed at the end::

    python benchmarks/bench_adaptive.py --set dev --seeds 0 1 2 --threads 1
    python benchmarks/bench_adaptive.py --set skimage --set astronaut --threads 1
"""
from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np
import torch

from completion.image import CNTKInpainter, inpaint
from completion.image_io import read_image
from completion.masks import generate_mask
from completion.metrics import psnr
from devdata import dev_image_paths


def dev_cases(seeds, names=None):
    for path in dev_image_paths():
        if names and path.stem not in names:
            continue
        img = read_image(path)
        for seed in seeds:
            yield path.stem, f"pixels 50% s{seed}", img, generate_mask(img.shape, 0.5, seed)


def skimage_cases(names=("camera", "astronaut", "coffee", "chelsea", "brick")):
    from skimage import color, data
    for name in names:
        img = getattr(data, name)().astype(float) / 255.0
        if name == "astronaut":
            img = color.rgb2gray(img)
        yield name, "pixels 50% s0", img, generate_mask(img.shape, 0.5, 0)


def astronaut_cases(names=None):
    """``names``: only these cases, as COLOUR:MASK (e.g. ``RGB:box``)."""
    from skimage import color, data
    rgb = data.astronaut().astype(float) / 255.0
    for colour, img in (("grey", color.rgb2gray(rgb)), ("RGB", rgb)):
        for kind, fraction in (("pixels", 0.5), ("text", 0.15), ("box", 0.25)):
            if names and f"{colour}:{kind}" not in names:
                continue
            yield (f"astronaut {colour}", f"{kind} {fraction:.0%}", img,
                   generate_mask(img.shape, fraction, 0, kind))


SETS = {"dev": dev_cases, "skimage": skimage_cases, "astronaut": astronaut_cases}


def run_case(img, mask, priors=("noise", "auto")):
    """{method: (psnr, wall seconds, CPU seconds)} and what auto chose."""
    out = {}
    t0, c0 = time.perf_counter(), time.process_time()
    out["biharmonic"] = (psnr(inpaint(img, mask, method="biharmonic"), img),
                         time.perf_counter() - t0, time.process_time() - c0)
    chosen = ""
    for prior in priors:
        inpainter = CNTKInpainter(prior=prior)
        t0, c0 = time.perf_counter(), time.process_time()
        filled = np.clip(inpainter.inpaint(img, mask), 0, 1)
        out[prior] = (psnr(filled, img), time.perf_counter() - t0, time.process_time() - c0)
        if prior == "auto":
            chosen = inpainter.last_info["chosen"]
    return out, chosen


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", action="append", choices=sorted(SETS), required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--images", nargs="+",
                        help="only these images (dev, skimage) or cases (astronaut: RGB:box ...)")
    parser.add_argument("--no-noise", action="store_true",
                        help="skip the old default (prior='noise'; its code is unchanged)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["NTK_THREADS"] = str(torch.get_num_threads())  # the package's setting too
    print(f"torch threads {args.threads}; PSNR dB (wall s / CPU s per image)")
    print("| image | mask | biharmonic | cntk noise (old default) | cntk auto (new default) | "
          "auto - biharmonic | auto chose |")
    print("|---|---|---|---|---|---|---|")
    for name in args.set:
        if name == "dev":
            cases = dev_cases(args.seeds, args.images)
        elif name == "astronaut":
            cases = astronaut_cases(args.images)
        else:
            cases = skimage_cases(args.images) if args.images else skimage_cases()
        priors = ("auto",) if args.no_noise else ("noise", "auto")
        for label, kind, img, mask in cases:
            res, chosen = run_case(img, mask, priors)
            cells = " | ".join(f"{res[m][0]:.2f} ({res[m][1]:.1f} / {res[m][2]:.1f} s)"
                               if m in res else "not run" for m in ("biharmonic", "noise", "auto"))
            print(f"| {label} | {kind} | {cells} | {res['auto'][0] - res['biharmonic'][0]:+.2f} | "
                  f"{chosen} |", flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    print(f"peak RSS of the whole run: {peak:.2f} GB; load average at the end "
          f"{os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
