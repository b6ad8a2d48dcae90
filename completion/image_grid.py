"""Which images the inpainters accept, and how an image is padded onto a network's grid: the
rules of the CNTK inpainter, the classical fills and the Deep Image Prior, stated once.

Accepted (:func:`validate_image_and_mask`):

* image: float (H, W) (grey) or (H, W, C) (C >= 1 channels: RGB, or any other count), finite
  values (the pixels to fill may hold any finite value; mark NaN pixels missing); both sides at
  least :data:`MIN_SIDE` pixels: a single row or column is a 1-D signal with no neighbour
  across it to regress from, and reflection about an edge pixel needs a second pixel (DIP's
  padding needed a special case for it);
* mask: bool, True = missing; (H, W) (shared by the channels) or (H, W, C) (per channel); every
  channel keeps at least one observed pixel;
* with ``unit_range`` (DIP): values in [0, 1], the range of its sigmoid output; with
  ``shared_mask`` (DIP: one network output per pixel, trained on one loss mask): the same mask
  for every channel.

Padding (:func:`pad_to_multiple`): the networks need sides that are multiples of 2^levels
(``models.cntk.Architecture.size_multiple``, ``models.dip.DIPConfig.size_multiple``). Pixels
are added at the bottom and right only, so ``[:H, :W]`` crops the result back, up to the next
multiple after at least ``margin`` pixels and to at least ``minimum`` per side (DIP: 2 x the
multiple, so its deepest level keeps 2 x 2 pixels for batch norm). ``mode``:

* ``"missing"`` (the CNTK default, and DIP): the added pixels are unobserved (value 0, never
  read): nothing is invented; for the CNTK's circular convolutions a margin of missing pixels
  keeps opposite edges from being tied (+0.18 dB, benchmarks/RESULTS.md); DIP's loss skips them;
* ``"reflect"``: image and mask mirrored about the edge (the edge pixel repeated, numpy's
  ``symmetric``): mirrored observations count as observed. Padding longer than the image
  cannot be mirrored and wraps instead;
* ``"wrap"``: image and mask continued periodically.
"""
from __future__ import annotations

import numpy as np

MIN_SIDE = 2
"""Smallest accepted height and width (pixels); see the module docstring."""

PAD_MODES = ("reflect", "wrap", "missing")


def validate_image_and_mask(image, mask, *, unit_range=False, shared_mask=False):
    """(image as float64 (H, W, C), mask as bool (H, W, C), was_grey) after checking the rules of
    the module docstring; raises ``ValueError`` saying what is wrong, before any work."""
    img = np.asarray(image)
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] < 1):
        raise ValueError(f"image must be (H, W) or (H, W, C), got shape {img.shape}")
    if min(img.shape[:2]) < MIN_SIDE:
        raise ValueError(f"image is {img.shape[0]} x {img.shape[1]} pixels; inpainting needs "
                         f"at least {MIN_SIDE} x {MIN_SIDE}")
    if not (np.issubdtype(img.dtype, np.floating) or np.issubdtype(img.dtype, np.integer)
            or img.dtype == bool):
        raise ValueError(f"image must hold numbers, got dtype {img.dtype}")
    img = img.astype(np.float64)
    if not np.all(np.isfinite(img)):
        raise ValueError("image contains NaN or infinite values; mark such pixels in the mask and "
                         "set them to any finite value")
    if unit_range and (img.min() < 0 or img.max() > 1):
        raise ValueError(f"image values must be in [0, 1], got {img.min():g} to {img.max():g}")
    grey = img.ndim == 2
    if grey:
        img = img[:, :, None]
    m = np.asarray(mask)
    if m.dtype != bool:
        raise ValueError(f"mask must be a bool array (True = missing), got dtype {m.dtype}")
    if m.shape == img.shape[:2]:
        m = np.repeat(m[:, :, None], img.shape[2], axis=2)
    elif m.shape != img.shape:
        raise ValueError(f"mask shape {m.shape} must be the image's (H, W) {img.shape[:2]} or its "
                         f"full shape {img.shape}")
    if shared_mask and not (m == m[:, :, :1]).all():
        raise ValueError("this method needs one mask shared by all channels, shape (H, W)")
    if m.reshape(-1, m.shape[2]).all(axis=0).any():
        raise ValueError("every pixel of a channel is missing; nothing to regress on")
    return img, m, grey


def padded_size(size, multiple: int, margin: int = 0, minimum: int = 0) -> tuple:
    """(H', W') of :func:`pad_to_multiple` for an (H, W) ``size``: each side plus at least
    ``margin``, at least ``minimum``, rounded up to a multiple of ``multiple``."""
    if multiple < 1 or margin < 0 or minimum < 0:
        raise ValueError(f"need multiple >= 1, margin >= 0, minimum >= 0; got {multiple}, "
                         f"{margin}, {minimum}")
    return tuple(-(-max(int(n) + margin, minimum) // multiple) * multiple for n in size)


def pad_to_multiple(img, mask, multiple, margin=0, mode="missing", minimum=0):
    """Pad ``img`` (H, W) or (H, W, C) and ``mask`` (same first two axes) at the bottom and
    right to :func:`padded_size` as ``mode`` says (see the module docstring); returns the padded
    pair (the same arrays when nothing is added)."""
    if mode not in PAD_MODES:
        raise ValueError(f"pad mode must be one of {', '.join(PAD_MODES)}, got {mode!r}")
    h, w = img.shape[:2]
    hp, wp = padded_size((h, w), multiple, margin, minimum)
    if (hp, wp) == (h, w):
        return img, mask
    widths = lambda a: ((0, hp - h), (0, wp - w)) + ((0, 0),) * (a.ndim - 2)  # noqa: E731
    if mode == "missing":
        return np.pad(img, widths(img)), np.pad(mask, widths(mask), constant_values=True)
    np_mode = "symmetric" if mode == "reflect" and hp <= 2 * h and wp <= 2 * w else "wrap"
    return np.pad(img, widths(img), mode=np_mode), np.pad(mask, widths(mask), mode=np_mode)
