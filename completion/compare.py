"""Side-by-side inpainting: every method on the same mask, scored, timed, and plotted.

:func:`compare_methods` runs the methods and returns one :class:`MethodRun` per method;
:func:`write_comparison` writes into a folder:

- ``mask.png`` (non-zero = missing), ``corrupted.png`` (missing pixels black), ``METHOD.png``;
- ``comparison.png``: corrupted | each method | reference (matplotlib);
- ``table.csv`` and ``table.md``: PSNR (dB), SSIM, wall time (s) and peak memory (MB) per method;
- with DIP: ``dip_curve.csv`` (iteration, loss, PSNR, seconds) and ``dip_curve.png`` (PSNR
  against iterations and against seconds, with a horizontal line at the CNTK's PSNR and the
  first iteration at which DIP reaches it, if it does).

Every output keeps the observed pixels (DIP's are pasted back; its raw-output PSNR is also
reported). Peak memory is the peak increase of the process's resident set size (RSS, read
from ``/proc/self/statm`` every 10 ms) over its value when the method started: it counts
numpy and torch allocations alike, but not memory the process already held from earlier work.
"""
from __future__ import annotations

import csv
import io
import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from .files import atomic_output, write_text
from .image import METHODS, inpaint
from .image_io import quantise, write_image
from .metrics import psnr, ssim

OPTIONAL_MODULES = {"biharmonic": ("skimage", "scikit-image"), "telea": ("cv2", "OpenCV")}
INSTALL_HINT = "pip install 'ntk-completion[compare]'"


@dataclass
class MethodRun:
    """One method's result: ``image`` H x W (x C) in [0, 1]; ``seconds`` wall time;
    ``peak_mb`` peak RSS increase (None where /proc is unavailable); metrics None without a
    reference; ``history`` the DIP's :class:`completion.dip.HistoryPoint` list; ``extra`` notes."""

    method: str
    image: np.ndarray
    seconds: float
    peak_mb: float | None
    psnr: float | None = None
    ssim: float | None = None
    history: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)


def parse_methods(text: str) -> list[str]:
    """``'cntk,dip'`` -> ``['cntk', 'dip']``; unknown or repeated names are refused."""
    names = [m.strip().lower() for m in str(text).split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if not names or unknown:
        raise ValueError(f"unknown method(s) {unknown or text!r}; choose from {', '.join(METHODS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"method list {text!r} repeats a method")
    return names


def check_dependencies(methods, figures: bool = True) -> None:
    """Raise ImportError naming the missing optional packages before any work starts."""
    import importlib.util
    missing = [f"{label} (for {m})" for m, (module, label) in OPTIONAL_MODULES.items()
               if m in methods and importlib.util.find_spec(module) is None]
    if figures and importlib.util.find_spec("matplotlib") is None:
        missing.append("matplotlib (for the figures)")
    if missing:
        raise ImportError(f"missing optional packages: {', '.join(missing)}; install them with "
                          f"{INSTALL_HINT}")


class _PeakRSS:
    """Context manager sampling the process RSS; ``peak_mb`` = max increase over the start."""

    _STATM = "/proc/self/statm"

    def __init__(self, interval=0.01):
        self.interval, self.peak_mb = interval, None
        self._stop = threading.Event()

    def _rss(self) -> int:
        with open(self._STATM) as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        if not os.path.exists(self._STATM):
            return self
        self._start = self._peak = self._rss()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, self._rss())

    def __exit__(self, *exc):
        if hasattr(self, "_thread"):
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, self._rss())
            self.peak_mb = (self._peak - self._start) / 2**20
        return False


def compare_methods(image, mask, methods, reference=None, dip_options=None, cntk_options=None,
                    progress=True, bits=None) -> list[MethodRun]:
    """Run each of ``methods`` on ``image`` (H x W (x C), [0, 1]) with the same bool ``mask``
    (True = missing) and score against ``reference`` (same shape) when given. Each result is
    clipped to [0, 1] and, with ``bits`` (8 or 16), rounded as the PNG written of it will be,
    so that the scores are those of the files."""
    from .dip import dip_inpaint

    runs = []
    for method in methods:
        history, extra = [], {}
        with _PeakRSS() as mem:
            start = time.perf_counter()
            if method == "dip":
                res = dip_inpaint(image, mask, reference=reference, progress=progress,
                                  **(dip_options or {}))
                out, history = res.image, res.history
                extra = {"iterations": res.iterations, "backtracks": len(res.backtracks),
                         "psnr_raw_output": res.psnr_output}
            elif method == "cntk":
                out = inpaint(image, mask, method="cntk", progress=progress, **(cntk_options or {}))
            else:
                out = inpaint(image, mask, method=method)
            seconds = time.perf_counter() - start
        # scored as written to the output files: clipped to [0, 1] (and rounded to ``bits``)
        written = np.clip(np.asarray(out, dtype=np.float64), 0.0, 1.0)
        run = MethodRun(method, written if bits is None else quantise(written, bits), seconds,
                        mem.peak_mb, history=history, extra=extra)
        if reference is not None:
            run.psnr = psnr(run.image, reference)
            try:
                run.ssim = ssim(run.image, reference)
            except ImportError:
                run.ssim = None
        runs.append(run)
    return runs


def first_reaching(history, target_psnr):
    """The first logged DIP point with PSNR >= ``target_psnr`` (None if never)."""
    return next((p for p in history if p.psnr is not None and p.psnr >= target_psnr), None)


def _fmt(value, spec):
    return "n/a" if value is None else format(value, spec)


