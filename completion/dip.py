"""Inpainting by training a Deep Image Prior network on the observed pixels (the baseline the
CNTK is the infinite-width limit of).

:func:`dip_inpaint` follows the published recipe: a fixed code ``z`` of U(0, 0.1) noise,
perturbed at every step by N(0, reg_noise_std^2) noise (1/30 by default); Adam (lr 0.01, or
0.001 for the restoration setting); loss = mean squared error over the observed pixels only;
"backtracking": when the observed-pixel PSNR drops by more than ``backtrack_db`` (5 dB) below
the last accepted step, the weights of that step are restored and the update is skipped.

Returned images are float arrays in [0, 1] with the input's shape (H x W or H x W x C).
``DIPResult.image`` has the observed pixels pasted back (as every other method compared here
keeps them; pass ``paste_observed=False`` to get the raw network output there), and
``DIPResult.output`` is always the raw network output. Both PSNRs are reported when a reference
is given. Which images are accepted and how they are padded to multiples of ``2 ** scales``
(at least twice that: missing pixels, which never enter the loss) is
:mod:`completion.image_grid`; the output is cropped back.
"""
from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from completion.image_grid import pad_to_multiple, validate_image_and_mask
from completion.metrics import psnr
from models.device import DEFAULT_MEMORY_BUDGET, Compute, check_fits
from models.dip import DIPConfig, DIPNetwork

# Peak training memory per (padded) pixel of the published configuration, measured on CPU
# (float32, forward + backward: peak RSS 1.05 GB at 256 x 256, of which ~0.3 GB is the torch
# runtime); scaled by the channel width for other configurations.
_BYTES_PER_PIXEL_PER_128_CHANNELS = 12_000

# On a CPU the wall time of training is estimated from the steps after the first (which pays
# for allocation) up to this one, and announced in a warning when above _WARN_SECONDS.
_TIMED_STEPS = 3
_WARN_SECONDS = 60.0


class HistoryPoint(NamedTuple):
    """One logged training step: ``psnr`` (dB, of the pasted image against the reference, from
    the training forward pass) is None without a reference; ``seconds`` since training began."""

    iteration: int
    loss: float
    psnr: float | None
    seconds: float


@dataclass
class DIPResult:
    """``image``/``output``: H x W (x C) float arrays in [0, 1] (see module docstring);
    ``history``: logged :class:`HistoryPoint` s; ``backtracks``: iterations at which the weights
    were restored; ``psnr``/``psnr_output``: final PSNR (dB) of ``image``/``output`` against the
    reference (None without one); ``seconds``: wall time of the training loop."""

    image: np.ndarray
    output: np.ndarray
    history: list = field(default_factory=list)
    backtracks: list = field(default_factory=list)
    iterations: int = 0
    seconds: float = 0.0
    psnr: float | None = None
    psnr_output: float | None = None

    def __array__(self, dtype=None, copy=None):
        """``np.asarray(result)`` is ``result.image``."""
        return np.asarray(self.image, dtype=dtype)


def _check_reference(reference, shape):
    """``reference`` as float64 of the image's ``shape``, or None."""
    if reference is None:
        return None
    reference = np.asarray(reference, dtype=np.float64)
    if reference.shape != shape:
        raise ValueError(f"reference shape {reference.shape} does not match image shape {shape}")
    return reference


@contextlib.contextmanager
def _deterministic(device: torch.device):
    """Deterministic algorithms on for the duration (warn-only on CUDA, where bilinear
    upsampling and reflection padding have no deterministic backward); restored afterwards."""
    was_on = torch.are_deterministic_algorithms_enabled()
    was_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_on, warn_only=was_warn)


def estimate_training_bytes(height: int, width: int, config: DIPConfig) -> int:
    """Rough peak memory (bytes) of training on an H x W image (padded size)."""
    width_factor = max(max(config.per_level("down")), max(config.per_level("up"))) / 128
    return int(_BYTES_PER_PIXEL_PER_128_CHANNELS * width_factor * height * width)


