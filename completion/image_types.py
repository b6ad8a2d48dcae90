"""The array types ``inpaint()`` accepts, as OpenCV and scikit-image users hold them.

Images: ``uint8`` (0-255), ``uint16`` (0-65535) or floats in [0, 1]; the result has the input's
dtype (integers rounded and clipped; observed pixels come back exactly). Masks: ``bool``, or
integer arrays where non-zero = missing (OpenCV's 0/255 and 0/1 both work), or floats holding
only 0 and 1.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

_INTEGER_BITS = {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16}


def as_float_image(image) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """(float64 image in [0, 1] for uint8/uint16 input (floats unchanged), ``restore``) where
    ``restore(result)`` converts a float result back to the input's dtype."""
    arr = np.asarray(image)
    if arr.dtype in _INTEGER_BITS:
        from .image_io import to_integers
        bits = _INTEGER_BITS[arr.dtype]
        return arr.astype(np.float64) / (2**bits - 1), lambda out: to_integers(out, bits)
    if np.issubdtype(arr.dtype, np.floating):
        dtype = arr.dtype
        return arr, lambda out: np.asarray(out).astype(dtype, copy=False)
    raise ValueError(f"image dtype {arr.dtype} is not supported: pass uint8 (0-255), uint16 "
                     "(0-65535) or floats in [0, 1]")


def as_bool_mask(mask) -> np.ndarray:
    """``mask`` as bool, True = missing: bool as is, integers non-zero = missing, floats only
    when every value is 0 or 1."""
    arr = np.asarray(mask)
    if arr.dtype == bool:
        return arr
    if np.issubdtype(arr.dtype, np.integer):
        return arr != 0
    if np.issubdtype(arr.dtype, np.floating) and np.isin(arr, (0.0, 1.0)).all():
        return arr == 1.0
    raise ValueError(f"mask must be bool (True = missing), integers (non-zero = missing) or "
                     f"floats of 0 and 1; got dtype {arr.dtype}"
                     + (" with other values" if np.issubdtype(arr.dtype, np.floating) else ""))
