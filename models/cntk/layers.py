"""Layer objects of the CNTK: each one knows how it transforms the kernel tables.

The kernel of a network is propagated as tables in the (phase, offset) layout described in
:mod:`models.cntk.tables`. Between layers the state is a :class:`Post` (covariance ``S`` of the
activations and ``M = dS * K``, the derivative covariance times the NTK, both (Ph, Pw, R, W));
a convolution turns it into a :class:`Pre` (pre-activation covariance ``A`` and NTK ``K``),
and an activation turns a :class:`Pre` back into a :class:`Post`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from . import tables


@dataclass
class Grid:
    """Geometry of a table: image ``size`` (H, W), ``period`` (Ph, Pw) of its phases and the
    ``rows``: LongTensor of the row offsets it holds (all of ``0..H-1`` unless tiled)."""
    size: tuple
    period: tuple
    rows: torch.Tensor


@dataclass
class Post:
    """Kernel state after an activation (or the input): ``S`` covariance, ``M = dS * K``
    (``None`` for the network input, which has no parameters)."""
    S: torch.Tensor
    M: Optional[torch.Tensor]
    grid: Grid


@dataclass
class Pre:
    """Kernel state right after a convolution of window ``k``: ``A`` covariance, ``K`` NTK."""
    A: torch.Tensor
    K: torch.Tensor
    k: int
    grid: Grid


class Layer:
    """Base class; ``token`` is the layer's word in a spec string (see :mod:`.spec`)."""
    token = "?"

    def describe(self) -> str:
        return type(self).__name__ + "()"

    def __repr__(self):
        return self.describe()

    def __eq__(self, other):
        return type(self) is type(other) and self.token == other.token

    def __hash__(self):
        return hash(self.token)


class Conv(Layer):
    """k x k convolution, stride 1, circular padding, NTK parameterisation, no bias.

    ``A(p, q) = sum_m S(p+m, q+m)`` and ``K(p, q) = sum_m [S + dS K](p+m, q+m)`` over the
    k x k window offsets m (both positions shifted together)."""

    def __init__(self, k: int = 3):
        if not isinstance(k, int) or isinstance(k, bool) or k < 1 or k % 2 == 0:
            raise ValueError(f"Conv kernel size must be an odd positive integer, got {k!r}")
        self.k = k

    @property
    def token(self):
        return f"C{self.k}"

    def describe(self):
        return f"Conv({self.k})  {self.k}x{self.k}, circular padding"

    def apply(self, state: Post) -> Pre:
        if state.M is None:
            A = tables.window_sum(state.S, self.k)
            K = A.clone()
        else:
            A = tables.window_sum(state.S, self.k)
            K = tables.window_sum(state.M, self.k).add_(A)
        return Pre(A, K, self.k, state.grid)

    def output(self, state: Post, average: bool = False) -> torch.Tensor:
        """Last layer: the NTK table ``sum_m [S + M](p+m, q+m)``; with ``average``, its mean over
        the phases (1, 1, R, W) in float64, which is ``k^2`` times the mean of ``S + M`` (the
        window only moves phases)."""
        total = state.S if state.M is None else state.S + state.M
        if average:
            n = total.shape[0] * total.shape[1]
            return total.sum(dim=(0, 1), keepdim=True, dtype=torch.float64).mul_(self.k ** 2 / n)
        return tables.window_sum(total, self.k)


