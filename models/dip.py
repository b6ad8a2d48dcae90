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
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

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


def conv_bn_act(c_in: int, c_out: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    """Reflection-padded convolution (with bias), batch norm, LeakyReLU(0.2)."""
    pad = (kernel_size - 1) // 2
    layers = [nn.ReflectionPad2d(pad)] if pad else []
    layers += [nn.Conv2d(c_in, c_out, kernel_size, stride=stride, bias=True),
               nn.BatchNorm2d(c_out), nn.LeakyReLU(LEAKY_SLOPE)]
    return nn.Sequential(*layers)


class SkipLevel(nn.Module):
    """One level of the hourglass, containing all deeper levels (see the module docstring)."""

    def __init__(self, c_in: int, down: tuple, up: tuple, skip: tuple, kernel_size: int):
        super().__init__()
        k = kernel_size
        self.skip = conv_bn_act(c_in, skip[0], 1) if skip[0] else None
        self.down = nn.Sequential(conv_bn_act(c_in, down[0], k, stride=2),
                                  conv_bn_act(down[0], down[0], k))
        self.deeper = SkipLevel(down[0], down[1:], up[1:], skip[1:], k) if len(down) > 1 else None
        self.upsample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        inner_channels = up[1] if self.deeper is not None else down[0]
        self.merge_norm = nn.BatchNorm2d(skip[0] + inner_channels)
        self.merge = nn.Sequential(conv_bn_act(skip[0] + inner_channels, up[0], k),
                                   conv_bn_act(up[0], up[0], 1))

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
        self.body = SkipLevel(config.input_channels, config.per_level("down"), up,
                              config.per_level("skip"), config.kernel_size)
        self.head = nn.Sequential(nn.Conv2d(up[0], out_channels, 1, bias=True), nn.Sigmoid())

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
