"""The cross-validation grid of ``NTKImputer``'s automatic choices: the held-out predictions of
(configuration, fold) pairs, computed in this process or on Dask workers.

A pair's predictions are a pure function of the data, the configuration and the fold
(:func:`fold_prediction`), so where they run does not change them. On Dask each pair of a round
of candidates is one task; the data (the imputer with its fitted priors and features, the matrix,
the folds) are scattered to the workers once per fit, and the predictions come back in
submission order. The one state the imputer carries from one candidate to the next, the
SoftImpute shrinkage (chosen on the first training split that needs it, then reused), is fixed in
this process before anything is sent, exactly where the in-process loop would fix it.
"""
from __future__ import annotations

import copy
import dataclasses

import numpy as np

from .fibres import fibre_mask
from .priors import parse_prior
from .scheduling import map_tasks, scatter

KERNEL_MODES = ("rows", "cols", "joint")


@dataclasses.dataclass
class FoldData:
    """What every (configuration, fold) task reads: the fitted ``imputer`` (parameters, aligned
    features, prior matrix, SoftImpute cache), ``values`` (m, n) or (m, n, d) float64 with NaN where missing,
    ``mask`` (m, n) bool of observed entries, ``folds``: (m, n) bool validation masks."""
    imputer: object
    values: np.ndarray
    mask: np.ndarray
    folds: list


def fold_prediction(pair, data: FoldData) -> np.ndarray:
    """(V,) or, for vector entries, (V, d) predictions at the V entries ``np.nonzero(data.folds[k])`` of configuration ``cfg``
    fitted on the observed entries outside fold ``k`` (``pair = (cfg, k)``)."""
    cfg, k = pair
    val = data.folds[k]
    train = data.mask & ~val
    return data.imputer._complete(np.where(fibre_mask(train, data.values), data.values, np.nan),
                                  train, cfg, np.nonzero(val))


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
    when ``client`` is None, else on the workers of that ``distributed.Client``."""

    def __init__(self, imputer, values, mask, folds, client=None):
        self.data = FoldData(imputer, values, mask, folds)
        self.client = client
        self._scattered = None

    def predictions(self, cfgs):
        """Yield ``(cfg, folds)`` for each configuration in order, ``folds`` an iterator over its
        folds' (V_k,) predictions; taking a fold whose fit failed raises that fit's exception.
        In this process a fold is fitted when taken (a candidate stops at its first failure); on
        Dask every fold of every configuration of ``cfgs`` is fitted at once, on the workers."""
        count = len(self.data.folds)
        if self.client is None:
            for cfg in cfgs:
                yield cfg, _fitted_when_taken(cfg, self.data)
            return
        pairs = [(cfg, k) for cfg in cfgs for k in range(count)]
        outcomes = map_tasks(fold_prediction, pairs, scheduler=self.client,
                             shared=self._shared(cfgs), return_exceptions=True)
        for i, cfg in enumerate(cfgs):
            yield cfg, _raising(outcomes[i * count:(i + 1) * count])

    def _shared(self, cfgs):
        """The data scattered to the workers (once per fit). SoftImpute's shrinkage is chosen
        first, here, on the first fold's training split, as the in-process loop does when its
        first candidate needing SoftImpute (all are in the first round) fits its first fold."""
        if self._scattered is None:
            data = self.data
            if any(uses_softimpute(cfg) for cfg in cfgs):
                train = data.mask & ~data.folds[0]
                data.imputer._softimpute(np.where(train, data.values, np.nan), train)
            shipped = copy.copy(data.imputer)
            shipped.scheduler = None  # a worker fits where it is
            shipped._softimpute_cache = dict(data.imputer._softimpute_cache)  # its own (threads)
            self._scattered = scatter(self.client, dataclasses.replace(data, imputer=shipped))
        return self._scattered


def _fitted_when_taken(cfg, data):
    for k in range(len(data.folds)):
        yield fold_prediction((cfg, k), data)


def _raising(outcomes):
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
        yield outcome
