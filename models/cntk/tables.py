"""Kernel tables in the (phase, offset) layout and the vectorised operations on them.

A kernel X(p, q) between pixel positions of an H x W grid that is periodic under joint shifts,
X(p + P, q + P) = X(p, q) with period P = (Ph, Pw), is stored as a table
``T[a_r, a_c, i, d_c] = X(p, p + d)`` with ``a = p mod P`` the phase of p and d = q - p the offset
(mod H, W); ``i`` indexes the row offsets held (``rows[i]``; all of 0..H-1 unless the computation
is tiled over row offsets). Period (1, 1) is a stationary kernel; period (H, W) holds every pair
(the dense engine). Joint shifts of both positions keep the offset, so a convolution only mixes
phases.
"""
from __future__ import annotations

import torch


def window_sum(T: torch.Tensor, k: int) -> torch.Tensor:
    """``sum_m T[(a + m) mod P, d]`` over the k x k window m (separable box sum over phases);
    a new tensor."""
    out = T
    half = (k - 1) // 2
    for dim in (0, 1):
        period = out.shape[dim]
        if half == 0:
            continue
        if period == 1:
            out = out * k
            continue
        acc = out.clone()
        for m in range(1, half + 1):
            for shift in (m % period, -m % period):   # acc[a] += out[(a + shift) mod P]
                acc.narrow(dim, 0, period - shift).add_(out.narrow(dim, shift, period - shift))
                if shift:
                    acc.narrow(dim, period - shift, shift).add_(out.narrow(dim, 0, shift))
        out = acc
    return out if out is not T else T.clone()


def diagonal(T: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(Ph, Pw): the table at offset (0, 0), i.e. X(p, p) for each phase."""
    hit = (rows == 0).nonzero()
    if len(hit) == 0:
        raise ValueError("table does not hold row offset 0; pass the diagonal explicitly")
    return T[:, :, int(hit[0]), 0]


def partner_diagonal(diag: torch.Tensor, rows: torch.Tensor, n_cols: int) -> torch.Tensor:
    """(Ph, Pw, R, W): X(q, q) for q = p + d, i.e. ``diag[(a + d) mod P]``."""
    ph, pw = diag.shape
    dev = diag.device
    ir = (torch.arange(ph, device=dev)[:, None] + rows[None, :]) % ph
    ic = (torch.arange(pw, device=dev)[:, None] + torch.arange(n_cols, device=dev)[None, :]) % pw
    return diag[ir[:, None, :, None], ic[None, :, None, :]]


def activation(A, K, rows, k, duals, diag=None, chunks=8):
    """Dual of an activation after a k x k conv, IN PLACE: A becomes S' and K becomes M', with
    ``S' = kap1(rho) sqrt(n1 n2) / k^2``, ``M' = kap0(rho) K / k^2``, ``rho = A / sqrt(n1 n2)``
    clamped to [-1, 1]; all zero where n1 or n2 is zero. Works through the row offsets in
    ``chunks`` pieces so that temporaries stay a fraction of a table."""
    diag = (diagonal(A, rows) if diag is None else diag).clone()
    scale = 1.0 / (k * k)
    step = max(1, -(-A.shape[2] // chunks))
    for start in range(0, A.shape[2], step):
        part = slice(start, start + step)
        a, kk = A[:, :, part], K[:, :, part]
        norm = partner_diagonal(diag, rows[part], A.shape[3])
        norm.mul_(diag[:, :, None, None]).sqrt_()
        positive = norm > 0
        rho = torch.where(positive, a / torch.where(positive, norm, 1.0), 0.0).clamp_(-1, 1)
        kap0, kap1 = duals(rho)
        del rho
        a.copy_(kap1.mul_(norm).mul_(scale))
        kk.mul_(kap0.mul_(scale)).masked_fill_(~positive, 0)
    return A, K


def resample(T: torch.Tensor, terms, axis: int, positions) -> torch.Tensor:
    """Resample along ``axis`` (0 rows, 1 columns): the output at (phase a', offset j) is
    ``sum_terms weight * T[phase, positions(offset)]`` (see :meth:`Resample.terms`);
    ``positions`` maps offset values to indices of the held offsets."""
    view = T.movedim((axis, axis + 2), (0, 1))
    out = None
    for weight, phase, offset in terms:
        g = view[phase, positions(offset)]
        if weight is not None:
            g = g * weight.to(T.dtype)[:, :, None, None]
        out = g if out is None else out.add_(g)
    return out.movedim((0, 1), (axis, axis + 2)).contiguous()


def value_positions(values: torch.Tensor, n: int):
    """Function mapping offset values (mod n) to their indices in ``values``."""
    if len(values) == n and bool((values == torch.arange(n, device=values.device)).all()):
        return lambda v: v
    lookup = torch.full((n,), -1, dtype=torch.long, device=values.device)
    lookup[values] = torch.arange(len(values), device=values.device)

    def positions(v):
        idx = lookup[v]
        if bool((idx < 0).any()):
            raise AssertionError("needed row offset missing from the tile")
        return idx
    return positions


def to_pairs(T: torch.Tensor, size) -> torch.Tensor:
    """(H, W, H, W) pixel-pair kernel ``X[p_r, p_c, q_r, q_c]`` from a full-offset table."""
    H, W = size
    ph, pw = T.shape[:2]
    dev = T.device
    r = torch.arange(H, device=dev)
    c = torch.arange(W, device=dev)
    pr = (r % ph)[:, None, None, None]
    pc = (c % pw)[None, :, None, None]
    dr = ((r[None, :] - r[:, None]) % H)[:, None, :, None]
    dc = ((c[None, :] - c[:, None]) % W)[None, :, None, :]
    return T[pr, pc, dr, dc]


def tile_period(T: torch.Tensor, period) -> torch.Tensor:
    """The table of the same kernel with the (multiple) period ``period``: T[a mod P]."""
    fr, fc = period[0] // T.shape[0], period[1] // T.shape[1]
    return T.repeat(fr, fc, 1, 1) if (fr, fc) != (1, 1) else T.clone()
