"""Kernels over pixel grids as the inpainting solver uses them: built from an architecture
(``models.cntk``), summed over parallel architectures, or averaged over phase shifts.

* :func:`build_kernel` turns a preset name / layer spec / ``Sequential`` / list of them into a
  kernel object (``matvec``, ``solve_shifted``, ``diag``, ``table``/``period``).
* :class:`StationaryKernel`: K(p, q) = t[(q - p) mod (H, W)] on the torus, diagonalised by the 2-D
  FFT (exact ``matvec`` and ``solve_shifted`` in O(HW log HW)).
* Phase averaging: a kernel periodic with period P (after upsampling layers) averaged over the
  P x P joint shifts of both pixels, mean_s K(p + s, q + s), is stationary and still positive
  semi-definite (a mean of PSD kernels); arch names ending in ``"+avg"`` ask for it.
"""
from __future__ import annotations

import math

import torch


class StationaryKernel:
    """K(p, q) = ``table[(q_r - p_r) % H, (q_c - p_c) % W]`` for a torch (H, W) ``table``
    (real, symmetric: t[d] = t[-d])."""

    def __init__(self, table: torch.Tensor):
        if table.ndim != 2:
            raise ValueError(f"stationary table must be (H, W), got shape {tuple(table.shape)}")
        self.shape = tuple(table.shape)
        self._t = table
        # eigenvalues of the circulant operator (real because the table is symmetric)
        self._eig = torch.fft.fft2(table).real

    @property
    def table(self):
        return self._t[None, None]

    @property
    def period(self):
        return (1, 1)

    def diag(self):
        return torch.full(self.shape, float(self._t[0, 0]), dtype=self._t.dtype, device=self._t.device)

    def dense(self):
        h, w = self.shape
        r = torch.arange(h, device=self._t.device)
        c = torch.arange(w, device=self._t.device)
        dr = (r[None, None, :, None] - r[:, None, None, None]) % h
        dc = (c[None, None, None, :] - c[None, :, None, None]) % w
        return self._t[dr, dc]

    def _apply(self, v, spectrum):
        v = torch.as_tensor(v, device=self._t.device, dtype=self._t.dtype)
        # K v (p) = sum_d t[d] v(p + d): a correlation; t symmetric makes it a convolution.
        return torch.fft.ifft2(torch.fft.fft2(v) * spectrum).real

    def matvec(self, v):
        """K v for v of shape (H, W) or (C, H, W)."""
        return self._apply(v, self._eig)

    def solve_shifted(self, v, mu):
        """(K + mu I)^-1 v, exact."""
        return self._apply(v, 1.0 / (self._eig + mu))


def phase_average(kern) -> StationaryKernel:
    """The stationary kernel mean_s K(p + s, q + s) of a periodic kernel with a ``table``."""
    table = kern.table
    if table is None:
        raise ValueError("phase averaging needs a structured (periodic) kernel, not a dense one")
    return StationaryKernel(table.mean(dim=(0, 1)))


def _split_arch(arch):
    """(list of architectures, phase-average flag) from a name/spec/net/list."""
    if isinstance(arch, (list, tuple)):
        return list(arch), False
    if isinstance(arch, str) and arch.endswith("+avg"):
        return [arch[:-4]], True
    return [arch], False


def network_of(arch):
    """A ``models.cntk.Sequential`` from a preset name, a layer spec string or a network."""
    from models.cntk import PRESETS, Sequential
    if isinstance(arch, Sequential):
        return arch
    if isinstance(arch, str):
        if arch in PRESETS:
            preset = PRESETS[arch]
            return preset if isinstance(preset, Sequential) else Sequential.from_spec(preset)
        try:
            return Sequential.from_spec(arch)
        except ValueError as err:
            raise ValueError(f"architecture {arch!r} is neither a preset ({', '.join(sorted(PRESETS))}) "
                             f"nor a valid layer spec: {err}") from err
    raise ValueError(f"architecture must be a preset name, a spec string or a Sequential, got {arch!r}")


def arch_key(arch) -> str:
    """A stable string naming ``arch`` (cache key)."""
    parts, averaged = _split_arch(arch)
    key = " || ".join(network_of(a).spec() for a in parts)
    return key + (" +avg" if averaged else "")


def levels_of(arch) -> int:
    """How many stride-2 downsamplings the deepest network of ``arch`` has (sides of the image
    must be multiples of 2^levels)."""
    from models.cntk import Downsample
    parts, _ = _split_arch(arch)
    return max(sum(isinstance(layer, Downsample) for layer in network_of(a).layers) for a in parts)


def build_kernel(arch, shape, *, prior="noise", device="auto", dtype=None, memory_budget=None,
                 progress=False):
    """The kernel of ``arch`` over an (H, W) grid: one network's CNTK, the sum of several
    networks' CNTKs (period = lcm of theirs), or its phase average (``"NAME+avg"``)."""
    parts, averaged = _split_arch(arch)
    kernels = [network_of(a).ntk(tuple(shape), prior=prior, device=device, dtype=dtype,
                                 memory_budget=memory_budget, progress=progress) for a in parts]
    if averaged:
        return phase_average(kernels[0])
    if len(kernels) == 1:
        return kernels[0]
    return sum_kernels(kernels)


def sum_kernels(kernels):
    """The kernel sum of structured kernels, as one structured kernel (tables tiled to the lcm
    of their periods)."""
    from models.cntk import StructuredKernel
    if any(k.table is None for k in kernels):
        raise ValueError("summing kernels needs structured (periodic) kernels")
    ph = math.lcm(*(k.period[0] for k in kernels))
    pw = math.lcm(*(k.period[1] for k in kernels))
    total = 0
    for k in kernels:
        kp = k.period
        total = total + k.table.repeat(ph // kp[0], pw // kp[1], 1, 1)
    if (ph, pw) == (1, 1):
        return StationaryKernel(total[0, 0])
    return StructuredKernel(total)
