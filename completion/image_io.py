"""Reading and writing images as float arrays in [0, 1]: (H, W) grey or (H, W, 3) RGB.

Writes are atomic (temporary file + rename) and never target an input file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .io import atomic_output

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def read_image(path) -> np.ndarray:
    """Float64 (H, W) for grey images, (H, W, 3) for colour ones, values in [0, 1].
    An alpha channel is dropped; 16-bit images are scaled by 65535."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64) / 65535.0
                return np.clip(arr, 0.0, 1.0)
            if im.mode in ("L", "LA", "1"):
                im = im.convert("L")
            elif im.mode != "RGB":
                im = im.convert("RGB")
            return np.asarray(im, dtype=np.float64) / 255.0
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read image file {path}: {err}") from err


def to_uint8(image) -> np.ndarray:
    """Clip to [0, 1] and round to 8 bits."""
    return np.round(np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def write_image(path, image) -> None:
    """Write an (H, W) or (H, W, 3) float image in [0, 1] (or an 8-bit PIL image) atomically;
    the format follows the file suffix."""
    path = Path(path)
    pil = image if isinstance(image, Image.Image) else Image.fromarray(to_uint8(image))
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot tell the image format of output {path} from its suffix; "
                         f"use one of {', '.join(IMAGE_SUFFIXES)}")
    with atomic_output(path, "wb") as fh:
        pil.save(fh, format=fmt)
