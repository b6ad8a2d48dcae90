"""Image-derived feature priors for the inpainting CNTK, as spec strings beside ``noise``,
``identity``, ``meshgrid`` and arrays.

Grammar: ``image[:ROUNDS][+meshgrid:WEIGHT]``, e.g. ``image``, ``image:2``,
``image+meshgrid:0.2``.

* ``image``: the network input z is the image itself, its missing pixels filled by a first-pass
  estimate (the stationary CNTK's fit); RGB channels are the prior channels, so
  S0(p, q) = <z(p), z(q)> / C.  ``ROUNDS`` (0-3, default 1) refinements follow, each with the
  previous fit as the new prior.
* ``+meshgrid:W``: mixes the pixel coordinates in at weight W in [0, 1):
  S0 = (1 - W) S_image + W S_meshgrid (a bilateral-style spatial term).
"""
from __future__ import annotations

import dataclasses

import numpy as np

MAX_ROUNDS = 3


@dataclasses.dataclass(frozen=True)
class ImagePrior:
    """A parsed image prior: ``rounds`` refinements, coordinate weight ``meshgrid``."""
    rounds: int = 1
    meshgrid: float = 0.0

    def spec(self) -> str:
        text = "image" if self.rounds == 1 else f"image:{self.rounds}"
        return text + (f"+meshgrid:{self.meshgrid:g}" if self.meshgrid else "")

    def features(self, estimate: np.ndarray) -> np.ndarray:
        """(C0, H, W) prior array from an estimate (C, H, W) of the (padded) image:
        Z^T Z / C0 = (1 - W) <estimate, estimate> / C + W <coords, coords> / 2."""
        from models.cntk import meshgrid_features
        est = np.asarray(estimate, dtype=np.float64)
        if not self.meshgrid:
            return est
        c = est.shape[0]
        c0 = c + 2
        mesh = meshgrid_features(est.shape[1:])
        return np.concatenate([est * np.sqrt((1 - self.meshgrid) * c0 / c),
                               mesh * np.sqrt(self.meshgrid * c0 / 2)])


def is_image_prior(prior) -> bool:
    """True for a string starting with ``image`` (an image-derived prior spec)."""
    return isinstance(prior, str) and prior.split("+")[0].split(":")[0] == "image"


def parse_image_prior(text: str) -> ImagePrior:
    """Parse ``image[:ROUNDS][+meshgrid:WEIGHT]``; ``ValueError`` naming the bad part."""
    head, *extras = text.split("+")
    name, _, rounds = head.partition(":")
    if name != "image":
        raise ValueError(f"an image prior spec starts with 'image', got {text!r}")
    try:
        n_rounds = int(rounds) if rounds else 1
    except ValueError:
        raise ValueError(f"image prior rounds must be an integer, got {rounds!r} in {text!r}") from None
    if not 0 <= n_rounds <= MAX_ROUNDS:
        raise ValueError(f"image prior rounds must be in 0..{MAX_ROUNDS}, got {n_rounds}")
    weight = 0.0
    for extra in extras:
        key, _, value = extra.partition(":")
        if key != "meshgrid":
            raise ValueError(f"unknown image prior part {extra!r} in {text!r}; use meshgrid:WEIGHT")
        try:
            weight = float(value)
        except ValueError:
            raise ValueError(f"meshgrid weight must be a number, got {value!r} in {text!r}") from None
        if not 0 <= weight < 1:
            raise ValueError(f"meshgrid weight must be in [0, 1), got {weight}")
    return ImagePrior(n_rounds, weight)