class Activation(Layer):
    """Pointwise nonlinearity; its dual activations ``kap0``/``kap1`` are normalised so that
    ``kap(1) = 1``. Finite network with the same kernel (the reference's convention): every
    conv scaled by 1/sqrt(input channels), the activation by sqrt(2 / (1 + slope^2)) / k with k
    the kernel size of the conv before it -- the usual NTK parameterisation 1/sqrt(C k^2) when
    all kernels have one size (checked against wide finite networks in the tests)."""
    slope = 0.0

    def dual_coefficients(self):
        """(u, v) of the normalised dual activations at correlation rho = cos(theta):
        ``kap0(rho) = 1 + u theta`` and ``kap1(rho) = rho kap0(rho) + v sin(theta)``.
        ReLU: u = -1/pi, v = 1/pi (the arc-cosine kernels); LeakyReLU(slope) adds
        c = 2 slope / (pi (1 + slope^2)) to u and subtracts it from v."""
        c = 2 * self.slope / (math.pi * (1 + self.slope ** 2))
        return c - 1 / math.pi, 1 / math.pi - c

    def dual_(self, a: torch.Tensor, kk: torch.Tensor, n1: torch.Tensor, n2: torch.Tensor,
              k: int) -> None:
        """IN PLACE on a block of entries: ``a`` (covariance A) becomes S' and ``kk`` (NTK K)
        becomes M' = dS' K, given the diagonals ``n1 = A(p, p)``, ``n2 = A(q, q)`` (>= 0,
        broadcastable to ``a``) of the same entries and the window ``k`` of the conv before:
        ``S' = kap1(rho) sqrt(n1 n2) / k^2``, ``M' = kap0(rho) K / k^2``, ``rho = A / sqrt(n1 n2)``
        clamped to [-1, 1]; both zero where n1 or n2 is zero."""
        u, v = self.dual_coefficients()
        scale = 1.0 / (k * k)
        # sqrt(n1 n2) rather than sqrt(n1) sqrt(n2): exactly n on the diagonal, so rho = 1 there
        norm = (n2 * n1).sqrt_()
        degenerate = not bool((norm > 0).all())
        rho = torch.div(a, norm)
        if degenerate:
            rho.nan_to_num_(0.0, 0.0, 0.0)
        rho.clamp_(-1, 1)
        kap0 = torch.arccos(rho).mul_(u).add_(1)
        # a = (rho kap0 + v sqrt(1 - rho^2)) * norm / k^2
        a.copy_(rho.mul(kap0).add_(rho.square_().neg_().add_(1).clamp_(min=0).sqrt_(), alpha=v)
                .mul_(norm).mul_(scale))
        kk.mul_(kap0.mul_(scale))
        if degenerate:
            kk.masked_fill_(norm == 0, 0)

    def apply(self, pre: Pre, diag: Optional[torch.Tensor] = None) -> Post:
        """S' and M' of the whole table (see :meth:`dual_`); ``diag`` (Ph, Pw) = A at offset 0
        when the table does not hold row offset 0 (tiled computation). Overwrites ``pre``'s
        tables."""
        S, M = tables.activation(pre.A, pre.K, pre.grid.rows, pre.k, self.dual_, diag)
        return Post(S, M, pre.grid)


class ReLU(Activation):
    token = "R"

    def describe(self):
        return "ReLU()"


class LeakyReLU(Activation):
    def __init__(self, slope: float = 0.01):
        slope = float(slope)
        if not (math.isfinite(slope) and 0 <= slope < 1):
            raise ValueError(f"LeakyReLU slope must be in [0, 1), got {slope!r}")
        self.slope = slope

    @property
    def token(self):
        return f"L{self.slope!r}"

    def describe(self):
        return f"LeakyReLU({self.slope!r})"


class Gaussian(Activation):
    """Random Fourier feature layer ``sqrt(2) cos(sigma u + b)``, b ~ Uniform[0, 2 pi] a fixed
    random phase per channel, u the pre-activation under the fan-in parameterisation (the conv
    before it scaled by 1/sqrt(C k^2); with the reference's 1/sqrt(C) convs: ``sqrt(2)
    cos(sigma h / k + b)``, no output scale). With the pre-activation covariance a = A / k^2 its
    duals are ``S'(p, q) = exp(-sigma^2 (a_pp + a_qq - 2 a_pq) / 2)`` and ``dS' = sigma^2 S'``:
    after a first Conv(k) on an image prior, a_pp + a_qq - 2 a_pq is the mean squared difference
    of the k x k patches at p and q, so S' is the non-local-means weight exp(-msd / h^2) with
    h^2 = 2 / sigma^2."""

    def __init__(self, sigma: float = 1.0):
        sigma = float(sigma)
        if not (math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"Gaussian activation sigma must be positive, got {sigma!r}")
        self.sigma = sigma

    @property
    def token(self):
        return f"G{self.sigma!r}"

    def describe(self):
        return f"Gaussian({self.sigma!r})  sqrt(2) cos(sigma u + b)"

    def dual_(self, a, kk, n1, n2, k):
        """IN PLACE: ``a`` becomes S' = exp(-sigma^2 (n1 + n2 - 2 A) / (2 k^2)) and ``kk``
        becomes M' = sigma^2 S' K / k^2 (squared distance clamped at 0)."""
        gamma = self.sigma ** 2 / (k * k)
        a.mul_(-2).add_(n1).add_(n2).clamp_(min=0).mul_(-gamma / 2).exp_()
        kk.mul_(a).mul_(gamma)


