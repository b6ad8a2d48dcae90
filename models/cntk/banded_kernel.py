"""A computed banded CNTK: the kernel between pixels p and q = p + d for offsets |d_r|, |d_c| <= R
(circular), with its products and a compactly supported positive-definite taper.

Its matrix is the one :meth:`BandedKernel.matvec` applies:
``K_band(p, q) = sum_{|d|_inf <= R, p + d = q mod (H, W)} table[p, d]``, i.e. the kernel on the
pairs within the band (a band wider than the grid, 2R + 1 > H or W, counts aliased offsets once
each). ``tapered()`` multiplies it by a Wendland function of the offset that vanishes outside
the band, which makes it an exactly positive semi-definite kernel when the table is that of one.
"""
from __future__ import annotations

import numpy as np
import torch

from ..device import DEFAULT_MEMORY_BUDGET, check_fits

TAPERS = ("wendland",)


def wendland(band: int, device=None, dtype=torch.float64) -> torch.Tensor:
    """(2R+1, 2R+1) Wendland phi_{3,1}(r) = (1 - r)_+^4 (4 r + 1) of r = |d|_2 / (R + 1): positive
    definite on the plane (and on the torus, periodised), zero outside the band."""
    off = torch.arange(-band, band + 1, device=device, dtype=torch.float64)
    r = torch.sqrt(off[:, None] ** 2 + off[None, :] ** 2) / (band + 1)
    return ((1 - r).clamp_(min=0) ** 4 * (4 * r + 1)).to(dtype)


class BandedKernel:
    """CNTK restricted to a band of offsets. ``table``: (H, W, 2R+1, 2R+1) torch tensor,
    ``table[r, c, R + d_r, R + d_c] = K((r, c), ((r + d_r) mod H, (c + d_c) mod W))`` (a view of
    the offset planes (2R+1, 2R+1, H, W) that the products use); ``band`` R; ``shape`` (H, W);
    ``device``, ``dtype``. Build one from such a table (e.g. a cached one) with
    ``BandedKernel(table)``."""

    def __init__(self, table: torch.Tensor, memory_budget=None):
        if not isinstance(table, torch.Tensor) or table.dim() != 4 or \
                table.shape[2] != table.shape[3] or table.shape[2] % 2 == 0:
            shape = tuple(table.shape) if isinstance(table, torch.Tensor) else type(table)
            raise ValueError(f"banded kernel table must be a (H, W, 2R+1, 2R+1) tensor, got "
                             f"{shape}")
        self.planes = table.permute(2, 3, 0, 1).contiguous()
        self.band = (table.shape[2] - 1) // 2
        self.shape = (int(table.shape[0]), int(table.shape[1]))
        self.memory_budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget

    @classmethod
    def from_planes(cls, planes: torch.Tensor, memory_budget=None) -> "BandedKernel":
        """From offset planes (2R+1, 2R+1, H, W) (no copy when contiguous)."""
        return cls(planes.permute(2, 3, 0, 1), memory_budget)

    @property
    def table(self) -> torch.Tensor:
        return self.planes.permute(2, 3, 0, 1)

    @property
    def device(self):
        return self.planes.device

    @property
    def dtype(self):
        return self.planes.dtype

    def __repr__(self):
        return (f"BandedKernel(shape={self.shape}, band={self.band}, dtype={self.dtype}, "
                f"device={self.device})")

    def _offsets(self):
        return range(-self.band, self.band + 1)

    def diag(self) -> torch.Tensor:
        """(H, W) torch tensor: K(p, p) (the centre offset plane)."""
        return self.planes[self.band, self.band]

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``out[p] = sum_{|d|_inf <= R} table[p, d] v[p + d]`` (circular) for a torch tensor v of
        shape (C, H, W) or (H, W); the result has v's shape, the kernel's dtype and device.
        One row roll per row offset, then a fused multiply-add per offset plane."""
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"matvec needs a torch tensor, got {type(v).__name__}")
        if v.dim() not in (2, 3) or tuple(v.shape[-2:]) != self.shape:
            raise ValueError(f"expected a tensor of shape {self.shape} or (C, *{self.shape}), "
                             f"got {tuple(v.shape)}")
        squeeze = v.dim() == 2
        x = v.to(device=self.device, dtype=self.dtype)
        x = x[None] if squeeze else x
        H, W = self.shape
        R = self.band
        cols = torch.arange(-R, W + R, device=self.device) % W
        out = torch.zeros_like(x)
        for i, dr in enumerate(self._offsets()):
            # padded[:, r, R + c + dc] = x[:, r + dr, c + dc]
            padded = torch.roll(x, -dr, dims=1).index_select(2, cols)
            for j in range(2 * R + 1):
                out.addcmul_(self.planes[i, j], padded.narrow(2, j, W))
        return out[0] if squeeze else out

    def tapered(self, kind: str = "wendland") -> "BandedKernel":
        """A new kernel: every entry times the Wendland function of its offset (see
        :func:`wendland`). The Schur product of PSD kernels is PSD and the taper vanishes
        outside the band, so the result is the exact PSD kernel K (.) phi when the table is
        that of a PSD kernel K."""
        if kind not in TAPERS:
            raise ValueError(f"taper kind must be one of {TAPERS}, got {kind!r}")
        w = wendland(self.band, self.device, self.dtype)
        return BandedKernel.from_planes(self.planes * w[:, :, None, None], self.memory_budget)

    def dense(self) -> np.ndarray:
        """(H, W, H, W) float64 numpy matrix of :meth:`matvec` (small grids: tests)."""
        H, W = self.shape
        check_fits(8.0 * (H * W) ** 2 * 2, self.memory_budget, f"the dense {H}x{W} kernel",
                   "Use matvec instead, or raise memory_budget.")
        out = torch.zeros((H, W, H, W), dtype=torch.float64)
        planes = self.planes.detach().cpu().double()
        r = torch.arange(H)[:, None]
        c = torch.arange(W)[None, :]
        for i, dr in enumerate(self._offsets()):
            for j, dc in enumerate(self._offsets()):
                out.index_put_((r.expand(H, W), c.expand(H, W), ((r + dr) % H).expand(H, W),
                                ((c + dc) % W).expand(H, W)), planes[i, j], accumulate=True)
        return out.numpy()
