"""A self-contained inpainting demo: a generated 64 x 64 image with smooth shading and a few
sharp edges, half its pixels removed, filled by the CNTK (and by biharmonic when scikit-image is
installed); writes the clean, masked and filled images and returns the PSNRs."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .image import CNTKInpainter, inpaint
from .image_io import write_image
from .masks import generate_mask, mask_to_image
from .metrics import psnr

DEMO_ARCH = "sym3+avg"  # 3 levels: a few seconds at 64 x 64


def demo_image(size=64) -> np.ndarray:
    """(size, size) float image in [0, 1]: shaded background, a disc and a bar."""
    r, c = np.mgrid[0:size, 0:size] / size
    img = 0.35 + 0.25 * np.sin(2.5 * np.pi * r) * np.cos(1.5 * np.pi * c)
    img[(r - 0.55) ** 2 + (c - 0.4) ** 2 < 0.04] = 0.9
    img[(r > 0.15) & (r < 0.25) & (c > 0.5) & (c < 0.9)] = 0.1
    return np.clip(img, 0, 1)


def run_demo(outdir, missing_fraction=0.5, seed=0) -> dict:
    """Write ``clean.png``, ``mask.png``, ``masked.png``, ``filled_cntk.png`` (and
    ``filled_biharmonic.png``) into ``outdir``; return {'psnr_cntk': dB, 'psnr_biharmonic': dB or
    None, 'files': [paths]}."""
    outdir = Path(outdir)
    img = demo_image()
    mask = generate_mask(img.shape, missing_fraction, seed)
    filled = CNTKInpainter(DEMO_ARCH).inpaint(img, mask)
    files = {"clean.png": img, "mask.png": mask_to_image(mask),
             "masked.png": np.where(mask, 0.0, img), "filled_cntk.png": filled}
    result = {"psnr_cntk": psnr(np.clip(filled, 0, 1), img), "psnr_biharmonic": None}
    try:
        biharmonic = inpaint(img, mask, method="biharmonic")
        files["filled_biharmonic.png"] = biharmonic
        result["psnr_biharmonic"] = psnr(biharmonic, img)
    except ImportError:
        pass
    for name, arr in files.items():
        write_image(outdir / name, arr)
    result["files"] = [str(outdir / name) for name in files]
    return result
