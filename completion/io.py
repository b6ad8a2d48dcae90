"""Safe file output: write to a temporary file beside the target, then rename atomically.

Inputs are never opened for writing; an output path equal to an input path is refused by
:func:`refuse_overwrite_input`.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_output(path, mode="wb"):
    """Yield a file object; on success it replaces ``path`` in one rename, on error nothing
    is left behind and an existing ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def refuse_overwrite_input(output, *inputs) -> None:
    """Raise ``ValueError`` when ``output`` names the same file as any of ``inputs``."""
    if output is None or str(output) == "-":
        return
    out = Path(output).resolve()
    for inp in inputs:
        if inp is not None and str(inp) != "-" and Path(inp).resolve() == out:
            raise ValueError(f"output {output} is the input file {inp}; choose another output "
                             "path (inputs are never overwritten)")
