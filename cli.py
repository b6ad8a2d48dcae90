"""``ntk-complete``: complete matrices and inpaint images with infinitely wide networks.

Each sub-command is small and documented with an example; run ``ntk-complete COMMAND --help``.
"""
from __future__ import annotations

from pathlib import Path

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ntk-completion")
def main():
    """Complete matrices and images by kernel regression with the NTK/CNTK of infinitely
    wide networks.

    \b
    Examples:
      ntk-complete demo -o demo-output
      ntk-complete matrix ratings.csv -o completed.csv --holdout 0.1
      ntk-complete inpaint photo.png --mask photo_mask.png -o filled.png
    """


# --- matrix commands (issue 2) ---------------------------------------------------------------

def _auto_or(kind):
    """click converter: 'auto' or a value of ``kind``."""
    def convert(ctx, param, value):
        if value is None or str(value).lower() == "auto":
            return "auto"
        try:
            return kind(value)
        except ValueError:
            raise click.BadParameter(f"expected 'auto' or a {kind.__name__}, got {value!r}")
    return convert


@main.command("matrix")
@click.argument("input_csv", metavar="IN.csv", type=click.Path(exists=True, dir_okay=False,
                                                                path_type=Path))
@click.option("-o", "--output", required=True, help="Completed CSV ('-' = standard output).")
@click.option("--mode", type=click.Choice(["rows", "cols", "joint", "auto"]), default="rows",
              show_default=True, help="rows: a kernel over rows predicts each column; cols: the "
              "transpose; joint: a kernel over entries [row prior; column prior].")
