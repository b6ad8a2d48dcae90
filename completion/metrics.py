"""Image quality against a clean reference: PSNR (dB, data range 1) and SSIM.

SSIM uses scikit-image's ``structural_similarity`` (optional extra ``[test]``/``[compare]``).
"""
from __future__ import annotations

import numpy as np


def _pair(estimate, reference):
    est = np.asarray(estimate, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    if est.shape != ref.shape:
        raise ValueError(f"estimate has shape {est.shape} but the reference has {ref.shape}")
    return est, ref


def psnr(estimate, reference) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1]: 10 log10(1 / MSE)
    (``inf`` for identical images)."""
    est, ref = _pair(estimate, reference)
    mse = float(np.mean((est - ref) ** 2))
    return float("inf") if mse == 0.0 else 10.0 * np.log10(1.0 / mse)


def ssim(estimate, reference) -> float:
    """Mean structural similarity (scikit-image defaults, data range 1; colour images are
    averaged over channels)."""
    est, ref = _pair(estimate, reference)
    try:
        from skimage.metrics import structural_similarity
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("SSIM needs scikit-image: pip install 'ntk-completion[compare]'") from err
    channel_axis = -1 if est.ndim == 3 else None
    return float(structural_similarity(est, ref, data_range=1.0, channel_axis=channel_axis))
