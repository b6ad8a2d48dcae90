"""Final fits started before the choice is made, on a second Python thread.

In ``NTKImputer``'s automatic choice the chained candidates are the slowest fits, and tables
usually choose them, so their final fit (on every observed entry) would otherwise start only
after the cross-validation. With two or more torch threads, :class:`FitsAhead` runs those final
fits on a second Python thread while the cross-validation goes on in the first, each thread
with half the torch (and BLAS) threads: torch and numpy release the GIL, and on two cores two
one-thread fits use them better than one two-thread fit (a 1000 x 1000 Cholesky factor or an
elementwise pass gains far less than 2x from a second thread). A fit is a pure function of the
data and its configuration (its random draws come from ``random_state``), so where and when it
runs does not change its numbers. The fits the choice does not keep are stopped at their next
column and dropped.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import torch

from models.device import limited_blas_threads

__all__ = ["FitsAhead"]


class FitsAhead:
    """Context manager holding the final fits started ahead of one ``fit``.

    ``complete(cfg, stop)``: the completed (m, n) matrix of configuration ``cfg`` on the whole
    matrix, or None when the ``threading.Event`` ``stop`` was set while it ran; ``threads``:
    the torch threads the two Python threads share (fewer than 2: nothing is started ahead);
    ``close`` restores the count that ``start`` found."""

    def __init__(self, complete, threads):
        self._complete = complete
        self._threads = int(threads)
        self._jobs = {}  # repr(cfg) -> (stop event, future)
        self._pool = None
        self._blas = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def start(self, cfgs):
        """Start the fits of ``cfgs`` (one after the other, in order) on a second thread, and
        from then on give each thread half the torch and BLAS threads; nothing with fewer than
        two threads, no ``cfgs``, or when fits were already started."""
        if self._threads < 2 or not cfgs or self._pool is not None:
            return
        half = self._threads // 2
        self._restore = torch.get_num_threads()
        torch.set_num_threads(half)
        self._blas = limited_blas_threads(half)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="ntk-final-fit")
        for cfg in cfgs:
            stop = threading.Event()
            self._jobs[repr(cfg)] = (stop, self._pool.submit(self._complete, cfg, stop))

    def started(self, cfg) -> bool:
        return repr(cfg) in self._jobs

    def keep(self, cfgs):
        """Stop and drop the fits started ahead that are not among ``cfgs``."""
        keys = {repr(cfg) for cfg in cfgs}
        for key in [k for k in self._jobs if k not in keys]:
            stop, job = self._jobs.pop(key)
            stop.set()
            job.cancel()

    def result(self, cfg):
        """The completed matrix of ``cfg``'s fit started ahead (waiting for it); its
        exception, if it raised one."""
        return self._jobs[repr(cfg)][1].result()

    def close(self):
        """Stop what still runs, wait for the thread, and give the torch and BLAS threads back."""
        if self._pool is None:
            return
        self.keep([])
        self._pool.shutdown(wait=True)
        self._pool = None
        self._blas.restore_original_limits()
        torch.set_num_threads(self._restore)
