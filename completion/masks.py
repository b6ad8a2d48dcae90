"""Missing-pixel masks: generated (random pixels, text strokes, a box) or read from a PNG.

Convention everywhere: a mask is a bool array, ``True`` = missing pixel, of shape (H, W) (shared
by all channels) or (H, W, C) (one mask per channel).  Mask files follow OpenCV/scikit-image:
non-zero = missing, read as image editors save them (:func:`mask_values`: alpha composites onto
black; :func:`threshold_mask`: grey or JPEG-noisy masks are thresholded at mid-grey).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

MASK_TYPES = ("pixels", "text", "box")

_WORDS = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
          "incididunt ut labore et dolore magna aliqua").split()


def generate_mask(shape, missing_fraction=0.5, seed=0, mask_type="pixels") -> np.ndarray:
    """A bool (H, W) mask with about ``missing_fraction`` of the pixels missing.

    ``pixels``: each pixel missing independently with probability ``missing_fraction``;
    ``text``: lines of rendered text (PIL's default font, scaled to the image) added until the
    strokes cover ``missing_fraction``; ``box``: one centred rectangle of that area (aspect of
    the image).  ``seed`` makes the mask reproducible.
    """
    h, w = _check_shape(shape)
    if not 0.0 <= float(missing_fraction) < 1.0:
        raise ValueError(f"missing_fraction must be in [0, 1), got {missing_fraction}")
    rng = np.random.default_rng(seed)
    if mask_type == "pixels":
        return rng.random((h, w)) < missing_fraction
    if mask_type == "box":
        bh = int(round(h * np.sqrt(missing_fraction)))
        bw = int(round(w * np.sqrt(missing_fraction)))
        mask = np.zeros((h, w), bool)
        top, left = (h - bh) // 2, (w - bw) // 2
        mask[top:top + bh, left:left + bw] = True
        return mask
    if mask_type == "text":
        return _text_mask(h, w, missing_fraction, rng)
    raise ValueError(f"mask_type must be one of {', '.join(MASK_TYPES)}; got {mask_type!r}")


def _text_mask(h, w, fraction, rng) -> np.ndarray:
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    size = max(8, h // 12)
    font = ImageFont.load_default(size=size)
    stroke = max(1, size // 10)
    for _ in range(200):  # each line adds coverage; the cap only guards tiny images
        if np.count_nonzero(np.asarray(canvas)) >= fraction * h * w:
            break
        words = " ".join(rng.choice(_WORDS, size=8))
        x = int(rng.integers(-w // 2, w // 4))
        y = int(rng.integers(-size // 2, h))
        draw.text((x, y), words, fill=255, font=font, stroke_width=stroke, stroke_fill=255)
    return np.asarray(canvas) > 0


def mask_values(path) -> tuple[np.ndarray, bool]:
    """(values, lossy): a mask file's (H, W) values in [0, 1], the brightest colour channel
    composited onto black by the alpha channel when there is one (so an opaque black image with
    white strokes and white strokes on a transparent layer both mark the strokes; transparent =
    not missing), and whether the file is JPEG (lossy: its values carry compression noise)."""
    from .image_io import load_image

    try:
        found = load_image(path)
    except ValueError as err:
        raise ValueError(str(err).replace("image file", "mask file")) from None
    value = found.pixels if found.pixels.ndim == 2 else found.pixels.max(axis=-1)
    return (value if found.alpha is None else value * found.alpha), found.format == "JPEG"


def threshold_mask(values, lossy=False, path="mask") -> np.ndarray:
    """Bool mask (True = missing) from values in [0, 1]. Lossless files: non-zero = missing
    (OpenCV's convention: 0/1 and 0/255 masks both work; anti-aliased stroke edges count as
    missing). Lossy (JPEG) files: compression noise makes black pixels non-zero, so they are
    thresholded at mid-grey (>= 0.5 = missing). Grey pixels are reported in a warning: how many
    there were, and for JPEG how many lay between 25% and 75% grey, where the threshold decides."""
    values = np.asarray(values, dtype=np.float64)
    grey = int(np.count_nonzero((values > 0) & (values < 1)))
    if not lossy:
        if grey:
            warnings.warn(f"mask {path}: {grey} grey pixel(s) (neither black nor white) count as "
                          "missing (non-zero = missing)", stacklevel=2)
        return values > 0
    near = int(np.count_nonzero((values >= 0.25) & (values <= 0.75)))
    warnings.warn(f"mask {path} is a JPEG: thresholded at mid-grey against compression noise; "
                  f"{near} pixel(s) were between 25% and 75% grey (of {grey} grey pixels)",
                  stacklevel=2)
    return values >= 0.5


def read_mask(path, shape, invert=False, image_path=None) -> np.ndarray:
    """Read a mask file (:func:`mask_values`, then :func:`threshold_mask`; ``invert`` flips it)
    and check that it is (H, W) = ``shape[:2]``; the error names both files."""
    path = Path(path)
    values, lossy = mask_values(path)
    mask = threshold_mask(values, lossy, path)
    h, w = _check_shape(shape)
    if mask.shape != (h, w):
        of = f" {image_path}" if image_path is not None else ""
        raise ValueError(f"mask {path} is {mask.shape[1]}x{mask.shape[0]} (WxH) but the image{of} "
                         f"is {w}x{h}; masks must have the image's size")
    return ~mask if invert else mask


def mask_to_image(mask) -> Image.Image:
    """A bool mask as an 8-bit PIL image (missing = 255), the format :func:`read_mask` reads.
    A per-channel (H, W, C) mask is saved as missing-in-any-channel."""
    mask = np.asarray(mask, bool)
    if mask.ndim == 3:
        mask = mask.any(axis=-1)
    return Image.fromarray(mask.astype(np.uint8) * 255, mode="L")


def _check_shape(shape):
    if len(shape) < 2 or shape[0] < 1 or shape[1] < 1:
        raise ValueError(f"image shape must start with (H, W) positive, got {tuple(shape)}")
    return int(shape[0]), int(shape[1])
