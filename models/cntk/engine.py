"""Propagation of the kernel tables through a layer list, optionally tiled over row offsets.

Layers only ever read the row offsets that their outputs need (convolutions and activations
keep offsets; resampling maps them), so the output table can be computed for a subset of its row
offsets from subsets of the earlier tables: a first pass over row offset 0 records the diagonal
every activation needs, then tiles of output row offsets are computed independently.
"""
from __future__ import annotations

import torch

from ..device import check_fits, format_bytes
from . import tables
from .layers import Activation, Concat, Conv, Grid, Post, Resample, trace_geometry

# live tables of a layer's output size at its peak (inputs, outputs and temporaries)
WORK_FACTOR = {"Activation": 3, "Conv": 4, "Resample": 4, "Output": 3, "Concat": 6}


def _work_kind(layer, last):
    if last:
        return "Output"
    return next(name for name, cls in (("Activation", Activation), ("Conv", Conv),
                                       ("Resample", Resample), ("Concat", Concat))
                if isinstance(layer, cls))


# tiles are kept to about this much working memory even when the budget allows more: fresh
# allocations of large tables cost page faults, and smaller tiles reuse freed memory
TILE_WORK_BYTES = 64 * 2 ** 20


class Propagator:
    """Computes the NTK table of ``layers`` on input grid ``size`` for prior ``prior``, starting
    with input period ``period`` ((1, 1) structured, ``size`` dense). With ``average`` the output
    is the phase average of the table (period (1, 1), float64)."""

    def __init__(self, layers, size, period, prior, device, dtype, average=False):
        self.layers, self.prior, self.device, self.dtype = layers, prior, device, dtype
        self.size, self.period = tuple(size), tuple(period)
        self.average = bool(average)
        self.geometry = trace_geometry(layers, self.size, self.period)
        self.out_size, self.out_period = self.geometry[-1]
        if self.average:
            self.out_period = (1, 1)
        self.itemsize = torch.empty((), dtype=dtype).element_size()

    # ---- row-offset bookkeeping ------------------------------------------------------------
    def _inputs(self, i):
        return (self.size, self.period) if i == 0 else self.geometry[i - 1]

    def needed_rows(self, out_rows):
        """Row offsets needed at the input of each layer (``need[i]``, a sorted LongTensor) and
        the row terms (``terms[i]``, with the output rows they produce) of resampling layers."""
        need = [None] * len(self.layers)
        terms = [None] * len(self.layers)
        rows = out_rows
        for i in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[i]
            if isinstance(layer, Resample):
                (H, _), (ph, _) = self._inputs(i)
                terms[i] = (layer.terms(ph, H, rows, self.device), rows)
                rows = torch.unique(torch.cat([t[2].reshape(-1) for t in terms[i][0]]))
            elif isinstance(layer, Concat):
                if len(rows) != self.geometry[i][0][0]:
                    raise ValueError("networks with Concat are computed in one piece (no tiling)")
            need[i] = rows
        return need, terms

    def peak_bytes(self, need):
        """Estimated peak working memory of a pass holding row offsets ``need``."""
        peak = 0
        last = len(self.layers) - 1
        for i, rows in enumerate(need):
            factor = WORK_FACTOR[_work_kind(self.layers[i], i == last)]
            for (H, W), (ph, pw) in (self._inputs(i), self.geometry[i]):
                peak = max(peak, factor * ph * pw * len(rows) * W)
        return peak * self.itemsize

    def output_bytes(self):
        (H, W), (ph, pw) = self.out_size, self.out_period
        return ph * pw * H * W * (8 if self.average else self.itemsize)

    # ---- forward ----------------------------------------------------------------------------
    def run(self, out_rows, diags=None, record=None, on_layer=None):
        """Table of the output restricted to row offsets ``out_rows``. ``diags[i]``: diagonal
        for activation layer i (from a pass over row 0); ``record`` collects them."""
        need, row_terms = self.needed_rows(out_rows)
        grid = Grid(self.size, self.period, need[0])
        state = Post(self.prior.table(self.size, self.period, need[0], self.device, self.dtype),
                     None, grid)
        last = len(self.layers) - 1
        # after the last activation / concat only S + M is read, if by linear layers only
        fold = max(i for i, layer in enumerate(self.layers)
                   if isinstance(layer, (Activation, Concat)))
        for i, layer in enumerate(self.layers):
            if i == last:
                out = layer.output(state, self.average)
            elif isinstance(layer, Conv):
                state = layer.apply(state)
            elif isinstance(layer, Activation):
                diag = None if diags is None else diags[i]
                if record is not None:
                    record[i] = tables.diagonal(state.A, state.grid.rows).clone()
                state = layer.apply(state, diag)
            elif isinstance(layer, Resample):
                state = layer.apply(state, *row_terms[i])
            else:
                state = layer.apply(state)
            if i == fold:
                state = Post(state.S.add_(state.M), None, state.grid)
            if on_layer is not None:
                on_layer()
        return out

    def compute(self, budget, progress=False):
        """Full output table (Ph, Pw, H, W), tiled over row offsets to fit ``budget`` bytes."""
        H_out = self.out_size[0]
        out_bytes = self.output_bytes()
        cheaper = ("average_phases=True (the stationary average, computed tile by tile)"
                   if self.period == (1, 1) else "the structured engine (stationary prior)")
        check_fits(out_bytes, budget, f"the CNTK table ({self.out_period[0]} x "
                   f"{self.out_period[1]} phases x {self.out_size[0]} x {self.out_size[1]} offsets)",
                   f"Use {cheaper}, float32, a smaller image or fewer upsampling levels, or raise "
                   "memory_budget.")
        all_rows = torch.arange(H_out, device=self.device)
        concat = any(isinstance(layer, Concat) for layer in self.layers)
        # on a CPU, tiles also stay near TILE_WORK_BYTES (a GPU's caching allocator reuses memory)
        target = TILE_WORK_BYTES if self.device.type == "cpu" else budget
        n_tiles = 1
        while True:
            tiles = torch.tensor_split(all_rows, n_tiles)
            worst = max(self.peak_bytes(self.needed_rows(t)[0]) for t in tiles)
            fits = out_bytes * (n_tiles > 1) + worst <= budget
            if fits and (concat or worst <= target or 8 * n_tiles >= H_out):
                break
            if n_tiles >= H_out or concat:
                check_fits(out_bytes + worst, budget,
                           f"the CNTK computation (output table {format_bytes(out_bytes)} plus "
                           f"{format_bytes(worst)} of work for the smallest tile; networks with "
                           "Concat are computed in one piece)",
                           "Raise memory_budget, use float32 (dtype='float32'), a smaller image "
                           "or fewer upsampling levels.")
            n_tiles = min(2 * n_tiles, H_out)
        from tqdm.auto import tqdm
        total = len(self.layers) * (n_tiles + (n_tiles > 1))
        with tqdm(total=total, desc=f"CNTK {self.out_size[0]}x{self.out_size[1]}",
                  disable=not progress, leave=False) as bar:
            if n_tiles == 1:
                return self.run(all_rows, on_layer=bar.update)
            diags = {}
            self.run(torch.zeros(1, dtype=torch.long, device=self.device), record=diags,
                     on_layer=bar.update)
            ph, pw = self.out_period
            table = torch.empty((ph, pw, H_out, self.out_size[1]), device=self.device,
                                dtype=torch.float64 if self.average else self.dtype)
            for t in tiles:
                table[:, :, t] = self.run(t, diags=diags, on_layer=bar.update)
            return table

