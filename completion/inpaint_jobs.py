"""The file side of the ``inpaint`` and ``compare`` commands: which images, masks and outputs
(checked before any work), their loading, then one job each, in this process or on Dask.

A job reads an image, gets its mask (a mask file, ``NAME_mask.png`` beside the image in batch
mode, or a generated one), inpaints, writes the output atomically (never over an input; at the
input's bit depth, with its alpha channel) and optionally scores what was written against a
clean reference image. :func:`run_batch` runs many jobs where ``scheduler`` says
(:mod:`completion.scheduling`), with one CNTK kernel per (architecture, padded size, prior).
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time
import warnings
from pathlib import Path

import numpy as np

from .files import check_writable, refuse_overwrite_input
from .image_io import (IMAGE_SUFFIXES, ImageFile, check_output_suffix, load_image, output_losses,
                       read_image, write_image)
from .masks import generate_mask, mask_to_image, read_mask

MASK_SUFFIX = "_mask"


@dataclasses.dataclass(frozen=True)
class Job:
    """One image to fill: where it is, its mask file (or None = generate), where to write,
    the clean reference (or None) and where to save the mask used (or None)."""
    image: Path
    mask: Path | None
    output: Path
    reference: Path | None = None
    save_mask: Path | None = None


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def plan_jobs(image, output, mask=None, reference=None, save_mask=None, generate=False):
    """Jobs for one image file or for every image of a folder (``NAME_mask.*`` files are masks,
    not images).  In batch mode ``output``, ``reference`` and ``save_mask`` are folders and an
    image without ``NAME_mask.png`` gets a generated mask if ``generate`` else an error."""
    image, output = Path(image), Path(output)
    if not image.exists():
        raise ValueError(f"input {image} does not exist")
    for path in (output, save_mask):
        if path is not None:
            check_writable(path, folder=image.is_dir())
            if image.is_file():
                check_output_suffix(path)
    if image.is_file():
        if mask is None and not generate:
            raise ValueError(f"no mask for {image}: give --mask MASK.png or --missing-fraction F")
        return [Job(image, None if mask is None else Path(mask), output,
                    None if reference is None else Path(reference),
                    None if save_mask is None else Path(save_mask))]
    if mask is not None:
        raise ValueError("--mask names one mask file; in batch mode put NAME_mask.png beside each image")
    if output.exists() and not output.is_dir():
        raise ValueError(f"input {image} is a folder, so the output {output} must be a folder too")
    images = sorted(p for p in image.iterdir() if _is_image(p) and not p.stem.endswith(MASK_SUFFIX))
    if not images:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {image}")
    jobs = []
    for img in images:
        masks = sorted(p for p in image.glob(f"{img.stem}{MASK_SUFFIX}.*") if _is_image(p))
        if not masks and not generate:
            raise ValueError(f"no mask for {img}: put {img.stem}{MASK_SUFFIX}.png beside it or give "
                             "--missing-fraction to generate masks")
        ref = None if reference is None else _find_same_stem(Path(reference), img)
        jobs.append(Job(img, masks[0] if masks else None, output / f"{img.stem}.png", ref,
                        None if save_mask is None else Path(save_mask) / f"{img.stem}{MASK_SUFFIX}.png"))
    return jobs


def _find_same_stem(folder: Path, img: Path) -> Path:
    if not folder.is_dir():
        raise ValueError(f"in batch mode --reference must be a folder of clean images, got {folder}")
    found = sorted(p for p in folder.glob(f"{img.stem}.*") if _is_image(p))
    if not found:
        raise ValueError(f"no reference image named {img.stem}.* in {folder} for {img}")
    return found[0]


def load_inputs(image, mask=None, reference=None, invert_mask=False, missing_fraction=None,
                seed=0, mask_type="pixels") -> tuple[ImageFile, np.ndarray, np.ndarray | None]:
    """(image file, bool (H, W) mask with True = missing, reference pixels or None): the mask
    read from ``mask`` or generated (``missing_fraction``, ``seed``, ``mask_type``); the
    reference must have the image's shape. Errors name the files."""
    found = load_image(image)
    if mask is not None:
        m = read_mask(mask, found.pixels.shape, invert=invert_mask, image_path=image)
    else:
        m = generate_mask(found.pixels.shape, missing_fraction, seed, mask_type)
    ref = None
    if reference is not None:
        ref = read_image(reference)
        if ref.shape != found.pixels.shape:
            raise ValueError(f"reference {reference} has shape {ref.shape} but image {image} "
                             f"has {found.pixels.shape}")
    return found, m, ref


