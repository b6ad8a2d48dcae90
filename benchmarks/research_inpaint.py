"""Screening of inpainting kernels: the research log of benchmarks/RESULTS.md ("second round").

Each VARIANT is ``ARCH`` followed by optional ``@key=value`` settings:

* ``ARCH``: an architecture for ``CNTKInpainter`` (preset, spec, ``NAME+avg``), or
  ``skip:LEVELS:FRACTION`` for DIP's skip shape with that skip-channel fraction, phase-averaged,
  or ``biharmonic`` (scikit-image's fill, for reference);
* ``ridge=``, ``margin=``, ``pad=``: the ``CNTKInpainter`` options;
* ``sigma=``: a Gaussian-smoothed noise input prior (DIP's U(0, 0.1) noise low-pass filtered
  with a Gaussian of ``sigma`` pixels: covariance 1/400 + (1/300 - 1/400) exp(-|d|^2 / 2 sigma^2)),
  a stationary prior used only here;
* ``guide=biharmonic``: a data-dependent input prior, the image's biharmonic fill (centred) as
  the network input (non-stationary: dense engine, so small images only; see ``--crop``);
* ``ARCH`` = ``auto`` or ``image[:ROUNDS]``: the image-adaptive inpainter (``prior=``); with
  ``weight=``, ``h=``, ``band=``, ``patch=``, ``mixridge=`` (and ``kind=``, ``scale=``) a fixed
  ``completion.image_adaptive.KernelMix`` instead of the selection / defaults, e.g.
  ``"image@band=7@h=0.3"``.

Prints PSNR per dev image (50% Bernoulli missing) and the mean, one line per variant::

    python benchmarks/research_inpaint.py --seeds 0 "sym5+avg@margin=0" "sym5+avg" \\
        "skip:5:0.0303@sigma=4" "sym6+avg@ridge=1e-2"
    python benchmarks/research_inpaint.py --crop 64 "sym3+avg@margin=0" "sym3@margin=0@guide=biharmonic"

``--crop N`` scores two N x N crops per image (top-left corners (96, 96) and (32, 160)) instead
of the whole images.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from completion.image import CNTKInpainter, inpaint
from completion.image_adaptive import KernelMix
from completion.image_priors import is_image_prior, parse_image_prior
from completion.image_io import read_image
from completion.masks import generate_mask
from completion.metrics import psnr
from models.cntk.priors import Prior
from models.cntk.spec import skip_spec
from devdata import dev_image_paths



class SmoothNoisePrior(Prior):
    """Stationary prior: 1/400 + (1/300 - 1/400) exp(-|d|^2 / (2 sigma^2)) at offset d (circular)."""
    stationary = True

    def __init__(self, sigma: float):
        self.sigma = float(sigma)
        self.name = f"smooth-noise-{self.sigma:g}"

    def table(self, size, period, rows, device, dtype):
        H, W = size
        r = torch.minimum(rows, H - rows).to(dtype)
        c = torch.arange(W, device=device)
        c = torch.minimum(c, W - c).to(dtype)
        bump = torch.exp(-(r[:, None] ** 2 + c[None, :] ** 2) / (2 * self.sigma ** 2))
        base = (1 / 400 + (1 / 300 - 1 / 400) * bump)[None, None]
        return base.expand(period[0], period[1], len(rows), W).contiguous()


MIX_FIELDS = {"weight": float, "h": float, "band": int, "patch": int, "mixridge": float,
              "kind": str, "scale": float}


def adaptive_inpainter(prior, options):
    """``prior`` 'auto' or an image prior, with a fixed KernelMix when ``options`` name any."""
    fields = {key: MIX_FIELDS[key](options.pop(key)) for key in list(options) if key in MIX_FIELDS}
    if options:
        raise SystemExit(f"unknown settings {sorted(options)} for {prior!r}")
    if "mixridge" in fields:
        fields["ridge"] = fields.pop("mixridge")
    mix = None
    if fields:
        image = parse_image_prior(prior if prior != "auto" else "image")
        mix = KernelMix(**{"kind": "image", "prior": image, **fields})
    return CNTKInpainter(prior=prior, mix=mix)


def inpainter(variant: str, guide=None) -> CNTKInpainter:
    """The inpainter of ``variant``; ``guide``: the input prior array of a ``guide=`` variant."""
    arch, *settings = variant.split("@")
    options = dict(s.split("=", 1) for s in settings)
    if arch == "auto" or is_image_prior(arch):
        return adaptive_inpainter(arch, options)
    if options.pop("guide", None) is not None:
        options["prior"] = guide
    if arch.startswith("skip:"):
        _, levels, fraction = arch.split(":")
        arch = skip_spec(int(levels), float(fraction)) + "+avg"
    kwargs = {"memory_budget": "8GB"}
    for key, cast in (("ridge", float), ("margin", int), ("pad", str)):
        if key in options:
            kwargs[key] = cast(options.pop(key))
    if "sigma" in options:
        kwargs["prior"] = SmoothNoisePrior(float(options.pop("sigma")))
    if "prior" in options:
        kwargs["prior"] = options.pop("prior")
    if options:
        raise SystemExit(f"unknown settings {sorted(options)} in {variant!r}")
    return CNTKInpainter(arch, **kwargs)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--crop", type=int, default=0, help="score two N x N crops per image")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["NTK_THREADS"] = str(torch.get_num_threads())  # the package's setting too
    images = {p.stem: read_image(p) for p in dev_image_paths()}
    if args.crop:
        n = args.crop
        images = {name: [img[r:r + n, c:c + n] for r, c in ((96, 96), (32, 160))]
                  for name, img in images.items()}
    else:
        images = {name: [img] for name, img in images.items()}
    print(f"{'variant':<40}" + "".join(f"{name:>11}" for name in images) + "       mean")
    for variant in args.variants:
        t0 = time.perf_counter()
        if variant == "biharmonic":
            shared = None
        else:
            shared = None if "guide=" in variant else inpainter(variant)
        scores = []
        for pieces in images.values():
            vals = []
            for img in pieces:
                for seed in args.seeds:
                    mask = generate_mask(img.shape, 0.5, seed)
                    if variant == "biharmonic":
                        out = inpaint(img, mask, method="biharmonic")
                    elif shared is None:
                        guide = inpaint(img, mask, method="biharmonic")
                        out = inpainter(variant, (guide - guide.mean())[None]).inpaint(img, mask)
                    else:
                        out = shared.inpaint(img, mask)
                    vals.append(psnr(np.clip(out, 0, 1), img))
            scores.append(np.mean(vals))
        print(f"{variant:<40}" + "".join(f"{v:>11.2f}" for v in scores) +
              f"{np.mean(scores):>11.3f}  ({time.perf_counter() - t0:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
