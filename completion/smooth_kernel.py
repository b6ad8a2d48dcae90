"""A smooth local kernel over a pixel grid: the NTK of a fully connected ReLU network on Fourier
features of the pixel coordinates.

The features of pixel p on an (H, W) torus are gamma(p) = [sqrt(g(w)) cos(2 pi w.p),
sqrt(g(w)) sin(2 pi w.p)] over the grid's frequencies w = (i / H, j / W), with Gaussian weights
g(w) ~ exp(-2 pi^2 scale^2 |w|^2) (pixels) normalised to sum 1.  Then
<gamma(p), gamma(q)> = rho(q - p), a Gaussian-like correlation of width ``scale`` pixels, and
|gamma(p)| = 1, so the network's NTK is an elementwise function of rho(q - p): an exactly
stationary kernel on the torus.  Its products and shifted solves are FFT divisions (the
``models.cntk`` stationary kernel class), and the ReLU network's cusp at rho = 1 gives it a
spectrum decaying like a power of the frequency (a smooth, not analytic, interpolator).
"""
from __future__ import annotations

import numpy as np
import torch

from models.ntk import FullyConnectedNTK


def fourier_correlation(shape, scale: float) -> torch.Tensor:
    """(H, W) float64 rho(d) = <gamma(p), gamma(p + d)> at every circular offset d (rho(0) = 1)."""
    if not scale > 0:
        raise ValueError(f"smooth kernel scale must be positive (pixels), got {scale}")
    h, w = (int(s) for s in shape)
    fr = np.fft.fftfreq(h)[:, None]
    fc = np.fft.fftfreq(w)[None, :]
    weights = np.exp(-2 * np.pi ** 2 * scale ** 2 * (fr ** 2 + fc ** 2))
    rho = np.real(np.fft.ifft2(weights))
    return torch.as_tensor(rho / rho[0, 0])


def smooth_kernel(shape, scale: float, depth: int = 1):
    """The stationary kernel (``models.cntk.StructuredKernel``, period 1, float64) of a depth-
    ``depth`` ReLU network's NTK on Fourier features of width ``scale`` pixels over an (H, W)
    torus, scaled to unit diagonal."""
    from models.cntk import StructuredKernel
    rho = fourier_correlation(shape, scale).clamp(-1.0, 1.0)
    ones = torch.ones((), dtype=rho.dtype)
    table = FullyConnectedNTK(depth=int(depth)).ntk_from_gram(rho.clone(), ones, ones)
    table = table / table[0, 0]
    return StructuredKernel(table[None, None].contiguous())
