"""A computed CNTK between the output pixels of an H x W grid, stored as a (phase, offset)
table, with exact products and shifted solves through its block-circulant structure.

With period P = (Ph, Pw), K(p, q) = T[p mod P, q - p]. Splitting a vector into its Ph*Pw
polyphase components v_b(j) = v(P j + b) on the coarse (H/Ph, W/Pw) grid, K is a block
convolution: (K v)_a(i) = sum_b sum_j c_ab(j - i) v_b(j) with c_ab(k) = T[a, P k + b - a].
After a 2-D FFT on the coarse grid every frequency w carries a Hermitian PSD (PhPw x PhPw) block
B(w) with B_ab(w) = sum_k c_ab(k) exp(+2 pi i w.k / N), so K v and (K + mu I)^{-1} v cost one FFT
of v and one batched block product / Cholesky solve.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..device import DEFAULT_MEMORY_BUDGET, check_fits
from . import tables


class CNTKKernel:
    """CNTK between output pixels. Attributes: ``shape`` (H, W); ``period`` (Ph, Pw) (= shape for
    a dense kernel); ``table`` (Ph, Pw, H, W) torch tensor of a structured kernel, None for a
    dense one (its table is ``full_table``); ``engine`` 'structured' or 'dense'; ``device``,
    ``dtype``."""

    def __init__(self, table: torch.Tensor, shape=None, engine: str = "structured",
                 memory_budget=None):
        if table.dim() != 4:
            raise ValueError(f"kernel table must be (Ph, Pw, H, W), got {tuple(table.shape)}")
        shape = table.shape[2:] if shape is None else shape
        if tuple(table.shape[2:]) != tuple(shape) or shape[0] % table.shape[0] or \
                shape[1] % table.shape[1]:
            raise ValueError(f"table {tuple(table.shape)} does not fit a {tuple(shape)} grid "
                             "with periods dividing its sides")
        self.full_table = table
        self.shape = tuple(int(s) for s in shape)
        self.period = tuple(int(s) for s in table.shape[:2])
        self.engine = engine
        self.memory_budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget
        self._blocks = None
        self._chol = None

    @property
    def table(self):
        return self.full_table if self.engine == "structured" else None

    @property
    def device(self):
        return self.full_table.device

    @property
    def dtype(self):
        return self.full_table.dtype

    def __repr__(self):
        return (f"CNTKKernel(shape={self.shape}, period={self.period}, engine={self.engine!r}, "
                f"dtype={self.dtype}, device={self.device})")

    # ---- entries ----------------------------------------------------------------------------
    def dense(self) -> np.ndarray:
        """(H, W, H, W) array K[p_r, p_c, q_r, q_c] (float64 numpy)."""
        H, W = self.shape
        check_fits(8.0 * (H * W) ** 2 * 2, self.memory_budget, f"the dense {H}x{W} CNTK",
                   "Use matvec / solve_shifted / block instead, or raise memory_budget.")
        return tables.to_pairs(self.full_table, self.shape).cpu().numpy().astype(np.float64)

    def diag(self) -> np.ndarray:
        """(H, W): K(p, p)."""
        H, W = self.shape
        ph, pw = self.period
        d = self.full_table[:, :, 0, 0].cpu().numpy().astype(np.float64)
        return np.tile(d, (H // ph, W // pw))

    def block(self, rows, cols) -> torch.Tensor:
        """K between flat pixel indices ``rows`` (n,) and ``cols`` (m,) (index r * W + c), as an
        (n, m) tensor on the kernel's device."""
        H, W = self.shape
        ph, pw = self.period
        rows = torch.as_tensor(np.asarray(rows), device=self.device).long().reshape(-1)
        cols = torch.as_tensor(np.asarray(cols), device=self.device).long().reshape(-1)
        pr, pc = rows // W, rows % W
        qr, qc = cols // W, cols % W
        check_fits(len(rows) * len(cols) * (self.full_table.element_size() + 16),
                   self.memory_budget, f"a {len(rows)} x {len(cols)} kernel block",
                   "Use matvec / solve_shifted, or raise memory_budget.")
        return self.full_table[(pr % ph)[:, None], (pc % pw)[:, None],
                               (qr[None, :] - pr[:, None]) % H, (qc[None, :] - pc[:, None]) % W]

    # ---- block-circulant algebra ---------------------------------------------------------------
    def _coarse(self):
        H, W = self.shape
        ph, pw = self.period
        return H // ph, W // pw

    def blocks(self) -> torch.Tensor:
        """(Nr, Nc//2 + 1, PhPw, PhPw) complex B(w) for the half spectrum (real (1, 1, HW, HW)
        matrix when the coarse grid is a single point, i.e. a dense kernel)."""
        if self._blocks is None:
            H, W = self.shape
            ph, pw = self.period
            nr, nc = self._coarse()
            n = ph * pw
            complex_bytes = 2 * self.full_table.element_size()
            check_fits(nr * (nc // 2 + 1) * n * n * complex_bytes + 2 * self.full_table.numel() *
                       self.full_table.element_size(), self.memory_budget,
                       "the block-circulant factors of the kernel", "Raise memory_budget.")
            dev = self.device
            a_r = torch.arange(ph, device=dev)
            a_c = torch.arange(pw, device=dev)
            k_r = torch.arange(nr, device=dev)
            k_c = torch.arange(nc, device=dev)
            # c_ab(k) = T[a, P k + b - a]; index [ar, ac, br, bc, kr, kc]
            off_r = (ph * k_r[None, None, :] + a_r[None, :, None] - a_r[:, None, None]) % H
            off_c = (pw * k_c[None, None, :] + a_c[None, :, None] - a_c[:, None, None]) % W
            c = self.full_table[a_r[:, None, None, None, None, None],
                                a_c[None, :, None, None, None, None],
                                off_r[:, None, :, None, :, None],
                                off_c[None, :, None, :, None, :]]
            if nr * nc == 1:
                self._blocks = c.reshape(1, 1, n, n)
            else:
                spec = torch.fft.rfft2(c).conj()                    # (ph, pw, ph, pw, nr, ncf)
                del c
                self._blocks = spec.reshape(n, n, nr, -1).permute(2, 3, 0, 1).contiguous()
        return self._blocks

    def _to_spectrum(self, v):
        """(C, H, W) real -> (Nr, Ncf, PhPw, C) polyphase spectrum."""
        C = v.shape[0]
        ph, pw = self.period
        nr, nc = self._coarse()
        poly = v.reshape(C, nr, ph, nc, pw).permute(0, 2, 4, 1, 3)       # (C, ph, pw, nr, nc)
        if nr * nc == 1:
            return poly.reshape(C, ph * pw, 1, 1).permute(2, 3, 1, 0)
        spec = torch.fft.rfft2(poly)
        return spec.reshape(C, ph * pw, nr, -1).permute(2, 3, 1, 0)

    def _from_spectrum(self, spec, C):
        ph, pw = self.period
        nr, nc = self._coarse()
        spec = spec.permute(3, 2, 0, 1).reshape(C, ph, pw, nr, -1)
        poly = spec.real if nr * nc == 1 else torch.fft.irfft2(spec, s=(nr, nc))
        return poly.reshape(C, ph, pw, nr, nc).permute(0, 3, 1, 4, 2).reshape(C, nr * ph, nc * pw)

    def _prepare(self, v):
        is_numpy = not isinstance(v, torch.Tensor)
        t = torch.as_tensor(np.asarray(v) if is_numpy else v)
        if t.dim() not in (2, 3) or tuple(t.shape[-2:]) != self.shape:
            raise ValueError(f"expected an array of shape {self.shape} or (C, *{self.shape}), "
                             f"got {tuple(t.shape)}")
        squeeze = t.dim() == 2
        orig_device = t.device
        t = t.to(device=self.device, dtype=self.dtype)
        if squeeze:
            t = t[None]
        return t, (is_numpy, squeeze, orig_device)

    @staticmethod
    def _finish(out, how):
        is_numpy, squeeze, orig_device = how
        if squeeze:
            out = out[0]
        return out.cpu().numpy() if is_numpy else out.to(orig_device)

    def matvec(self, v):
        """(K v)(p) = sum_q K(p, q) v(q) for v of shape (H, W) or (C, H, W) (numpy in ->
        numpy out, torch in -> torch out)."""
        t, how = self._prepare(v)
        B = self.blocks()
        spec = self._to_spectrum(t).to(B.dtype)
        out = B * spec if B.shape[-1] == 1 else torch.matmul(B, spec)  # stationary: a product
        return self._finish(self._from_spectrum(out, t.shape[0]), how)

    def solve_shifted(self, v, mu: float):
        """(K + mu I)^{-1} v on the full grid, exactly (per-frequency Cholesky, cached per mu)."""
        mu = float(mu)
        if not mu > 0:
            raise ValueError(f"mu must be positive, got {mu}")
        t, how = self._prepare(v)
        if self.period == (1, 1) and self._coarse() != (1, 1):
            # stationary kernel: K is diagonal in Fourier space, (K + mu I)^-1 is a division
            B = self.blocks()
            if bool((B.real.min() + mu) <= 0):
                raise ValueError(f"K + {mu} I is not numerically positive definite in "
                                 f"{self.dtype}; use a larger mu or float64")
            spec = self._to_spectrum(t).to(B.dtype)
            return self._finish(self._from_spectrum(spec / (B + mu), t.shape[0]), how)
        if self._chol is None or self._chol[0] != mu:
            B = self.blocks()
            eye = torch.eye(B.shape[-1], dtype=B.dtype, device=B.device)
            L, info = torch.linalg.cholesky_ex(B + mu * eye)
            if bool((info != 0).any()):
                raise ValueError(f"K + {mu} I is not numerically positive definite in "
                                 f"{self.dtype}; use a larger mu or float64")
            self._chol = (mu, L)
        L = self._chol[1]
        spec = self._to_spectrum(t).to(L.dtype)
        out = torch.cholesky_solve(spec, L)
        return self._finish(self._from_spectrum(out, t.shape[0]), how)


StructuredKernel = CNTKKernel
"""Alias: ``StructuredKernel(table)`` wraps a (Ph, Pw, H, W) table (e.g. a cached one)."""


def sum_kernels(kernels) -> CNTKKernel:
    """The sum of structured kernels over one grid (the NTK of the networks run in parallel with
    their outputs added), as one structured kernel of the lcm of their periods."""
    if any(k.table is None for k in kernels):
        raise ValueError("summing kernels needs structured (periodic) kernels")
    period = tuple(math.lcm(*(k.period[i] for k in kernels)) for i in (0, 1))
    total = sum(tables.tile_period(k.table, period) for k in kernels)
    return CNTKKernel(total, memory_budget=kernels[0].memory_budget)
