"""Banded engine: the CNTK of any (non-stationary) prior, restricted to a band of offsets.

A kernel X(p, q) between the pixels of an H x W grid is held for every position p and the
offsets d = q - p with |d_r|, |d_c| <= R only (circular: q = ((r + d_r) mod H, (c + d_c) mod W)),
as *offset planes* ``P[R + d_r, R + d_c, r, c] = X((r, c), (r, c) + d)``, shape
(2R+1, 2R+1, H, W) (the public ``BandedKernel.table`` is its (H, W, 2R+1, 2R+1) view). It is
the dense engine's table restricted to a band, so the entries equal the dense engine's there:

- a Conv moves both positions together and keeps the offset: a box sum over positions, plane by
  plane;
- an activation reads the diagonals X(p, p) (the centre plane) and X(p + d, p + d) (the same
  plane rolled by d);
- a resampling maps each (position, offset) to input (position, offset) pairs
  (:meth:`Resample.source`): a Downsample needs twice the band at its input, an Upsample about
  half of it, so the band every layer needs is traced back from the output band;
- a Concat mixes its two branches, each fed with what it needs of the common input.

Memory is ~ (2R+1)^2 H W per table. Larger than the budget, the output is computed in blocks of
rows: each block needs a block of input rows widened by the halo of the box sums (traced back
like the band), and the activations read their full diagonals recorded by a first pass at
band 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..device import check_fits, format_bytes
from . import tables
from .engine import TILE_WORK_BYTES, WORK_FACTOR
from .layers import Activation, Concat, Conv, Downsample, Resample, Upsample

# offset band and row block of a table: rows None = all rows (circular), else the unwrapped
# row positions lo .. hi - 1 (hi - lo rows, taken mod the height)
Rows = Optional[tuple]


@dataclass
class Need:
    """What a layer needs at its input: ``band`` and ``rows`` (see ``Rows``), on a grid of
    ``size`` (H, W)."""
    band: int
    rows: Rows
    size: tuple

    def nrows(self):
        return self.size[0] if self.rows is None else self.rows[1] - self.rows[0]

    def table_elements(self):
        return (2 * self.band + 1) ** 2 * self.nrows() * self.size[1]


@dataclass
class BandState:
    """S and M = dS * K (None for the input, or once folded into S) as offset planes
    (2R+1, 2R+1, rows, W) where ``need`` says which band and rows they hold."""
    S: torch.Tensor
    M: Optional[torch.Tensor]
    need: Need


def _widen(rows: Rows, h: int) -> Rows:
    return None if rows is None else (rows[0] - h, rows[1] + h)


def _out_size(layer, size):
    if isinstance(layer, Resample):
        return layer.new_size(size[0]), layer.new_size(size[1])
    if isinstance(layer, Concat):
        for branch in (layer.skip, layer.main):
            if branch:
                return _chain_sizes(branch, size)[-1]
    return size


def _chain_sizes(layers, size):
    """Grid size after each layer."""
    out = []
    for layer in layers:
        size = _out_size(layer, size)
        out.append(size)
    return out


def _resample_source(layer, band, rows, n_out, device):
    """Row terms of a resampling for output band ``band`` and rows ``rows`` (None: all n_out):
    the output row positions and [(weight, source position, source offset)]."""
    if isinstance(layer, Upsample) and layer.mode == "bilinear_aligned":
        raise ValueError("Upsample('bilinear_aligned') is not periodic: the banded engine "
                         "needs periodic layers; use engine='dense'")
    pos = torch.arange(*((0, n_out) if rows is None else rows), device=device)
    off = torch.arange(-band, band + 1, device=device)
    return pos, layer.source(pos[:, None], off[None, :])


def trace(layers, band: int, rows: Rows, size_in, device):
    """Per layer of ``layers`` on an input grid ``size_in``: the :class:`Need` at its input
    for an output of ``band`` and ``rows``; the chain input's need is ``needs[0]`` (or the
    output's for an empty chain)."""
    sizes = [tuple(size_in)] + _chain_sizes(layers, size_in)
    needs = [None] * len(layers)
    for i in range(len(layers) - 1, -1, -1):
        layer = layers[i]
        if isinstance(layer, Conv):
            rows = _widen(rows, (layer.k - 1) // 2)
        elif isinstance(layer, Resample):
            # offsets only depend on the parity of the position: both parities give the band
            _, parity = _resample_source(layer, band, None, 2, device)
            _, src = _resample_source(layer, band, rows, sizes[i + 1][0], device)
            band = max(int(o.abs().max()) for _, _, o in parity)
            if rows is not None:
                rows = (min(int(p.min()) for _, p, _ in src),
                        max(int(p.max()) for _, p, _ in src) + 1)
        elif isinstance(layer, Concat):
            ins = [trace(branch, band, rows, sizes[i], device)[0] if branch
                   else Need(band, rows, sizes[i]) for branch in (layer.skip, layer.main)]
            band = max(x.band for x in ins)
            rows = None if any(x.rows is None for x in ins) else \
                (min(x.rows[0] for x in ins), max(x.rows[1] for x in ins))
        needs[i] = Need(band, rows, sizes[i])
    return needs


def crop(T: Optional[torch.Tensor], have: Need, want: Need) -> Optional[torch.Tensor]:
    """The part of planes ``T`` (holding ``have``) that ``want`` needs (a view when possible)."""
    if T is None:
        return None
    cut = have.band - want.band
    if cut < 0:
        raise AssertionError("banded engine: a layer needs a wider band than it was given")
    if cut:
        T = T.narrow(0, cut, 2 * want.band + 1).narrow(1, cut, 2 * want.band + 1)
    if want.rows is None:
        if have.rows is not None:
            raise AssertionError("banded engine: all rows needed from a row block")
        return T
    lo, hi = want.rows
    if have.rows is None:
        idx = torch.arange(lo, hi, device=T.device) % have.size[0]
        return T.index_select(2, idx)
    if lo < have.rows[0] or hi > have.rows[1]:
        raise AssertionError("banded engine: a layer needs rows outside its input block")
    return T.narrow(2, lo - have.rows[0], hi - lo)


def _box_sum(T: torch.Tensor, k: int, all_rows: bool) -> torch.Tensor:
    """Box sum of k x k positions per offset plane: circular along the columns, and along the
    rows when ``all_rows``; else over a row block whose k - 1 halo rows are dropped. Terms are
    added in the order of :func:`tables.window_sum` (rows first; centre, +1, -1, +2, ...), so
    a row block's entries are bitwise those of the whole grid: the activations' correlations
    stay exactly 1 on the diagonal, where arccos is most sensitive."""
    if all_rows:
        return tables.window_sum(T, k, dims=(2, 3))
    h = (k - 1) // 2
    n = T.shape[2] - 2 * h
    out = T.narrow(2, h, n).clone()
    for m in range(1, h + 1):
        out.add_(T.narrow(2, h + m, n)).add_(T.narrow(2, h - m, n))
    return tables.window_sum(out, k, dims=(3,))


def _activation(layer: Activation, A, K, need: Need, k: int, diag: torch.Tensor):
    """Dual of ``layer`` IN PLACE on planes A, K (after a Conv(k)); ``diag`` (H, W): A(p, p) at
    every position of the grid, clamped at 0."""
    R = need.band
    H, W = need.size
    dev = A.device
    lo, hi = (0, H) if need.rows is None else need.rows
    rows = torch.arange(lo, hi, device=dev)
    n1 = diag[rows % H][None]                                           # (1, n, W)
    cols = (torch.arange(W, device=dev)[None, :] + torch.arange(-R, R + 1, device=dev)[:, None]) % W
    for i in range(2 * R + 1):          # one row-offset plane at a time: small temporaries
        n2 = diag[(rows + i - R) % H][:, cols].permute(1, 0, 2)         # (2R+1, n, W)
        layer.dual_(A[i], K[i], n1, n2, k)


def _resample_axis(T, layer, band_out, rows_out, have: Need, axis: int):
    """Resample planes T (holding ``have``) along ``axis`` (0 rows, 1 columns) to band
    ``band_out`` and output rows ``rows_out`` (columns: all)."""
    n_in = have.size[axis]
    n_out = layer.new_size(n_in)
    pos, terms = _resample_source(layer, band_out, rows_out if axis == 0 else None, n_out,
                                  T.device)
    shape = (len(pos), 2 * band_out + 1)
    out = None
    for weight, src_pos, src_off in terms:
        if axis == 0 and have.rows is not None:
            src_pos = src_pos - have.rows[0]
        else:
            src_pos = src_pos % n_in
        src_pos, src_off = src_pos.expand(shape), (src_off + have.band).expand(shape)
        if axis == 0:           # T[off, :, pos, :] -> (P, B, Bc, W) -> (B, Bc, P, W)
            g = T[src_off, :, src_pos, :].permute(1, 2, 0, 3)
            w = None if weight is None else weight.expand(shape).T[:, None, :, None]
        else:                   # T[:, off, :, pos] -> (P, B, Br, n) -> (Br, B, n, P)
            g = T[:, src_off, :, src_pos].permute(2, 1, 3, 0)
            w = None if weight is None else weight.expand(shape).T[None, :, None, :]
        if w is not None:
            g = g * w.to(T.dtype)
        out = g.contiguous() if out is None else out.add_(g)
    return out


class BandedPropagator:
    """Offset planes of the NTK of ``layers`` (a validated network ending with its read-out
    Conv) on input ``size`` for ``prior``, output band ``band``."""

    def __init__(self, layers, size, band, prior, device, dtype):
        if not isinstance(band, int) or isinstance(band, bool) or band < 0:
            raise ValueError(f"band must be a non-negative integer, got {band!r}")
        self.layers, self.size, self.band = tuple(layers), tuple(size), band
        self.prior, self.device, self.dtype = prior, device, dtype
        self.out_size = _chain_sizes(self.layers, self.size)[-1]
        self.itemsize = torch.empty((), dtype=dtype).element_size()
        trace(self.layers, band, None, self.size, device)     # refuses unsupported layers early

    # ---- memory --------------------------------------------------------------------------
    def peak_bytes(self, rows: Rows) -> int:
        """Estimated peak working memory of computing the output rows ``rows``."""
        return self._chain_peak(self.layers, self.band, rows, self.size) * self.itemsize

    def _chain_peak(self, layers, band, rows, size_in, readout=True):
        needs = trace(layers, band, rows, size_in, self.device)
        outs = needs[1:] + [Need(band, rows, _chain_sizes(layers, size_in)[-1])]
        peak = 0
        for i, (layer, a, b) in enumerate(zip(layers, needs, outs)):
            last = readout and i == len(layers) - 1
            kind = "Output" if last else next(name for name, cls in (
                ("Activation", Activation), ("Conv", Conv), ("Resample", Resample),
                ("Concat", Concat)) if isinstance(layer, cls))
            peak = max(peak, WORK_FACTOR[kind] * max(a.table_elements(), b.table_elements()))
            if isinstance(layer, Concat):
                for branch in (layer.skip, layer.main):
                    if branch:
                        peak = max(peak, 2 * a.table_elements() + 2 * b.table_elements() +
                                   self._chain_peak(branch, b.band, b.rows, a.size, False))
        return peak

    # ---- forward ---------------------------------------------------------------------------
    def run(self, rows: Rows, band: int, diags=None, record=None) -> torch.Tensor:
        """Output planes (2 band + 1, 2 band + 1, rows, W_out). ``diags``: the activations'
        diagonals by layer path (needed for a row block), ``record``: a dict to collect them."""
        need = trace(self.layers, band, rows, self.size, self.device)[0]
        lo, hi = (0, self.size[0]) if rows is None else need.rows
        idx = torch.arange(lo, hi, device=self.device) % self.size[0]
        S0 = self.prior.banded_table(self.size, idx, need.band, self.device, self.dtype)
        state = BandState(S0, None, need)
        return self._chain(self.layers, state, band, rows, (), diags, record, readout=True)

    def _chain(self, layers, state, band, rows, path, diags, record, readout=False):
        needs = trace(layers, band, rows, state.need.size, self.device)
        fold = max((i for i, x in enumerate(layers) if isinstance(x, (Activation, Concat))),
                   default=-1) if readout else -1
        pre_k = None
        for i, layer in enumerate(layers):
            want = needs[i]
            S = crop(state.S, state.need, want)
            M = crop(state.M, state.need, want)
            here = path + (i,)
            if readout and i == len(layers) - 1:
                total = S if M is None else S + M
                return _box_sum(total, layer.k, rows is None)
            if isinstance(layer, Conv):
                A = _box_sum(S, layer.k, want.rows is None)
                K = A.clone() if M is None else _box_sum(M, layer.k, want.rows is None).add_(A)
                state, pre_k = BandState(A, K, Need(want.band, _widen(want.rows, -(layer.k // 2)),
                                                    want.size)), layer.k
            elif isinstance(layer, Activation):
                if diags is not None:
                    diag = diags[here]
                else:
                    diag = S[want.band, want.band].clone().clamp_(min=0)
                    if record is not None:
                        record[here] = diag
                _activation(layer, S, M, want, pre_k, diag)
                state = BandState(S, M, want)
            elif isinstance(layer, Resample):
                out = needs[i + 1] if i + 1 < len(layers) else Need(band, rows, None)
                new = [None if T is None else _resample_axis(
                       _resample_axis(T, layer, out.band, out.rows, want, 0), layer, out.band,
                       None, Need(want.band, out.rows, (layer.new_size(want.size[0]),
                                                        want.size[1])), 1)
                       for T in (S, M)]
                state = BandState(new[0], new[1], Need(out.band, out.rows,
                                                       _out_size(layer, want.size)))
            else:
                state = self._concat(layer, BandState(S, M, want), needs, i, band, rows, here,
                                     diags, record)
            if i == fold:
                state = BandState(state.S.add_(state.M), None, state.need)
        end = Need(band, rows, state.need.size)
        return BandState(crop(state.S, state.need, end), crop(state.M, state.need, end), end)

    def _concat(self, layer, state, needs, i, band, rows, here, diags, record):
        if state.M is None:
            raise ValueError("Concat needs a state after a Conv-activation")
        out = needs[i + 1] if i + 1 < len(needs) else Need(band, rows, None)
        parts = [self._chain(branch, state, out.band, out.rows, here + (name,), diags, record)
                 for name, branch in (("skip", layer.skip), ("main", layer.main))]
        a, b = parts
        mixed = [x.mul(layer.alpha).add_(y, alpha=1 - layer.alpha)
                 for x, y in ((a.S, b.S), (a.M, b.M))]
        return BandState(mixed[0], mixed[1], a.need)

    def compute(self, budget: int) -> torch.Tensor:
        """Output planes (2R+1, 2R+1, H_out, W_out), in row blocks when the budget asks (their
        number is left in ``n_blocks``)."""
        H, W = self.out_size
        B = 2 * self.band + 1
        out_bytes = B * B * H * W * self.itemsize
        check_fits(out_bytes, budget, f"the banded CNTK table ({H} x {W} positions x {B} x {B} "
                   "offsets)", "Use a smaller band, float32 (dtype='float32') or a smaller image, "
                   "or raise memory_budget.")
        target = TILE_WORK_BYTES if self.device.type == "cpu" else budget
        n_blocks = 1
        while True:
            blocks = [(int(t[0]), int(t[-1]) + 1) for t in torch.tensor_split(torch.arange(H),
                                                                             n_blocks)]
            work = self.peak_bytes(None) if n_blocks == 1 else \
                max(self.peak_bytes(r) for r in blocks)
            fits = out_bytes * (n_blocks > 1) + work <= budget
            if fits and (work <= target or 8 * n_blocks >= H):
                break
            if n_blocks >= H:
                check_fits(out_bytes + work, budget,
                           f"the banded CNTK computation (output table {format_bytes(out_bytes)}"
                           f" plus {format_bytes(work)} of work for one row of positions)",
                           "Raise memory_budget, use a smaller band, float32 "
                           "(dtype='float32') or a smaller image.")
            n_blocks = min(2 * n_blocks, H)
        self.n_blocks = n_blocks
        if n_blocks == 1:
            return self.run(None, self.band)
        diags = {}
        self.run(None, 0, record=diags)
        planes = torch.empty((B, B, H, W), device=self.device, dtype=self.dtype)
        for lo, hi in blocks:
            planes[:, :, lo:hi] = self.run((lo, hi), self.band, diags=diags)
        return planes
