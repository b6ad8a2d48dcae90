"""Finite networks from the same layer definitions as the infinite-width kernels.

As in Neural Tangents' ``stax``, one layer list gives both the kernel and the finite network
whose empirical NTK converges to it as the width grows:

* :class:`FiniteCNN` from a :class:`models.cntk.Sequential` (Conv, ReLU, LeakyReLU, Gaussian,
  Downsample, Upsample nearest / bilinear / bilinear_aligned, Concat), in the CNTK's
  parameterisation (a Gaussian layer is ``sqrt(2) cos(sigma h / k + b)`` with fixed random phases):
  standard normal weights, every k x k conv scaled by 1/sqrt(input channels), circular
  padding, no bias, and every activation scaled by sqrt(2 / (1 + slope^2)) / k with k the
  kernel size of the conv before it (the usual NTK scaling 1/sqrt(C k^2) when all kernels have
  one size). Hidden convs have ``width`` output channels, the read-out one; both branches of a
  Concat end with ``width`` channels (an empty skip branch passes its input through), so the
  network realises ``Concat(0.5, ...)``.
* :class:`FiniteFullyConnected` from a :class:`models.ntk.FullyConnectedNTK`:
  ``h^1 = sqrt(weight_var) W x + sqrt(bias_var) b`` (inputs as given) and
  ``h^(l+1) = sqrt(weight_var / width) W phi(h^l) + sqrt(bias_var) b``, scalar read-out.

Both build their layers by dispatching on the kernel's layer classes (the kernel modules are not
changed), draw their weights from a seeded ``torch.Generator`` in layer order, and compute their
empirical NTK (sum over parameters of df(x)/dw df(x')/dw) without forming the Jacobian.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .cntk.layers import Activation, Concat, Conv, Downsample, Gaussian, Upsample
from .cntk.network import Sequential
from .ntk import Dense, Erf, FullyConnectedNTK
from .ntk import LeakyReLU as DenseLeakyReLU

__all__ = ["FiniteCNN", "FiniteFullyConnected", "jacobian_ntk"]


def jacobian_ntk(module: nn.Module, outputs: torch.Tensor) -> torch.Tensor:
    """(P, P) J J^T from the explicit Jacobian of the flat ``outputs`` (P,) with respect to every
    parameter of ``module`` (small networks only: the oracle for the factorised sums)."""
    eye = torch.eye(outputs.numel(), dtype=outputs.dtype)
    params = list(module.parameters())
    grads = torch.autograd.grad(outputs, params, grad_outputs=eye, is_grads_batched=True)
    J = torch.cat([g.reshape(outputs.numel(), -1) for g in grads], 1)
    return (J @ J.T).double()


def _recorded(modules, run):
    """Run ``run()`` recording each of ``modules``' input (detached) and output: returns
    ({module: input}, {module: output, None: run's result})."""
    inputs, outputs = {}, {}

    def hook(module, args, out):
        inputs[module] = args[0].detach()
        outputs[module] = out

    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        outputs[None] = run()
    finally:
        for handle in handles:
            handle.remove()
    return inputs, outputs


# -- convolutional ---------------------------------------------------------------------------------
class _Conv(nn.Module):
    """k x k conv, circular padding, no bias, weight N(0, 1) scaled by 1/sqrt(input channels)."""

    def __init__(self, c_in, c_out, k, generator, dtype):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, k, k, generator=generator, dtype=dtype))
        self.scale, self.k = c_in ** -0.5, k

    def forward(self, h):
        pad = (self.k - 1) // 2
        return F.conv2d(F.pad(h, (pad,) * 4, mode="circular"), self.weight) * self.scale


class _Activation(nn.Module):
    def __init__(self, slope, k_before):
        super().__init__()
        self.slope = slope
        self.gain = math.sqrt(2 / (1 + slope ** 2)) / k_before

    def forward(self, h):
        return F.leaky_relu(h, self.slope) * self.gain


class _Gaussian(nn.Module):
    """sqrt(2) cos(sigma h / k + b): the random Fourier feature layer of
    :class:`models.cntk.layers.Gaussian` after a 1/sqrt(C) conv of window k, one fixed phase
    b ~ Uniform[0, 2 pi] per channel."""

    def __init__(self, sigma, k_before, channels, generator, dtype):
        super().__init__()
        self.frequency = sigma / k_before
        self.register_buffer("phase", torch.rand(channels, generator=generator, dtype=dtype)
                             * (2 * math.pi))

    def forward(self, h):
        return math.sqrt(2) * torch.cos(self.frequency * h + self.phase[None, :, None, None])


