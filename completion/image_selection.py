"""Per-image choice of the inpainting kernel (``prior="auto"``) by its error on held-out
observed pixels.

The held-out set mimics the missing pattern: the observed pixels under the mask displaced by
about a quarter of the image in three slightly different ways (a box gives a displaced box, a
text overlay displaced strokes, a Bernoulli mask with a fraction f missing a random f^3 of the
observed pixels), so structured holes are judged on structured holes and scattered ones at
nearly the real density.
Every candidate is fitted on the remaining observed pixels and scored by the mean squared
error on the held-out ones; the winner is then fitted on all observed pixels.

Candidates (three solves): the stationary CNTK; the smooth Fourier-feature kernel; the
image-prior mix (:class:`completion.image_adaptive.KernelMix`) at its defaults (weight 0.7,
h 0.3: varying them on held-out pixels changed nothing or chose worse, see RESULTS.md).  The
image-prior candidate starts from the stationary candidate's fit, with a narrower band and a
looser CG tolerance than the final fit, and no refinement round (the final fit refines once):
a cheap ranking, not the final numbers.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from .image_adaptive import KernelMix
from .image_priors import ImagePrior

SMOOTH_SCALES = (3.0,)
SELECTION_TOL = 3e-3  # CG tolerance while selecting (the final fit uses the inpainter's)
MIN_HELD_OUT = 64


SHIFTS = ((0, 0), (3, -2), (-2, 3))  # around (H // 4, W // 4): see held_out_mask


def held_out_mask(observed: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """(H, W, C) bool: the observed pixels that are missing under each of three displacements
    of the mask, by (H // 4, W // 4) plus ``SHIFTS`` (no wrap-around).  A spatially coherent
    hole (a box, text strokes) stays one such hole, slightly eroded; independent missing
    pixels (a fraction f) thin out to a fraction f^3 of the observed ones, so the fit on the
    rest sees nearly the real density of observations (1 - f^3 of it).  The top rows and left
    columns (about a quarter) hold none."""
    h, w = missing.shape[:2]
    held = observed.copy()
    for sr, sc in SHIFTS:
        dr, dc = max(h // 4 + sr, 0), max(w // 4 + sc, 0)
        moved = np.zeros_like(missing)
        moved[dr:, dc:] = missing[:h - dr, :w - dc]
        held &= moved
    return held


MAX_BAND = 9
FINAL_BAND_COST = 361      # channels x (2R + 1)^2 of the final fit: R = 9 grey, 4 RGB
SELECTION_BAND = 5         # while selecting: min(final band, 5)


def band_for(channels: int, cost: int = FINAL_BAND_COST) -> int:
    """The band R of the image-prior kernel: the largest R <= ``MAX_BAND`` (at least 2) with
    channels x (2R + 1)^2 <= ``cost`` (a product costs (2R + 1)^2 per pixel and channel, so
    the time per pixel stays bounded and scales with the image size like the FFT parts)."""
    band = MAX_BAND
    while band > 2 and channels * (2 * band + 1) ** 2 > cost:
        band -= 1
    return band


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


def select_mix(problem, held_out: torch.Tensor, band: int, final_band: int) -> Selection:
    """Choose a ``KernelMix`` for ``problem`` (a :class:`completion.image_adaptive.Regression`)
    by the RMSE on ``held_out`` (C, H, W) bool (observed pixels), image mixes judged with band
    ``band``; the chosen image mix gets ``final_band`` and one refinement round."""
    train = problem.restricted(~held_out)
    train.tol = max(train.tol, SELECTION_TOL)
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
    chosen = best[1]
    if chosen.kind == "image":
        chosen = dataclasses.replace(chosen, band=final_band, prior=ImagePrior(rounds=1))
    return Selection(chosen, scores)