class Resample(Layer):
    """Linear resampling of the positions (stride-2 down / x2 up), applied to S and M."""

    def new_size(self, n: int) -> int:
        raise NotImplementedError

    def new_period(self, period: int, n: int) -> int:
        raise NotImplementedError

    def source(self, pos: torch.Tensor, off: torch.Tensor):
        """Per axis, for output positions ``pos`` and signed offsets ``off`` (LongTensors that
        broadcast to a common shape): [(weight or None, source position, source signed offset)]
        such that X'(pos, pos + off) = sum_j weight_j X(src_pos_j, src_pos_j + src_off_j);
        positions unwrapped (reduce them mod the input size), offsets exact (not reduced). The
        source position does not depend on the offset, and the source offset and the weight
        depend on the position only through its parity (the banded engine relies on both)."""
        raise NotImplementedError

    def terms(self, period_in, n_in, out_rows, device):
        """Per axis: the output table entry (phase a', offset value d') is
        ``sum_j weight_j * T[phase_j, offset_j]``; returns [(weight or None, phase, offset)] with
        arrays of shape (period_out, len(out_rows)), offsets as values mod ``n_in``."""
        a = torch.arange(self.new_period(period_in, n_in), device=device)[:, None]
        shape = (len(a), len(out_rows))
        return [(None if w is None else w.expand(shape), (p % period_in).expand(shape),
                 (o % n_in).expand(shape)) for w, p, o in self.source(a, out_rows[None, :])]

    def apply(self, state: Post, row_terms=None, out_rows=None) -> Post:
        """Resample both axes of S and M; ``row_terms`` / ``out_rows``: the row terms for the
        output row offsets ``out_rows`` (default: all of them)."""
        (H, W), (ph, pw) = state.grid.size, state.grid.period
        H2, W2 = self.new_size(H), self.new_size(W)
        dev = state.S.device
        if row_terms is None:
            out_rows = torch.arange(H2, device=dev)
            row_terms = self.terms(ph, H, out_rows, dev)
        col_terms = self.terms(pw, W, torch.arange(W2, device=dev), dev)
        positions = tables.value_positions(state.grid.rows, H)
        new = [None if T is None else
               tables.resample(tables.resample(T, row_terms, 0, positions), col_terms, 1,
                               lambda v: v)
               for T in (state.S, state.M)]
        grid = Grid((H2, W2), (self.new_period(ph, H), self.new_period(pw, W)), out_rows)
        return Post(new[0], new[1], grid)


