"""Infinite-width kernels (NNGP and NTK) of fully connected networks, for inputs of any norm.

The network with ``depth`` = L hidden layers, in the NTK parameterisation, is::

    h^1     = sigma_w * W^1 x + sigma_b * b^1
    h^(l+1) = sigma_w / sqrt(n_l) * W^(l+1) phi(h^l) + sigma_b * b^(l+1),   l = 1..L
    f(x)    = h^(L+1)                                    (scalar read-out)

with all W, b entries standard normal, ``weight_var`` = sigma_w^2 and ``bias_var`` = sigma_b^2.
The first layer sees the inputs *as given* (no 1/sqrt(d) fan-in factor), so the kernels depend on
the inputs only through <x, y>, |x|^2 and |y|^2: scale features the way the network should see
them (a network with a fan-in factor at the first layer on inputs x is this one on x / sqrt(d)).

As in Neural Tangents' ``stax``, the network is a list of layer objects, each knowing how it
updates the kernel state (cross covariance, NTK, and the variances of the two inputs, which are
propagated layer by layer so that inputs off the unit sphere are handled exactly):

* :class:`Dense`: ``nngp <- w * nngp + b``, ``ntk <- w * ntk + nngp``;
* activations (:class:`LeakyReLU` covering ReLU, :class:`Erf`): ``nngp <- E[phi(u) phi(v)]``,
  ``ntk <- ntk * E[phi'(u) phi'(v)]`` for (u, v) centred Gaussian with that covariance.

Evaluation runs in row tiles on a torch device, with the tile height chosen so that the output,
the inputs and the tile work arrays stay inside ``memory_budget``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .device import check_fits, parse_bytes, resolve_device, resolve_dtype

__all__ = ["Dense", "LeakyReLU", "Erf", "KernelState", "FullyConnectedNTK", "ACTIVATIONS"]

# Number of (tile rows x m) arrays alive at once while a tile goes through the layers (gram,
# nngp, ntk and the temporaries of an activation update), used to size tiles; kept generous.
_TILE_WORK_ARRAYS = 8
# Entries per torch thread of the row tiles in which a block of the kernel goes through the
# layers (the tile's work arrays, 8 bytes an entry, then fit a CPU's L2/L3 cache)
_CACHE_TILE_ENTRIES = 1 << 16
# a kernel computed by ``map_tiles`` (on Dask workers) comes in this many row tiles
MAP_TILES_COUNT = 16


@dataclass
class KernelState:
    """Kernel between two sets of inputs after some layers.

    ``nngp``: (n, m) covariance of the pre-activations; ``ntk``: (n, m) tangent kernel, ``0.0``
    for the raw inputs (no parameters yet), or ``None`` when only the NNGP is wanted; ``var_x`` / ``var_y``: variances of the pre-activations at the x
    and y inputs, broadcastable against ``nngp`` (shape (n, 1) and (1, m) for matrices).
    """
    nngp: torch.Tensor
    ntk: torch.Tensor | float | None
    var_x: torch.Tensor
    var_y: torch.Tensor


class Dense:
    """Affine layer: ``nngp <- weight_var * nngp + bias_var``; ``ntk <- weight_var * ntk + nngp``."""

    def __init__(self, weight_var: float, bias_var: float):
        self.weight_var = float(weight_var)
        self.bias_var = float(bias_var)

    def update(self, state: KernelState) -> KernelState:
        nngp = state.nngp.mul_(self.weight_var)
        if self.bias_var:  # (one pass less over the block without a bias)
            nngp.add_(self.bias_var)
        if state.ntk is None:
            ntk = None
        elif isinstance(state.ntk, float):  # zero NTK of the raw inputs
            ntk = nngp.clone()
        else:
            ntk = state.ntk.mul_(self.weight_var).add_(nngp)
        return KernelState(nngp, ntk, self.weight_var * state.var_x + self.bias_var,
                           self.weight_var * state.var_y + self.bias_var)


class LeakyReLU:
    """phi(u) = max(u, 0) + slope * min(u, 0) (``slope=0`` is ReLU).

    With rho the correlation, theta = arccos(rho) and s the slope (homogeneous dual)::

        E[phi'(u) phi'(v)] = ((1 + s^2) (pi - theta) + 2 s theta) / (2 pi)
        E[phi(u) phi(v)]   = (1 - s)^2 sqrt(q_x q_y) sin(theta) / (2 pi) + cov * E[phi' phi']
    """

    def __init__(self, slope: float = 0.0):
        self.slope = float(slope)

    def variance(self, q):
        return q * (0.5 * (1.0 + self.slope**2))

    def update(self, state: KernelState) -> KernelState:
        s = self.slope
        # sqrt(q_x q_y) (not sqrt(q_x) sqrt(q_y)) so that the diagonal has correlation exactly 1;
        # a zero-variance input has zero covariances, hence correlation 0
        scale = (state.var_x * state.var_y).sqrt_()
        cov = state.nngp
        rho = torch.div(cov, scale.clamp(min=torch.finfo(scale.dtype).tiny)).clamp_(-1.0, 1.0)
        theta = torch.arccos(rho)
        # sqrt(q_x q_y) sin(theta) = sqrt(q_x q_y - cov^2), taken from the clamped correlation
        sin_part = rho.square_().neg_().add_(1.0).sqrt_().mul_(scale)  # 1 - rho^2 >= 0: |rho| <= 1
        del scale
        d_phi = theta.mul_((2 * s - 1 - s * s) / (2 * math.pi)).add_(0.5 * (1 + s * s))
        ntk = None if state.ntk is None else state.ntk.mul_(d_phi)
        nngp = cov.mul_(d_phi).add_(sin_part, alpha=(1 - s) ** 2 / (2 * math.pi))
        return KernelState(nngp, ntk, self.variance(state.var_x), self.variance(state.var_y))


class Erf:
    """phi(u) = erf(u), with the arcsine dual::

        E[erf(u) erf(v)]  = 2/pi * arcsin(2 cov / sqrt((1 + 2 q_x)(1 + 2 q_y)))
        E[erf'(u) erf'(v)] = 4/pi / sqrt((1 + 2 q_x)(1 + 2 q_y) - 4 cov^2)
    """

    def variance(self, q):
        return (2 / math.pi) * torch.arcsin(2 * q / (1 + 2 * q))

    def update(self, state: KernelState) -> KernelState:
        p_x, p_y = 1 + 2 * state.var_x, 1 + 2 * state.var_y  # (n, 1), (1, m) for matrices
        cov = state.nngp
        ntk = None
        if state.ntk is not None:
            # (1 + 2 q_x)(1 + 2 q_y) - 4 cov^2 >= 1 + 2 q_x + 2 q_y >= 1 since cov^2 <= q_x q_y
            d_phi = cov.square().mul_(-4.0).add_(p_x * p_y if cov.dim() == 0 else 0.0)
            if cov.dim() > 0:
                d_phi.addcmul_(p_x.expand_as(cov), p_y.expand_as(cov))
            ntk = state.ntk.mul_(d_phi.clamp_(min=1.0).rsqrt_().mul_(4 / math.pi))
            del d_phi
        nngp = cov.mul_(2.0).mul_(p_x.rsqrt()).mul_(p_y.rsqrt()).clamp_(-1.0, 1.0)
        nngp = nngp.arcsin_().mul_(2 / math.pi)
        return KernelState(nngp, ntk, self.variance(state.var_x), self.variance(state.var_y))


ACTIVATIONS = ("relu", "leaky_relu", "erf")


def _as_tensor_like(value, like):
    """Return ``value`` as a tensor on ``like``'s device and dtype."""
    if isinstance(value, torch.Tensor):
        return value.to(device=like.device, dtype=like.dtype)
    return torch.as_tensor(np.asarray(value, dtype=np.float64), dtype=like.dtype, device=like.device)


