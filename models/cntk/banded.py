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

Memory is ~ (2R+1)^2 H W per table. The output is computed in pieces when the memory budget
(or, on a CPU, cache-friendly working sets) asks: groups of row offsets (the needed input row
offsets traced back through the layers, like the band), and past one row offset per piece,
blocks of rows, each needing input rows widened by the halo of the box sums. The activations of
a piece read the full diagonals recorded by a first pass at band 0.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Optional

import torch

from ..device import check_fits, format_bytes
from . import tables
from .engine import WORK_FACTOR
from .layers import Activation, Concat, Conv, Resample, Upsample

# on a CPU, pieces are kept to about this much working memory even when the budget allows
# more: their tables stay in cache and below the size that glibc maps afresh (page faults)
PIECE_WORK_BYTES = 16 * 2 ** 20

# row block of a table: None = all rows (circular), else the unwrapped row positions
# lo .. hi - 1 (hi - lo rows, taken mod the height)
Rows = Optional[tuple]


@dataclass
class Need:
    """What a table holds (or a layer needs at its input): the signed row offsets ``roff``
    (sorted LongTensor), the column offsets -cband..cband, the position ``rows`` (see
    ``Rows``), on a grid of ``size`` (H, W)."""
    roff: torch.Tensor
    cband: int
    rows: Rows
    size: tuple

    def nrows(self):
        return self.size[0] if self.rows is None else self.rows[1] - self.rows[0]

    def table_elements(self):
        return len(self.roff) * (2 * self.cband + 1) * self.nrows() * self.size[1]


@dataclass
class BandState:
    """S and M = dS * K (None for the input, or once folded into S) as offset planes
    (row offsets, 2 cband + 1, rows, W) holding what ``need`` says."""
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


def _source(layer, pos, off):
    """:meth:`Resample.source` for positions ``pos`` (P,) and signed offsets ``off`` (B,)."""
    if isinstance(layer, Upsample) and layer.mode == "bilinear_aligned":
        raise ValueError("Upsample('bilinear_aligned') is not periodic: the banded engine "
                         "needs periodic layers; use engine='dense'")
    return layer.source(pos[:, None], off[None, :])


def _band(cband, device):
    return torch.arange(-cband, cband + 1, device=device)


