"""Fits of one ``NTKImputer.fit`` run on two Python threads: the final fits started before the
choice is made, and the cross-validation's fits two at a time.

In the automatic choice the chained candidates are the slowest fits, and tables usually choose
them, so their final fit (on every observed entry) would otherwise start only after the
cross-validation (``NTKImputer`` starts them ahead where they are of one chained mode); and the
cross-validation's candidates are independent fits. With two or more
torch threads, :class:`FitThreads` runs the final fits started ahead on a thread of their own
and the cross-validation's (configuration, fold) fits on two more, every thread with half the
torch (and BLAS) threads: torch and numpy release the GIL, and on two cores two one-thread fits
use them better than one two-thread fit (a 1000 x 1000 Cholesky factor or an elementwise pass
gains far less than 2x from a second thread). A fit is a pure function of the data and its
configuration (its random draws come from ``random_state``), so where and when it runs does not
change its numbers. The final fits the choice does not keep are stopped at their next column
and dropped. The final fits ahead run at a lower priority (:data:`AHEAD_NICE`, Linux): they are
needed only once the choice is made, and the cross-validation decides when that is.
"""
from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

import torch

from models.device import limited_blas_threads

__all__ = ["FitThreads"]

CV_THREADS = 2  # the cross-validation's fits run this many at a time (each on half the threads)
# ... on a pool of this many threads: a fit waiting for its turn to be screened (cv_grid) frees
# its place among the CV_THREADS for the fits after it
CV_POOL = 8
# the thread of the final fits started ahead runs at this nice value (Linux, where it is a
# thread's own): digits on 2 cores, 4 runs each on a noisy machine, nice 0 20.8 s on average,
# 5 19.5 s, 10 about the same as 5 (the fits ahead then end after the choice: the final fit
# waits for them); benchmarks/RESULTS.md
AHEAD_NICE = 5


class FitThreads:
    """Context manager holding the threads of one ``fit``.

    ``complete(cfg, stop)``: the completed (m, n) matrix of configuration ``cfg`` on the whole
    matrix, or None when the ``threading.Event`` ``stop`` was set while it ran; ``threads``:
    the torch threads of the fit (fewer than 2: nothing runs on another thread); ``close``
    restores the count found when the threads were first split."""

    def __init__(self, complete, threads):
        self._complete = complete
        self._threads = int(threads)
        self._jobs = {}  # repr(cfg) -> (stop event, future)
        self._ahead = None  # the executor of the final fits started ahead
        self._cv = None  # the executor of the cross-validation's fits
        self._blas = None
        self._closed = Future()  # done once close() is called

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def parallel(self) -> bool:
        """Whether fits run on other threads (two or more torch threads)."""
        return self._threads >= 2

    def _split(self):
        """From the first fit on another thread on, each thread gets half the torch and BLAS
        threads (restored by :meth:`close`)."""
        if self._blas is None:
            half = self._threads // 2
            self._restore = torch.get_num_threads()
            torch.set_num_threads(half)
            self._blas = limited_blas_threads(half)

    def start(self, cfgs):
        """Start the final fits of ``cfgs`` (one after the other, in order) on a thread of their
        own; nothing with fewer than two threads, no ``cfgs``, or when fits were already
        started."""
        if not self.parallel or not cfgs or self._ahead is not None:
            return
        self._split()
        self._ahead = ThreadPoolExecutor(1, thread_name_prefix="ntk-final-fit",
                                         initializer=_lower_priority)
        for cfg in cfgs:
            stop = threading.Event()
            self._jobs[repr(cfg)] = (stop, self._ahead.submit(self._complete, cfg, stop))

    def map(self, fn, items):
        """Futures of ``fn(item)`` for each of ``items``, run :data:`CV_THREADS` at a time (about
        in order) on threads of their own (needs :attr:`parallel`); a call may wait for
        something with its place given up (:meth:`wait_freed`)."""
        if not self.parallel:
            raise RuntimeError("map needs two or more threads")
        self._split()
        if self._cv is None:
            self._cv = ThreadPoolExecutor(CV_POOL, thread_name_prefix="ntk-cv-fit")
            self._running = threading.Semaphore(CV_THREADS)
        return [self._cv.submit(self._in_place, fn, item) for item in items]

    def _in_place(self, fn, item):
        with self._running:
            return fn(item)

    def wait_freed(self, future) -> bool:
        """In a call run by :meth:`map`: wait for ``future`` with this call's place among the
        CV_THREADS running given up meanwhile; True once it is done, False when :meth:`close`
        came first (the caller should then stop)."""
        self._running.release()
        try:
            wait([future, self._closed], return_when=FIRST_COMPLETED)
        finally:
            self._running.acquire()
        return future.done()

    def started(self, cfg) -> bool:
        return repr(cfg) in self._jobs

    def keep(self, cfgs):
        """Stop and drop the final fits started ahead that are not among ``cfgs``."""
        keys = {repr(cfg) for cfg in cfgs}
        for key in [k for k in self._jobs if k not in keys]:
            self._stop(key)

    def drop(self, cfgs):
        """Stop and drop the final fits of ``cfgs`` started ahead, if any: candidates out of
        the running."""
        for key in map(repr, cfgs):
            if key in self._jobs:
                self._stop(key)

    def _stop(self, key):
        stop, job = self._jobs.pop(key)
        stop.set()
        job.cancel()

    def result(self, cfg):
        """The completed matrix of ``cfg``'s fit started ahead (waiting for it); its
        exception, if it raised one."""
        return self._jobs[repr(cfg)][1].result()

    def close(self):
        """Stop what still runs, wait for the threads, and give the torch and BLAS threads
        back."""
        if not self._closed.done():
            self._closed.set_result(None)
        self.keep([])
        for pool in (self._ahead, self._cv):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        self._ahead = self._cv = None
        if self._blas is not None:
            self._blas.restore_original_limits()
            torch.set_num_threads(self._restore)
            self._blas = None


def _lower_priority():
    """This thread (and the threads it starts) at nice AHEAD_NICE, on Linux (elsewhere the
    nice value is the whole process's: left alone); nothing when the system refuses."""
    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), AHEAD_NICE)
        except OSError:
            pass
