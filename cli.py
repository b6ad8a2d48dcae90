"""``ntk-complete``: complete matrices and inpaint images with infinitely wide networks.

Each sub-command is small and documented with an example; run ``ntk-complete COMMAND --help``.
"""
from __future__ import annotations

import contextlib
import sys
import warnings
from pathlib import Path

import click


class _Refused(click.ClickException):
    """A request refused before any work (an output that cannot be written, options that
    contradict each other): one line on stderr, exit status 2 like click's usage errors."""

    exit_code = 2


def _error(err: Exception) -> click.ClickException:
    """The one-line CLI error for an exception of the library (exit status 2 for outputs)."""
    from completion.files import UnwritableOutput
    from completion.matrix_long import LongFormatError
    if isinstance(err, OSError):
        return click.ClickException(f"{err.filename or ''}: {err.strerror or err}".lstrip(": "))
    refused = isinstance(err, (UnwritableOutput, LongFormatError))
    return (_Refused if refused else click.ClickException)(str(err))


def _show_progress(quiet: bool) -> bool:
    """Progress bars only for a person watching: not with -q, not when stderr is a file or pipe."""
    return not quiet and sys.stderr.isatty()


@contextlib.contextmanager
def _warnings_as_lines():
    """Show each warning of the library as one line ``warning: ...`` on stderr (between
    progress bars), every time it is raised."""
    def show(message, category, filename, lineno, file=None, line=None):
        from tqdm import tqdm
        tqdm.write(f"warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("always", UserWarning)
        warnings.showwarning = show
        yield


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ntk-completion")
@click.pass_context
def main(ctx):
    """Complete matrices and images by kernel regression with the NTK/CNTK of infinitely
    wide networks.

    \b
    Examples:
      ntk-complete demo -o demo-output
      ntk-complete matrix ratings.csv -o completed.csv --holdout 0.1
      ntk-complete inpaint photo.png --mask photo_mask.png -o filled.png
    """
    ctx.with_resource(_warnings_as_lines())


_threads_option = click.option(
    "--threads", type=click.IntRange(1), default=None,
    help="Torch CPU threads [default: $NTK_THREADS, else the cores the load average leaves "
         "idle: 1 on a busy machine].")


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


def _solver(ctx, param, value):
    """click converter for --solver: a name ``completion.solvers.parse_solver`` accepts."""
    from completion.solvers import parse_solver
    try:
        parse_solver(value)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None
    return value


def _separator(ctx, param, value):
    """click converter for --sep: ',', ';', 'tab' (or a literal tab), None = sniff."""
    if value is None:
        return None
    sep = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";"}.get(value.lower(), value)
    if sep not in (",", ";", "\t"):
        raise click.BadParameter(f"expected ',', ';' or 'tab', got {value!r}")
    return sep


@main.command("matrix")
@click.argument("input_csv", metavar="IN.csv", type=click.Path(exists=True, dir_okay=False,
                                                                allow_dash=True, path_type=Path))
@click.option("-o", "--output", required=True, help="Completed CSV ('-' = standard output), "
              "with the input's separator.")
@click.option("--sep", callback=_separator, help="Separator of the input files: ',', ';' or "
              "'tab' [default: found from the file].")
@click.option("--encoding", help="Text encoding of the input files, e.g. latin-1 or cp1252 "
              "[default: UTF-8].")
@click.option("--no-row-labels", is_flag=True, help="The first column is data, not row labels "
              "(the output has no row labels either).")
@click.option("--mode", type=click.Choice(["auto", "rows", "cols", "joint", "rows-chained",
                                           "cols-chained"]), default="auto", show_default=True,
              help="rows: a kernel over rows predicts each column; cols: the transpose; joint: a "
              "kernel over entries [row prior; column prior]; rows-/cols-chained: each column "
              "regressed on the others' estimates (MICE-style); auto: chosen (and combined) by CV.")