def dip_inpaint(image, mask, iterations: int = 3000, lr: float = 0.01,
                reg_noise_std: float = 1 / 30, config: DIPConfig | None = None,
                device="auto", seed: int = 0, reference=None, paste_observed: bool = True,
                backtrack: bool = True, backtrack_db: float = 5.0, log_every: int = 10,
                progress: bool = True, callback: Callable[[HistoryPoint], None] | None = None,
                memory_budget=None, threads=None) -> DIPResult:
    """Fill the pixels where ``mask`` is True by training a DIP network on the others.

    Parameters
    ----------
    image : float array H x W or H x W x C in [0, 1] (values under the mask are ignored).
    mask : bool array H x W, True = missing (or H x W x C, the same for every channel); the
        rules: :mod:`completion.image_grid`.
    iterations : Adam steps (the published inpainting table used thousands).
    lr : Adam learning rate (0.01 published; 0.001 for the restoration setting).
    reg_noise_std : standard deviation of the per-step perturbation of the input code.
    config : :class:`models.dip.DIPConfig` (default: the published configuration).
    seed : fixes the weights, the input code and the perturbations.
    reference : optional clean H x W (x C) image; PSNR is then logged and reported.
    backtrack, backtrack_db : restore the last accepted weights when the observed-pixel PSNR
        falls more than ``backtrack_db`` dB below it (checked at every step, as published).
    log_every : record a :class:`HistoryPoint` every this many steps (and at the last).
    progress : show a tqdm bar with the iteration, loss and (with a reference) PSNR.
    callback : called with each recorded :class:`HistoryPoint` (e.g. to stream a CSV).
    device, memory_budget, threads : where, within how much memory (bytes or '2GB'; default twice
        ``models.device.DEFAULT_MEMORY_BUDGET``; training that would exceed it is refused up
        front) and on how many CPU threads (None: ``$NTK_THREADS``, else
        ``models.device.default_threads()``) the network trains (a
        :class:`models.device.Compute`; always float32).
    """
    img, masks, grey = validate_image_and_mask(image, mask, unit_range=True, shared_mask=True)
    image, mask = (img[:, :, 0] if grey else img), masks[:, :, 0]
    reference = _check_reference(reference, image.shape)
    if int(iterations) != iterations or iterations < 1:
        raise ValueError(f"iterations must be a positive integer, got {iterations!r}")
    if lr <= 0 or reg_noise_std < 0 or log_every < 1:
        raise ValueError("lr must be > 0, reg_noise_std >= 0 and log_every >= 1")
    config = config or DIPConfig()
    config.validate()
    compute = Compute(device, None, 2 * DEFAULT_MEMORY_BUDGET if memory_budget is None
                      else memory_budget, threads).resolve()
    device = compute.device
    multiple = config.size_multiple
    padded, padded_mask = pad_to_multiple(img.astype(np.float32), mask, multiple,
                                          minimum=2 * multiple)  # batch norm: 2 x 2 at the bottom
    padded = np.moveaxis(padded, 2, 0)
    c, hp, wp = padded.shape
    check_fits(estimate_training_bytes(hp, wp, config), compute.memory_budget,
               f"training the DIP network on a {hp} x {wp} (padded) image",
               "Use a smaller image or configuration, or raise memory_budget.")

    with _deterministic(device), compute.limited_threads(), \
            torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        net = DIPNetwork(c, config).to(device=device, dtype=torch.float32)  # whatever torch's default dtype
        z = net.noise_input(hp, wp, device=device)
        perturb = torch.Generator(device=device).manual_seed(seed + 1)
        target = torch.from_numpy(np.ascontiguousarray(padded))[None].to(device)
        observed = torch.from_numpy(~padded_mask)[None, None].to(device).expand_as(target)
        n_observed = observed.sum()
        observed_f = observed.to(target.dtype)
        optimizer = torch.optim.Adam(net.parameters(), lr=lr)
        params = list(net.parameters())
        accepted = [p.detach().clone() for p in params]
        accepted_loss = math.inf
        result = DIPResult(image=image, output=image)
        bar = tqdm(total=int(iterations), desc="DIP", unit="it", disable=not progress)
        start = time.perf_counter()
        for it in range(1, int(iterations) + 1):
            code = z
            if reg_noise_std > 0:
                code = z + reg_noise_std * torch.randn(z.shape, generator=perturb, device=device)
            out = net(code)
            loss = (((out - target) ** 2) * observed_f).sum() / (n_observed * 1.0)
            loss_value = float(loss.detach())
            # Backtracking: a PSNR drop of backtrack_db dB is a loss ratio of 10^(db/10).
            collapsed = loss_value > accepted_loss * 10 ** (backtrack_db / 10)
            if not math.isfinite(loss_value) or (backtrack and collapsed):
                with torch.no_grad():
                    for p, saved in zip(params, accepted):
                        p.copy_(saved)
                result.backtracks.append(it)
                optimizer.zero_grad(set_to_none=True)
            else:
                with torch.no_grad():
                    for p, saved in zip(params, accepted):
                        saved.copy_(p)
                accepted_loss = loss_value
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if it % log_every == 0 or it == iterations:
                value = None
                if reference is not None:
                    value = psnr(_paste(_crop(out, mask.shape, grey), image, mask), reference)
                point = HistoryPoint(it, loss_value, value, time.perf_counter() - start)
                result.history.append(point)
                bar.set_postfix(loss=f"{loss_value:.2e}",
                                **({"psnr": f"{value:.2f}"} if value is not None else {}))
                if callback is not None:
                    callback(point)
            bar.update(1)
            if it == 1:
                first_step_done = time.perf_counter()
            elif it == _TIMED_STEPS and device.type == "cpu" and iterations > _TIMED_STEPS:
                _warn_cpu_time(int(iterations), (time.perf_counter() - first_step_done)
                               / (_TIMED_STEPS - 1), mask.shape)
        bar.close()
        with torch.no_grad():
            final = net(z)
        result.seconds = time.perf_counter() - start
    result.iterations = int(iterations)
    result.output = _crop(final, mask.shape, grey)
    result.image = _paste(result.output, image, mask) if paste_observed else result.output
    if reference is not None:
        result.psnr = psnr(result.image, reference)
        result.psnr_output = psnr(result.output, reference)
    return result