class _Downsample(nn.Module):
    def forward(self, h):
        return h[:, :, ::2, ::2]


class _Upsample(nn.Module):
    """x2: nearest; periodic half-pixel bilinear (out[2i] = .75 x[i] + .25 x[i-1],
    out[2i+1] = .75 x[i] + .25 x[i+1], indices mod n); or bilinear with aligned corners."""

    def __init__(self, mode):
        super().__init__()
        self.mode = mode

    def forward(self, h):
        if self.mode == "nearest":
            return h.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
        if self.mode == "bilinear_aligned":
            return F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=True)
        for dim in (2, 3):
            even = 0.75 * h + 0.25 * torch.roll(h, 1, dims=dim)
            odd = 0.75 * h + 0.25 * torch.roll(h, -1, dims=dim)
            h = torch.stack([even, odd], dim=dim + 1).flatten(dim, dim + 1)
        return h


class _Concat(nn.Module):
    def __init__(self, skip: nn.Sequential, main: nn.Sequential):
        super().__init__()
        self.skip, self.main = skip, main

    def forward(self, h):
        return torch.cat([self.skip(h), self.main(h)], dim=1)


class FiniteCNN(nn.Module):
    """The finite network of a CNTK layer list (see the module docstring).

    ``network``: a :class:`models.cntk.Sequential` (or a list of layers, validated as one);
    ``in_channels``: C0;
    ``width``: channels of every hidden conv; ``seed``: weights drawn in layer order (skip branch
    before main branch); ``dtype``: of the weights. Maps (N, C0, H, W) to (N, 1, H', W').
    """

    def __init__(self, network, in_channels: int, width: int, seed: int = 0,
                 dtype=torch.float32):
        super().__init__()
        layers = (network if isinstance(network, Sequential) else Sequential(*network)).layers
        if width < 1 or in_channels < 1:
            raise ValueError(f"width and in_channels must be >= 1, got {width}, {in_channels}")
        self.width = width
        generator = torch.Generator().manual_seed(seed)
        self.body, _ = self._build(layers, in_channels, True, generator, dtype)

    def _build(self, layers, channels, readout, generator, dtype):
        """(nn.Sequential, output channels) of a layer list."""
        modules = []
        for i, layer in enumerate(layers):
            if isinstance(layer, Conv):
                out = 1 if readout and i == len(layers) - 1 else self.width
                modules.append(_Conv(channels, out, layer.k, generator, dtype))
                channels = out
            elif isinstance(layer, Gaussian):
                modules.append(_Gaussian(layer.sigma, layers[i - 1].k, channels, generator, dtype))
            elif isinstance(layer, Activation):
                modules.append(_Activation(layer.slope, layers[i - 1].k))
            elif isinstance(layer, Downsample):
                modules.append(_Downsample())
            elif isinstance(layer, Upsample):
                modules.append(_Upsample(layer.mode))
            elif isinstance(layer, Concat):
                skip, c_skip = self._build(layer.skip, channels, False, generator, dtype)
                main, c_main = self._build(layer.main, channels, False, generator, dtype)
                if c_skip != c_main or layer.alpha != 0.5:
                    raise ValueError(f"{layer.describe()}: the finite network realises only "
                                     f"Concat(0.5) with equal branch widths, got {c_skip} and "
                                     f"{c_main} channels")
                modules.append(_Concat(skip, main))
                channels = c_skip + c_main
            else:
                raise TypeError(f"no finite layer for {layer!r}")
        return nn.Sequential(*modules), channels

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z)

    def _convs(self):
        return [m for m in self.modules() if isinstance(m, _Conv)]

    def empirical_ntk(self, z: torch.Tensor) -> torch.Tensor:
        """(P, P) float64 NTK between the P output pixels for one input z (C0, H, W), without
        the Jacobian: for a conv with input x, scale s and output deltas d_p = df_p / dh, the
        weight-gradient inner products are s^2 sum_{o, r, r'} d_p[o, r] X(r, r') d_q[o, r'] with
        X(r, r') = sum_m <x(r + m), x(r' + m)> over the window offsets m."""
        convs = self._convs()
        inputs, outputs = _recorded(convs, lambda: self(z[None]))
        f = outputs.pop(None).reshape(-1)
        n = f.numel()
        deltas = torch.autograd.grad(f, [outputs[c] for c in convs],
                                     grad_outputs=torch.eye(n, dtype=f.dtype), is_grads_batched=True)
        theta = torch.zeros(n, n, dtype=torch.float64)
        for conv, d in zip(convs, deltas):
            x, h = inputs[conv][0], (conv.k - 1) // 2
            X = 0
            for a in range(-h, h + 1):
                for b in range(-h, h + 1):
                    xs = torch.roll(x, (-a, -b), dims=(1, 2)).reshape(x.shape[0], -1).double()
                    X = X + xs.T @ xs
            D = d.reshape(n, d.shape[2], -1).double()
            theta += conv.scale ** 2 * (D @ X).reshape(n, -1) @ D.reshape(n, -1).T
        return theta