def trace(layers, need: Need, size_in, device):
    """Per layer of ``layers`` on an input grid ``size_in``: the :class:`Need` at its input
    for an output holding ``need`` (whose size is ignored)."""
    sizes = [tuple(size_in)] + _chain_sizes(layers, size_in)
    roff, cband, rows = need.roff, need.cband, need.rows
    needs = [None] * len(layers)
    parity = torch.arange(2, device=device)     # offsets only depend on the position's parity
    for i in range(len(layers) - 1, -1, -1):
        layer = layers[i]
        if isinstance(layer, Conv):
            rows = _widen(rows, (layer.k - 1) // 2)
        elif isinstance(layer, Resample):
            cband = max(int(o.abs().max()) for _, _, o in
                        _source(layer, parity, _band(cband, device)))
            roff = torch.unique(torch.cat([o.reshape(-1) for _, _, o in
                                           _source(layer, parity, roff)]))
            if rows is not None:
                src = _source(layer, torch.arange(*rows, device=device), roff[:1])
                rows = (min(int(p.min()) for _, p, _ in src),
                        max(int(p.max()) for _, p, _ in src) + 1)
        elif isinstance(layer, Concat):
            here = Need(roff, cband, rows, sizes[i + 1])
            ins = [trace(branch, here, sizes[i], device)[0] if branch else here
                   for branch in (layer.skip, layer.main)]
            roff = torch.unique(torch.cat([x.roff for x in ins]))
            cband = max(x.cband for x in ins)
            rows = None if any(x.rows is None for x in ins) else \
                (min(x.rows[0] for x in ins), max(x.rows[1] for x in ins))
        needs[i] = Need(roff, cband, rows, sizes[i])
    return needs


def _locate(held: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
    """Indices of the offset values ``wanted`` in the sorted ``held``."""
    idx = torch.searchsorted(held, wanted).clamp_(max=len(held) - 1)
    if not bool((held[idx] == wanted).all()):
        raise AssertionError("banded engine: a needed row offset is missing from the table")
    return idx


def crop(T: Optional[torch.Tensor], have: Need, want: Need) -> Optional[torch.Tensor]:
    """The part of planes ``T`` (holding ``have``) that ``want`` needs (a view when possible)."""
    if T is None:
        return None
    if not torch.equal(have.roff, want.roff):
        T = T.index_select(0, _locate(have.roff, want.roff))
    cut = have.cband - want.cband
    if cut < 0:
        raise AssertionError("banded engine: a layer needs a wider band than it was given")
    if cut:
        T = T.narrow(1, cut, 2 * want.cband + 1)
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
    if h == 0:
        return tables.window_sum(T, k, dims=(3,))
    out = torch.add(T.narrow(2, h, n), T.narrow(2, h + 1, n)).add_(T.narrow(2, h - 1, n))
    for m in range(2, h + 1):
        out.add_(T.narrow(2, h + m, n)).add_(T.narrow(2, h - m, n))
    return tables.window_sum(out, k, dims=(3,))


def _activation(layer: Activation, A, K, need: Need, k: int, diag: torch.Tensor):
    """Dual of ``layer`` IN PLACE on planes A, K (after a Conv(k)); ``diag`` (H, W): A(p, p) at
    every position of the grid, clamped at 0."""
    H, W = need.size
    dev = A.device
    lo, hi = (0, H) if need.rows is None else need.rows
    rows = torch.arange(lo, hi, device=dev)
    n1 = diag[rows % H][None]                                           # (1, n, W)
    pad = torch.arange(-need.cband, W + need.cband, device=dev) % W
    for i, dr in enumerate(need.roff.tolist()):   # one row offset at a time: small temporaries
        # n2[j, r, c] = diag[r + dr, c + j - cband]: a (2 cband + 1, n, W) view of n padded rows
        padded = diag.index_select(0, (rows + dr) % H).index_select(1, pad)
        layer.dual_(A[i], K[i], n1, padded.unfold(1, W, 1).permute(1, 0, 2), k)


def _resample_axis(T, layer, out: Need, have: Need, axis: int):
    """Resample planes T (holding ``have``) along ``axis`` (0 rows, 1 columns) to the offsets
    of ``out`` (and its rows; columns: all). The source offsets depend on an output position
    only through its parity (checked), so each parity class is two ``index_select``s per
    term."""
    n_in = have.size[axis]
    dev = T.device
    if axis == 0:
        pos = torch.arange(*((0, layer.new_size(n_in)) if out.rows is None else out.rows),
                           device=dev)
        off = out.roff
    else:
        pos, off = torch.arange(layer.new_size(n_in), device=dev), _band(out.cband, dev)
    shape = list(T.shape)
    shape[axis], shape[axis + 2] = len(off), len(pos)
    result = torch.empty(shape, dtype=T.dtype, device=dev)
    terms = [(w, p.expand(len(pos), len(off)), o.expand(len(pos), len(off)))
             for w, p, o in _source(layer, pos, off)]
    view = [1, 1, 1, 1]
    view[axis] = len(off)
    for start in range(min(2, len(pos))):
        acc = None
        for weight, src_pos, src_off in terms:
            o = src_off[start::2]
            if not torch.equal(o, o[:1].expand_as(o)):
                raise AssertionError("resampling offsets must depend on the parity only")
            o = _locate(have.roff, o[0]) if axis == 0 else o[0] + have.cband
            p = src_pos[start::2, 0]
            p = p - have.rows[0] if axis == 0 and have.rows is not None else p % n_in
            g = T.index_select(axis + 2, p).index_select(axis, o)
            if weight is not None:
                g.mul_(weight.expand(len(pos), len(off))[start].to(T.dtype).view(view))
            acc = g if acc is None else acc.add_(g)
        index = [slice(None)] * 4
        index[axis + 2] = slice(start, None, 2)
        result[tuple(index)] = acc
    return result


class BandedPropagator:
    """Offset planes of the NTK of ``layers`` (a validated network ending with its read-out
    Conv) on input ``size`` for ``prior``, output band ``band``."""

    def __init__(self, layers, size, band, prior, device, dtype):
        if not isinstance(band, numbers.Integral) or isinstance(band, bool) or band < 0:
            raise ValueError(f"band must be a non-negative integer, got {band!r}")
        self.layers, self.size, self.band = tuple(layers), tuple(size), int(band)
        self.prior, self.device, self.dtype = prior, device, dtype
        self.out_size = _chain_sizes(self.layers, self.size)[-1]
        self.itemsize = torch.empty((), dtype=dtype).element_size()
        self.target(_band(band, device), None)       # refuses unsupported layers early

    def target(self, roff, rows, cband=None) -> Need:
        """The output need for row offsets ``roff`` and position rows ``rows``."""
        return Need(roff, self.band if cband is None else cband, rows, self.out_size)

    # ---- memory --------------------------------------------------------------------------
    def peak_bytes(self, out: Need) -> int:
        """Estimated peak working memory of computing the output part ``out``."""
        return self._chain_peak(self.layers, out, self.size) * self.itemsize

    def _chain_peak(self, layers, out: Need, size_in, readout=True):
        needs = trace(layers, out, size_in, self.device)
        outs = needs[1:] + [out]
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
                                   self._chain_peak(branch, b, a.size, False))
        return peak

    # ---- forward ---------------------------------------------------------------------------
    def run(self, out: Need, diags=None, record=None) -> torch.Tensor:
        """Output planes (row offsets, 2 cband + 1, rows, W_out) of ``out``. ``diags``: the
        activations' diagonals by layer path (needed unless ``out`` holds every row and row
        offset 0), ``record``: a dict to collect them."""
        need = trace(self.layers, out, self.size, self.device)[0]
        lo, hi = (0, self.size[0]) if need.rows is None else need.rows
        idx = torch.arange(lo, hi, device=self.device) % self.size[0]
        S0 = self.prior.banded_table(self.size, idx, need.roff, need.cband, self.device,
                                     self.dtype)
        state = BandState(S0, None, need)
        return self._chain(self.layers, state, out, (), diags, record, readout=True)

    def _chain(self, layers, state, out, path, diags, record, readout=False):
        needs = trace(layers, out, state.need.size, self.device)
        fold = max((i for i, x in enumerate(layers) if isinstance(x, (Activation, Concat))),
                   default=-1) if readout else -1
        pre_k = None
        for i, layer in enumerate(layers):
            want = needs[i]
            S = crop(state.S, state.need, want)
            M = crop(state.M, state.need, want)
            here = path + (i,)
            after = needs[i + 1] if i + 1 < len(layers) else out
            if readout and i == len(layers) - 1:
                total = S if M is None else S + M
                return total if layer.k == 1 else _box_sum(total, layer.k, want.rows is None)
            if isinstance(layer, Conv):
                A = _box_sum(S, layer.k, want.rows is None)
                K = A.clone() if M is None else _box_sum(M, layer.k, want.rows is None).add_(A)
                state, pre_k = BandState(A, K, Need(want.roff, want.cband,
                                                    _widen(want.rows, -(layer.k // 2)),
                                                    want.size)), layer.k
            elif isinstance(layer, Activation):
                if diags is not None:
                    diag = diags[here]
                else:
                    diag = S[_locate(want.roff, torch.zeros(1, dtype=torch.long,
                                                            device=self.device))[0],
                             want.cband].clone().clamp_(min=0)
                    if record is not None:
                        record[here] = diag
                _activation(layer, S, M, want, pre_k, diag)
                state = BandState(S, M, want)
            elif isinstance(layer, Resample):
                size = _out_size(layer, want.size)
                target = Need(after.roff, after.cband, after.rows, size)
                mid = Need(want.roff, want.cband, after.rows, (size[0], want.size[1]))
                new = [None if T is None else _resample_axis(
                       _resample_axis(T, layer, target, want, 0), layer, target, mid, 1)
                       for T in (S, M)]
                state = BandState(new[0], new[1], target)
            else:
                state = self._concat(layer, BandState(S, M, want), after, here, diags, record)
            if i == fold:
                state = BandState(state.S.add_(state.M), None, state.need)
        end = Need(out.roff, out.cband, out.rows, state.need.size)
        return BandState(crop(state.S, state.need, end), crop(state.M, state.need, end), end)

    def _concat(self, layer, state, after, here, diags, record):
        if state.M is None:
            raise ValueError("Concat needs a state after a Conv-activation")
        a, b = [self._chain(branch, state, after, here + (name,), diags, record)
                for name, branch in (("skip", layer.skip), ("main", layer.main))]
        mixed = [x.mul(layer.alpha).add_(y, alpha=1 - layer.alpha)
                 for x, y in ((a.S, b.S), (a.M, b.M))]
        return BandState(mixed[0], mixed[1], a.need)

    def compute(self, budget: int, map_pieces=None) -> torch.Tensor:
        """Output planes (2R+1, 2R+1, H_out, W_out). Computed in pieces when the budget (or on a
        CPU, PIECE_WORK_BYTES of work) asks: groups of row offsets (all positions; no overlap),
        and past one row offset per piece, blocks of position rows too. The pieces are left in
        ``pieces`` (number of offset groups, number of row blocks).

        ``map_pieces`` runs the pieces elsewhere: ``map_pieces(fn, items, shared=obj)`` returns
        ``[fn(item, obj) for item in items]`` (``completion.scheduling.map_tasks`` with a
        scheduler: one task per piece on the Dask workers, the same numbers). The budget then
        bounds each piece's work on its worker, and here the table plus the pieces that come
        back (twice the table); a CPU propagator only (the workers compute on their CPU)."""
        H, W = self.out_size
        B = 2 * self.band + 1
        out_bytes = B * B * H * W * self.itemsize
        here = out_bytes if map_pieces is None else 2 * out_bytes
        check_fits(here, budget, f"the banded CNTK table ({H} x {W} positions x {B} x {B} "
                   f"offsets{'' if map_pieces is None else ', and its pieces as they come back'})",
                   "Use a smaller band, float32 (dtype='float32') or a smaller image, or raise "
                   "memory_budget.")
        if map_pieces is not None and self.device.type != "cpu":
            raise ValueError(f"banded pieces run on the workers' CPU; this propagator is on "
                             f"{self.device}")
        target = PIECE_WORK_BYTES if self.device.type == "cpu" else budget
        offsets = _band(self.band, self.device)
        n_groups, n_blocks = 1, 1
        while True:
            groups = torch.tensor_split(offsets, n_groups)
            blocks = [None] if n_blocks == 1 else \
                [(int(t[0]), int(t[-1]) + 1) for t in torch.tensor_split(torch.arange(H),
                                                                        n_blocks)]
            work = max(self.peak_bytes(self.target(g, r)) for g in groups for r in blocks)
            held = out_bytes * (n_groups * n_blocks > 1) if map_pieces is None else 0
            if held + work <= budget and (work <= target or n_groups == B):
                break
            if n_blocks >= H:
                table = "" if map_pieces is None else \
                    f"output table {format_bytes(out_bytes)} plus "
                check_fits(held + work, budget,
                           f"the banded CNTK computation ({table}{format_bytes(work)} of work for "
                           "one row offset of one row of positions"
                           f"{'' if map_pieces is None else ', on each worker'})",
                           "Raise memory_budget, use a smaller band, float32 (dtype='float32') "
                           "or a smaller image.")
            if n_groups < B:
                n_groups = min(2 * n_groups, B)
            else:
                n_blocks = min(2 * n_blocks, H)
        self.pieces = (n_groups, n_blocks)
        if n_groups * n_blocks == 1:
            return self.run(self.target(offsets, None))
        diags = {}
        self.run(self.target(offsets[self.band:self.band + 1], None, cband=0), record=diags)
        planes = torch.empty((B, B, H, W), device=self.device, dtype=self.dtype)
        parts = [(g, r) for g in groups for r in blocks]
        done = (_piece(part, (self, diags)) for part in parts) if map_pieces is None else \
            map_pieces(_piece, parts, shared=(self, diags))
        for (g, r), piece in zip(parts, done):
            lo, hi = (0, H) if r is None else r
            planes[int(g[0]) + self.band:int(g[-1]) + self.band + 1, :, lo:hi] = piece
        return planes


def _piece(part, shared) -> torch.Tensor:
    """The output planes of one piece ``part = (row offsets, position rows)`` of the table of
    ``shared = (propagator, diagonals)``: a pure function, so it can run on any worker."""
    prop, diags = shared
    roff, rows = part
    with torch.no_grad():
        return prop.run(prop.target(roff, rows), diags=diags)