class FullyConnectedNTK:
    """Infinite-width NNGP/NTK of an L-hidden-layer fully connected net (NTK parameterisation).

    Parameters
    ----------
    depth : int >= 1
        Number of hidden layers L (the read-out layer is added on top).
    activation : {"relu", "leaky_relu", "erf"}
    slope : float
        Negative-side slope of ``leaky_relu`` (ignored otherwise).
    weight_var, bias_var : float
        sigma_w^2 > 0 and sigma_b^2 >= 0, the same for every layer including the read-out.

    Inputs enter through their inner products as given (see the module docstring), so they may
    have any norm. Kernels are returned as (n, m) arrays; see :meth:`nngp`, :meth:`ntk` and
    :meth:`ntk_from_gram`.
    """

    def __init__(self, depth=1, activation="relu", slope=0.01, weight_var=2.0, bias_var=0.0):
        if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
            raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        for name, value in (("weight_var", weight_var), ("bias_var", bias_var), ("slope", slope)):
            if not isinstance(value, (int, float, np.floating, np.integer)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if weight_var <= 0:
            raise ValueError(f"weight_var must be > 0, got {weight_var}")
        if bias_var < 0:
            raise ValueError(f"bias_var must be >= 0, got {bias_var}")
        self.depth = int(depth)
        self.activation = activation
        self.slope = float(slope)
        self.weight_var = float(weight_var)
        self.bias_var = float(bias_var)

    def __repr__(self):
        slope = f", slope={self.slope}" if self.activation == "leaky_relu" else ""
        return (f"FullyConnectedNTK(depth={self.depth}, activation={self.activation!r}{slope}, "
                f"weight_var={self.weight_var}, bias_var={self.bias_var})")

    # -- the network as a list of layers -------------------------------------------------------
    def layers(self) -> list:
        """[Dense, phi] * depth + [Dense]: the layers whose kernel updates define the kernels."""
        if self.activation == "erf":
            phi = Erf()
        else:
            phi = LeakyReLU(self.slope if self.activation == "leaky_relu" else 0.0)
        dense = Dense(self.weight_var, self.bias_var)
        return [dense, phi] * self.depth + [dense]

    def _propagate(self, gram: torch.Tensor, sq_x, sq_y, with_ntk: bool) -> KernelState:
        """Run the layers on one block; ``gram`` is consumed (updated in place)."""
        state = KernelState(gram, 0.0 if with_ntk else None, sq_x, sq_y)
        for layer in self.layers():
            state = layer.update(state)
        return state

    def _mapped(self, gram: torch.Tensor, sq_x, sq_y, with_ntk: bool,
                buffers=None) -> torch.Tensor:
        """The NTK (or NNGP) of one block, ``gram`` consumed: the layers (:meth:`_propagate`),
        or for the NTK of one hidden ReLU / leaky ReLU layer :func:`_one_layer_relu_ntk`, the
        same map in closed form with fewer passes (its work arrays from ``buffers``, see
        :func:`_scratch`, when given)."""
        if with_ntk and self.depth == 1 and self.activation != "erf":
            slope = self.slope if self.activation == "leaky_relu" else 0.0
            return _one_layer_relu_ntk(gram, sq_x, sq_y, self.weight_var, self.bias_var, slope,
                                       buffers)
        state = self._propagate(gram, sq_x, sq_y, with_ntk)
        return state.ntk if with_ntk else state.nngp

    def _map_block(self, gram: torch.Tensor, sq_x, sq_y, with_ntk: bool, symmetric: bool = False,
                   out: torch.Tensor | None = None) -> torch.Tensor:
        """The NTK (or NNGP) of an (n, m) ``gram`` with squared norms ``sq_x`` (n, 1) and
        ``sq_y`` (1, m) (or broadcastable singletons), written into ``out`` ((n, m); None:
        over ``gram``, consumed). The layers run on copies of row tiles of about
        :data:`_CACHE_TILE_ENTRIES` entries, so that their dozen elementwise passes stay in the
        CPU cache (about 2x faster on 1000 x 1650, with the same numbers: every entry is mapped
        on its own); with T torch threads a tile has T times the entries, a part for each; on
        a GPU the block is one tile. ``symmetric`` (a square gram with sq_x = sq_y^T): each
        tile is mapped up to the diagonal and mirrored above it; ``"lower"``: not mirrored
        (the strict upper triangle of ``out`` outside the tiles' diagonal blocks is left as
        it was)."""
        out = gram if out is None else out
        n, m = gram.shape
        entries = _CACHE_TILE_ENTRIES * torch.get_num_threads() if gram.device.type == "cpu" \
            else n * m
        buffers = []  # a tile's work arrays, reused by the next (new ones cost page faults)
        start = 0
        while start < n:
            width = min(m, start + 256) if symmetric else m  # about the tile's columns
            stop = min(n, start + max(1, entries // max(width, 1)))
            tile = (slice(start, stop), slice(0, stop) if symmetric else slice(None))
            work = gram[tile] if out is gram else \
                _scratch(buffers, 0, gram[tile].shape, gram).copy_(gram[tile])
            block = self._mapped(work, _tile_of(sq_x, tile), _tile_of(sq_y, tile), with_ntk,
                                 buffers)
            if block.data_ptr() != out[tile].data_ptr():
                out[tile] = block
            if symmetric is True:  # the columns start:stop above the diagonal, from the rows mapped
                out[:start, start:stop] = out[start:stop, :start].T
                diagonal = out[start:stop, start:stop]
                diagonal.copy_(diagonal.tril() + diagonal.tril(-1).mT)
            start = stop
        return out

    # -- elementwise maps ---------------------------------------------------------------------
    def ntk_from_gram(self, gram, sq_norms_x, sq_norms_y, *, symmetric=False):
        """NTK as an elementwise map of <x, y>, |x|^2 and |y|^2.

        ``gram``: tensor or array of any shape (typically (n, m)); ``sq_norms_x`` / ``sq_norms_y``:
        broadcastable against it, except that 1-D vectors with a 2-D ``gram`` are taken as (n, 1)
        and (1, m). Scalars are fine (e.g. the four values of joint one-hot completion). Returns
        the same type as ``gram`` (tensor on the same device, or float64 ndarray).
        ``symmetric``: ``gram`` is square, of one set of inputs with itself (sq_norms_x =
        sq_norms_y): only its lower triangle is read and mapped (about half the work), and the
        result is its mirror image, exactly symmetric. ``symmetric="lower"``: the same, except
        that only the result's lower triangle (diagonal included) is meaningful, its strict
        upper triangle unspecified (no mirror copy): for Cholesky factors and ``eigh``, which
        read the lower triangle.
        """
        return self._map_gram(gram, sq_norms_x, sq_norms_y, True, symmetric)

    def nngp_from_gram(self, gram, sq_norms_x, sq_norms_y, *, symmetric=False):
        """NNGP counterpart of :meth:`ntk_from_gram` (same arguments and return type)."""
        return self._map_gram(gram, sq_norms_x, sq_norms_y, False, symmetric)

    def _map_gram(self, gram, sq_norms_x, sq_norms_y, with_ntk, symmetric=False):
        is_tensor = isinstance(gram, torch.Tensor)
        if is_tensor:  # read, never written (the map works on copies of its tiles)
            g = gram if gram.is_floating_point() else gram.to(torch.float64)
        else:
            g = torch.as_tensor(np.array(gram, dtype=np.float64))
        qx = _as_tensor_like(sq_norms_x, g)
        qy = _as_tensor_like(sq_norms_y, g)
        if g.dim() == 2:
            qx = qx.reshape(-1, 1) if qx.dim() == 1 else qx
            qy = qy.reshape(1, -1) if qy.dim() == 1 else qy
        try:  # (numpy's: torch.broadcast_shapes took 0.2 ms, more than a small block's map)
            shape = torch.Size(np.broadcast_shapes(g.shape, qx.shape, qy.shape))
        except ValueError:
            raise ValueError(f"gram of shape {tuple(g.shape)} does not broadcast with squared norms "
                             f"of shapes {tuple(qx.shape)} and {tuple(qy.shape)}") from None
        if (qx < 0).any() or (qy < 0).any():
            raise ValueError("squared norms must be >= 0")
        if symmetric not in (False, True, "lower"):
            raise ValueError(f"symmetric must be False, True or 'lower', got {symmetric!r}")
        if symmetric and (g.dim() != 2 or g.shape[0] != g.shape[1] or g.shape != shape):
            raise ValueError(f"symmetric needs a square 2-D gram, got shape {tuple(g.shape)}")
        if g.dim() == 2 and g.shape == shape:
            mine = not is_tensor or g is not gram  # a copy made here may be consumed
            out = None if mine else torch.empty(g.shape, dtype=g.dtype, device=g.device)
            out = self._map_block(g, qx, qy, with_ntk, symmetric, out)
        else:
            out = self._mapped(g.clone(), qx, qy, with_ntk).expand(shape).contiguous()
        return out if is_tensor else out.cpu().numpy()

    # -- tiled evaluation on inputs -----------------------------------------------------------
    def nngp(self, X, Y=None, *, device="auto", dtype=None, memory_budget=None, progress=False,
             map_tiles=None):
        """(n, m) NNGP between the rows of X (n, d) and of Y (m, d) (Y defaults to X)."""
        return self._evaluate(X, Y, False, device, dtype, memory_budget, progress, map_tiles)

    def ntk(self, X, Y=None, *, device="auto", dtype=None, memory_budget=None, progress=False,
            map_tiles=None):
        """(n, m) NTK between the rows of X (n, d) and of Y (m, d) (Y defaults to X).

        Computed in row tiles on ``device`` ('auto' = CUDA when present) in ``dtype`` (default
        float64 on CPU, float32 on CUDA); ``memory_budget`` (bytes or '2GB'; default
        ``models.device.DEFAULT_MEMORY_BUDGET``) bounds output + inputs + tile work arrays, and the
        call is refused before allocating if even a one-row tile does not fit. Returns an ndarray.

        ``map_tiles`` computes the row tiles elsewhere: ``map_tiles(fn, items, shared=obj)``
        returns ``[fn(item, obj) for item in items]`` (``completion.scheduling.map_tasks`` with a
        scheduler: one task per tile on the Dask workers' CPUs, the same numbers). The budget then
        bounds each tile's work on its worker, and here the output plus the tiles that come back
        (twice the output). It pays only when an entry costs more to compute than to send (8
        bytes): at 4096 x 4096, 100 features, depth 2, the tiles took 2.2x the CPU seconds of
        the in-process evaluation (benchmarks/RESULTS.md), so nothing uses it by default.
        """
        return self._evaluate(X, Y, True, device, dtype, memory_budget, progress, map_tiles)

    def _evaluate(self, X, Y, with_ntk, device, dtype, memory_budget, progress, map_tiles=None):
        X = _validated_inputs(X, "X")
        Y = X if Y is None else _validated_inputs(Y, "Y")
        if X.shape[1] != Y.shape[1]:
            raise ValueError(f"X has {X.shape[1]} features per row but Y has {Y.shape[1]}")
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        budget = parse_bytes(memory_budget)
        if map_tiles is not None:
            return self._evaluate_mapped(X, Y, with_ntk, dev, dt, budget, map_tiles)
        (n, d), m = X.shape, Y.shape[0]
        which = "NTK" if with_ntk else "NNGP"
        item = torch.empty((), dtype=dt).element_size()
        fixed = (n * m + (n + m) * (d + 1)) * item  # output + inputs + squared norms
        per_row = _TILE_WORK_ARRAYS * m * item
        check_fits(fixed + per_row, budget, f"the {n} x {m} {which} ({d} features)",
                   "Raise memory_budget, or evaluate fewer rows/columns per call.")
        tile = int(min(n, (budget - fixed) // per_row))

        Xt = torch.as_tensor(X, device=dev, dtype=dt)
        Yt = Xt if Y is X else torch.as_tensor(Y, device=dev, dtype=dt)
        sq_x = Xt.square().sum(1)
        sq_y = sq_x if Y is X else Yt.square().sum(1)
        out = np.empty((n, m), dtype=np.float64 if dt == torch.float64 else np.float32)
        starts = range(0, n, tile)
        for start in tqdm(starts, desc=f"{which} tiles", disable=not progress, leave=False):
            stop = min(n, start + tile)
            out[start:stop] = self._tile(Xt, Yt if Y is not X else None, sq_x, sq_y, start, stop,
                                         with_ntk)
        return out

    def _tile(self, Xt, Yt, sq_x, sq_y, start, stop, with_ntk) -> np.ndarray:
        """Rows ``start:stop`` of the kernel between the rows of Xt and of Yt (None: Xt itself),
        their squared norms ``sq_x``, ``sq_y`` given."""
        gram = Xt[start:stop] @ (Xt if Yt is None else Yt).T
        if Yt is None:  # make <x, x> equal |x|^2 bit for bit, so the diagonal has correlation 1
            gram[:, start:stop].diagonal().copy_(sq_x[start:stop])
        return self._map_block(gram, sq_x[start:stop, None], sq_y[None, :], with_ntk).cpu().numpy()

    def _evaluate_mapped(self, X, Y, with_ntk, dev, dt, budget, map_tiles):
        """The kernel in row tiles computed by ``map_tiles`` (see :meth:`ntk`): MAP_TILES_COUNT
        tiles (fewer for fewer rows), more when a worker's budget asks."""
        if dev.type != "cpu":
            raise ValueError(f"kernel tiles run on the workers' CPU; device is {dev}")
        (n, d), m = X.shape, Y.shape[0]
        item = torch.empty((), dtype=dt).element_size()
        which = "NTK" if with_ntk else "NNGP"
        check_fits(2 * n * m * item, budget, f"the {n} x {m} {which} and its tiles as they come "
                   "back", "Raise memory_budget, or evaluate fewer rows/columns per call.")
        fixed = (n + m) * (d + 1) * item  # a worker's inputs and squared norms
        per_row = (_TILE_WORK_ARRAYS + 1) * m * item  # its work arrays and its tile
        check_fits(fixed + per_row, budget, f"a one-row tile of the {n} x {m} {which} on a "
                   "worker", "Raise memory_budget, or evaluate fewer rows/columns per call.")
        tile = int(min(-(-n // MAP_TILES_COUNT), (budget - fixed) // per_row))
        spans = [(start, min(n, start + tile)) for start in range(0, n, tile)]
        shared = (self, X, None if Y is X else Y, with_ntk, dt)
        out = np.empty((n, m), dtype=np.float64 if dt == torch.float64 else np.float32)
        for (start, stop), block in zip(spans, map_tiles(_kernel_tile, spans, shared=shared)):
            out[start:stop] = block
        return out


def _kernel_tile(span, shared) -> np.ndarray:
    """Rows ``span = (start, stop)`` of the kernel of ``shared = (network, X, Y or None,
    with_ntk, dtype)`` on this process's CPU: a pure function, for any worker."""
    net, X, Y, with_ntk, dt = shared
    Xt = torch.as_tensor(X, dtype=dt)
    Yt = None if Y is None else torch.as_tensor(Y, dtype=dt)
    sq_x = Xt.square().sum(1)
    sq_y = sq_x if Yt is None else Yt.square().sum(1)
    with torch.no_grad():
        return net._tile(Xt, Yt, sq_x, sq_y, *span, with_ntk)


def _one_layer_relu_ntk(gram, sq_x, sq_y, weight_var, bias_var, slope, buffers=None):
    """NTK of the net Dense, LeakyReLU(``slope``), Dense (0 = ReLU) as one map of ``gram``
    (consumed: the result is written over it) and the squared norms ``sq_x``, ``sq_y``
    (broadcastable against it): with c = w <x, y> + b, v = w |x|^2 + b, rho = c / sqrt(v_x v_y)
    (clamped to [-1, 1]) and the arc-cosine kernels of orders 0 and 1 (the layers' updates,
    :class:`Dense` and :class:`LeakyReLU`, composed)::

        d    = (1 + s^2) / 2 - (1 - s)^2 arccos(rho) / (2 pi)      (= E[phi' phi'])
        ntk  = w (c d) + w (c d + (1 - s)^2 sqrt(v_x v_y) sqrt(1 - rho^2) / (2 pi)) + b

    The same numbers as the layers up to rounding (about 3e-16 of the largest entry, tested):
    rho is computed as they do (so an input with itself still has correlation exactly 1), and
    arccos(rho) = pi/2 - arcsin(rho) (arcsin, and numpy's square roots, are faster on a CPU
    than torch's arccos and square roots). About 12 passes over the block instead of 23.
    ``buffers``: optional list whose arrays 1-3 (:func:`_scratch`) hold the work arrays when
    the squared norms broadcast to ``gram``'s shape."""
    w, b, s = weight_var, bias_var, slope
    c = gram.mul_(w)
    if b:
        c.add_(b)
    own = buffers is not None and np.broadcast_shapes(sq_x.shape, sq_y.shape) == c.shape
    work = [_scratch(buffers, i, c.shape, c) if own else None for i in (1, 2, 3)]
    scale = torch.mul(w * sq_x + b, w * sq_y + b, out=work[0])
    _sqrt_(scale).clamp_(min=torch.finfo(scale.dtype).tiny)
    rho = torch.div(c, scale, out=work[1]).clamp_(-1.0, 1.0)
    d = torch.arcsin(rho, out=work[2])
    sine = _sqrt_(torch.addcmul(torch.ones((), dtype=rho.dtype, device=rho.device), rho, rho,
                                value=-1.0, out=rho)).mul_(scale)
    k1 = (1 - s) ** 2 / (2 * math.pi)
    d.mul_(k1).add_(0.5 * (1 + s * s) - 0.25 * (1 - s) ** 2)  # arccos = pi/2 - arcsin
    t = c.mul_(d)
    nngp = torch.add(t, sine, alpha=k1, out=sine).mul_(w)
    if b:
        nngp.add_(b)
    return t.mul_(w).add_(nngp)


def _scratch(buffers, i, shape, like):
    """Array ``i`` of the list ``buffers`` (flat tensors, made or grown as needed, of
    ``like``'s dtype and device) as a contiguous tensor of ``shape``, its contents undefined."""
    size = math.prod(shape)
    buffers.extend(torch.empty(0, dtype=like.dtype, device=like.device)
                   for _ in range(i + 1 - len(buffers)))
    if buffers[i].numel() < size:
        buffers[i] = torch.empty(size, dtype=like.dtype, device=like.device)
    return buffers[i][:size].view(shape)


def _sqrt_(t):
    """``t`` with its entries replaced by their square roots (numpy's on a CPU: 1.9 ns an entry
    against torch's 3.0 for float64 here; both correctly rounded)."""
    if t.device.type == "cpu" and not t.requires_grad and t.is_contiguous():
        a = t.numpy()
        np.sqrt(a, out=a)
        return t
    return t.sqrt_()


def _tile_of(q, tile):
    """The part of squared norms ``q`` that goes with the (rows, cols) ``tile`` of a 2-D gram:
    ``q`` itself when it is a scalar, else its slices along the axes it does not broadcast."""
    if q.dim() < 2:
        return q
    return q[tuple(part if size > 1 else slice(None) for part, size in zip(tile, q.shape))]


def _validated_inputs(X, name):
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    X = np.asarray(X)
    if X.dtype == object or not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
        raise ValueError(f"{name} must be numeric, got dtype {X.dtype}")
    if X.ndim != 2:
        raise ValueError(f"{name} must be 2-D (points x features), got shape {X.shape}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {X.shape})")
    X = X.astype(np.float64, copy=False)
    if not np.isfinite(X).all():
        bad = np.argwhere(~np.isfinite(X))[0]
        raise ValueError(f"{name} contains NaN or inf (first at row {bad[0]}, column {bad[1]})")
    return X