def _warn_cpu_time(iterations: int, seconds_per_step: float, shape) -> None:
    """Warn when ``iterations`` steps at the measured rate exceed ``_WARN_SECONDS``."""
    total = iterations * seconds_per_step
    if total <= _WARN_SECONDS:
        return
    span = f"{total / 3600:.1f} h" if total >= 3600 else f"{total / 60:.0f} min"
    warnings.warn(f"DIP on the CPU: {iterations} iterations on a {shape[0]} x {shape[1]} image "
                  f"will take about {span} ({seconds_per_step:.2f} s per step, measured on steps "
                  f"2-{_TIMED_STEPS}); a GPU or fewer iterations is faster", stacklevel=3)


def _crop(out: torch.Tensor, shape, grey: bool) -> np.ndarray:
    """Network output (1, C, Hp, Wp) -> H x W (x C) float64 in [0, 1]."""
    h, w = shape
    arr = out.detach()[0, :, :h, :w].to("cpu", torch.float64).numpy()
    return np.clip(arr[0] if grey else np.moveaxis(arr, 0, 2), 0.0, 1.0)


def _paste(output: np.ndarray, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``output`` on the missing pixels, ``image`` (float64) on the observed ones."""
    return np.where(mask if output.ndim == 2 else mask[:, :, None], output,
                    image.astype(np.float64))
