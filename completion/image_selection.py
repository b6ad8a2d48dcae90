"""Per-image choice of the inpainting kernel (``prior="auto"``) by its error on held-out
observed pixels.

The held-out set mimics the missing pattern: the observed pixels under the mask shifted by
about a quarter of the image (a Bernoulli mask gives another random subset, a text overlay
shifted strokes, a box a displaced box), so structured holes are judged on structured holes.
Every candidate is fitted on the remaining observed pixels and scored by the mean squared
error on the held-out ones; the winner is then fitted on all observed pixels.

Candidates (a coordinate search, few solves): the stationary CNTK; the smooth Fourier-feature
kernel at two widths; the image-prior mix (:class:`completion.image_adaptive.KernelMix`) at its
default, then its weight and its similarity width h one at a time while they improve.  The
image-prior candidates start from the stationary candidate's fit (no refinement round while
selecting: the final fit refines once).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from .image_adaptive import KernelMix
from .image_priors import ImagePrior

SMOOTH_SCALES = (2.0, 3.0)
WEIGHTS = (0.5, 0.85)
WIDTHS = (0.2, 0.45)
MIN_HELD_OUT = 64


def held_out_mask(observed: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """(H, W, C) bool: observed pixels under the missing mask rolled by (H//4 + 1, W//4 + 1)."""
    h, w = missing.shape[:2]
    return observed & np.roll(missing, (h // 4 + 1, w // 4 + 1), axis=(0, 1))


def band_for(pixels: int) -> int:
    """The band R of the image-prior kernel for a grid of ``pixels`` values (pixels x channels):
    5 (an 11 x 11 window) up to ~300 x 300 grey, 4 above, 3 past 600 x 600 (its products cost
    (2R + 1)^2 per pixel and channel)."""
    if pixels <= 320 * 320:
        return 5
    return 4 if pixels <= 600 * 600 else 3


@dataclasses.dataclass
class Selection:
    """The chosen ``mix`` and every candidate's held-out RMSE (``scores``: [(description,
    rmse)])."""
    mix: KernelMix
    scores: list

    def report(self) -> str:
        lines = [f"chose: {self.mix.describe()}"]
        lines += [f"  held-out RMSE {rmse:.5f}  {text}" for text, rmse in self.scores]
        return "\n".join(lines)


def select_mix(problem, held_out: torch.Tensor, band: int, search: bool = True) -> Selection:
    """Choose a ``KernelMix`` for ``problem`` (a :class:`completion.image_adaptive.Regression`)
    by the RMSE on ``held_out`` (C, H, W) bool (observed pixels); ``search``: also vary the
    image mix's weight and h (else its default only)."""
    train = problem.restricted(~held_out)
    target = problem.y[held_out]
    scores = []

    def rmse(fit):
        return float(torch.sqrt(torch.mean((fit[held_out] - target) ** 2)))

    stationary_fit = train.fit(KernelMix("stationary"))
    best = (rmse(stationary_fit), KernelMix("stationary"))
    scores.append((best[1].describe(), best[0]))

    def consider(mix):
        nonlocal best
        score = rmse(train.fit(mix, first=stationary_fit))
        scores.append((mix.describe(), score))
        if score < best[0]:
            best = (score, mix)

    for scale in SMOOTH_SCALES:
        consider(KernelMix("smooth", scale=scale))
    consider(KernelMix("image", band=band, prior=ImagePrior(rounds=0)))
    if search and best[1].kind == "image":
        for field, values in (("weight", WEIGHTS), ("h", WIDTHS)):
            centre = best[1]
            for value in values:
                consider(dataclasses.replace(centre, **{field: value}))
    chosen = best[1]
    if chosen.kind == "image":
        chosen = dataclasses.replace(chosen, prior=ImagePrior(rounds=1))
    return Selection(chosen, scores)