# -- fully connected --------------------------------------------------------------------------------
class _Linear(nn.Module):
    """h = sqrt(weight_var / fan_in) W a + sqrt(bias_var) b, W and b standard normal."""

    def __init__(self, n_in, n_out, weight_var, bias_var, fan_in, generator, dtype):
        super().__init__()
        # normals drawn in float32 (4x faster than float64), then cast
        self.weight = nn.Parameter(torch.randn(n_out, n_in, generator=generator).to(dtype))
        self.bias = nn.Parameter(torch.randn(n_out, generator=generator).to(dtype))
        self.w_scale, self.b_scale = math.sqrt(weight_var / fan_in), math.sqrt(bias_var)

    def forward(self, a):
        return self.w_scale * a @ self.weight.T + self.b_scale * self.bias


class _Pointwise(nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, h):
        if isinstance(self.layer, Erf):
            return torch.erf(h)
        return F.leaky_relu(h, self.layer.slope)


class FiniteFullyConnected(nn.Module):
    """The finite network of :class:`models.ntk.FullyConnectedNTK` (module docstring): maps
    (n, d) inputs to (n,) outputs; ``width`` units per hidden layer; ``seed``: weights then bias
    of each layer drawn in order; ``dtype`` of the parameters."""

    def __init__(self, kernel: FullyConnectedNTK, in_features: int, width: int, seed: int = 0,
                 dtype=torch.float64):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        modules, n_in, first = [], in_features, True
        layers = kernel.layers()
        for i, layer in enumerate(layers):
            if isinstance(layer, Dense):
                n_out = 1 if i == len(layers) - 1 else width
                modules.append(_Linear(n_in, n_out, layer.weight_var, layer.bias_var,
                                       1 if first else n_in, generator, dtype))
                n_in, first = n_out, False
            elif isinstance(layer, (DenseLeakyReLU, Erf)):
                modules.append(_Pointwise(layer))
            else:
                raise TypeError(f"no finite layer for {layer!r}")
        self.body = nn.Sequential(*modules)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.body(X)[:, 0]

    def empirical_kernels(self, X: torch.Tensor):
        """(NTK, NNGP) as (n, n) float64 tensors of this network at the inputs X (n, d).

        NTK: J J^T summed layer by layer: for h = s W a + c b the gradient with respect to W is
        s delta a^T, so its inner products are s^2 (delta . delta') (a . a'), and those with
        respect to b are c^2 (delta . delta'). NNGP: the read-out layer's covariance given the
        last hidden layer, s^2 <phi, phi'> + c^2 (with s^2 = weight_var / width)."""
        linears = [m for m in self.body if isinstance(m, _Linear)]
        ins, pre = _recorded(linears, lambda: self(X))
        f = pre.pop(None)
        # samples are independent: the gradient of sum f at h(x_k) is df(x_k)/dh(x_k)
        deltas = torch.autograd.grad(f.sum(), [pre[m] for m in linears])
        ntk = torch.zeros(len(X), len(X), dtype=torch.float64)
        for m, delta in zip(linears, deltas):
            dd = (delta @ delta.T).double()
            ntk += m.w_scale ** 2 * dd * (ins[m] @ ins[m].T).double() + m.b_scale ** 2 * dd
        last = linears[-1]
        phi = ins[last].double()
        nngp = last.w_scale ** 2 * (phi @ phi.T) + last.b_scale ** 2
        return ntk, nngp
