"""Where and in what precision kernels are evaluated, and how much memory they may take.

Every kernel routine takes ``device`` (``'auto'``, ``'cpu'``, ``'cuda'``, ``'cuda:1'``, or a
``torch.device``), ``dtype`` (``None`` = float64 on CPU, float32 on CUDA) and
``memory_budget`` (bytes, or a string such as ``'2GB'``); these helpers turn them into concrete
values, and :func:`check_fits` refuses work that would exceed the budget. CPU threads:
:func:`resolve_threads` (a parameter, else ``$NTK_THREADS``, else the measured default) and
:func:`limited_threads`.
"""
from __future__ import annotations

import contextlib
import os
import re

import torch

DEFAULT_MEMORY_BUDGET = 2 * 1024**3  # bytes; kernels tile their work to stay below this

_UNITS = {"": 1, "B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


class MemoryBudgetError(MemoryError):
    """Raised before a computation starts when it cannot fit in the allowed memory."""


def resolve_device(device="auto") -> torch.device:
    """``'auto'`` picks CUDA when available, else CPU; anything else is passed to torch."""
    if isinstance(device, torch.device):
        return device
    if device is None or str(device).lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available; use 'cpu' or 'auto'")
    return dev


def resolve_dtype(dtype, device: torch.device) -> torch.dtype:
    """``None`` means float64 on CPU (exactness) and float32 on accelerators (speed)."""
    if dtype is None:
        return torch.float64 if device.type == "cpu" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    return {"float64": torch.float64, "float32": torch.float32, "double": torch.float64,
            "float": torch.float32}[str(dtype)]


def parse_bytes(value) -> int:
    """``2147483648``, ``'2GB'``, ``'512 MB'`` -> bytes (binary units)."""
    if value is None:
        return DEFAULT_MEMORY_BUDGET
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ValueError(f"memory budget must be positive, got {value}")
        return int(value)
    m = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?B?)\s*", str(value).upper())
    if not m:
        raise ValueError(f"cannot read memory size {value!r}; write e.g. '2GB' or '512MB'")
    unit = m.group(2) if m.group(2).endswith("B") or m.group(2) == "" else m.group(2) + "B"
    return int(float(m.group(1)) * _UNITS[unit])


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")


def check_fits(needed_bytes: float, budget_bytes: int, what: str, advice: str) -> None:
    """Refuse (before allocating) a computation needing more than ``budget_bytes``."""
    if needed_bytes > budget_bytes:
        raise MemoryBudgetError(
            f"{what} would need {format_bytes(needed_bytes)} but the memory budget is "
            f"{format_bytes(budget_bytes)}. {advice}")


THREADS_ENV = "NTK_THREADS"
DEFAULT_CPU_THREADS = 1  # measured: benchmarks/bench_threads.py (RESULTS.md, "CPU threads")


def resolve_threads(threads=None) -> int:
    """Torch CPU threads for kernel and solver work: ``threads`` when given (an int >= 1), else
    the environment variable ``NTK_THREADS`` when set, else :data:`DEFAULT_CPU_THREADS`; never
    more than the machine's cores. Bad values are refused naming where they came from."""
    source = "threads"
    if threads is None:
        value = os.environ.get(THREADS_ENV, "").strip()
        if not value:
            return max(1, min(DEFAULT_CPU_THREADS, os.cpu_count() or 1))
        source, threads = f"${THREADS_ENV}", value
    try:
        if isinstance(threads, (bool, float)):
            raise ValueError
        n = int(threads)
    except (TypeError, ValueError):
        raise ValueError(f"{source} must be a whole number of threads >= 1, got {threads!r}") from None
    if n < 1:
        raise ValueError(f"{source} must be a whole number of threads >= 1, got {threads!r}")
    return min(n, os.cpu_count() or n)


@contextlib.contextmanager
def limited_threads(n=None):
    """Run the block with ``resolve_threads(n)`` torch CPU threads (the default, or
    ``$NTK_THREADS``, when ``n`` is None), restoring the previous count after.

    Many small factorisations on a shared 2-core machine ran faster on one thread: each parallel
    region costs more than it saves (benchmarks/RESULTS.md, "CPU threads")."""
    previous = torch.get_num_threads()
    torch.set_num_threads(resolve_threads(n))
    try:
        yield
    finally:
        torch.set_num_threads(previous)
