"""``Sequential``: a validated layer list that computes its CNTK; ``Architecture``: one or more
of them as an inpainter names them (``"default"``, ``"NAME+avg"``, lists; see
:mod:`models.cntk.spec`)."""
from __future__ import annotations

import torch

from ..device import Compute
from .banded import BandedPropagator
from .banded_kernel import BandedKernel
from .engine import Propagator
from .kernel import CNTKKernel, sum_kernels
from .layers import Conv, Layer, check_chain, trace_geometry
from .priors import make_prior
from .spec import PRESETS, parse_spec, split_architecture

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
        if not isinstance(text, str):
            raise ValueError(f"architecture must be a preset name, a spec string or a "
                             f"Sequential, got {text!r}")
        try:
            return cls(*parse_spec(PRESETS.get(text, text)))
        except ValueError as err:
            raise ValueError(f"architecture {text!r} is neither a preset (default, "
                             f"{', '.join(sorted(PRESETS))}, NAME+avg) nor a valid layer spec: "
                             f"{err}") from err

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

    @property
    def size_multiple(self) -> int:
        """Input sides must be multiples of this: the smallest power of two whose square grid
        the layers' geometry accepts (every Downsample, in every branch, halves an even side)."""
        for k in range(len(self.spec()) + 1):  # a spec spends a character at least per layer
            try:
                trace_geometry(self.layers, (2**k, 2**k), (1, 1))
                return 2**k
            except ValueError:
                continue
        raise AssertionError(f"no power-of-two grid fits {self.spec()}")

    def ntk(self, size, prior="noise", *, compute: Compute | None = None, engine="auto",
            progress=False, average_phases=False) -> CNTKKernel:
        """The CNTK between output pixels for a network input of spatial ``size`` (H, W).

        ``prior``: 'noise' | 'identity' | 'meshgrid' | array (C0, H, W) (see
        :mod:`models.cntk.priors`). ``compute``: device, dtype, memory budget and CPU threads
        (:class:`models.device.Compute`; None = the defaults). ``engine``: 'structured'
        (stationary prior, periodic layers; O(P^2 H W k) time and memory, P = 2**upsamplings),
        'dense' (any prior; (HW)^2 memory,
        tiled over row offsets to fit the memory budget), 'auto' (structured when possible); a
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
        c = (compute or Compute()).resolve()
        dev, dt, budget = c.device, c.dtype, c.memory_budget
        period = (1, 1) if engine == "structured" else (H, W)
        if average_phases and engine != "structured":
            raise ValueError("average_phases needs the structured engine (a stationary prior)")
        prop = Propagator(self.layers, (H, W), period, prior_obj, dev, dt, average=average_phases)
        with torch.no_grad(), c.limited_threads():
            table = prop.compute(budget, progress=progress)
        return CNTKKernel(table, prop.out_size, engine, budget)

    def ntk_banded(self, size, prior, band: int, *, compute: Compute | None = None,
                   map_pieces=None) -> BandedKernel:
        """The CNTK between output pixels p and p + d for the offsets |d_r|, |d_c| <= ``band``
        only (circular), for any prior (see :mod:`models.cntk.banded`): exactly the dense
        engine's entries there, in (2 band + 1)^2 H W memory, computed in row blocks to fit
        ``compute``'s memory budget. Periodic layers only (no Upsample('bilinear_aligned')).
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
        c = (compute or Compute()).resolve()
        prop = BandedPropagator(self.layers, (H, W), band, prior_obj, c.device, c.dtype)
        with torch.no_grad(), c.limited_threads():
            planes = prop.compute(c.memory_budget, map_pieces)
        return BandedKernel.from_planes(planes, c.memory_budget)


class Architecture:
    """What an inpainter's ``arch`` names (see :mod:`models.cntk.spec`): ``networks`` (a tuple of
    ``Sequential``, run in parallel: their CNTKs are summed) and ``averaged`` (the kernel is the
    stationary phase average, ``"NAME+avg"``).

    >>> arch = Architecture.of("default")
    >>> len(arch.networks), arch.averaged, arch.size_multiple
    (1, True, 32)
    """

    def __init__(self, networks, averaged: bool = False):
        self.networks = tuple(networks)
        if not self.networks or not all(isinstance(n, Sequential) for n in self.networks):
            raise ValueError(f"an Architecture needs Sequential networks, got {networks!r}")
        self.averaged = bool(averaged)

    @classmethod
    def of(cls, arch) -> "Architecture":
        """From any spelling: ``Architecture``, ``Sequential``, preset name, spec string,
        ``"default"``, ``"NAME+avg"`` or a list of networks."""
        if isinstance(arch, Architecture):
            return arch
        parts, averaged = split_architecture(arch)
        return cls([p if isinstance(p, Sequential) else Sequential.from_spec(p) for p in parts],
                   averaged)

    def key(self) -> str:
        """A stable string naming the architecture (cache key): canonical specs."""
        return " || ".join(n.spec() for n in self.networks) + (" +avg" if self.averaged else "")

    def __repr__(self):
        return f"Architecture({self.key()!r})"

    @property
    def size_multiple(self) -> int:
        """Grid sides must be multiples of this (that of the deepest network)."""
        return max(n.size_multiple for n in self.networks)

    def ntk(self, size, prior="noise", *, compute: Compute | None = None,
            progress=False) -> CNTKKernel:
        """The kernel over an (H, W) grid: the network's CNTK, the sum of the networks' CNTKs
        (tables tiled to the lcm of their periods), or its phase average (see
        :meth:`Sequential.ntk`, ``average_phases``)."""
        kernels = [n.ntk(tuple(size), prior=prior, compute=compute, progress=progress,
                         average_phases=self.averaged) for n in self.networks]
        return kernels[0] if len(kernels) == 1 else sum_kernels(kernels)


def _check_size(size):
    try:
        H, W = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be (H, W), got {size!r}") from None
    if H < 1 or W < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return H, W
