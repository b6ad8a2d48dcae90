"""A weighted sum of pixel kernels over one (H, W) grid: stationary parts (FFT products) plus an
optional banded, non-stationary part (e.g. the tapered CNTK with the image as its prior).

    K = sum_i w_i K_i  +  w_b B

The stationary parts are merged into one stationary kernel (their tables add), so a product
costs one FFT pair plus one banded product.  :meth:`MixedKernel.solve_shifted` is NOT exact when
there is a banded part: it solves (S + w_b Bbar + mu I) v in Fourier space, where S is the merged
stationary part and Bbar the banded part averaged over positions (a stationary kernel with the
band's mean offset profile).  It is what preconditioned CG needs (an SPD approximation of the
inverse); the purely stationary case stays exact.
"""
from __future__ import annotations

import torch


class MixedKernel:
    """``stationary``: list of (weight, kernel), periodic kernels of one period (stationary:
    period (1, 1)) over one grid (``models.cntk.StructuredKernel``); ``banded``: a
    ``models.cntk.BandedKernel`` or None, with ``banded_weight``.  Products and solves run in float64 on the stationary kernels' device."""

    def __init__(self, stationary, banded=None, banded_weight: float = 0.0):
        from models.cntk import StructuredKernel
        if not stationary and banded is None:
            raise ValueError("a mixed kernel needs at least one part")
        parts = [(float(w), k) for w, k in stationary if float(w) > 0]
        shapes = {tuple(k.shape) for _, k in parts} | ({tuple(banded.shape)} if banded else set())
        if len(shapes) != 1:
            raise ValueError(f"mixed kernel parts cover different grids {sorted(shapes)}")
        periods = {k.period for _, k in parts} or {(1, 1)}
        if len(periods) != 1:
            raise ValueError(f"the periodic parts of a mixed kernel need one period, got "
                             f"{sorted(periods)}")
        self.shape = shapes.pop()
        self.banded = banded if banded_weight > 0 else None
        self.banded_weight = float(banded_weight) if self.banded is not None else 0.0
        self._device = parts[0][1].device if parts else banded.device
        h, w = self.shape
        table = torch.zeros(periods.pop() + (h, w), dtype=torch.float64, device=self._device)
        for weight, kern in parts:
            table += weight * kern.table.to(table)
        self.stationary = StructuredKernel(table) if parts else None
        self._preconditioner = StructuredKernel(table + self._banded_profile())

    @property
    def dtype(self):
        return torch.float64

    @property
    def device(self):
        return self._device

    def _banded_profile(self) -> torch.Tensor:
        """(1, 1, H, W) w_b times the banded table averaged over positions, placed at its
        circular offsets (zero outside the band)."""
        h, w = self.shape
        out = torch.zeros((1, 1, h, w), dtype=torch.float64, device=self.device)
        if self.banded is None:
            return out
        band = self.banded.band
        mean = self.banded.planes.to(torch.float64).mean((2, 3))     # (2R+1, 2R+1)
        off = torch.arange(-band, band + 1, device=out.device)
        out[0, 0, (off % h)[:, None], (off % w)[None, :]] += self.banded_weight * mean
        return out

    def diag(self) -> torch.Tensor:
        """(H, W) float64: K(p, p)."""
        h, w = self.shape
        out = torch.zeros((h, w), dtype=torch.float64, device=self.device)
        if self.stationary is not None:
            out += torch.as_tensor(self.stationary.diag(), dtype=torch.float64, device=self.device)
        if self.banded is not None:
            out += self.banded_weight * self.banded.diag().to(out)
        return out

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """K v for a torch (C, H, W) tensor (float64 result)."""
        v = v.to(device=self.device, dtype=torch.float64)
        out = torch.zeros_like(v)
        if self.stationary is not None:
            out += self.stationary.matvec(v)
        if self.banded is not None:
            out += self.banded_weight * self.banded.matvec(v.to(self.banded.dtype)).to(v)
        return out

    def solve_shifted(self, v: torch.Tensor, mu: float) -> torch.Tensor:
        """(S + w_b Bbar + mu I)^-1 v: exact without a banded part, else the stationary
        approximation described in the module docstring (a preconditioner)."""
        return self._preconditioner.solve_shifted(v.to(device=self.device, dtype=torch.float64), mu)
