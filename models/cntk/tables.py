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


def window_sum(T: torch.Tensor, k: int, dims=(0, 1)) -> torch.Tensor:
    """``sum_m T[(a + m) mod P, d]`` over the k x k window m (separable box sum over the phases,
    i.e. circular along ``dims``); a new tensor."""
    out = T
    half = (k - 1) // 2
    for dim in dims:
        period = out.shape[dim]
        if half == 0:
            continue
        if period == 1:
            out = out * k
            continue
        acc = torch.empty_like(out)
        shifts = [shift for m in range(1, half + 1) for shift in (m % period, -m % period)]
        for j, shift in enumerate(shifts):       # acc[a] = out[a] + sum out[(a + shift) mod P]
            for start, length, src in ((0, period - shift, shift), (period - shift, shift, 0)):
                if length:
                    piece = acc.narrow(dim, start, length)
                    other = out.narrow(dim, src, length)
                    if j == 0:                   # the first sum writes acc: no copy of out
                        torch.add(out.narrow(dim, start, length), other, out=piece)
                    else:
                        piece.add_(other)
        out = acc
    return out if out is not T else T.clone()


def diagonal(T: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(Ph, Pw): the table at offset (0, 0), i.e. X(p, p) for each phase."""
    hit = (rows == 0).nonzero()
    if len(hit) == 0:
        raise ValueError("table does not hold row offset 0; pass the diagonal explicitly")
    return T[:, :, int(hit[0]), 0]


def _partner_diagonal(diag: torch.Tensor, phases: torch.Tensor, rows: torch.Tensor):
    """``diag[(a + d) mod P]`` for the phase rows ``phases`` (n,), row offsets ``rows`` (R,) and
    all column offsets, as an (n, Pw, R, 1, Pw) tensor broadcastable to (n, Pw, R, W // Pw, Pw):
    the column part only depends on d_c mod Pw, so it is gathered once per column phase."""
    ph, pw = diag.shape
    dev = diag.device
    ir = (phases[:, None] + rows[None, :]) % ph                                   # (n, R)
    ic = (torch.arange(pw, device=dev)[:, None] + torch.arange(pw, device=dev)) % pw  # (Pw, Pw)
    part = diag[ir[:, None, :, None], ic[None, :, None, :]]                        # (n, Pw, R, Pw)
    return part[:, :, :, None, :]


def activation(A, K, rows, k, dual, diag=None, chunk_elements=1 << 20):
    """Dual of an activation after a k x k conv, IN PLACE: A becomes S' and K becomes M' through
    ``dual(a, kk, n1, n2, k)`` (:meth:`Activation.dual_`) with ``n1 = A(p, p)`` and
    ``n2 = A(q, q)`` (clamped at 0); ``diag`` (Ph, Pw): A at offset 0 when the table does not
    hold row offset 0. Works through the phase rows in pieces of about ``chunk_elements`` so
    that temporaries stay small."""
    diag = (diagonal(A, rows) if diag is None else diag).clone()
    ph, pw = diag.shape
    R, W = A.shape[2:]
    diag.clamp_(min=0)
    step = max(1, chunk_elements // max(1, pw * R * W))
    for start in range(0, ph, step):
        phases = torch.arange(start, min(start + step, ph), device=A.device)
        shape5 = (len(phases), pw, R, W // pw, pw)
        dual(A[start:start + len(phases)].view(shape5), K[start:start + len(phases)].view(shape5),
             diag[start:start + len(phases), :, None, None, None],
             _partner_diagonal(diag, phases, rows), k)
    return A, K


def resample(T: torch.Tensor, terms, axis: int, positions) -> torch.Tensor:
    """Resample along ``axis`` (0 rows, 1 columns): the output at (phase a', offset j) is
    ``sum_terms weight * T[phase(a'), positions(offset)]`` (see :meth:`Resample.terms`; the
    source phase depends on the output phase only); ``positions`` maps offset values to indices
    of the held offsets. One ``index_select`` per output phase and term."""
    p_out, n_out = terms[0][1].shape
    shape = list(T.shape)
    shape[axis], shape[axis + 2] = p_out, n_out
    out = torch.empty(shape, dtype=T.dtype, device=T.device)
    for j, (weight, phase, offset) in enumerate(terms):
        src_phase = phase[:, 0].tolist()
        for a in range(p_out):
            g = torch.index_select(T.select(axis, src_phase[a]), axis + 1, positions(offset[a]))
            if weight is not None:
                w = weight[a].to(T.dtype)
                g.mul_(w[:, None] if axis == 0 else w)
            dst = out.select(axis, a)
            if j == 0:
                dst.copy_(g)
            else:
                dst.add_(g)
    return out


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
