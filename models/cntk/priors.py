"""Feature priors: the covariance S0(p, q) of the network input z (C0 x H x W),
``S0(p, q) = sum_c z_c(p) z_c(q) / C0``, as kernel tables (see :mod:`.tables`).

- ``"noise"``: DIP's U(0, 0.1) input noise in expectation: 1/300 on the diagonal, 1/400 elsewhere.
- ``"identity"``: S0 = identity (1 on the diagonal, 0 elsewhere).
- ``"meshgrid"``: two coordinate channels, row / (H - 1) and column / (W - 1) (DIP's meshgrid).
- an array (C0, H, W) (or (H, W), one channel): S0 = Z^T Z / C0.
The first two are stationary (period 1: the structured engine applies); the others need the
dense engine.
"""
from __future__ import annotations

import numpy as np
import torch


class Prior:
    """Input covariance; ``stationary`` priors depend only on the offset q - p."""
    stationary = False
    name = "?"

    def table(self, size, period, rows, device, dtype) -> torch.Tensor:
        """(Ph, Pw, len(rows), W) table of S0 holding row offsets ``rows``."""
        raise NotImplementedError

    def banded_table(self, size, rows, roff, cband, device, dtype) -> torch.Tensor:
        """Offset planes (len(roff), 2 cband + 1, len(rows), W) of S0 for the row positions
        ``rows`` (LongTensor, values in 0..H-1), row offsets ``roff`` and column offsets
        -cband..cband: ``[i, cband + d_c, j, c] = S0((rows[j], c), (rows[j] + roff[i], c + d_c))``
        (mod H, W); see :mod:`.banded`."""
        raise NotImplementedError


class ConstantPrior(Prior):
    """``diagonal`` on p == q and ``off`` elsewhere."""
    stationary = True

    def __init__(self, name, diagonal, off):
        self.name, self.diagonal, self.off = name, float(diagonal), float(off)

    def table(self, size, period, rows, device, dtype):
        H, W = size
        base = torch.full((1, 1, len(rows), W), self.off, device=device, dtype=dtype)
        base[0, 0, rows == 0, 0] = self.diagonal
        return base.expand(period[0], period[1], len(rows), W).contiguous()

    def banded_table(self, size, rows, roff, cband, device, dtype):
        H, W = size
        off = torch.arange(-cband, cband + 1, device=device)
        # aliased offsets (a band wider than the grid) that land on q == p are diagonal entries
        same = ((roff % H == 0)[:, None] & (off % W == 0)[None, :])[:, :, None, None]
        planes = torch.full((len(roff), len(off), len(rows), W), self.off, device=device,
                            dtype=dtype)
        return planes.masked_fill_(same, self.diagonal)


class ArrayPrior(Prior):
    """S0 = Z^T Z / C0 for feature maps Z of shape (C0, H, W)."""

    def __init__(self, name, Z):
        Z = np.asarray(Z, dtype=np.float64)
        if Z.ndim == 2:
            Z = Z[None]
        if Z.ndim != 3 or min(Z.shape) < 1:
            raise ValueError(f"prior array must have shape (C0, H, W) or (H, W), got {Z.shape}")
        if not np.isfinite(Z).all():
            raise ValueError("prior array contains NaN or infinite values")
        self.name, self.Z = name, Z

    def _check_size(self, size):
        if tuple(self.Z.shape[1:]) != tuple(size):
            raise ValueError(f"prior array has spatial size {self.Z.shape[1:]} but the network "
                             f"input is {tuple(size)}")

    def table(self, size, period, rows, device, dtype):
        self._check_size(size)
        if tuple(period) != tuple(size):
            raise ValueError(f"prior {self.name!r} is not stationary: use engine='dense'")
        H, W = size
        Z = torch.as_tensor(self.Z, device=device, dtype=dtype)
        r = torch.arange(H, device=device)
        partner = Z[:, (r[:, None] + rows[None, :]) % H, :]                  # (C, H, R, W)
        gram = torch.einsum("cxy,cxiw->xyiw", Z, partner) / Z.shape[0]     # q column absolute
        c = torch.arange(W, device=device)
        qc = (c[:, None] + c[None, :]) % W                                   # (pc, dc)
        return torch.gather(gram, 3, qc[None, :, None, :].expand(H, W, len(rows), W))

    def banded_table(self, size, rows, roff, cband, device, dtype):
        self._check_size(size)
        H, W = size
        Z = torch.as_tensor(self.Z, device=device, dtype=dtype)
        C = Z.shape[0]
        # padded[..., cband + c + d_c] = partner at column c + d_c; unfold: (C, n, B, W) view
        pad = (torch.arange(-cband, W + cband, device=device)) % W
        here = Z[:, rows]                                                          # (C, n, W)
        planes = torch.zeros((len(roff), 2 * cband + 1, len(rows), W), device=device,
                             dtype=dtype)
        for i, dr in enumerate(roff.tolist()):
            shifted = Z[:, (rows + dr) % H][:, :, pad].unfold(2, W, 1).transpose(1, 2)
            for c in range(C):
                planes[i].addcmul_(here[c], shifted[c])
        return planes.div_(C)


def meshgrid_features(size) -> np.ndarray:
    """(2, H, W): row / (H - 1) and column / (W - 1) coordinate channels."""
    H, W = size
    rr, cc = np.meshgrid(np.arange(H) / max(H - 1, 1), np.arange(W) / max(W - 1, 1), indexing="ij")
    return np.stack([rr, cc])


def make_prior(prior, size) -> Prior:
    """``prior``: 'noise', 'identity', 'meshgrid', an array (C0, H, W) / (H, W), or a Prior."""
    if isinstance(prior, Prior):
        return prior
    if isinstance(prior, str):
        if prior == "noise":
            return ConstantPrior("noise", 1 / 300, 1 / 400)
        if prior == "identity":
            return ConstantPrior("identity", 1.0, 0.0)
        if prior == "meshgrid":
            return ArrayPrior("meshgrid", meshgrid_features(size))
        raise ValueError(f"unknown prior {prior!r}; use 'noise', 'identity', 'meshgrid' or an "
                         "array of shape (C0, H, W)")
    if isinstance(prior, torch.Tensor):
        prior = prior.detach().cpu().numpy()
    return ArrayPrior("array", prior)
