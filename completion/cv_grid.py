"""The cross-validation grid of ``NTKImputer``'s automatic choices: the held-out predictions of
(configuration, fold) pairs, computed in this process or on Dask workers.

A pair's predictions are a pure function of the data, the configuration and the fold
(:func:`fold_prediction`), so where they run does not change them. On Dask each pair of a round
of candidates is one task; the data (the imputer with its fitted priors and features, the matrix,
the folds) are scattered to the workers once per fit, and the predictions come back in
submission order. The one state the imputer carries from one candidate to the next, the
SoftImpute shrinkage (chosen on the first training split that needs it, then reused), is fixed in
this process before anything is sent, exactly where the in-process loop would fix it.

Screening (mode "auto", ``NTKImputer._screen``): a configuration whose first refinement round on
the first fold is more than ``SCREEN_MARGIN`` times the best score before it (in the order of
scoring) is not refined further and scores inf. In this process it then stops early; on Dask every pair runs in full
and returns its first round too, and the same test is applied here, in the same order, so the
scores and the choice do not depend on where the fits ran. Fits two at a time on threads of this
process (:class:`~completion.fit_threads.FitThreads`) are screened in their first refinement
round, as one after the other: the fit waits there until the configurations before it are scored.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import math
from concurrent.futures import Future

import numpy as np

from .fibres import fibre_mask
from .priors import parse_prior
from .scheduling import map_tasks, scatter

KERNEL_MODES = ("rows", "cols", "joint")
# the automatic choices evaluate folds until they hold out at least this many observed entries
# (standard error of an RMSE estimate about 1 / sqrt(2 x 1000) = 2% of it), up to cv_max_folds
MIN_VALIDATION_ENTRIES = 1000
# ... at most AUTO_MAX_FOLDS of them (each costs a fit of every candidate), but on a matrix of
# fewer than SMALL_CV_ENTRIES / AUTO_MAX_FOLDS observed entries as many as keep the folds'
# observed entries together below SMALL_CV_ENTRIES (three such tables, 3 seeds: iris 0.5455 ->
# 0.5298, statecrime 0.6380 -> 0.6163, elnino 0.3814 -> 0.3799; benchmarks/RESULTS.md)
AUTO_MAX_FOLDS = 4
SMALL_CV_ENTRIES = 10_000


def evaluated_folds(n_observed, folds, max_folds="auto"):
    """How many of ``folds`` folds of ``n_observed`` entries the CV evaluates: the fewest whose
    entries number MIN_VALIDATION_ENTRIES, at least 1, at most ``max_folds``. Many small folds
    (``NTKImputer``'s default, 20) keep each validation fit's training entries close to the
    final fit's (a 20% fold on a table missing 20% fits on 36% missing, where a chained
    regression's inputs are worse and a low-rank fit looks better than at 20%); a large matrix
    needs one fold, a small table several; never more than ``n_observed`` (a fold of one
    entry each). ``max_folds`` "auto": AUTO_MAX_FOLDS, or on a small matrix up to
    SMALL_CV_ENTRIES // n_observed (its fits are cheap and its folds hold few entries: iris'
    480 observed entries are all held out once, 96 with 4 folds)."""
    if max_folds == "auto":
        max_folds = max(AUTO_MAX_FOLDS, SMALL_CV_ENTRIES // max(n_observed, 1))
    per_fold = max(n_observed / folds, 1.0)
    return int(min(max_folds, folds, max(1, n_observed),
                   max(1, math.ceil(MIN_VALIDATION_ENTRIES / per_fold))))


def entry_folds(rows, cols, shape, folds, max_folds, random_state):
    """Boolean (k,) validation selections of the k observed entries (``rows``, ``cols``: (k,)
    int arrays in a matrix of ``shape``), :func:`evaluated_folds` of ``folds``: entry i is in
    fold perm[i] % ``folds``, but an entry alone in its row or column always stays in training.
    Refused when a fold would hold no entry or leave none for training."""
    rng = np.random.default_rng(random_state)
    fold = rng.permutation(rows.size) % folds
    alone = (np.bincount(rows, minlength=shape[0])[rows] == 1) | \
        (np.bincount(cols, minlength=shape[1])[cols] == 1)
    fold[alone] = -1
    out = [fold == f for f in range(evaluated_folds(rows.size, folds, max_folds))]
    if not all(v.any() and (~v).any() for v in out):
        raise ValueError(f"too few observed entries ({rows.size}) to hold any out for "
                         f"{folds}-fold cross-validation; give mode, prior, depth and ridge "
                         "explicitly")
    return out


@dataclasses.dataclass
class FoldData:
    """What every (configuration, fold) task reads: the fitted ``imputer`` (parameters, aligned
    features, prior matrix, SoftImpute cache), ``values`` (m, n) or (m, n, d) float64 with NaN where missing,
    ``mask`` (m, n) bool of observed entries, ``folds``: (m, n) bool validation masks."""
    imputer: object
    values: np.ndarray
    mask: np.ndarray
    folds: list


def fold_prediction(pair, data: FoldData, screen=None):
    """(V,) or, for vector entries, (V, d) predictions at the V entries
    ``np.nonzero(data.folds[k])`` of configuration ``cfg`` fitted on the observed entries
    outside fold ``k`` (``pair = (cfg, k)``); None when ``screen`` (a test of the first
    refinement round's predictions there) rejects it."""
    cfg, k = pair
    return data.imputer._complete(*training_split(data, k), cfg, np.nonzero(data.folds[k]),
                                  screen)


def training_split(data: FoldData, k):
    """(values, train) of fold ``k``'s training split: ``data.values`` with NaN (whole fibres for
    vector entries) outside ``train``, the (m, n) observed entries outside the fold."""
    train = data.mask & ~data.folds[k]
    return np.where(fibre_mask(train, data.values), data.values, np.nan), train


def recorded_fold_prediction(pair, data: FoldData):
    """``(first, prediction)``: :func:`fold_prediction` unscreened, with its first refinement
    round's predictions (None for a fit without refinement, and for folds after the first,
    which are never screened)."""
    first = []

    def record(pred):
        first.append(pred)
        return False
    pred = fold_prediction(pair, data, record if pair[1] == 0 else None)
    return (first[0] if first else None), pred


def uses_softimpute(cfg) -> bool:
    """Whether fitting ``cfg`` runs SoftImpute (the softimpute candidate, an @softimpute prior)."""
    if cfg["mode"] == "softimpute":
        return True
    if cfg["mode"] not in KERNEL_MODES:
        return False
    priors = cfg["prior"] if isinstance(cfg["prior"], tuple) else (cfg["prior"],)
    return any(parse_prior(p).source == "softimpute" for p in priors)


class CVGrid:
    """Fold predictions for the rounds of candidate configurations of one fit: in this process
    when ``client`` is None (two at a time on the threads of ``threads``, a
    :class:`~completion.fit_threads.FitThreads`, when it has two or more torch threads), else on
    the workers of that ``distributed.Client``."""

    def __init__(self, imputer, values, mask, folds, client=None, threads=None):
        self.data = FoldData(imputer, values, mask, folds)
        self.client = client
        self.threads = threads
        self._scattered = None

    def predictions(self, cfgs, screens=lambda: None):
        """Yield ``(cfg, folds)`` for each configuration in order, ``folds`` an iterator over its
        folds' (V_k,) predictions, whose first item is None when the configuration is screened
        out by ``screens()`` (called when that configuration's turn comes, after the previous
        ones were consumed; it returns a test of first-round predictions, or None for none);
        taking a fold whose fit failed raises that fit's exception. In this process a fold is
        fitted when taken (a candidate stops at its first failure or when screened out); on the
        threads of ``threads`` (a :class:`~completion.fit_threads.FitThreads` with two or more
        torch threads) every fold is started at once (:meth:`_on_threads`); on Dask every fold
        of every configuration of ``cfgs`` is fitted in full, started at once, and screened
        here when taken."""
        count = len(self.data.folds)
        if self.client is None and self.threads is not None and self.threads.parallel \
                and len(cfgs) * count > 1:
            yield from self._on_threads(cfgs, screens)
            return
        if self.client is None:
            for cfg in cfgs:
                yield cfg, _fitted_when_taken(cfg, self.data, screens())
            return
        pairs = [(cfg, k) for cfg in cfgs for k in range(count)]
        outcomes = map_tasks(recorded_fold_prediction, pairs, scheduler=self.client,
                             shared=self._shared(cfgs), return_exceptions=True)
        for i, cfg in enumerate(cfgs):
            yield cfg, _raising(outcomes[i * count:(i + 1) * count], screens())

    def _on_threads(self, cfgs, screens):
        """:meth:`predictions` with the (configuration, fold) fits run by ``self.threads``, all
        submitted at once, screened as one after the other: after its first refinement round a
        configuration's first fold waits for its turn (its place among the running fits freed
        meanwhile), when ``screens()`` gives the test; its other folds start once the first one
        has passed that test or finished (one after the other they would not run at all once
        it is screened out or has failed). SoftImpute's completions are computed here while
        the fits that do not read them start."""
        count = len(self.data.folds)
        turns = [Future() for _ in cfgs]  # each configuration's screen test, when its turn comes
        stopped = [Future() for _ in cfgs]  # whether its first fold was screened out or failed
        softimpute = Future()  # done once SoftImpute's completions are there (computed here)

        def fit(pair):
            i, k = pair
            if uses_softimpute(cfgs[i]) and not self.threads.wait_freed(softimpute):
                return None
            if k:
                if not self.threads.wait_freed(stopped[i]) or stopped[i].result():
                    return None
                return fold_prediction((cfgs[i], k), self.data)
            pred = None
            try:
                pred = fold_prediction((cfgs[i], 0), self.data,
                                       functools.partial(self._screened, turns[i], stopped[i]))
                return pred
            finally:
                if not stopped[i].done():
                    stopped[i].set_result(pred is None)

        futures = self.threads.map(fit, [(i, k) for i in range(len(cfgs)) for k in range(count)])
        try:
            try:  # while the fits that do not read it run
                self._softimpute_first(cfgs, range(count))
            finally:
                softimpute.set_result(None)
            for i, cfg in enumerate(cfgs):
                turns[i].set_result(screens())
                yield cfg, _taken(futures[i * count:(i + 1) * count])
        finally:  # stopped early (an error): the fits still waiting for their turn stop there
            for turn in turns:
                if not turn.done():
                    turn.set_result(lambda pred: True)

    def _screened(self, turn, stopped, pred):
        """Whether a first fold's first-round predictions ``pred`` are screened out, by the test
        the Future ``turn`` gives when its configuration's turn comes (None: no test); the
        outcome is set on the Future ``stopped``. True (stop) when the threads are closed first
        (the fit was given up)."""
        test = turn.result() if self.threads.wait_freed(turn) else (lambda pred: True)
        stopped.set_result(test is not None and bool(test(pred)))
        return stopped.result()

    def _softimpute_first(self, cfgs, folds):
        """SoftImpute's completions of the training splits of ``folds`` (and so its shrinkage,
        on the first of them), here, before the fits that read them run anywhere else."""
        self.data.imputer._softimpute_ahead(cfgs, (training_split(self.data, k) for k in folds))

    def _shared(self, cfgs):
        """The data scattered to the workers (once per fit). SoftImpute's shrinkage is chosen
        first, here, on the first fold's training split, as the in-process loop does when its
        first candidate needing SoftImpute (all are in the first round) fits its first fold."""
        if self._scattered is None:
            data = self.data
            self._softimpute_first(cfgs, [0])
            shipped = copy.copy(data.imputer)
            shipped.scheduler = None  # a worker fits where it is
            shipped._softimpute_cache = dict(data.imputer._softimpute_cache)  # its own (threads)
            self._scattered = scatter(self.client, dataclasses.replace(data, imputer=shipped))
        return self._scattered


def _fitted_when_taken(cfg, data, screen):
    for k in range(len(data.folds)):
        pred = fold_prediction((cfg, k), data, screen if k == 0 else None)
        yield pred
        if pred is None:
            return


def _taken(futures):
    """The fold predictions of ``futures`` in order (waiting for each; a failed fit's exception
    raised), up to a None (screened out)."""
    for future in futures:
        pred = future.result()
        yield pred
        if pred is None:
            return


def _raising(outcomes, screen):
    for k, outcome in enumerate(outcomes):
        if isinstance(outcome, BaseException):
            raise outcome
        first, pred = outcome
        if k == 0 and screen is not None and first is not None and screen(first):
            yield None
            return
        yield pred