def table_rows(runs):
    """Rows (dicts) of the comparison table; with CNTK and DIP both present and scored, the DIP
    row says when it first reached the CNTK's PSNR and the CNTK-to-DIP time ratio there."""
    cntk = next((r for r in runs if r.method == "cntk" and r.psnr is not None), None)
    rows = []
    for r in runs:
        row = {"method": r.method, "psnr_db": r.psnr, "ssim": r.ssim, "seconds": r.seconds,
               "peak_rss_increase_mb": r.peak_mb, "note": ""}
        if r.method == "dip":
            notes = [f"{r.extra['iterations']} iterations, {r.extra['backtracks']} backtracks"]
            if r.extra.get("psnr_raw_output") is not None:
                notes.append(f"raw network output {r.extra['psnr_raw_output']:.2f} dB")
            if cntk is not None:
                hit = first_reaching(r.history, cntk.psnr)
                notes.append("never reached the CNTK's PSNR" if hit is None else
                             f"reached the CNTK's PSNR at iteration {hit.iteration} "
                             f"({hit.seconds:.1f} s; CNTK/DIP time {cntk.seconds / hit.seconds:.3g})")
            row["note"] = "; ".join(notes)
        rows.append(row)
    return rows


def _csv_text(rows) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def markdown_table(rows) -> str:
    lines = ["| method | PSNR (dB) | SSIM | time (s) | peak RSS increase (MB) | note |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {_fmt(r['psnr_db'], '.2f')} | {_fmt(r['ssim'], '.4f')} | "
                     f"{r['seconds']:.2f} | {_fmt(r['peak_rss_increase_mb'], '.0f')} | {r['note']} |")
    return "\n".join(lines) + "\n"


def write_comparison(out_dir, image, mask, runs, reference=None, figures=True, bits=8,
                     alpha=None) -> list:
    """Write the files listed in the module docstring into ``out_dir`` (images at ``bits`` per
    channel, with the input's ``alpha`` channel when given); returns their paths."""
    from pathlib import Path

    from .masks import mask_to_image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def image_out(name, img):
        path = out_dir / name
        write_image(path, img, bits, alpha)
        written.append(path)

    write_image(out_dir / "mask.png", mask_to_image(mask))
    written.append(out_dir / "mask.png")
    corrupted = np.where(mask if image.ndim == 2 else mask[:, :, None], 0.0, image)
    image_out("corrupted.png", corrupted)
    for r in runs:
        image_out(f"{r.method}.png", r.image)
    rows = table_rows(runs)
    for name, text in (("table.csv", _csv_text(rows)), ("table.md", markdown_table(rows))):
        write_text(out_dir / name, text)
        written.append(out_dir / name)
    dip = next((r for r in runs if r.method == "dip"), None)
    if dip is not None:
        write_text(out_dir / "dip_curve.csv", _csv_text(
            [{"iteration": p.iteration, "loss": p.loss, "psnr_db": p.psnr, "seconds": p.seconds}
             for p in dip.history]))
        written.append(out_dir / "dip_curve.csv")
    if figures:
        written.append(_figure(out_dir / "comparison.png", corrupted, runs, reference))
        if dip is not None:
            cntk = next((r for r in runs if r.method == "cntk"), None)
            written.append(plot_dip_curve(out_dir / "dip_curve.png", dip.history,
                                          None if cntk is None else cntk.psnr,
                                          None if cntk is None else cntk.seconds))
    return written


def _save_figure(fig, path):
    import matplotlib.pyplot as plt
    with atomic_output(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _figure(path, corrupted, runs, reference):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("corrupted", corrupted)]
    panels += [(f"{r.method}" + (f"\n{r.psnr:.2f} dB, {r.seconds:.1f} s" if r.psnr is not None
                                 else f"\n{r.seconds:.1f} s"), r.image) for r in runs]
    if reference is not None:
        panels.append(("reference", reference))
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.4), squeeze=False)
    for ax, (title, img) in zip(axes[0], panels):
        ax.imshow(np.clip(img, 0, 1), cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    return _save_figure(fig, path)


def plot_dip_curve(path, history, cntk_psnr=None, cntk_seconds=None):
    """PSNR of DIP against iterations and against wall seconds, with the CNTK's PSNR (and, on
    the time axis, the CNTK's wall time) marked; returns ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [p for p in history if p.psnr is not None]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, label in ((axes[0], "iteration", "DIP iteration"),
                           (axes[1], "seconds", "wall time (s, log scale)")):
        ax.plot([getattr(p, key) for p in points], [p.psnr for p in points], marker=".",
                markersize=3, label="DIP")
        ax.set_xlabel(label)
        ax.set_ylabel("PSNR (dB)")
        ax.grid(alpha=0.3)
        if cntk_psnr is not None:
            ax.axhline(cntk_psnr, color="C3", ls="--", label=f"CNTK {cntk_psnr:.2f} dB")
            hit = first_reaching(points, cntk_psnr)
            if hit is not None:
                where = (f"iteration {hit.iteration}" if key == "iteration"
                         else f"{hit.seconds:.0f} s")
                ax.axvline(getattr(hit, key), color="C2", ls=":", label=f"DIP reaches it: {where}")
            if key == "seconds" and cntk_seconds is not None:
                ax.plot([cntk_seconds], [cntk_psnr], "o", color="C3",
                        label=f"CNTK wall time {cntk_seconds:.1f} s")
        if key == "seconds" and points:
            ax.set_xscale("log")   # the CNTK's seconds and DIP's hours on one axis
        ax.legend(fontsize=8)
    if not points:
        fig.suptitle("no reference image: PSNR unavailable")
    return _save_figure(fig, path)