def run_job(job: Job, fill, invert_mask=False, missing_fraction=None, seed=0, mask_type="pixels"):
    """Run one job with ``fill(image, mask) -> image``; returns a dict of what happened
    (``psnr``/``ssim`` of the file as written when a reference was given, ``seconds``,
    ``missing_fraction``, and ``kernel``: what a CNTK inpainter chose for the image). A lossy output format is reported in a warning before the work."""
    inputs = [job.image, job.mask, job.reference]
    refuse_overwrite_input(job.output, *inputs)
    if job.save_mask is not None:
        refuse_overwrite_input(job.save_mask, *inputs)
    found, mask, reference = load_inputs(job.image, job.mask, job.reference, invert_mask,
                                         missing_fraction, seed, mask_type)
    losses = output_losses(job.output, found.bits, found.alpha is not None)
    if losses:
        warnings.warn(f"{job.output}: {'; '.join(losses)}; scores are measured on the written "
                      "file", stacklevel=2)
    t0 = time.perf_counter()
    filled = fill(found.pixels, mask)
    result = {"image": str(job.image), "output": str(job.output),
              "seconds": time.perf_counter() - t0, "missing_fraction": float(mask.mean())}
    info = getattr(getattr(fill, "__self__", None), "last_info", None) or {}
    if info.get("selection") or info.get("chosen"):  # a CNTKInpainter's choice for this image
        result["kernel"] = info.get("selection") or f"kernel: {info['chosen']}"
    write_image(job.output, filled, found.bits, found.alpha)
    if job.save_mask is not None:
        write_image(job.save_mask, mask_to_image(mask))
    if reference is not None:
        from .metrics import psnr, ssim
        written = read_image(job.output)
        result["psnr"] = psnr(written, reference)
        try:
            result["ssim"] = ssim(written, reference)
        except ImportError:
            result["ssim"] = None
    return result


GRID_PRIORS = ("noise", "identity", "meshgrid")
"""Priors that depend only on the pixel grid: one kernel serves every image of a padded size.
Any other prior (derived from the image, or chosen per image) is solved image by image."""


@dataclasses.dataclass(frozen=True)
class Method:
    """How images are filled: ``name`` (cntk, dip, biharmonic, telea) and its options (those of
    the ``inpaint`` command; ``None`` = the method's default). Picklable, so it travels to Dask
    workers; ``progress`` shows the CNTK's own bars (kernel tiles, CG) for a single image."""
    name: str = "cntk"
    arch: str = "default"
    prior: str = "auto"
    ridge: float | None = None
    iterations: int | None = None
    device: str = "auto"
    cache_dir: Path | None = None
    dtype: str | None = None
    threads: int | None = None
    progress: bool = False

    def inpainter(self):
        """A new ``CNTKInpainter`` with these options."""
        from .image import DEFAULT_RIDGE, CNTKInpainter
        options = {"maxiter": self.iterations} if self.iterations is not None else {}
        return CNTKInpainter(self.arch, self.prior, DEFAULT_RIDGE if self.ridge is None else self.ridge,
                             device=self.device, dtype=self.dtype, threads=self.threads,
                             cache_dir=self.cache_dir, progress=self.progress, **options)

    def filler(self):
        """``fill(image, mask) -> image`` for this method (one inpainter, reused across images)."""
        from .image import inpaint
        if self.name == "cntk":
            return self.inpainter().inpaint
        if self.name == "dip":
            options = {"device": self.device, "threads": self.threads, "progress": self.progress}
            if self.iterations is not None:
                options["iterations"] = self.iterations
            return lambda img, m: inpaint(img, m, method="dip", **options)
        return lambda img, m: inpaint(img, m, method=self.name)

    def kernel_groups(self, jobs) -> dict:
        """{job: (architecture, padded (H, W), prior) or None}: jobs with the same key share one
        CNTK kernel; ``None`` (other methods, an image-dependent prior, an unreadable image
        header) means the job computes its own."""
        if self.name != "cntk" or not isinstance(self.prior, str) or self.prior not in GRID_PRIORS:
            return dict.fromkeys(jobs)
        from .image_grid import padded_size
        probe = self.inpainter()
        groups = {}
        for job in jobs:
            size = _image_size(job.image)
            if size is None:
                groups[job] = None
                continue
            groups[job] = (self.arch, padded_size(size, probe.multiple, probe.margin), self.prior)
        return groups

    def prepared(self, key):
        """The inpainter of a kernel group, its kernel computed (key from :meth:`kernel_groups`)."""
        inpainter = self.inpainter()
        inpainter.kernel(key[1])
        return inpainter