class Downsample(Resample):
    """Stride-2 subsampling: keep the even positions."""
    token = "D"

    def describe(self):
        return "Downsample()  keep even positions"

    def new_size(self, n):
        if n % 2:
            raise ValueError(f"Downsample needs an even size, got {n}; pad the image to a "
                             "multiple of 2**(number of Downsample layers)")
        return n // 2

    def new_period(self, period, n):
        return max(period // 2, 1)

    def source(self, pos, off):
        return [(None, 2 * pos, 2 * off)]


UPSAMPLE_MODES = ("nearest", "bilinear", "bilinear_aligned")


class Upsample(Resample):
    """x2 upsampling. ``"nearest"``: out[i] = x[i // 2]. ``"bilinear"``: periodic half-pixel
    bilinear, out[2i] = .75 x[i] + .25 x[i-1], out[2i+1] = .75 x[i] + .25 x[i+1] (indices mod n).
    ``"bilinear_aligned"``: align_corners=True, non-periodic (dense engine only).

    Bilinear modes upsample S and M = dS * K as wholes (the infinite-width limit of a network
    with bilinear upsampling); the reference implementation interpolates dS and K separately."""

    def __init__(self, mode: str = "nearest"):
        if mode not in UPSAMPLE_MODES:
            raise ValueError(f"Upsample mode must be one of {UPSAMPLE_MODES}, got {mode!r}")
        self.mode = mode

    @property
    def token(self):
        return {"nearest": "U", "bilinear": "Ub", "bilinear_aligned": "Ua"}[self.mode]

    @property
    def stationary(self):
        """False when the layer breaks the periodic structure (needs the dense engine)."""
        return self.mode != "bilinear_aligned"

    def describe(self):
        return f"Upsample({self.mode!r})  x2"

    def new_size(self, n):
        return 2 * n

    def new_period(self, period, n):
        if self.mode == "bilinear_aligned":
            if period != n:
                raise ValueError("Upsample('bilinear_aligned') is not periodic: use engine='dense'")
        return 2 * period

    def source(self, pos, off):
        if self.mode == "nearest":
            # p' = 2i + e reads x[i]; q' = p' + d' reads x[(p' + d') // 2]
            return [(None, pos // 2, (pos % 2 + off) // 2)]
        if self.mode == "bilinear":
            return _bilinear_periodic_source(pos, off)
        raise ValueError("Upsample('bilinear_aligned') is not periodic: use engine='dense'")

    def terms(self, period_in, n_in, out_rows, device):
        if self.mode == "bilinear_aligned":
            a = torch.arange(self.new_period(period_in, n_in), device=device)[:, None]
            return _bilinear_aligned_terms(a, out_rows[None, :], n_in)
        return super().terms(period_in, n_in, out_rows, device)


def _bilinear_periodic_source(pos, off):
    # p' = 2i + e (e = p' mod 2) reads x[i] (.75) and x[i - 1 + 2e] (.25); q' = p' + d' likewise
    # with its own parity f. Offset of the pair (i + t, j + s) is (e + d') // 2 + s - t.
    e = pos % 2
    f = (pos + off) % 2
    base_offset = (e + off) // 2
    out = []
    for t, wt in ((0 * e, 0.75), (2 * e - 1, 0.25)):
        for s, ws in ((0 * f, 0.75), (2 * f - 1, 0.25)):
            offset = base_offset + s - t
            weight = torch.full(offset.shape, wt * ws, dtype=torch.float64, device=pos.device)
            out.append((weight, pos // 2 + t, offset))
    return out


def _bilinear_aligned_terms(a, d, n_in):
    # positions are the phases (period = full size): p' reads x[i0], x[i0 + 1] with weights
    # 1 - frac, frac at source coordinate p' (n_in - 1) / (2 n_in - 1).
    n_out = 2 * n_in
    pos = torch.arange(n_out, device=a.device, dtype=torch.float64)
    src = pos * (n_in - 1) / max(n_out - 1, 1)
    i0 = torch.clamp(torch.floor(src).long(), max=max(n_in - 2, 0))
    frac = src - i0
    if n_in == 1:
        frac = torch.zeros_like(frac)
    idx = (i0, torch.clamp(i0 + 1, max=n_in - 1))
    wts = (1 - frac, frac)
    p = a + 0 * d
    q = (a + d) % n_out
    out = []
    for t in (0, 1):
        for s in (0, 1):
            phase = idx[t][p]
            offset = (idx[s][q] - phase) % n_in
            out.append((wts[t][p] * wts[s][q], phase, offset))
    return out


def check_chain(layers, what: str, readout: bool) -> None:
    """Layer-order rules: every Conv is followed by an activation (except the read-out Conv
    ending a network when ``readout``), activations directly follow a Conv."""
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(f"{what}: layer {i} is {layer!r}, not a models.cntk layer")
        is_last = i == len(layers) - 1
        if isinstance(layer, Conv) and not (readout and is_last):
            if is_last or not isinstance(layers[i + 1], Activation):
                after = "nothing" if is_last else layers[i + 1].describe()
                raise ValueError(f"{what}: Conv at position {i} must be followed by an "
                                 f"activation (ReLU, LeakyReLU, Gaussian), got {after}")
        if isinstance(layer, Activation) and (i == 0 or not isinstance(layers[i - 1], Conv)):
            raise ValueError(f"{what}: activation at position {i} must directly follow a Conv")


def run_chain(layers, state: Post) -> Post:
    """Propagate a Post state through a branch (all row offsets)."""
    for layer in layers:
        state = layer.apply(state)
    return state


def _scale_steps(layers) -> int:
    """Number of x2 upsamplings minus downsamplings of a layer list."""
    return sum(isinstance(x, Upsample) - isinstance(x, Downsample) for x in layers)


class Concat(Layer):
    """Channel concatenation of two branches fed by the same input (DIP's skip connections):
    ``skip`` (often a 1x1 Conv-activation, or nothing = identity) and ``main`` (e.g. Down ...
    Up). The next Conv sees a fraction ``skip_fraction`` of its input channels from the skip
    branch, so S and M of the concatenation are the weighted means
    ``alpha * branch_skip + (1 - alpha) * branch_main``."""

    def __init__(self, skip_fraction: float, skip=(), main=()):
        alpha = float(skip_fraction)
        if not 0 < alpha < 1:
            raise ValueError(f"Concat skip_fraction must be in (0, 1), got {skip_fraction!r}")
        self.alpha, self.skip, self.main = alpha, tuple(skip), tuple(main)
        for name, branch in (("skip", self.skip), ("main", self.main)):
            check_chain(branch, f"Concat {name} branch", readout=False)
        if _scale_steps(self.skip) != _scale_steps(self.main):
            raise ValueError("Concat branches end at different sizes: they need as many "
                             "Upsample minus Downsample layers each")

    @property
    def token(self):
        def spell(branch):
            return ",".join(layer.token for layer in branch)
        return f"[{self.alpha!r}|{spell(self.skip)}|{spell(self.main)}]"

    def describe(self):
        def spell(branch):
            return ", ".join(layer.describe().split("  ")[0] for layer in branch) or "identity"
        return f"Concat({self.alpha!r})  skip: {spell(self.skip)} | main: {spell(self.main)}"

    @property
    def stationary(self):
        return all(getattr(layer, "stationary", True) for layer in self.skip + self.main)

    def geometry(self, size, period):
        """(size, period) of the output for an input grid ``size`` with ``period``."""
        out = [trace_geometry(branch, size, period)[-1] if branch else (size, period)
               for branch in (self.skip, self.main)]
        if out[0][0] != out[1][0]:
            raise ValueError(f"Concat branches end at different sizes: skip {out[0][0]}, main "
                             f"{out[1][0]}")
        (H, W), (p1, p2) = out[0][0], zip(out[0][1], out[1][1])
        return (H, W), (math.lcm(*p1), math.lcm(*p2))

    def apply(self, state: Post) -> Post:
        if state.M is None:
            raise ValueError("Concat needs a state after a Conv-activation")
        a = run_chain(self.skip, state)
        b = run_chain(self.main, state)
        size, period = self.geometry(state.grid.size, state.grid.period)
        mixed = [tables.tile_period(x, period).mul_(self.alpha).add_(
                 tables.tile_period(y, period), alpha=1 - self.alpha)
                 for x, y in ((a.S, b.S), (a.M, b.M))]
        return Post(mixed[0], mixed[1], Grid(size, period, state.grid.rows))


def trace_geometry(layers, size, period):
    """[(size, period)] after each of ``layers``, starting from the input ``size`` and ``period``
    (both (rows, cols) pairs); only resampling and concatenation change them."""
    out = []
    (H, W), (ph, pw) = size, period
    for layer in layers:
        if isinstance(layer, Resample):
            ph, pw = layer.new_period(ph, H), layer.new_period(pw, W)
            H, W = layer.new_size(H), layer.new_size(W)
        elif isinstance(layer, Concat):
            (H, W), (ph, pw) = layer.geometry((H, W), (ph, pw))
        out.append(((H, W), (ph, pw)))
    return out
