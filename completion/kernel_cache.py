"""On-disk cache of computed pixel kernels, keyed by (architecture spec, grid size, prior, dtype).

Only structured kernels (a periodic ``table``) are stored: one torch file per key, written
atomically, named by a hash of the key; the key itself is stored inside and checked on load.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import torch

from .files import atomic_output


def _prior_key(prior) -> str:
    if isinstance(prior, str):
        return prior
    arr = np.ascontiguousarray(np.asarray(prior, dtype=np.float64))
    return f"array{arr.shape}:{hashlib.sha256(arr.tobytes()).hexdigest()[:16]}"


class KernelCache:
    """``get_or_compute(arch, shape, prior, compute, build)``: load the kernel from ``cache_dir``
    or call ``build()`` and store its table there (no-op when ``cache_dir`` is None); ``arch``
    is a :class:`models.cntk.Architecture`, ``compute`` a resolved
    :class:`models.device.Compute` (its dtype is part of the key; loaded onto its device)."""

    def __init__(self, cache_dir=None):
        self.cache_dir = None if cache_dir is None else Path(cache_dir)

    def key(self, arch, shape, prior, dtype) -> str:
        return f"{arch.key()} | {shape[0]}x{shape[1]} | {_prior_key(prior)} | {dtype}"

    def path(self, key) -> Path:
        return self.cache_dir / f"cntk-{hashlib.sha256(key.encode()).hexdigest()[:20]}.pt"

    def get_or_compute(self, arch, shape, prior, compute, build):
        if self.cache_dir is None:
            return build()
        key = self.key(arch, shape, prior, compute.dtype)
        path = self.path(key)
        if path.exists():
            stored = torch.load(path, map_location=compute.device, weights_only=True)
            if stored.get("key") == key:
                from models.cntk import StructuredKernel
                return StructuredKernel(stored["table"])
        kern = build()
        if getattr(kern, "table", None) is not None:
            buf = io.BytesIO()
            torch.save({"key": key, "table": kern.table.cpu()}, buf)
            with atomic_output(path, "wb") as fh:
                fh.write(buf.getvalue())
        return kern

