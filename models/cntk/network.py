"""``Sequential``: a validated layer list that computes its CNTK."""
from __future__ import annotations

import torch

from ..device import parse_bytes, resolve_device, resolve_dtype
from .banded import BandedPropagator
from .banded_kernel import BandedKernel
from .engine import Propagator
from .kernel import CNTKKernel
from .layers import Conv, Layer, check_chain, trace_geometry
from .priors import make_prior
from .spec import PRESETS, parse_spec

ENGINES = ("auto", "structured", "dense")


class Sequential:
    """A chain of CNTK layers: Conv, activation (ReLU / LeakyReLU / Gaussian), Downsample, Upsample.

    Rules (those of the reference implementation): the first layer is a Conv, every Conv but
    the last is immediately followed by an activation, activations only follow a Conv, and the
    network ends with a Conv (the linear read-out). ``Concat`` adds DIP-style skip branches.

    >>> net = Sequential.from_spec("reference")
    >>> kern = net.ntk((16, 16), prior="noise")
    """

    def __init__(self, *layers):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"layer {i} is {layer!r}, not a models.cntk layer")
        if not layers or not isinstance(layers[0], Conv):
            raise ValueError("the first layer must be a Conv")
        if not isinstance(layers[-1], Conv):
            raise ValueError("the last layer must be a Conv (the linear read-out)")
        check_chain(layers, "network", readout=True)
        self.layers = tuple(layers)

    @classmethod
    def from_spec(cls, text: str) -> "Sequential":
        """From a preset name (see ``PRESETS``) or a spec string (see :mod:`models.cntk.spec`)."""
        return cls(*parse_spec(PRESETS.get(text, text)))

    def spec(self) -> str:
        """Canonical spec string (stable; usable as a cache key)."""
        return ",".join(layer.token for layer in self.layers)

    def describe(self) -> str:
        return "\n".join(f"{i:2d}  {layer.describe()}" for i, layer in enumerate(self.layers))

    def __repr__(self):
        return f"Sequential.from_spec({self.spec()!r})"

    def __eq__(self, other):
        return isinstance(other, Sequential) and self.spec() == other.spec()

    def __hash__(self):
        return hash(self.spec())

    @property
    def stationary(self) -> bool:
        """True when every layer keeps the periodic structure (the structured engine applies)."""
        return all(getattr(layer, "stationary", True) for layer in self.layers)

    def output_size(self, size):
        return trace_geometry(self.layers, tuple(size), (1, 1))[-1][0]

    def ntk(self, size, prior="noise", device="auto", dtype=None, memory_budget=None,
            engine="auto", progress=False, average_phases=False) -> CNTKKernel:
        """The CNTK between output pixels for a network input of spatial ``size`` (H, W).

        ``prior``: 'noise' | 'identity' | 'meshgrid' | array (C0, H, W) (see
        :mod:`models.cntk.priors`). ``engine``: 'structured' (stationary prior, periodic layers;
        O(P^2 H W k) time and memory, P = 2**upsamplings), 'dense' (any prior; (HW)^2 memory,
        tiled over row offsets to fit ``memory_budget``), 'auto' (structured when possible); a
        band of offsets of any prior is :meth:`ntk_banded` (``engine='banded'`` is refused).
        ``average_phases``: return the stationary kernel mean_s K(p + s, q + s) over the joint
        shifts s by one period (the kernel of the network with a random circular shift of its
        output grid), accumulated in float64; it is computed tile by tile without ever holding
        the periodic table, so it needs far less memory.
        Raises MemoryBudgetError before allocating when the result cannot fit."""
        H, W = _check_size(size)
        if engine == "banded":
            raise ValueError("the banded engine has its own entry point: "
                             "net.ntk_banded(size, prior, band)")
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        prior_obj = make_prior(prior, (H, W))
        can_structure = prior_obj.stationary and self.stationary
        if engine == "structured" and not can_structure:
            why = (f"prior {prior_obj.name!r} is not stationary" if not prior_obj.stationary
                   else "Upsample('bilinear_aligned') is not periodic")
            raise ValueError(f"the structured engine needs a translation-invariant setting: "
                             f"{why}; use engine='dense'")
        if engine == "auto":
            engine = "structured" if can_structure else "dense"
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        budget = parse_bytes(memory_budget)
        period = (1, 1) if engine == "structured" else (H, W)
        if average_phases and engine != "structured":
            raise ValueError("average_phases needs the structured engine (a stationary prior)")
        prop = Propagator(self.layers, (H, W), period, prior_obj, dev, dt, average=average_phases)
        with torch.no_grad():
            table = prop.compute(budget, progress=progress)
        return CNTKKernel(table, prop.out_size, engine, budget)

    def ntk_banded(self, size, prior, band: int, device="auto", dtype=None,
                   memory_budget=None, map_pieces=None) -> BandedKernel:
        """The CNTK between output pixels p and p + d for the offsets |d_r|, |d_c| <= ``band``
        only (circular), for any prior (see :mod:`models.cntk.banded`): exactly the dense
        engine's entries there, in (2 band + 1)^2 H W memory, computed in row blocks to fit
        ``memory_budget``. Periodic layers only (no Upsample('bilinear_aligned')).
        ``map_pieces``: where the pieces run, e.g. on Dask workers with
        ``functools.partial(completion.scheduling.map_tasks, scheduler=client)`` (see
        :meth:`BandedPropagator.compute <models.cntk.banded.BandedPropagator.compute>`).

        >>> import numpy as np
        >>> net = Sequential.from_spec("C5,G8,C1")
        >>> kern = net.ntk_banded((32, 32), np.random.rand(1, 32, 32), band=5)
        >>> tuple(kern.table.shape), kern.band
        ((32, 32, 11, 11), 5)

        Raises MemoryBudgetError before allocating when the result cannot fit."""
        H, W = _check_size(size)
        prior_obj = make_prior(prior, (H, W))
        dev = resolve_device(device)
        prop = BandedPropagator(self.layers, (H, W), band, prior_obj, dev,
                                resolve_dtype(dtype, dev))
        budget = parse_bytes(memory_budget)
        with torch.no_grad():
            planes = prop.compute(budget, map_pieces)
        return BandedKernel.from_planes(planes, budget)


def _check_size(size):
    try:
        H, W = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be (H, W), got {size!r}") from None
    if H < 1 or W < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return H, W