@click.option("--row-features", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV of row features (first column = the matrix's row labels).")
@click.option("--col-features", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV of column features (first column = the matrix's column labels).")
@click.option("--prior", default="auto", show_default=True,
              help="onehot, features, profile, profile:unscaled, lowrank:K, BASE+identity:W, "
              "profile@softimpute, profile@matrix (with --prior-matrix), or auto (CV).")
@click.option("--prior-matrix", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A completed matrix (CSV, same labels, no missing value) from another method, "
              "for the @matrix priors.")
@click.option("--depth", default="auto", show_default=True, callback=_auto_or(int),
              help="Hidden layers of the network, or auto (CV).")
@click.option("--ridge", default="auto", show_default=True, callback=_auto_or(float),
              help="Ridge relative to the mean kernel diagonal, or auto (CV).")
@click.option("--solver", default="auto", show_default=True, callback=_solver,
              help="shared (exact, rows/cols), structured (joint one-hot), exact, cg, nystrom or "
              "nystrom:R (R landmarks; memory O(N R) for large or sparse matrices), or auto "
              "(exact while the kernel fits the memory budget).")
@click.option("--scale", type=click.Choice(["auto", "columns", "none"]), default="auto",
              show_default=True,
              help="columns: fit on columns standardised over their observed entries (columns "
              "in different units), mapped back after; none: the input's units; auto: columns "
              "where the columns' standard deviations spread more than 10-fold (90th over 10th "
              "percentile).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ...")
@_threads_option
@click.option("--seed", default=0, show_default=True, help="Seed of the CV folds and --holdout.")
@click.option("--holdout", type=float, default=None,
              help="Hide this fraction of the observed entries, fit on the rest and print RMSE, "
              "R^2 and Pearson r on them next to the additive row+column-mean baseline.")
@click.option("--na-values", default="", help="Extra comma-separated tokens that mean missing.")
@click.option("--long", "long_columns", metavar="ROW,COL,VALUE[,VALUE...]",
              help="IN.csv is a long table, one line per observed entry: the names of its row-label, "
              "column-label and value column(s); several value columns make vector entries, and "
              "'*' as the last name takes every other column, e.g. --long user,item,rating or "
              "--long cell,drug,'*'.")
@click.option("--predict", "pairs_csv", type=click.Path(exists=True, dir_okay=False,
                                                        path_type=Path),
              help="With --long: a CSV listing the (ROW, COL) pairs to predict, in columns named "
              "as in --long; the output lists them with the value column(s) (observed values "
              "where the pair was observed). Without it the output is the wide completed matrix "
              "(one value column, when it fits in memory).")
@click.option("--scheduler", help="Where the cross-validation fits (candidates x folds) run: "
              "local:N (a Dask cluster of N worker processes on this machine; local:1 is one "
              "worker thread in this process) or the address of a running Dask scheduler, "
              "tcp://HOST:8786 [default: in this process]. Same choice and completion either "
              "way. Needs ntk-completion[dask].")
@click.option("-v", "--verbose", is_flag=True, help="Report the CV scores and the choices made.")
@click.option("-q", "--quiet", is_flag=True, help="Print only errors, warnings and --holdout "
              "scores (not the choices made, and no progress line; none either when stderr "
              "is not a terminal, or with -v).")
def matrix_command(input_csv, output, sep, encoding, no_row_labels, mode, row_features,
                   col_features, prior, prior_matrix, depth, ridge, solver, scale, device, threads,
                   seed, holdout, na_values, long_columns, pairs_csv, scheduler, verbose, quiet):
    """Fill the missing entries of the matrix in IN.csv (row labels in the first column, column
    labels in the header; blank cells and NA tokens are missing; '-' reads standard input) and
    write the completed matrix. Observed entries are written unchanged. The input is never
    modified.

    \b
    Examples:
      ntk-complete matrix ic50.csv -o completed.csv -v
      ntk-complete matrix ic50.csv -o out.csv --mode cols --prior profile@matrix --prior-matrix f.csv
      ntk-complete matrix ic50.csv -o - --row-features cells.csv --prior features+identity:0.5
      ntk-complete matrix ic50.csv -o completed.csv --holdout 0.1 --seed 0
      ntk-complete matrix survey.csv -o completed.csv --scale columns
      ntk-complete matrix ratings.tsv -o completed.tsv --no-row-labels --encoding latin-1
      ntk-complete matrix ic50.csv -o completed.csv --scheduler local:4
      cat ic50.csv | ntk-complete matrix - -o - -q > completed.csv
      ntk-complete matrix ratings.csv --long user,item,rating -o wide.csv
      ntk-complete matrix ratings.csv --long user,item,rating --predict pairs.csv -o predicted.csv
      ntk-complete matrix ratings.csv --long user,item,rating --predict pairs.csv --mode cols --prior profile --solver nystrom:500 -o predicted.csv
      ntk-complete matrix profiles.csv --long cell,drug,'*' --predict pairs.csv -o predicted.csv
    """
    from completion.files import check_writable, refuse_overwrite_input
    from completion.holdout import complete_with_holdout
    from completion.matrix import NTKImputer, describe_choice
    from completion.matrix_csv import read_features_csv, read_matrix_csv, write_matrix_csv
    from completion.scheduling import check_scheduler

    tokens = [t.strip() for t in na_values.split(",") if t.strip()]
    csv_options = {"sep": sep, "encoding": encoding}
    if long_columns is not None or pairs_csv is not None:
        _check_long_options(long_columns, pairs_csv, holdout, no_row_labels, prior_matrix)
        imputer_options = dict(mode=mode, prior=prior, depth=depth, ridge=ridge, solver=solver,
                               scale=None if scale == "none" else scale,
                               device=device, threads=threads, random_state=seed,
                               verbose=int(verbose), scheduler=scheduler,
                               progress=_show_progress(quiet) and not verbose)
        try:
            check_scheduler(scheduler)
            _complete_long(input_csv, output, long_columns, pairs_csv, row_features,
                           col_features, tokens, csv_options, imputer_options, quiet)
        except (ValueError, MemoryError, OSError) as err:
            raise _error(err) from err
        return
    try:
        check_scheduler(scheduler)
        refuse_overwrite_input(output, input_csv, row_features, col_features, prior_matrix)
        if output != "-":
            check_writable(output)
        frame = read_matrix_csv(input_csv, tokens, row_labels=not no_row_labels, **csv_options)
        given = (read_matrix_csv(prior_matrix, tokens, row_labels=not no_row_labels, **csv_options)
                 if prior_matrix else None)
        rf = read_features_csv(row_features, tokens, **csv_options) if row_features else None
        cf = read_features_csv(col_features, tokens, **csv_options) if col_features else None
        imputer = NTKImputer(mode=mode, prior=prior, depth=depth, ridge=ridge, solver=solver,
                             scale=None if scale == "none" else scale, device=device,
                             threads=threads,
                             row_features=rf, col_features=cf, prior_matrix=given,
                             random_state=seed, verbose=int(verbose), scheduler=scheduler,
                             progress=_show_progress(quiet) and not verbose)
        if holdout is not None:
            completed, report = complete_with_holdout(imputer, frame, holdout, seed)
            click.echo(f"holdout: {report['hidden']} of {report['observed']} observed entries",
                       err=True)
            click.echo(f"{'method':<10} {'RMSE':>9} {'R^2':>8} {'Pearson':>8}", err=True)
            for name in ("ntk", "additive"):
                s = report[name]
                click.echo(f"{name:<10} {s['rmse']:9.4f} {s['r2']:8.4f} {s['pearson']:8.4f}",
                           err=True)
        else:
            completed = imputer.fit_transform(frame)
        if not quiet:
            click.echo(f"chosen: {describe_choice(imputer.chosen_)}", err=True)
        write_matrix_csv(completed, output, sep=frame.attrs["sep"], row_labels=not no_row_labels)
    except (ValueError, ImportError, MemoryError, OSError) as err:
        raise _error(err) from err


def _check_long_options(long_columns, pairs_csv, holdout, no_row_labels, prior_matrix):
    """Refuse the options that do not combine with long input (before any work)."""
    if long_columns is None:
        raise _Refused("--predict lists pairs of a long table: give --long ROW,COL,VALUE too")
    for given, name in ((holdout is not None, "--holdout"), (no_row_labels, "--no-row-labels"),
                        (prior_matrix is not None, "--prior-matrix")):
        if given:
            raise _Refused(f"{name} is for a wide matrix; it does not combine with --long")


def _complete_long(input_csv, output, long_columns, pairs_csv, row_features, col_features,
                   tokens, csv_options, imputer_options, quiet):
    """``matrix --long``: read the long table (and the pairs), fit NTKImputer on the (m, n)
    matrix, or the (m, n, d) array of vector entries, dense when it fits the memory budget and
    otherwise (one value column) a scipy.sparse.csr_array of the observed entries; write the
    predictions for the pairs, or the wide completed matrix."""
    import numpy as np
    import pandas as pd

    from completion.files import check_writable, refuse_overwrite_input
    from completion.matrix import NTKImputer, describe_choice
    from completion.matrix_csv import read_features_csv, write_matrix_csv
    from completion.matrix_long import (parse_long_spec, read_long_csv, read_pairs_csv,
                                        sparse_observed, write_long_csv)
    from completion.priors import align_features
    from models.device import format_bytes, parse_bytes

    spec = parse_long_spec(long_columns)
    refuse_overwrite_input(output, input_csv, pairs_csv, row_features, col_features)
    if output != "-":
        check_writable(output)
    table = read_long_csv(input_csv, spec, tokens, **csv_options)
    (m, n), d = table.shape, table.values.shape[1]
    budget = parse_bytes(None)
    need = f"{' x '.join(map(str, table.dense_shape))} float64: {format_bytes(table.dense_bytes())}"
    fits = table.dense_bytes() <= budget
    if pairs_csv is None and d > 1:
        raise _Refused(f"{d} value columns (vector entries): name the (row, col) pairs to write "
                       "with --predict pairs.csv")
    if not fits and (pairs_csv is None or d > 1):
        raise _Refused(f"the dense {'matrix' if d == 1 else 'array'} would need {need}, over the "
                       f"memory budget of {format_bytes(budget)}"
                       + ("; ask for the pairs you need with --predict pairs.csv" if d == 1 else ""))
    pairs = read_pairs_csv(pairs_csv, table, **csv_options) if pairs_csv else None
    features = {}
    for name, path, labels, what in (("row_features", row_features, table.row_labels, "row"),
                                     ("col_features", col_features, table.col_labels, "col")):
        if path:
            features[name] = align_features(read_features_csv(path, tokens, **csv_options),
                                            labels, what)
    imputer = NTKImputer(**imputer_options, **features)
    X = table.dense() if fits else sparse_observed(table)
    imputer.fit(X)
    if not quiet:
        click.echo(f"chosen: {describe_choice(imputer.chosen_)}", err=True)
    if pairs is None:
        frame = pd.DataFrame(imputer.transform(), index=pd.Index(table.row_labels, name=spec.row),
                             columns=table.col_labels)
        write_matrix_csv(frame, output, sep=table.sep)
        return
    labels, rows, cols = pairs
    predicted = np.asarray(imputer.predict_entries(rows, cols)).reshape(rows.size, d)
    hit, observed = table.observed_values(rows, cols)
    write_long_csv(labels, np.where(hit[:, None], observed, predicted), table.value_names,
                   output, sep=table.sep)


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
    return _stacked(options)(command)


def _stacked(options):
    """A decorator applying click ``options`` so that they list in the given order."""
    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command
    return decorate


def _batch_options(done_file):
    """The folder-mode options shared by ``inpaint`` and ``compare``: where the images run
    (``--scheduler``), whether finished ones (their ``done_file`` exists) are redone, ``-q``."""
    options = [
        click.option("--scheduler", help="Where the images are solved: local:N (a Dask cluster "
                     "of N worker processes on this machine; local:1 is one worker thread in this "
                     "process) or the address of a running Dask "
                     "scheduler, tcp://HOST:8786 [default: in this process]. Needs "
                     "ntk-completion[dask]."),
        click.option("--overwrite", is_flag=True, help=f"Folder mode: redo images whose "
                     f"{done_file} exists (by default they are skipped, so an interrupted run can "
                     "be resumed)."),
        click.option("-q", "--quiet", is_flag=True, help="No progress bars (none either when "
                     "stderr is not a terminal)."),
    ]
    return _stacked(options)


def _check_mask_source(ctx, mask, missing_fraction, invert_mask, require_one=False, batch=False):
    """Refuse contradicting mask options: a mask file with generation options, --invert-mask
    without mask files (in ``batch`` mode the NAME_mask files), neither (``require_one``)."""
    given = lambda name: ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE
    if mask is not None:
        generation = [flag for flag, name in (("--missing-fraction", "missing_fraction"),
                                             ("--mask-type", "mask_type")) if given(name)]
        if generation:
            raise _Refused(f"--mask reads the mask from a file; {' and '.join(generation)} "
                           "generate one: give one or the other")
    elif invert_mask and not batch:
        raise _Refused("--invert-mask applies to a --mask file")
    if require_one and mask is None and missing_fraction is None:
        raise _Refused("give exactly one of --mask M.png or --missing-fraction F")


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
              help="cntk: CG iteration cap; dip: training iterations (default 3000, the "
                   "published recipe: hours on a CPU, a warning gives the estimate).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ...")
@_threads_option
@click.option("--save-mask", type=click.Path(path_type=Path),
              help="Write the mask used (folder in batch mode).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder caching computed kernels between runs.")
@click.option("--dtype", type=click.Choice(["float64", "float32"]), default=None,
              help="Precision of the kernel computation. Default: float32 for phase-averaged "
                   "architectures (NAME+avg, the default; averaged and solved in float64), else "
                   "float64 on CPU and float32 on GPU.")
@_batch_options("output")
@click.pass_context
def inpaint_command(ctx, image, output, mask, invert_mask, missing_fraction, seed, mask_type,
                    reference, method, arch, prior, verbose, ridge, iterations, device, threads,
                    save_mask, cache_dir, dtype, scheduler, overwrite, quiet):
    """Fill the missing pixels of IMAGE (or of every image in the folder IMAGE).

    The output keeps the input's bit depth (8 or 16) and its alpha channel (carried through
    unchanged, never inpainted: transparent pixels stay transparent, their colour is filled only
    where the mask says). A JPEG output is lossy: a warning says so and the scores are measured
    on the file as written. Mask files: non-zero = missing; the alpha of a mask composites it
    onto black (transparent = known); JPEG masks are thresholded at mid-grey.

    A folder is solved image by image, each output written as it is done; an image that fails
    is reported by name, the others still complete (exit status 1 at the end). With --scheduler
    the images run on Dask workers, the kernel computed once per image size and shared.

    \b
    Examples:
      ntk-complete inpaint photo.png --mask photo_mask.png -o filled.png
      ntk-complete inpaint clean.png --missing-fraction 0.5 --seed 0 -o filled.png \\
          --reference clean.png --save-mask mask.png
      ntk-complete inpaint photos/ -o filled/        # photos/NAME_mask.png beside each image
      ntk-complete inpaint photos/ -o filled/ --scheduler local:4
      ntk-complete inpaint photo.png --mask m.png --method biharmonic -o filled.png
    """
    from tqdm.auto import tqdm

    from completion.inpaint_jobs import Method, plan_jobs, run_batch, split_existing
    from completion.scheduling import check_scheduler

    batch = image.is_dir()
    _check_mask_source(ctx, mask, missing_fraction, invert_mask, batch=batch)
    progress = _show_progress(quiet)

    def report(index, job, outcome):
        if isinstance(outcome, Exception):
            if batch:
                tqdm.write(f"error: {job.image}: {outcome}", file=sys.stderr)
            return
        line = f"{job.output}: {outcome['missing_fraction']:.1%} missing, {outcome['seconds']:.1f} s"
        if "psnr" in outcome:
            ssim = outcome["ssim"]
            line += (f", PSNR {outcome['psnr']:.2f} dB, SSIM "
                     f"{'n/a (needs scikit-image)' if ssim is None else f'{ssim:.4f}'}")
        tqdm.write(line)
        if verbose and outcome.get("kernel"):
            tqdm.write(outcome["kernel"], file=sys.stderr)

    try:
        check_scheduler(scheduler)
        jobs = plan_jobs(image, output, mask, reference, save_mask,
                         generate=missing_fraction is not None)
        todo, skipped = split_existing(jobs, overwrite=overwrite or not batch)
        if skipped:
            click.echo(f"skipping {len(skipped)} of {len(jobs)} images whose output exists "
                       "(--overwrite redoes them)", err=True)
        single = len(todo) == 1 and scheduler is None
        how = Method(method, arch, prior, ridge, iterations, device, cache_dir, dtype, threads,
                     progress=progress and single)
        outcomes = run_batch(todo, how, scheduler=scheduler, on_done=report,
                             progress=progress and not single,
                             mask_options={"invert_mask": invert_mask, "seed": seed,
                                           "missing_fraction": missing_fraction,
                                           "mask_type": mask_type})
        if not batch and isinstance(outcomes[0], Exception):
            raise outcomes[0]
    except (ValueError, ImportError, MemoryError, OSError) as err:
        raise _error(err) from err
    failed = [job.image.name for job, out in zip(todo, outcomes) if isinstance(out, Exception)]
    if failed:
        raise click.ClickException(f"{len(failed)} of {len(todo)} images failed: {', '.join(failed)}")


# --- comparison commands (issue 4) -----------------------------------------------------------

@main.command("compare")
@click.argument("image", type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--output-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the outputs, figure, tables and DIP curve (one sub-folder per "
                   "image when IMAGE is a folder).")
@_mask_source_options
@click.option("--reference", type=click.Path(exists=True, path_type=Path),
              help="Clean image for PSNR/SSIM (folder in batch mode; default with a generated "
                   "mask: IMAGE itself).")
@click.option("--methods", default="cntk,dip,biharmonic,telea", show_default=True,
              help="Comma-separated methods, all run on the same mask.")
@click.option("--iterations", type=click.IntRange(1), default=3000, show_default=True,
              help="DIP training iterations.")
@click.option("--dip-lr", type=float, default=0.01, show_default=True, help="DIP Adam learning rate.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ...")
@_threads_option
@click.option("--no-figures", is_flag=True, help="Skip the matplotlib figures (tables only).")
@_batch_options("table.csv")
@click.pass_context
def compare_command(ctx, image, output_dir, mask, invert_mask, missing_fraction, seed, mask_type,
                    reference, methods, iterations, dip_lr, device, threads, no_figures, scheduler,
                    overwrite, quiet):
    """Run several inpainting methods on IMAGE with the same mask and compare them.

    Writes METHOD.png, mask.png, corrupted.png, comparison.png (corrupted | methods |
    reference), table.csv and table.md (PSNR, SSIM, wall time, peak RSS increase) and, with
    DIP, dip_curve.csv/png (PSNR against iterations and seconds, with the CNTK's PSNR marked).
    Images keep the input's bit depth and alpha; the scores are those of the files written.
    DIP's published recipe takes thousands of iterations, about 2 s each at 256 x 256 on one
    CPU core (a warning gives the estimate): use --device cuda or fewer --iterations.

    For a folder IMAGE (NAME_mask.png beside each image, or --missing-fraction), each image's
    files go to OUTPUT_DIR/NAME/ and the mean scores per method are printed; with --scheduler
    the images run on Dask workers (times then include their sharing the machine).

    \b
    Examples:
      ntk-complete compare photo.png --missing-fraction 0.5 --seed 0 \\
          --methods cntk,biharmonic,telea -o cmp/
      ntk-complete compare photo.png --mask m.png --reference clean.png \\
          --methods cntk,dip --iterations 50 -o cmp/
      ntk-complete compare photos/ --missing-fraction 0.5 --methods cntk,telea -o cmp/ \\
          --scheduler local:2
    """
    from completion.compare import check_dependencies, compare_methods, parse_methods, write_comparison
    from completion.files import check_writable, refuse_overwrite_input
    from completion.inpaint_jobs import load_inputs

    if image.is_dir():
        return _compare_folder(ctx, image, output_dir, mask, missing_fraction, invert_mask, seed,
                               mask_type, reference, methods, iterations, dip_lr, device, threads,
                               no_figures, scheduler, overwrite, quiet)
    _check_mask_source(ctx, mask, missing_fraction, invert_mask, require_one=True)
    try:
        check_writable(output_dir, folder=True)
        names = parse_methods(methods)
        check_dependencies(names, figures=not no_figures)
        if mask is None:
            reference = reference or image
        for name in ["mask", "corrupted", *names]:
            refuse_overwrite_input(output_dir / f"{name}.png", image, mask, reference)
        found, m, ref = load_inputs(image, mask, reference, invert_mask, missing_fraction, seed,
                                    mask_type)
        runs = compare_methods(found.pixels, m, names, reference=ref,
                               progress=_show_progress(quiet), bits=found.bits,
                               **_compare_options(iterations, dip_lr, device, threads, seed))
        write_comparison(output_dir, found.pixels, m, runs, reference=ref, figures=not no_figures,
                         bits=found.bits, alpha=found.alpha)
    except (ValueError, ImportError, MemoryError, OSError) as err:
        raise _error(err) from err
    from completion.compare import markdown_table, table_rows
    click.echo(markdown_table(table_rows(runs)), nl=False)
    click.echo(f"outputs written to {output_dir}")


def _compare_options(iterations, dip_lr, device, threads, seed):
    """``compare_methods``' ``dip_options`` and ``cntk_options`` from the command's options."""
    compute = {"device": device, "threads": threads}
    return {"dip_options": {"iterations": iterations, "lr": dip_lr, "seed": seed, **compute},
            "cntk_options": compute}


def _compare_folder(ctx, folder, output_dir, mask, missing_fraction, invert_mask, seed, mask_type,
                    reference, methods, iterations, dip_lr, device, threads, no_figures, scheduler,
                    overwrite, quiet):
    """``compare`` over every image of ``folder``: OUTPUT_DIR/NAME/ each, the means printed."""
    import dataclasses

    from tqdm.auto import tqdm

    from completion.compare import check_dependencies, markdown_table, parse_methods
    from completion.files import refuse_overwrite_input
    from completion.inpaint_jobs import plan_jobs, run_comparisons, split_existing
    from completion.scheduling import check_scheduler

    _check_mask_source(ctx, mask, missing_fraction, invert_mask, batch=True)

    def report(index, job, outcome):
        if isinstance(outcome, Exception):
            tqdm.write(f"error: {job.image}: {outcome}", file=sys.stderr)
        else:
            tqdm.write(f"{job.output}: " + ", ".join(
                f"{r['method']} {r['psnr_db']:.2f} dB" if r["psnr_db"] is not None else r["method"]
                for r in outcome))

    try:
        check_scheduler(scheduler)
        names = parse_methods(methods)
        check_dependencies(names, figures=not no_figures)
        jobs = [dataclasses.replace(job, output=output_dir / job.image.stem) for job in
                plan_jobs(folder, output_dir, mask, reference,
                          generate=missing_fraction is not None)]
        for job in jobs:
            for name in ["mask", "corrupted", *names]:
                refuse_overwrite_input(job.output / f"{name}.png", job.image, job.mask, job.reference)
        todo, skipped = split_existing(jobs, overwrite, marker="table.csv")
        if skipped:
            click.echo(f"skipping {len(skipped)} of {len(jobs)} images whose table.csv exists "
                       "(--overwrite redoes them)", err=True)
        outcomes = run_comparisons(
            todo, names, scheduler=scheduler, figures=not no_figures, on_done=report,
            progress=_show_progress(quiet),
            options=_compare_options(iterations, dip_lr, device, threads, seed),
            mask_options={"invert_mask": invert_mask, "missing_fraction": missing_fraction,
                          "seed": seed, "mask_type": mask_type})
    except (ValueError, ImportError, MemoryError, OSError) as err:
        raise _error(err) from err
    tables = [rows for rows in outcomes if not isinstance(rows, Exception)]
    if tables:
        click.echo(f"mean over {len(tables)} images:")
        click.echo(markdown_table([_mean_row([t[i] for t in tables]) for i in range(len(names))]),
                   nl=False)
    failed = [job.image.name for job, out in zip(todo, outcomes) if isinstance(out, Exception)]
    if failed:
        raise click.ClickException(f"{len(failed)} of {len(todo)} images failed: {', '.join(failed)}")
    click.echo(f"outputs written to {output_dir}/NAME/")


def _mean_row(rows):
    """One method's table row averaged over images (scores missing in any image: none)."""
    mean = lambda key: (None if any(r[key] is None for r in rows)  # noqa: E731
                        else sum(r[key] for r in rows) / len(rows))
    return {"method": rows[0]["method"], "psnr_db": mean("psnr_db"), "ssim": mean("ssim"),
            "seconds": mean("seconds"), "peak_rss_increase_mb": mean("peak_rss_increase_mb"),
            "note": f"mean of {len(rows)} images"}


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
    from completion.files import check_writable
    from completion.image_demo import run_demo as run_image_demo
    from completion.matrix_demo import run_demo as run_matrix_demo

    try:
        check_writable(output_dir, folder=True)
    except ValueError as err:
        raise _error(err) from err
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
