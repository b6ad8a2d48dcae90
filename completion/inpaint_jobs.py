"""The file side of the ``inpaint`` command: which images, masks and outputs, then one job each.

A job reads an image, gets its mask (a mask file, ``NAME_mask.png`` beside the image in batch
mode, or a generated one), inpaints, writes the output atomically (never over an input), and
optionally scores against a clean reference image.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from .image_io import IMAGE_SUFFIXES, read_image, write_image
from .io import refuse_overwrite_input
from .masks import generate_mask, mask_to_image, read_mask

MASK_SUFFIX = "_mask"


@dataclasses.dataclass
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


def run_job(job: Job, fill, invert_mask=False, missing_fraction=None, seed=0, mask_type="pixels"):
    """Run one job with ``fill(image, mask) -> image``; returns a dict of what happened
    (``psnr``/``ssim`` when a reference was given, ``seconds``, ``missing_fraction``)."""
    inputs = [job.image, job.mask, job.reference]
    refuse_overwrite_input(job.output, *inputs)
    if job.save_mask is not None:
        refuse_overwrite_input(job.save_mask, *inputs)
    image = read_image(job.image)
    if job.mask is not None:
        mask = read_mask(job.mask, image.shape, invert=invert_mask, image_path=job.image)
    else:
        mask = generate_mask(image.shape, missing_fraction, seed, mask_type)
    reference = None
    if job.reference is not None:
        reference = read_image(job.reference)
        if reference.shape != image.shape:
            raise ValueError(f"reference {job.reference} has shape {reference.shape} but image "
                             f"{job.image} has {image.shape}")
    t0 = time.perf_counter()
    filled = fill(image, mask)
    result = {"image": str(job.image), "output": str(job.output),
              "seconds": time.perf_counter() - t0, "missing_fraction": float(mask.mean())}
    write_image(job.output, filled)
    if job.save_mask is not None:
        write_image(job.save_mask, mask_to_image(mask))
    if reference is not None:
        from .metrics import psnr, ssim
        result["psnr"] = psnr(filled.clip(0, 1), reference)
        try:
            result["ssim"] = ssim(filled.clip(0, 1), reference)
        except ImportError:
            result["ssim"] = None
    return result
