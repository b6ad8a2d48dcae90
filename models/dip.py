"""The Deep Image Prior "skip" encoder-decoder network (Ulyanov, Vedaldi & Lempitsky, 2018).

The published inpainting/denoising configuration (the defaults here) is an hourglass of
``scales = 5`` levels. Level ``i`` (0 = full resolution) maps its input ``x`` (``c_in`` channels,
H x W) to ``up[i]`` channels at the same H x W::

    skip_i(x)  = LReLU(BN(Conv1x1(x -> skip[i])))                          (H, W)
    down_i(x)  = LReLU(BN(Conv3x3(LReLU(BN(Conv3x3/stride2(x -> down[i])))))) (H/2, W/2)
    inner      = Upsample2x_bilinear(level_{i+1}(down_i(x)))  (deepest level: of down_i(x))
    level_i(x) = LReLU(BN(Conv1x1(LReLU(BN(Conv3x3(BN(concat(skip_i(x), inner))))))))

and the network is ``sigmoid(Conv1x1(level_0(z)))``. Every convolution has a bias and
reflection padding ((k-1)/2 on each side); LeakyReLU has slope 0.2. Input and output are
(N, C, H, W) tensors; H and W must be divisible by ``2 ** scales`` (callers pad and crop, see
:func:`completion.dip.dip_inpaint`).

``DIPNetwork.noise_input`` draws the published input: ``input_channels`` channels of
U(0, 1) noise scaled by 1/10, i.e. U(0, 0.1).

One definition of the shape: the network is built by walking the CNTK layer list of
:func:`models.cntk.spec.skip_spec` (:func:`dip_spec`), the same list whose kernel is the
``skip<s>`` preset, so levels, branches, kernel sizes, activation slope and upsampling mode come
from it. Shared with the CNTK: the topology (skip branch Conv1-act, main branch Conv-act-Down,
Conv-act, deeper level, Up; after each concatenation Conv(k)-act, Conv1-act; 1x1 read-out). Kept
as published and absent from the kernel: batch norm, biases, reflection (not circular) padding,
the stride-2 convolution in place of Conv-act-Down (the same map: a pointwise activation commutes
with subsampling), half-pixel bilinear upsampling with clamped (not periodic) borders, the
sigmoid read-out, channel counts per level (the kernel sees only the skip branch's share), and
the input: the spec's first Conv-act (the CNTK needs a Conv-activation before a concatenation)
stands for the noise code, which DIP feeds straight into the first level.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .cntk.layers import Activation, Concat, Conv, Downsample, Upsample
from .cntk.spec import parse_spec, skip_spec

LEAKY_SLOPE = 0.2


@dataclass(frozen=True)
class DIPConfig:
    """Sizes of the skip network; the defaults are the published inpainting configuration.

    ``down``, ``up`` and ``skip`` are channel counts per level (one value = the same at every
    level); ``skip = 0`` removes the skip branches (the plain hourglass).
    """

    input_channels: int = 32
    scales: int = 5
    down: int | tuple = 128
    up: int | tuple = 128
    skip: int | tuple = 4
    kernel_size: int = 3
    noise_scale: float = 0.1

    def per_level(self, name: str) -> tuple:
        value = getattr(self, name)
        values = (value,) * self.scales if isinstance(value, int) else tuple(value)
        if len(values) != self.scales or any(int(v) != v or v < 0 for v in values):
            raise ValueError(f"DIPConfig.{name} must be a non-negative int or {self.scales} "
                             f"of them (one per scale), got {value!r}")
        if name != "skip" and min(values) == 0:
            raise ValueError(f"DIPConfig.{name} needs at least one channel per level, got {value!r}")
        return values

    def validate(self) -> None:
        if self.scales < 1:
            raise ValueError(f"DIPConfig.scales must be >= 1, got {self.scales}")
        if self.input_channels < 1:
            raise ValueError(f"DIPConfig.input_channels must be >= 1, got {self.input_channels}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"DIPConfig.kernel_size must be odd, got {self.kernel_size}")
        for name in ("down", "up", "skip"):
            self.per_level(name)

    @property
    def size_multiple(self) -> int:
        """Height and width of the network's input must be multiples of this."""
        return 2 ** self.scales


def dip_spec(config: "DIPConfig") -> str:
    """The CNTK spec of the network's shape (:func:`models.cntk.spec.skip_spec`): ``scales``
    levels, ``kernel_size``, LeakyReLU(0.2), bilinear upsampling; the skip branches get the
    level-0 channel share (4 / (4 + 128) published), or a placeholder 1/2 when level 0 has none
    (the finite network takes its channels from ``config``)."""
    skip, inner = config.per_level("skip")[0], (config.per_level("up")[1:] or config.per_level("down"))[0]
    fraction = skip / (skip + inner) if skip else 0.5
    return skip_spec(config.scales, fraction, config.kernel_size, f"L{LEAKY_SLOPE!r}", "Ub")


