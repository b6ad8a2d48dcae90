"""Safe file output: outputs are checked before any work, then written to a temporary file
beside the target and renamed over it in one step.

Inputs are never opened for writing; an output path equal to an input path is refused by
:func:`refuse_overwrite_input`. A replaced file keeps its permission bits; a new file gets the
usual ``0o666`` less the process umask (not ``tempfile``'s private ``0o600``).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


class UnwritableOutput(ValueError):
    """An output that cannot or must not be written (found before any work is done)."""


def _new_file_mode() -> int:
    """``0o666`` less the process umask: the mode ``open(path, 'w')`` would give a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_output(path, mode="wb"):
    """Yield a file object; on success it replaces ``path`` in one rename, on error nothing
    is left behind and an existing ``path`` is untouched. Missing parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        permissions = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        permissions = _new_file_mode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, permissions)
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_output(path, "w") as fh:
        fh.write(text)


def check_writable(path, folder: bool = False) -> None:
    """Raise :class:`UnwritableOutput` (one line naming ``path``) unless ``path`` can be written: as a file,
    or with ``folder`` as a folder to write files into. Missing parent folders are fine when the
    nearest existing one is a writable folder (checked by creating and removing a temporary
    file there, which also catches read-only and pseudo file systems such as /proc); nothing is
    created."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        kind = "a folder" if path.is_dir() else "a file"
        raise UnwritableOutput(f"cannot write output {path}: it is {kind}, expected "
                         f"{'a folder' if folder else 'a file'}")
    holder = path if folder else path.parent
    while not holder.exists() and holder != holder.parent:
        holder = holder.parent
    if not holder.is_dir():
        raise UnwritableOutput(f"cannot write output {path}: {holder} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=holder):
            pass
    except OSError as err:
        raise UnwritableOutput(f"cannot write output {path}: {holder} is not writable "
                         f"({err.strerror or err})") from None


def refuse_overwrite_input(output, *inputs) -> None:
    """Raise :class:`UnwritableOutput` when ``output`` names the same file as any of ``inputs``."""
    if output is None or str(output) == "-":
        return
    out = Path(output).resolve()
    for inp in inputs:
        if inp is not None and str(inp) != "-" and Path(inp).resolve() == out:
            raise UnwritableOutput(f"output {output} is the input file {inp}; choose another output "
                             "path (inputs are never overwritten)")
