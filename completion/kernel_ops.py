"""Kernels over pixel grids as the inpainting solver uses them: built from an architecture
(``models.cntk``), summed over parallel architectures, or averaged over phase shifts.

:func:`build_kernel` turns a preset name / layer spec / ``Sequential`` / list of them into a
``models.cntk.CNTKKernel`` (``matvec``, ``solve_shifted``, ``diag``, ``block``, ``table``).

* A list of architectures means the sum of their CNTKs (the NTK of the networks run in parallel
  with their outputs added); tables are tiled to the lcm of their periods.
* Phase averaging (a name ending in ``"+avg"``): a kernel periodic with period P (after
  upsampling layers) averaged over the P x P joint shifts of both pixels,
  mean_s K(p + s, q + s), is stationary and still positive semi-definite (a mean of PSD
  kernels); it removes the upsampling grid pattern and makes products and solves cheaper.
"""
from __future__ import annotations

import math

DEFAULT_ARCHITECTURE = "sym5+avg"  # 5*(C3,L,D),C3,L,5*(U,C3,L),C3, phase-averaged
"""What ``arch="default"`` means (chosen by benchmarks/bench_inpaint.py; see RESULTS.md)."""


def _split_arch(arch):
    """(list of architectures, phase-average flag) from a name/spec/net/list."""
    if isinstance(arch, str) and arch == "default":
        arch = DEFAULT_ARCHITECTURE
    if isinstance(arch, (list, tuple)):
        return list(arch), False
    if isinstance(arch, str) and arch.endswith("+avg"):
        return [arch[:-4]], True
    return [arch], False


def kernel_is_averaged(arch) -> bool:
    """True when ``arch`` names a phase-averaged (stationary) kernel, e.g. ``"default"``."""
    return _split_arch(arch)[1]


def network_of(arch):
    """A ``models.cntk.Sequential`` from a preset name, a layer spec string or a network."""
    from models.cntk import PRESETS, Sequential
    if isinstance(arch, Sequential):
        return arch
    if isinstance(arch, str):
        try:
            return Sequential.from_spec(arch)
        except ValueError as err:
            raise ValueError(f"architecture {arch!r} is neither a preset (default, "
                             f"{', '.join(sorted(PRESETS))}, NAME+avg) nor a valid layer spec: "
                             f"{err}") from err
    raise ValueError(f"architecture must be a preset name, a spec string or a Sequential, got {arch!r}")


def arch_key(arch) -> str:
    """A stable string naming ``arch`` (cache key)."""
    parts, averaged = _split_arch(arch)
    key = " || ".join(network_of(a).spec() for a in parts)
    return key + (" +avg" if averaged else "")


def _downsamplings(layers) -> int:
    from models.cntk import Concat, Downsample
    count = 0
    for layer in layers:
        if isinstance(layer, Downsample):
            count += 1
        elif isinstance(layer, Concat):
            count += max(_downsamplings(layer.skip), _downsamplings(layer.main))
    return count


def levels_of(arch) -> int:
    """How many stride-2 downsamplings the deepest network of ``arch`` has (sides of the image
    must be multiples of 2^levels)."""
    parts, _ = _split_arch(arch)
    return max(_downsamplings(network_of(a).layers) for a in parts)


def build_kernel(arch, shape, *, prior="noise", device="auto", dtype=None, memory_budget=None,
                 progress=False):
    """The kernel of ``arch`` over an (H, W) grid: one network's CNTK, the sum of several
    networks' CNTKs, or its phase average (``"NAME+avg"``)."""
    parts, averaged = _split_arch(arch)
    kernels = [network_of(a).ntk(tuple(shape), prior=prior, device=device, dtype=dtype,
                                 memory_budget=memory_budget, progress=progress,
                                 average_phases=averaged) for a in parts]
    return kernels[0] if len(kernels) == 1 else sum_kernels(kernels)


def sum_kernels(kernels):
    """The sum of structured kernels over the same grid, as one structured kernel."""
    from models.cntk import StructuredKernel
    if any(k.table is None for k in kernels):
        raise ValueError("summing kernels needs structured (periodic) kernels")
    ph = math.lcm(*(k.period[0] for k in kernels))
    pw = math.lcm(*(k.period[1] for k in kernels))
    total = sum(k.table.repeat(ph // k.period[0], pw // k.period[1], 1, 1) for k in kernels)
    return StructuredKernel(total, memory_budget=getattr(kernels[0], "memory_budget", None))
