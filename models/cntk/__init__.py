"""Convolutional NTK of encoder-decoder networks (the infinite-width limit of training a Deep
Image Prior network), between output pixel positions.

>>> from models.cntk import Sequential, Conv, LeakyReLU, Downsample, Upsample
>>> net = Sequential(Conv(3), LeakyReLU(0.01), Downsample(), Conv(3), LeakyReLU(0.01),
...                  Upsample("nearest"), Conv(3))
>>> kern = net.ntk((16, 16), prior="noise")
>>> kern.dense().shape
(16, 16, 16, 16)
>>> net.ntk((512, 512), average_phases=True).period     # stationary average, tile by tile
(1, 1)

The preset ``"reference"`` is the public reference notebook's net as its stored kernels
show it: 3 x (Conv3-LeakyReLU(0.01)-Downsample), Conv3-LeakyReLU, 2 x (Upsample-Conv3-LeakyReLU),
Upsample, read-out Conv3 (7 convs; reproduced to 3e-7 relative).

Any prior (e.g. an image as the feature prior), restricted to offsets |d_r|, |d_c| <= R: the
banded engine, exact within the band, (2R+1)^2 H W memory; its Wendland taper is an exact PSD
kernel. ``G<sigma>`` is the Gaussian (random Fourier feature) activation, whose dual after a
first conv on an image prior is a non-local-means patch weight:

>>> import numpy as np, torch
>>> image = np.random.default_rng(0).random((1, 64, 64))
>>> kern = Sequential.from_spec("C5,G8,C1").ntk_banded((64, 64), image, band=10)
>>> tuple(kern.table.shape), tuple(kern.tapered().matvec(torch.ones(1, 64, 64)).shape)
((64, 64, 21, 21), (1, 64, 64))

Modules: ``layers`` (layer objects and their kernel updates), ``tables`` ((phase, offset)
tables and operations), ``priors`` (input covariances), ``engine`` (propagation, tiling),
``kernel`` (the result: dense / diag / matvec / solve_shifted), ``banded`` (the banded engine),
``banded_kernel`` (its result: matvec / diag / tapered), ``spec`` (spec strings, presets,
architecture spellings: ``"default"``, ``"NAME+avg"``, lists), ``network`` (``Sequential``,
``Architecture``).
"""

from .banded_kernel import BandedKernel
from .kernel import CNTKKernel, StructuredKernel, sum_kernels
from .layers import Activation, Concat, Conv, Downsample, Gaussian, LeakyReLU, ReLU, Upsample
from .network import Architecture, Sequential
from .priors import make_prior, meshgrid_features
from .spec import (DEFAULT_ARCHITECTURE, PRESETS, encoder_decoder_spec, parse_spec, skip_spec,
                   split_architecture, symmetric_spec)

__all__ = ["Sequential", "Architecture", "DEFAULT_ARCHITECTURE", "split_architecture", "sum_kernels", "Concat", "Conv", "ReLU", "LeakyReLU", "Gaussian", "Downsample", "Upsample", "Activation",
           "CNTKKernel", "StructuredKernel", "BandedKernel", "PRESETS", "encoder_decoder_spec", "symmetric_spec", "skip_spec", "parse_spec", "make_prior",
           "meshgrid_features"]
