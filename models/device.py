"""Where and in what precision kernels are evaluated, how much memory they may take, and on how
many CPU threads.

:class:`Compute` holds the four knobs (``device``: ``'auto'``, ``'cpu'``, ``'cuda'``,
``'cuda:1'`` or a ``torch.device``; ``dtype``: ``None`` = float64 on CPU, float32 on CUDA;
``memory_budget``: bytes or a string such as ``'2GB'``; ``threads``: torch CPU threads) and
travels through the image / CNTK call chain as one object; :meth:`Compute.resolve` gives the
concrete values (:func:`resolve_device`, :func:`resolve_dtype`, :func:`parse_bytes`,
:func:`resolve_threads`: a parameter, else ``$NTK_THREADS``, else :func:`default_threads`).
:func:`check_fits` refuses work that would exceed the budget; :func:`limited_threads` runs a
block on the resolved thread count.

>>> c = Compute(device="cpu", memory_budget="512MB", threads=1).resolve()
>>> c.device, c.dtype, c.memory_budget, c.threads
(device(type='cpu'), torch.float64, 536870912, 1)
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
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
    if str(dtype) not in _DTYPES:
        raise ValueError(f"dtype must be None, {', '.join(_DTYPES)} or a torch dtype, got {dtype!r}")
    return _DTYPES[str(dtype)]


_DTYPES = {"float64": torch.float64, "float32": torch.float32, "double": torch.float64,
           "float": torch.float32}


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


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity where the platform tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_chosen_by_default(threads=None) -> bool:
    """True when neither ``threads`` nor ``$NTK_THREADS`` sets the thread count."""
    return threads is None and not os.environ.get(THREADS_ENV, "").strip()


def default_threads() -> int:
    """The cores this process may use that the 1-minute load average leaves idle, at least 1.

    Measured (benchmarks/RESULTS.md, "CPU threads"): on the shared 2-core machine at load 7-9,
    two threads ran 5.8-6.9x slower than one (OpenMP threads spin while they wait for a core);
    so a busy machine gets 1 thread and an idle one all its cores. Not measured on a quiet
    many-core machine; ``threads=`` / ``$NTK_THREADS`` / ``--threads`` override it."""
    cores = usable_cores()
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this platform
        busy = 0.0
    return max(1, min(cores, int(cores - busy + 0.5)))


def resolve_threads(threads=None) -> int:
    """Torch CPU threads for kernel and solver work: ``threads`` when given (an int >= 1), else
    the environment variable ``NTK_THREADS`` when set, else :func:`default_threads`; never
    more than the machine's cores. Bad values are refused naming where they came from."""
    source = "threads"
    if threads_chosen_by_default(threads):
        return default_threads()
    if threads is None:
        source, threads = f"${THREADS_ENV}", os.environ[THREADS_ENV].strip()
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
    ``$NTK_THREADS``, when ``n`` is None), restoring the previous count after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(resolve_threads(n))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@functools.lru_cache(maxsize=1)
def _blas_controller():
    from threadpoolctl import ThreadpoolController
    return ThreadpoolController()  # (finding the libraries takes ~3 ms: once)


def limited_blas_threads(n: int):
    """numpy's and scipy's BLAS (OpenBLAS; torch's MKL follows :func:`limited_threads`) on
    ``n`` threads until ``.restore_original_limits()`` or the end of the ``with`` block: for
    small BLAS calls, where a second thread costs more than it saves (and, on a busy machine,
    waits for a core)."""
    return _blas_controller().limit(limits=int(n), user_api="blas")


@dataclasses.dataclass(frozen=True)
class Compute:
    """Where and how kernels and solves run (see the module docstring): ``device``, ``dtype``,
    ``memory_budget`` (None = :data:`DEFAULT_MEMORY_BUDGET`), ``threads`` (None = the
    environment's or :func:`default_threads`). Checked when made (a bad value is refused
    naming it); vary with ``dataclasses.replace``; :meth:`resolve` gives concrete values."""

    device: object = "auto"
    dtype: object = None
    memory_budget: object = None
    threads: object = None

    def __post_init__(self):
        if not isinstance(self.device, torch.device) and str(self.device).lower() != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError, ValueError):
                raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or a "
                                 f"torch.device, got {self.device!r}") from None
        if self.dtype is not None:
            resolve_dtype(self.dtype, torch.device("cpu"))
        parse_bytes(self.memory_budget)
        if self.threads is not None:
            resolve_threads(self.threads)

    def resolve(self) -> "Compute":
        """The same settings as concrete values: a ``torch.device`` (CUDA checked), a
        ``torch.dtype``, the budget in bytes and the thread count."""
        device = resolve_device(self.device)
        return Compute(device, resolve_dtype(self.dtype, device), parse_bytes(self.memory_budget),
                       resolve_threads(self.threads))

    @property
    def budget(self) -> int:
        """The memory budget in bytes."""
        return parse_bytes(self.memory_budget)

    def limited_threads(self):
        """Context manager: the block runs on this object's threads (see :func:`limited_threads`)."""
        return limited_threads(self.threads)
