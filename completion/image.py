"""Image inpainting as kernel regression on pixel coordinates with the CNTK of an encoder-decoder.

The observed pixels (all channels at once) are regressed on their positions: with K the CNTK
between output pixels, solve (K_oo + lambda I) alpha = y_o - mean and predict K_mo alpha + mean.
This is the infinitely wide limit of fitting a Deep Image Prior network to the observed pixels
by gradient flow (plus a ridge).  By default (``prior='auto'``) the kernel is chosen per image
on held-out observed pixels, among the stationary CNTK, a smooth coordinate kernel and the
stationary CNTK mixed with the CNTK whose feature prior is the image itself (non-local patch
similarities; :mod:`completion.image_adaptive`).  ``inpaint(image, mask, method=...)`` also offers the trained DIP
network and the classical biharmonic / Telea fills for comparison.

Shapes: images are float (H, W) or (H, W, C) in [0, 1]; masks are bool (H, W) (shared by every
channel) or (H, W, C), ``True`` = missing; what is accepted and how images are padded onto the
network's grid: :mod:`completion.image_grid`.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from models.cntk import Architecture
from models.device import Compute

from .image_adaptive import KernelMix, Regression
from .image_grid import PAD_MODES, pad_to_multiple, validate_image_and_mask
from .image_priors import is_image_prior, parse_image_prior
from .image_selection import (MIN_HELD_OUT, SELECTION_BAND, band_for, held_out_mask,
                              select_mix)
from .inpaint_solver import relative_ridge, solve_observed
from .kernel_cache import KernelCache

METHODS = ("cntk", "dip", "biharmonic", "telea")

DEFAULT_ARCH = "default"
DEFAULT_PRIOR = "auto"  # chosen by benchmarks/bench_adaptive.py (RESULTS.md)
DEFAULT_RIDGE = 1e-3


class CNTKInpainter:
    """Fill missing pixels by kernel ridge regression with the CNTK of ``arch``.

    Parameters
    ----------
    arch : preset name, layer spec string (see ``models.cntk``), a ``Sequential`` network, or a
        list of them (their kernels are summed: the NTK of the networks run in parallel).
    prior : network input statistics, ``'noise'``, ``'identity'``, ``'meshgrid'`` or an array
        (one kernel, as before); an image prior ``'image[:ROUNDS][+meshgrid:W]'``
        (:mod:`completion.image_priors`): the stationary CNTK mixed with the banded CNTK whose
        prior is the image itself (:mod:`completion.image_adaptive`, default settings); or
        ``'auto'`` (the default): the kernel (stationary CNTK, smooth coordinate kernel, or the
        image-prior mix) chosen per image on held-out observed pixels
        (:mod:`completion.image_selection`; ``last_info['selection']`` says what and why).
        The adaptive priors ignore ``solver`` and ``precondition`` (always preconditioned CG).
    ridge : lambda relative to the mean kernel diagonal.
    center : subtract the mean of the observed pixels (per channel) before regressing.
    pad, margin : the image is padded at the bottom and right by at least ``margin`` pixels, up
        to multiples of 2^levels, marked missing (``pad='missing'``) or mirrored (``reflect``,
        ``wrap``). The default (16 missing pixels at least) keeps the circular convolutions from
        correlating opposite edges: +0.18 dB mean PSNR on the dev images over no margin
        (benchmarks/RESULTS.md).
    solver : ``'auto'`` (Cholesky up to 2000 observed pixels, else preconditioned CG),
        ``'cholesky'`` or ``'cg'``; ``tol`` (relative residual; 1e-3 gives the same PSNR to
        0.01 dB as 1e-6 on the dev images) and ``maxiter`` control CG; ``precondition`` uses
        r -> P (K + mu I)^-1 P r, a division in Fourier space for the stationary default kernel:
        as fast as plain CG on scattered missing pixels and 6-19x faster on text and box masks
        (649 -> 50 iterations; benchmarks/RESULTS.md).
    device, dtype, memory_budget, threads : where, in what precision, within how much memory
        and on how many CPU threads the kernel is computed and the system solved (one
        :class:`models.device.Compute`, ``self.compute``; ``threads=None``: ``$NTK_THREADS``, else
        :func:`models.device.default_threads`). ``dtype=None``: float32 for phase-averaged
        architectures (``NAME+avg``, the default; the average is accumulated in float64 and the
        solve runs in float64: same PSNR to 0.001 dB on the dev images, half the time), else
        float64 on a CPU and float32 on a GPU. The solve runs in the kernel's dtype.
    keep_observed : observed pixels keep their input values (else the smoothed fit is returned).
    cache_dir : folder where computed kernels are stored for reuse (keyed by architecture, size,
        prior and dtype); kernels are also kept in memory for images of the same size.

    mix : a :class:`completion.image_adaptive.KernelMix` to use as it is (no selection) with an
        image prior or ``'auto'`` (research; default: chosen / the defaults).

    After :meth:`inpaint`, ``last_info`` holds timings and solver statistics (and, with
    ``'auto'``, what was chosen).
    """

    def __init__(self, arch=DEFAULT_ARCH, prior=DEFAULT_PRIOR, ridge=DEFAULT_RIDGE, *, device="auto",
                 dtype=None, memory_budget=None, threads=None, center=True, pad="missing", margin=16,
                 solver="auto", tol=1e-3, maxiter=500, precondition=True, keep_observed=True, cache_dir=None,
                 progress=False, mix=None):
        if not ridge > 0:
            raise ValueError(f"ridge must be positive, got {ridge}")
        if pad not in PAD_MODES:
            raise ValueError(f"pad must be one of {', '.join(PAD_MODES)}, got {pad!r}")
        self.arch, self.prior, self.ridge = arch, prior, float(ridge)
        self.architecture = Architecture.of(arch)
        self.adaptive = isinstance(prior, str) and (prior == "auto" or is_image_prior(prior))
        self.image_prior = parse_image_prior(prior) if is_image_prior(prior) else None
        self.kernel_prior = "noise" if self.adaptive else prior  # of the stationary kernel
        self.mix = mix
        if dtype is None and self.architecture.averaged:
            dtype = torch.float32  # accumulated in float64 anyway (see the class docstring)
        self.compute = Compute(device, dtype, memory_budget, threads).resolve()
        self.center, self.pad, self.margin = center, pad, int(margin)
        self.solver, self.tol, self.maxiter = solver, tol, maxiter
        self.precondition = precondition
        self.keep_observed, self.progress = keep_observed, progress
        self._cache = KernelCache(cache_dir)
        self._kernels = {}
        self.last_info = {}

    def kernel(self, shape):
        """The kernel over an (H, W) grid whose sides are multiples of 2^levels (memoised)."""
        shape = tuple(int(s) for s in shape)
        if shape not in self._kernels:
            self._kernels[shape] = self._cache.get_or_compute(
                self.architecture, shape, self.kernel_prior, self.compute,
                lambda: self.architecture.ntk(shape, prior=self.kernel_prior, compute=self.compute,
                                              progress=self.progress))
        return self._kernels[shape]

    @property
    def multiple(self) -> int:
        """Padded sides are multiples of this (the architecture's ``size_multiple``)."""
        return self.architecture.size_multiple

    def inpaint(self, image, mask):
        """Return the completed image, same shape as ``image`` (values not clipped); the work
        runs on ``self.compute``'s CPU threads (the previous setting restored after)."""
        with self.compute.limited_threads():
            return self._fill(image, mask)

    def _fill(self, image, mask):
        img, m, grey = validate_image_and_mask(image, mask)
        h, w = img.shape[:2]
        img_p, m_p = pad_to_multiple(img, m, self.multiple, self.margin, self.pad)
        t0 = time.perf_counter()
        kern = self.kernel(img_p.shape[:2])
        t_kernel = time.perf_counter() - t0

        to_t = lambda a: torch.as_tensor(np.ascontiguousarray(np.moveaxis(a, 2, 0)),
                                         device=self.compute.device)
        if self.adaptive:
            return self._inpaint_adaptive(img, m, grey, img_p, m_p, kern, to_t, t_kernel)
        dtype = kern.dtype  # phase-averaged kernels are float64 whatever they were computed in
        y = to_t(img_p).to(dtype)
        observed = to_t(~m_p)
        obs_f = observed.to(dtype)
        if self.center:
            mean = (y * obs_f).sum((1, 2)) / obs_f.sum((1, 2))
        else:
            mean = torch.zeros(y.shape[0], dtype=dtype, device=self.compute.device)
        targets = (y - mean[:, None, None]) * obs_f
        lam = relative_ridge(kern, self.ridge)
        t1 = time.perf_counter()
        alpha, info = solve_observed(kern, targets, observed, lam, solver=self.solver,
                                     compute=self.compute, tol=self.tol,
                                     maxiter=self.maxiter, precondition=self.precondition,
                                     progress=self.progress)
        fit = kern.matvec(alpha) + mean[:, None, None]
        t_solve = time.perf_counter() - t1
        out = np.moveaxis(fit.cpu().numpy(), 0, 2)[:h, :w]
        if self.keep_observed:
            out = np.where(m, out, img)
        self.last_info = {"kernel_seconds": t_kernel, "solve_seconds": t_solve,
                          "solver": info.method, "iterations": info.iterations,
                          "converged": info.converged, "relative_residual": info.relative_residual,
                          "chosen": f"stationary CNTK (prior {self.prior})",
                          "padded_shape": img_p.shape[:2]}
        return out[:, :, 0] if grey else out

    def _inpaint_adaptive(self, img, m, grey, img_p, m_p, kern, to_t, t_kernel):
        """``prior='auto'`` or an image prior: see :mod:`completion.image_adaptive`."""
        h, w = img.shape[:2]
        problem = Regression(to_t(img_p), to_t(~m_p), kern, center=self.center,
                             stationary_ridge=self.ridge, tol=self.tol, maxiter=self.maxiter,
                             compute=self.compute)
        band = band_for(img_p.shape[2])
        t0 = time.perf_counter()
        selection = None
        if self.mix is not None:
            mix = self.mix
        elif self.image_prior is not None:
            mix = KernelMix("image", band=band, prior=self.image_prior)
        else:
            held = held_out_mask(~m, m)
            if held.reshape(-1, held.shape[2]).sum(0).min() < MIN_HELD_OUT:
                mix = KernelMix("image", band=band)  # too few pixels to judge: the default
            else:
                held_p = np.zeros(m_p.shape, bool)
                held_p[:h, :w] = held
                selection = select_mix(problem, to_t(held_p), min(band, SELECTION_BAND), band)
                mix = selection.mix
        t_select = time.perf_counter() - t0
        fit = problem.fit(mix)
        out = np.moveaxis(fit.cpu().numpy(), 0, 2)[:h, :w]
        if self.keep_observed:
            out = np.where(m, out, img)
        self.last_info = {"kernel_seconds": t_kernel, "selection_seconds": t_select,
                          "solve_seconds": time.perf_counter() - t0 - t_select,
                          "solver": "cg", "iterations": problem.iterations,
                          "chosen": mix.describe(), "padded_shape": img_p.shape[:2],
                          "selection": None if selection is None else selection.report()}
        return out[:, :, 0] if grey else out


def inpaint(image, mask, method="cntk", **options):
    """Fill the pixels where ``mask`` is True (non-zero); uint8, uint16 and float images come
    back in their own dtype (see :mod:`completion.image_types`); details in :func:`_inpaint`."""
    from .image_types import as_bool_mask, as_float_image
    img, restore = as_float_image(image)
    return restore(_inpaint(img, as_bool_mask(mask), method, **options))


def _inpaint(image, mask, method="cntk", **options):
    """Fill the pixels where ``mask`` is True.

    ``method``: ``'cntk'`` (kernel regression, options of :class:`CNTKInpainter`), ``'dip'``
    (a trained Deep Image Prior network; options of :func:`completion.dip.dip_inpaint`:
    ``iterations``, ``device``, ``memory_budget``, ``threads``, ``seed``, ``progress`` ...),
    ``'biharmonic'`` (scikit-image) or ``'telea'`` (OpenCV; option ``radius``).
    Returns a float array of the image's shape.
    """
    if method == "cntk":
        return CNTKInpainter(**options).inpaint(image, mask)
    if method == "dip":
        from .dip import dip_inpaint
        return np.asarray(dip_inpaint(image, mask, **options).image)
    img, m, grey = validate_image_and_mask(image, mask)
    if method == "biharmonic":
        _reject_options(method, options)
        try:
            from skimage.restoration import inpaint_biharmonic
        except ImportError as err:
            raise ImportError("method='biharmonic' needs scikit-image: "
                              "pip install 'ntk-completion[compare]'") from err
        # scikit-image needs C-contiguous planes; channel slices of an RGB array are not.
        out = np.stack([inpaint_biharmonic(np.ascontiguousarray(img[:, :, c]),
                                           np.ascontiguousarray(m[:, :, c]))
                        for c in range(img.shape[2])], 2)
    elif method == "telea":
        radius = options.pop("radius", 3)
        _reject_options(method, options)
        try:
            import cv2
        except ImportError as err:
            raise ImportError("method='telea' needs OpenCV: "
                              "pip install 'ntk-completion[compare]'") from err
        u8 = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
        out = np.stack([cv2.inpaint(u8[:, :, c], m[:, :, c].astype(np.uint8), radius,
                                    cv2.INPAINT_TELEA) for c in range(img.shape[2])], 2) / 255.0
        out = np.where(m, out, img)
    else:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    return out[:, :, 0] if grey else out


def _reject_options(method, options):
    if options:
        raise ValueError(f"method={method!r} takes no options {sorted(options)}")