def _image_size(path: Path):
    """(H, W) from the image file's header, or None when it cannot be read (the job then fails
    with the reader's own message)."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except Exception:
        return None


def split_existing(jobs, overwrite=False, marker=None):
    """(jobs to run, jobs skipped because their output exists and not ``overwrite``); with
    ``marker``, an output folder counts as done when it holds the file ``marker``."""
    done = lambda job: (job.output if marker is None else job.output / marker).exists()  # noqa: E731
    if overwrite:
        return list(jobs), []
    return [j for j in jobs if not done(j)], [j for j in jobs if done(j)]


def run_batch(jobs, method: Method, *, scheduler=None, mask_options=None, on_done=None,
              progress=False):
    """Run ``jobs`` where ``scheduler`` says (see :mod:`completion.scheduling`); returns, in job
    order, each job's result dict (see :func:`run_job`) or the exception that stopped it (the
    other jobs still run). ``mask_options``: :func:`run_job`'s ``invert_mask``,
    ``missing_fraction``, ``seed``, ``mask_type``. ``on_done(index, job, outcome)`` is called as
    each job finishes. Each kernel group's CNTK kernel is computed once (on a worker) and shared
    with the workers that solve its images; each output is written atomically by its worker, so
    a worker that dies leaves it absent (Dask reruns the job), never partial. On Dask the paths
    are sent absolute and must be on a file system every worker sees (checked first)."""
    task = functools.partial(_fill_job, method=method, mask_options=mask_options or {})
    return _run_jobs(task, jobs, scheduler, on_done, progress, "inpaint", prepare=method.prepared,
                     groups_of=method.kernel_groups)


def run_comparisons(jobs, methods, *, scheduler=None, options=None, mask_options=None,
                    figures=True, on_done=None, progress=False):
    """:func:`completion.compare.compare_methods` for each job (``job.output`` is its folder,
    filled by :func:`completion.compare.write_comparison`), run like :func:`run_batch` but with
    nothing shared: each image's kernel is computed and timed with it. ``options``: the
    ``dip_options`` and ``cntk_options`` of ``compare_methods``. Returns, in job order, each
    image's table rows or the exception that stopped it."""
    task = functools.partial(_compare_job, methods=list(methods), options=options or {},
                             mask_options=mask_options or {}, figures=figures)
    return _run_jobs(task, jobs, scheduler, on_done, progress, "compare")


def _run_jobs(task, jobs, scheduler, on_done, progress, desc, prepare=None, groups_of=None):
    """``map_tasks`` over ``jobs`` (absolute paths, checked visible and the solver imported on
    the workers first when a scheduler is given), failures returned in place."""
    from .scheduling import connect, map_tasks
    with connect(scheduler) as client:
        if client is not None:
            jobs = [_absolute(job) for job in jobs]
            _check_workers_see(client, jobs)
            _start_imports(client)
        group = None if groups_of is None else groups_of(jobs).get
        return map_tasks(task, jobs, scheduler=client, prepare=prepare, group=group,
                         on_done=on_done, return_exceptions=True, progress=progress, desc=desc)


def _compare_job(job: Job, methods, options, mask_options, figures):
    """One image's comparison written into the folder ``job.output``; its table rows. With a
    generated mask and no reference, the image itself is the reference."""
    from .compare import compare_methods, table_rows, write_comparison
    reference = job.reference or (job.image if job.mask is None else None)
    found, mask, ref = load_inputs(job.image, job.mask, reference, **mask_options)
    runs = compare_methods(found.pixels, mask, methods, reference=ref, progress=False,
                           bits=found.bits, **options)
    write_comparison(job.output, found.pixels, mask, runs, reference=ref, figures=figures,
                     bits=found.bits, alpha=found.alpha)
    return table_rows(runs)


def _fill_job(job: Job, inpainter, method: Method, mask_options: dict):
    """One job, with its group's prepared inpainter or (``None``) the method's own filler."""
    fill = inpainter.inpaint if inpainter is not None else method.filler()
    return run_job(job, fill, **mask_options)


def _start_imports(client):
    """Have every worker import the solver (torch) now, while this process plans the groups."""
    from distributed import fire_and_forget
    for worker in client.scheduler_info()["workers"]:
        fire_and_forget(client.submit(_import_solver, workers=[worker], pure=False))


def _import_solver():
    import completion.image  # noqa: F401 - imported for its side effect: torch loaded


def _absolute(job: Job) -> Job:
    return Job(*(None if p is None else Path(p).absolute() for p in dataclasses.astuple(job)))


def _check_workers_see(client, jobs):
    """Raise ``ValueError`` (one line) unless every worker sees the folders of the inputs."""
    folders = sorted({str(job.image.parent) for job in jobs})
    seen = client.run(lambda: {f: os.path.isdir(f) for f in folders})
    for worker, found in seen.items():
        missing = [f for f, ok in found.items() if not ok]
        if missing:
            raise ValueError(f"the Dask worker {worker} cannot see the folder {missing[0]}: inputs "
                             "and outputs must be on a file system every worker mounts")
