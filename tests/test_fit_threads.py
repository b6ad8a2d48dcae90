"""Fits on other threads (completion.fit_threads): the final fits started ahead of the choice
and the cross-validation's fits two at a time give the same numbers as the one-thread fit, each
thread with half the torch threads, the thread count restored; fits the choice drops are
stopped."""
import os
import threading
import time

import numpy as np
import pytest
import torch

import completion.matrix as matrix_module
from completion.chained import chained_fit
from completion.fit_threads import FitThreads
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
    """mode auto with two threads: the chained candidates' final fits start on a Python
    thread of their own and the cross-validation's fits run on two more, with one torch thread
    each, and the scores, the choice and the completion are those of the one-thread fit, bit
    for bit; the thread count is given back."""
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
    assert {name.split("_")[0] for name, _ in calls if not name.startswith("ntk-final")} == \
        {"ntk-cv-fit"}
    assert "chained" in repr(one.chosen_)  # a fit ahead was used
    assert two.cv_results_ == one.cv_results_
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
    with FitThreads(complete, 2) as ahead:
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
    with FitThreads(complete, 1) as ahead:
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


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="two threads need two cores")
def test_screening_on_threads_screens_what_one_after_the_other_screens(monkeypatch):
    """A tight margin screens some refined candidates out after their first round; on the
    cross-validation's threads (each such fit waits there for its turn) the same ones are
    screened, with the same scores, choice and completion."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((30, 3)) @ rng.standard_normal((3, 12))
    X[rng.random(X.shape) < 0.3] = np.nan
    kw = dict(random_state=0, depth=1, ridge=0.03, stack=2, cv_folds=5, cv_max_folds=2)
    monkeypatch.setattr(matrix_module, "SCREEN_MARGIN", np.inf)
    monkeypatch.setattr(matrix_module, "SCREEN_MIN_ENTRIES", 1)  # this matrix's folds are small
    unscreened = NTKImputer(**kw, threads=1).fit(X)
    monkeypatch.setattr(matrix_module, "SCREEN_MARGIN", 1.0001)
    one = NTKImputer(**kw, threads=1).fit(X)
    two = NTKImputer(**kw, threads=2).fit(X)
    assert len(one.cv_results_) < len(unscreened.cv_results_)  # some were screened
    assert two.cv_results_ == one.cv_results_ and two.chosen_ == one.chosen_
    np.testing.assert_array_equal(two.completed_, one.completed_)


class ImputerStub:
    """What the CV grid calls on an imputer besides ``_complete`` (which each test's stub
    defines): no candidate here reads SoftImpute, so nothing is computed ahead."""

    def _softimpute_ahead(self, cfgs, splits):
        pass


def test_a_fit_waiting_for_its_turn_frees_its_place():
    """CV_THREADS fits run at once; one waiting for its screening turn (the candidates before
    it not yet scored) gives up its place, so that a later candidate runs meanwhile: here the
    first candidate's fit finishes only once the third's has run, the second waits for its
    turn after its first round, and nothing deadlocks."""
    from completion.cv_grid import CVGrid
    from completion.fit_threads import CV_THREADS

    third_ran = threading.Event()

    class Stub(ImputerStub):
        def _complete(self, values, train, cfg, targets, screen=None):
            if cfg["mode"] == "first":
                assert third_ran.wait(10), "the third fit never ran"
            if cfg["mode"] == "second" and screen is not None and screen(np.zeros(1)):
                return None
            if cfg["mode"] == "third":
                third_ran.set()
            return np.full(len(targets[0]), {"first": 1.0, "second": 2.0, "third": 3.0}[cfg["mode"]])

    values = np.arange(12.0).reshape(3, 4)
    mask = np.ones((3, 4), bool)
    fold = np.zeros((3, 4), bool)
    fold[0, 0] = fold[1, 2] = True
    assert CV_THREADS == 2
    with FitThreads(None, 2) as threads:
        grid = CVGrid(Stub(), values, mask, [fold], threads=threads)
        cfgs = [{"mode": "first"}, {"mode": "second"}, {"mode": "third"}]
        tests = iter([None, lambda pred: True, None])  # the second is screened out
        got = [(cfg["mode"], [None if p is None else float(p[0]) for p in preds])
               for cfg, preds in grid.predictions(cfgs, lambda: next(tests))]
    assert got == [("first", [1.0]), ("second", [None]), ("third", [3.0])]


def test_an_error_while_a_fit_waits_for_its_turn_ends_without_a_hang():
    """A candidate's fit fails while a later one waits for its screening turn: the error comes
    out of the grid, and closing the threads gives the waiting fit up instead of waiting for a
    turn that never comes (the grid's generator is still referenced here, as an exception's
    traceback references it)."""
    from completion.cv_grid import CVGrid

    class Stub(ImputerStub):
        def _complete(self, values, train, cfg, targets, screen=None):
            if cfg["mode"] == "bad":
                time.sleep(0.2)  # the other fit is waiting by then
                raise RuntimeError("boom")
            if screen is not None and screen(np.zeros(1)):
                return None
            return np.zeros(len(targets[0]))

    values = np.arange(12.0).reshape(3, 4)
    fold = np.zeros((3, 4), bool)
    fold[0, 0] = True
    started = time.perf_counter()
    with pytest.raises(RuntimeError, match="boom"):
        with FitThreads(None, 2) as threads:
            grid = CVGrid(Stub(), values, np.ones((3, 4), bool), [fold], threads=threads)
            taken = grid.predictions([{"mode": "bad"}, {"mode": "waits"}], lambda: None)
            for _, preds in taken:
                list(preds)
    assert time.perf_counter() - started < 10
