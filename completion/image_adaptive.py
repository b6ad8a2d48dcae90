"""Kernel regression of the observed pixels with one of three kernel families (a ``KernelMix``):

* ``stationary``: the stationary CNTK of the inpainter's architecture (noise prior), as before;
* ``smooth``: the NTK of a ReLU network on Fourier features of the coordinates
  (:mod:`completion.smooth_kernel`), a smooth local interpolator of width ``scale`` pixels;
* ``image``: K = (1 - w) K_stationary + w (K_image o taper), where K_image is the banded CNTK of
  ``Conv(patch), Gaussian(sqrt(2) / h), Conv(1)`` whose feature prior is the image itself (a
  first estimate, :mod:`completion.image_priors`): its Gaussian layer gives the non-local-means
  patch weights exp(-msd / h^2) (msd = mean squared difference of the patch x patch patches),
  within |d|_inf <= ``band`` and times a Wendland taper (PSD).  Both kernels are scaled to unit
  mean diagonal.  Solved by CG preconditioned with the Fourier-space solve of the stationary
  part (:class:`completion.mixed_kernel.MixedKernel`); refined ``prior.rounds`` times with the
  previous fit as the new prior.

Grids are the inpainter's padded (C, H, W) torch tensors; fits are float64 on the full grid.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from models.device import Compute

from .image_priors import ImagePrior
from .inpaint_solver import relative_ridge, solve_observed
from .mixed_kernel import MixedKernel
from .smooth_kernel import smooth_kernel

KINDS = ("stationary", "smooth", "image")


@dataclasses.dataclass(frozen=True)
class KernelMix:
    """What to regress with (see the module docstring); ``ridge`` is relative to the mean
    kernel diagonal (the stationary kind uses the inpainter's own ridge)."""
    kind: str = "image"
    weight: float = 0.7
    h: float = 0.3
    band: int = 5
    patch: int = 5
    scale: float = 2.0
    prior: ImagePrior = ImagePrior()
    ridge: float = 1e-2

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kernel kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind == "image" and not (0 < self.weight < 1 and self.h > 0 and self.band >= 1
                                         and self.patch >= 1 and self.patch % 2 == 1):
            raise ValueError(f"invalid image kernel settings: weight {self.weight} (0..1), "
                             f"h {self.h} (> 0), band {self.band} (>= 1), patch {self.patch} (odd)")

    def describe(self) -> str:
        if self.kind == "stationary":
            return "stationary CNTK"
        if self.kind == "smooth":
            return f"smooth (Fourier-feature FC NTK, scale {self.scale:g} px)"
        return (f"{1 - self.weight:g} x stationary CNTK + {self.weight:g} x image-prior CNTK "
                f"(prior {self.prior.spec()}, h {self.h:g}, band {self.band}, patch "
                f"{self.patch}, ridge {self.ridge:g})")


def normalised(kern):
    """A stationary kernel scaled to unit mean diagonal, as float64."""
    from models.cntk import StructuredKernel
    return StructuredKernel(kern.table.to(torch.float64) / float(kern.diag().mean()))


class Regression:
    """The observed pixels of a padded grid: ``y`` (C, H, W) float64 (anything at missing
    pixels), ``observed`` (C, H, W) bool; :meth:`fit` regresses them with a ``KernelMix``."""

    def __init__(self, y, observed, stationary, *, center=True, stationary_ridge=1e-3,
                 tol=1e-3, maxiter=500, compute=None):
        self.y = y.to(torch.float64)
        self.observed = observed
        obs = observed.to(torch.float64)
        self.mean = ((self.y * obs).sum((1, 2)) / obs.sum((1, 2)) if center
                     else torch.zeros(y.shape[0], dtype=torch.float64, device=y.device))
        self.targets = (self.y - self.mean[:, None, None]) * obs
        self.stationary = normalised(stationary)
        self.stationary_ridge = stationary_ridge
        self.tol, self.maxiter, self.compute = tol, maxiter, compute or Compute()
        self.iterations = 0

    def restricted(self, keep):
        """The same problem with only the observed pixels where ``keep`` (C, H, W) is True."""
        sub = Regression.__new__(Regression)
        sub.__dict__.update(self.__dict__)
        sub.observed = self.observed & keep
        obs = sub.observed.to(torch.float64)
        sub.targets = (self.y - self.mean[:, None, None]) * obs
        return sub

    def _solve(self, kern, ridge, start=None):
        """(fit on the grid, alpha); ``start``: an initial alpha (warm start: CG then solves
        for the correction, to the same accuracy relative to the targets)."""
        lam = relative_ridge(kern, ridge)
        rhs, tol = self.targets, self.tol
        if start is not None:
            obs = self.observed.to(torch.float64)
            rhs = self.targets - (kern.matvec(start) * obs + lam * start)
            size = torch.linalg.vector_norm(self.targets).clamp(min=torch.finfo(torch.float64).tiny)
            scale = float(torch.linalg.vector_norm(rhs) / size)  # 0 for a constant image
            tol = min(self.tol / max(scale, 1e-12), 0.5)
        alpha, info = solve_observed(kern, rhs, self.observed, lam, solver="cg", tol=tol,
                                     maxiter=self.maxiter, compute=self.compute)
        if start is not None:
            alpha = alpha + start
        self.iterations += info.iterations
        return kern.matvec(alpha).to(torch.float64) + self.mean[:, None, None], alpha

    def fit(self, mix: KernelMix, first=None):
        """The fit (C, H, W) float64 on the whole grid; ``first``: a stationary fit to start
        the image prior from (computed when None)."""
        if mix.kind == "stationary":
            return self._solve(self.stationary, self.stationary_ridge)[0]
        if mix.kind == "smooth":
            kern = smooth_kernel(self.y.shape[1:], mix.scale)
            return self._solve(kern, self.stationary_ridge)[0]
        fit = self.fit(KernelMix("stationary")) if first is None else first
        alpha = None
        for _ in range(mix.prior.rounds + 1):
            kern = MixedKernel([(1 - mix.weight, self.stationary)],
                               self.image_kernel(fit, mix), mix.weight)
            fit, alpha = self._solve(kern, mix.ridge, alpha)  # refinements start from the last
        return fit

    def image_kernel(self, fit, mix):
        """The tapered banded CNTK with prior = the observed pixels, ``fit`` elsewhere, scaled
        to unit mean diagonal (float32 table)."""
        from models.cntk import Sequential
        guide = torch.where(self.observed, self.y, fit).cpu().numpy()
        net = Sequential.from_spec(f"C{mix.patch},G{math.sqrt(2) / mix.h!r},C1")
        compute = dataclasses.replace(self.compute, device=self.y.device, dtype=torch.float32)
        kern = net.ntk_banded(tuple(self.y.shape[1:]), mix.prior.features(guide), band=mix.band,
                              compute=compute).tapered()
        kern.planes /= float(kern.diag().to(torch.float64).mean())   # in place: tables are big
        return kern
