"""Final fits started ahead of the choice (completion.fits_ahead): the same numbers as the
one-thread fit, on the second thread with half the torch threads, the thread count restored;
fits the choice drops are stopped."""
import os
import threading
import time

import numpy as np
import pytest
import torch

import completion.matrix as matrix_module
from completion.chained import chained_fit
from completion.fits_ahead import FitsAhead
from completion.matrix import NTKImputer, additive_baseline
from models.ntk import FullyConnectedNTK


def _table(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((70, 5))
    X = np.column_stack([X, np.sin(2 * X[:, 0]) + X[:, 1] * X[:, 2]])
    X[rng.random(X.shape) < 0.2] = np.nan
    return X


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="two threads need two cores")
def test_fits_ahead_give_the_one_thread_numbers(monkeypatch):
    """mode auto with two threads: the chained candidates' final fits start on the second
    Python thread with one torch thread each, and the choice and the completion are those of
    the one-thread fit, bit for bit; the thread count is given back."""
    calls = []

    def recorded(*args, **kwargs):
        calls.append((threading.current_thread().name, torch.get_num_threads()))
        return chained_fit(*args, **kwargs)

    monkeypatch.setattr(matrix_module, "chained_fit", recorded)
    X = _table(seed=1)  # a table whose choice takes the rows-chained fit
    before = torch.get_num_threads()
    one = NTKImputer(random_state=0, threads=1).fit(X)
    assert all(name == threading.current_thread().name for name, _ in calls)
    calls.clear()
    two = NTKImputer(random_state=0, threads=2).fit(X)
    assert torch.get_num_threads() == before
    ahead = [count for name, count in calls if name.startswith("ntk-final-fit")]
    assert ahead and set(ahead) == {1} and {count for _, count in calls} == {1}
    assert "chained" in repr(one.chosen_)  # a fit ahead was used
    assert repr(two.chosen_) == repr(one.chosen_)
    np.testing.assert_array_equal(two.completed_, one.completed_)


def test_fits_not_kept_are_stopped_and_one_thread_starts_none():
    """keep() stops the fits it drops (their stop event is set, the thread is free again);
    a fit kept gives its result; with one thread nothing is started."""
    def complete(cfg, stop):
        if cfg["mode"] == "slow":
            while not stop.wait(0.01):
                pass
            return None
        return np.full((2, 2), 1.0)

    slow, quick = {"mode": "slow"}, {"mode": "quick"}
    before = torch.get_num_threads()
    torch.set_num_threads(3)  # neither the 2 given nor the 1 of each thread
    with FitsAhead(complete, 2) as ahead:
        ahead.start([slow, quick])
        assert ahead.started(slow) and ahead.started(quick)
        assert torch.get_num_threads() == 1
        started = time.perf_counter()
        ahead.keep([quick])
        assert not ahead.started(slow)
        np.testing.assert_array_equal(ahead.result(quick), np.ones((2, 2)))
        assert time.perf_counter() - started < 5
    assert torch.get_num_threads() == 3  # the count start() found
    torch.set_num_threads(before)
    with FitsAhead(complete, 1) as ahead:
        ahead.start([quick])
        assert not ahead.started(quick)


def test_chained_fit_returns_none_once_stopped():
    X = _table(1)
    mask = ~np.isnan(X)
    stop = threading.Event()
    stop.set()
    base = additive_baseline(X, mask)
    assert chained_fit(FullyConnectedNTK(1), X, mask, base, 1, 0.1, stop=stop) is None
    assert chained_fit(FullyConnectedNTK(1), X, mask, base, 1, 0.1, axis=1, stop=stop) is None


def test_default_thread_count_of_one_still_fits_ahead_on_two_cores(monkeypatch):
    """threads None and no $NTK_THREADS: a load average that gives the fit one torch thread
    still runs the final fits ahead on a second Python thread where two cores are there; an
    explicit threads=1 (or $NTK_THREADS=1) does not."""
    import models.device
    names = []

    def recorded(*args, **kwargs):
        names.append(threading.current_thread().name)
        return chained_fit(*args, **kwargs)

    monkeypatch.setattr(matrix_module, "chained_fit", recorded)
    monkeypatch.setattr(models.device, "default_threads", lambda: 1)
    monkeypatch.setattr(matrix_module, "usable_cores", lambda: 2)
    monkeypatch.delenv("NTK_THREADS", raising=False)
    X = _table(seed=1)
    default = NTKImputer(random_state=0).fit(X)
    assert any(name.startswith("ntk-final-fit") for name in names)
    names.clear()
    one = NTKImputer(random_state=0, threads=1).fit(X)
    assert names and not any(name.startswith("ntk-final-fit") for name in names)
    monkeypatch.setenv("NTK_THREADS", "1")
    names.clear()
    NTKImputer(random_state=0).fit(X)
    assert names and not any(name.startswith("ntk-final-fit") for name in names)
    np.testing.assert_array_equal(default.completed_, one.completed_)