def conv_bn_act(c_in: int, c_out: int, conv: Conv, act: Activation, stride: int = 1) -> nn.Sequential:
    """Reflection-padded ``conv.k`` x ``conv.k`` convolution (with bias), batch norm,
    LeakyReLU(``act.slope``)."""
    k = conv.k
    pad = (k - 1) // 2
    layers = [nn.ReflectionPad2d(pad)] if pad else []
    layers += [nn.Conv2d(c_in, c_out, k, stride=stride, bias=True),
               nn.BatchNorm2d(c_out), nn.LeakyReLU(act.slope)]
    return nn.Sequential(*layers)


def _expect(layers, kinds, where):
    if len(layers) != len(kinds) or not all(isinstance(x, t) for x, t in zip(layers, kinds)):
        want = ", ".join(t.__name__ for t in kinds)
        raise ValueError(f"{where}: expected layers {want}, got {list(layers)}")
    return layers


class SkipLevel(nn.Module):
    """One level of the hourglass, containing all deeper levels (see the module docstring),
    built from the spec's ``concat`` (skip branch and main branch) and the four ``merge``
    layers after it (Conv(k), act, Conv1, act); ``down``, ``up``, ``skip``: channels of this
    and the deeper levels (``skip[0] = 0`` drops this level's skip branch)."""

    def __init__(self, c_in: int, down: tuple, up: tuple, skip: tuple, concat: Concat, merge):
        super().__init__()
        main = concat.main
        deeper = main[5:-1]
        conv1, act1, _, conv2, act2 = _expect(main[:5], (Conv, Activation, Downsample, Conv, Activation),
                                              "main branch")
        up_layer, = _expect(main[-1:], (Upsample,), "end of the main branch")
        if (len(deeper) > 0) != (len(down) > 1):
            raise ValueError(f"the spec has {'more' if deeper else 'fewer'} levels than the config")
        self.skip = conv_bn_act(c_in, skip[0], *_expect(concat.skip, (Conv, Activation), "skip branch")) \
            if skip[0] else None
        self.down = nn.Sequential(conv_bn_act(c_in, down[0], conv1, act1, stride=2),
                                  conv_bn_act(down[0], down[0], conv2, act2))
        self.deeper = SkipLevel(down[0], down[1:], up[1:], skip[1:], deeper[0], deeper[1:]) \
            if deeper else None
        mode = {"bilinear": "bilinear", "nearest": "nearest"}.get(up_layer.mode)
        if mode is None:
            raise ValueError(f"DIP has no {up_layer.describe()} layer")
        self.upsample = nn.Upsample(scale_factor=2, mode=mode,
                                    align_corners=False if mode == "bilinear" else None)
        inner_channels = up[1] if self.deeper is not None else down[0]
        self.merge_norm = nn.BatchNorm2d(skip[0] + inner_channels)
        conv3, act3, conv4, act4 = _expect(merge, (Conv, Activation, Conv, Activation), "merge")
        self.merge = nn.Sequential(conv_bn_act(skip[0] + inner_channels, up[0], conv3, act3),
                                   conv_bn_act(up[0], up[0], conv4, act4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inner = self.down(x)
        if self.deeper is not None:
            inner = self.deeper(inner)
        inner = self.upsample(inner)
        parts = [self.skip(x), inner] if self.skip is not None else [inner]
        return self.merge(self.merge_norm(torch.cat(parts, dim=1)))


class DIPNetwork(nn.Module):
    """DIP skip network mapping a (N, input_channels, H, W) code to a (N, out_channels, H, W)
    image in (0, 1). ``DIPNetwork(3)`` is the published configuration for RGB images."""

    def __init__(self, out_channels: int, config: DIPConfig | None = None):
        super().__init__()
        config = config or DIPConfig()
        config.validate()
        if out_channels < 1:
            raise ValueError(f"out_channels must be >= 1, got {out_channels}")
        self.config = config
        self.out_channels = out_channels
        up = config.per_level("up")
        layers = parse_spec(dip_spec(config))
        # [Conv, act] (stands for the input), level 0 = [Concat, Conv, act, Conv, act], read-out
        _expect(layers, (Conv, Activation, Concat, Conv, Activation, Conv, Activation, Conv),
                "skip spec")
        self.body = SkipLevel(config.input_channels, config.per_level("down"), up,
                              config.per_level("skip"), layers[2], layers[3:7])
        self.head = nn.Sequential(nn.Conv2d(up[0], out_channels, layers[7].k, bias=True), nn.Sigmoid())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        m = self.config.size_multiple
        if z.ndim != 4 or z.shape[1] != self.config.input_channels:
            raise ValueError(f"expected input of shape (N, {self.config.input_channels}, H, W), "
                             f"got {tuple(z.shape)}")
        if z.shape[2] % m or z.shape[3] % m:
            raise ValueError(f"input height and width must be multiples of {m} "
                             f"(2 ** scales), got {tuple(z.shape[2:])}; pad the image first")
        return self.head(self.body(z))

    def noise_input(self, height: int, width: int, generator: torch.Generator | None = None,
                    device=None, dtype=torch.float32) -> torch.Tensor:
        """The published fixed code: (1, input_channels, H, W) of U(0, noise_scale)."""
        z = torch.rand((1, self.config.input_channels, height, width), generator=generator,
                       dtype=dtype)
        return (z * self.config.noise_scale).to(device)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())