@click.option("--row-features", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV of row features (first column = the matrix's row labels).")
@click.option("--col-features", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV of column features (first column = the matrix's column labels).")
@click.option("--prior", default="auto", show_default=True,
              help="onehot, features, profile, lowrank:K, BASE+identity:W, or auto (CV).")
@click.option("--depth", default="auto", show_default=True, callback=_auto_or(int),
              help="Hidden layers of the network, or auto (CV).")
@click.option("--ridge", default="auto", show_default=True, callback=_auto_or(float),
              help="Ridge relative to the mean kernel diagonal, or auto (CV).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ...")
@click.option("--seed", default=0, show_default=True, help="Seed of the CV folds and --holdout.")
@click.option("--holdout", type=float, default=None,
              help="Hide this fraction of the observed entries, fit on the rest and print RMSE, "
              "R^2 and Pearson r on them next to the additive row+column-mean baseline.")
@click.option("--na-values", default="", help="Extra comma-separated tokens that mean missing.")
@click.option("-v", "--verbose", is_flag=True, help="Report the CV scores and the choices made.")
def matrix_command(input_csv, output, mode, row_features, col_features, prior, depth, ridge,
                   device, seed, holdout, na_values, verbose):
    """Fill the missing entries of the matrix in IN.csv (row labels in the first column, column
    labels in the header; blank cells and NA tokens are missing) and write the completed matrix.
    Observed entries are written unchanged. The input is never modified.

    \b
    Examples:
      ntk-complete matrix ic50.csv -o completed.csv --mode cols -v
      ntk-complete matrix ic50.csv -o - --row-features cells.csv --prior features+identity:0.5
      ntk-complete matrix ic50.csv -o completed.csv --holdout 0.1 --seed 0
    """
    import numpy as np

    from completion.io import refuse_overwrite_input
    from completion.matrix import NTKImputer
    from completion.matrix_csv import (baseline_scores, holdout_mask, read_features_csv,
                                       read_matrix_csv, scores, write_matrix_csv)

    tokens = [t.strip() for t in na_values.split(",") if t.strip()]
    try:
        refuse_overwrite_input(output, input_csv, row_features, col_features)
        frame = read_matrix_csv(input_csv, tokens)
        rf = read_features_csv(row_features, tokens) if row_features else None
        cf = read_features_csv(col_features, tokens) if col_features else None
        values = frame.to_numpy()
        mask = ~np.isnan(values)
        hidden = holdout_mask(mask, holdout, seed) if holdout is not None else None
        fit_frame = frame.mask(hidden) if hidden is not None else frame
        imputer = NTKImputer(mode=mode, prior=prior, depth=depth, ridge=ridge, device=device,
                             row_features=rf, col_features=cf, random_state=seed,
                             verbose=int(verbose))
        completed = imputer.fit_transform(fit_frame)
        if hidden is not None:
            ours = scores(completed.to_numpy()[hidden], values[hidden])
            base = baseline_scores(values, mask & ~hidden, hidden)
            click.echo(f"holdout: {int(hidden.sum())} of {int(mask.sum())} observed entries",
                       err=True)
            click.echo(f"{'method':<10} {'RMSE':>9} {'R^2':>8} {'Pearson':>8}", err=True)
            for name, s in (("ntk", ours), ("additive", base)):
                click.echo(f"{name:<10} {s['rmse']:9.4f} {s['r2']:8.4f} {s['pearson']:8.4f}",
                           err=True)
            completed = completed.where(~hidden, frame)  # the written matrix keeps every value
        click.echo("chosen: " + ", ".join(f"{k}={v}" for k, v in imputer.chosen_.items()),
                   err=True)
        write_matrix_csv(completed, output)
    except (ValueError, MemoryError) as err:
        raise click.ClickException(str(err)) from err


# --- image commands (issue 3) ----------------------------------------------------------------

def _mask_source_options(command):
    """The options choosing the mask, shared by ``inpaint`` and ``compare``: a mask file, or a
    generated mask (then IMAGE is the clean reference)."""
    options = [
        click.option("--mask", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="Mask image, non-zero = missing (OpenCV / scikit-image convention)."),
        click.option("--invert-mask", is_flag=True,
                     help="The mask file marks the KNOWN pixels instead."),
        click.option("--missing-fraction", type=click.FloatRange(0, 1, max_open=True),
                     help="Generate a mask hiding this fraction of the pixels (IMAGE is then "
                          "taken as the clean image)."),
        click.option("--seed", default=0, show_default=True,
                     help="Seed of the generated mask (and of DIP's initialisation)."),
        click.option("--mask-type", type=click.Choice(["pixels", "text", "box"]),
                     default="pixels", show_default=True, help="Kind of generated mask."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@main.command("inpaint")
@click.argument("image", type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Output image (or folder when IMAGE is a folder).")
@_mask_source_options
@click.option("--reference", type=click.Path(exists=True, path_type=Path),
              help="Clean image (folder in batch mode): print PSNR and SSIM of the result.")
@click.option("--method", type=click.Choice(["cntk", "dip", "biharmonic", "telea"]), default="cntk",
              show_default=True, help="cntk = kernel regression; the others for comparison.")
@click.option("--arch", default="default", show_default=True,
              help="CNTK architecture: a preset name or a layer spec (see models.cntk).")
@click.option("--prior", default="auto", show_default=True,
              help="Network input statistics: noise, identity, meshgrid (one stationary CNTK); "
                   "image[:ROUNDS][+meshgrid:W] (the image itself as the prior, mixed with the "
                   "stationary CNTK); auto (kernel chosen per image on held-out observed pixels).")
@click.option("-v", "--verbose", is_flag=True, help="cntk: print the kernel chosen per image.")
@click.option("--ridge", type=float, default=None, help="Ridge relative to the mean kernel diagonal.")
@click.option("--iterations", type=int, default=None,
              help="cntk: CG iteration cap; dip: training iterations.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ...")
@click.option("--save-mask", type=click.Path(path_type=Path),
              help="Write the mask used (folder in batch mode).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder caching computed kernels between runs.")
@click.option("--dtype", type=click.Choice(["float64", "float32"]), default=None,
              help="Precision of the kernel computation. Default: float32 for phase-averaged "
                   "architectures (NAME+avg, the default; averaged and solved in float64), else "
                   "float64 on CPU and float32 on GPU.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def inpaint_command(image, output, mask, invert_mask, missing_fraction, seed, mask_type, reference,
                    method, arch, prior, ridge, iterations, device, save_mask, cache_dir, dtype, verbose,
                    quiet):
    """Fill the missing pixels of IMAGE (or of every image in the folder IMAGE).

    \b
    Examples:
      ntk-complete inpaint photo.png --mask photo_mask.png -o filled.png
      ntk-complete inpaint clean.png --missing-fraction 0.5 --seed 0 -o filled.png \\
          --reference clean.png --save-mask mask.png
      ntk-complete inpaint photos/ -o filled/        # photos/NAME_mask.png beside each image
      ntk-complete inpaint photo.png --mask m.png --method biharmonic -o filled.png
    """
    from tqdm.auto import tqdm

    from completion.inpaint_jobs import plan_jobs, run_job

    try:
        jobs = plan_jobs(image, output, mask, reference, save_mask,
                         generate=missing_fraction is not None)
        fill = _image_filler(method, arch, prior, ridge, iterations, device, cache_dir, dtype,
                             progress=not quiet and len(jobs) == 1, verbose=verbose)
        bar = tqdm(jobs, desc="inpaint", unit="image", disable=quiet or len(jobs) == 1)
        for job in bar:
            res = run_job(job, fill, invert_mask, missing_fraction, seed, mask_type)
            line = f"{job.output}: {res['missing_fraction']:.1%} missing, {res['seconds']:.1f} s"
            if "psnr" in res:
                ssim_text = "n/a (needs scikit-image)" if res["ssim"] is None else f"{res['ssim']:.4f}"
                line += f", PSNR {res['psnr']:.2f} dB, SSIM {ssim_text}"
            tqdm.write(line)
    except (ValueError, ImportError, MemoryError) as err:
        raise click.ClickException(str(err)) from err


def _image_filler(method, arch, prior, ridge, iterations, device, cache_dir, dtype, progress,
                  verbose=False):
    """``fill(image, mask)`` for the chosen method (one CNTK inpainter reused across images)."""
    from completion.image import DEFAULT_RIDGE, CNTKInpainter, inpaint

    if method == "cntk":
        options = {"maxiter": iterations} if iterations is not None else {}
        inpainter = CNTKInpainter(arch, prior, DEFAULT_RIDGE if ridge is None else ridge,
                                  device=device, dtype=dtype, cache_dir=cache_dir, progress=progress,
                                  **options)
        if not verbose:
            return inpainter.inpaint

        def fill_verbose(img, m):
            out = inpainter.inpaint(img, m)
            info = inpainter.last_info
            click.echo(info.get("selection") or f"kernel: {info.get('chosen', 'stationary CNTK')}",
                       err=True)
            return out
        return fill_verbose
    if method == "dip":
        options = {"device": device, "progress": progress}
        if iterations is not None:
            options["iterations"] = iterations
        return lambda img, m: inpaint(img, m, method="dip", **options)
    return lambda img, m: inpaint(img, m, method=method)


# --- comparison commands (issue 4) -----------------------------------------------------------

@main.command("compare")
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the outputs, figure, tables and DIP curve.")
@_mask_source_options
@click.option("--reference", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Clean image for PSNR/SSIM (default with a generated mask: IMAGE itself).")
@click.option("--methods", default="cntk,dip,biharmonic,telea", show_default=True,
              help="Comma-separated methods, all run on the same mask.")
@click.option("--iterations", type=click.IntRange(1), default=3000, show_default=True,
              help="DIP training iterations.")
@click.option("--dip-lr", type=float, default=0.01, show_default=True, help="DIP Adam learning rate.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ...")
@click.option("--no-figures", is_flag=True, help="Skip the matplotlib figures (tables only).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def compare_command(image, output_dir, mask, invert_mask, missing_fraction, seed, mask_type,
                    reference, methods, iterations, dip_lr, device, no_figures, quiet):
    """Run several inpainting methods on IMAGE with the same mask and compare them.

    Writes METHOD.png, mask.png, corrupted.png, comparison.png (corrupted | methods |
    reference), table.csv and table.md (PSNR, SSIM, wall time, peak RSS increase) and, with
    DIP, dip_curve.csv/png (PSNR against iterations and seconds, with the CNTK's PSNR marked).

    \b
    Examples:
      ntk-complete compare photo.png --missing-fraction 0.5 --seed 0 -o cmp/
      ntk-complete compare photo.png --mask m.png --reference clean.png \\
          --methods cntk,dip --iterations 3000 -o cmp/
    """
    from completion.compare import check_dependencies, compare_methods, parse_methods, write_comparison
    from completion.image_io import read_image
    from completion.io import refuse_overwrite_input
    from completion.masks import generate_mask, read_mask

    try:
        names = parse_methods(methods)
        check_dependencies(names, figures=not no_figures)
        if (mask is None) == (missing_fraction is None):
            raise ValueError("give exactly one of --mask M.png or --missing-fraction F")
        img = read_image(image)
        if mask is not None:
            m = read_mask(mask, img.shape, invert=invert_mask, image_path=image)
        else:
            m = generate_mask(img.shape, missing_fraction, seed=seed, mask_type=mask_type)
            reference = reference or image
        ref = read_image(reference) if reference is not None else None
        if ref is not None and ref.shape != img.shape:
            raise ValueError(f"reference {reference} has shape {ref.shape} but image {image} "
                             f"has {img.shape}")
        for name in ["mask", "corrupted", *names]:
            refuse_overwrite_input(output_dir / f"{name}.png", image, mask, reference)
        runs = compare_methods(img, m, names, reference=ref, progress=not quiet,
                               dip_options={"iterations": iterations, "lr": dip_lr,
                                            "device": device, "seed": seed},
                               cntk_options={"device": device})
        write_comparison(output_dir, img, m, runs, reference=ref, figures=not no_figures)
    except (ValueError, ImportError, MemoryError) as err:
        raise click.ClickException(str(err)) from err
    from completion.compare import markdown_table, table_rows
    click.echo(markdown_table(table_rows(runs)), nl=False)
    click.echo(f"outputs written to {output_dir}")


# --- demo -------------------------------------------------------------------------------------

@main.command("demo")
@click.option("-o", "--output-dir", default="demo-output", show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the demo's inputs and outputs (created if needed).")
@click.option("--seed", default=0, show_default=True, help="Seed of the generated data and masks.")
def demo_command(output_dir, seed):
    """Run both demos on data the project generates and print their scores.

    \b
    1. Matrix: a synthetic drug-screening matrix (cells x drugs, 20% missing, cell features);
       10% of the observed entries are hidden, completed with the NTK and scored against the
       additive row+column-mean baseline.
    2. Image: a generated grey test image with 50% of its pixels missing, inpainted with the
       CNTK and scored (PSNR) against scikit-image's biharmonic inpainting when installed.

    \b
    Example:
      ntk-complete demo -o demo-output
    """
    from completion.image_demo import run_demo as run_image_demo
    from completion.matrix_demo import run_demo as run_matrix_demo

    click.echo("[1/2] matrix completion demo ...", err=True)
    m = run_matrix_demo(output_dir / "matrix", seed=seed)
    click.echo(f"matrix  hidden-entry RMSE: NTK {m['ntk']['rmse']:.3f} (R^2 {m['ntk']['r2']:.3f}, "
               f"Pearson {m['ntk']['pearson']:.3f}) vs additive baseline "
               f"{m['additive']['rmse']:.3f}  [{m['seconds']:.1f} s; chosen {m['chosen']}]")
    click.echo("[2/2] image inpainting demo (50% of pixels missing) ...", err=True)
    im = run_image_demo(output_dir / "image", seed=seed)
    line = f"image   PSNR: CNTK {im['psnr_cntk']:.2f} dB"
    if im["psnr_biharmonic"] is not None:
        line += f" vs biharmonic {im['psnr_biharmonic']:.2f} dB"
    click.echo(line)
    click.echo(f"outputs written under {output_dir}/ (matrix/, image/)")


if __name__ == "__main__":
    main()
