"""Feature priors: the input vector each row (or column) of a matrix gives the network.

A prior is an (n_items, d) float array, one row per matrix row (or column). Kinds, written as
spec strings (:func:`parse_prior`):

* ``"onehot"``: e_i, the identity (the items only know who they are);
* ``"features"``: user features (array or DataFrame aligned by labels), columns standardised;
* ``"profile"``: the item's observed values, gaps filled by the column means of the matrix
  (plus the item's own offset), centred per item, each coordinate standardised;
  ``"profile:unscaled"``: the same with each coordinate centred only (a coordinate weighs by its
  spread over the items);
* ``"lowrank:k"``: rank-k embeddings U_k S_k^(1/2) from a quick low-rank fit of the observed
  entries (a few hard-impute SVD rounds on the column-mean-filled, centred matrix);
* ``"BASE+identity:w"`` (BASE one of the above but onehot): [F / |F|, w e_i], rows renormalised,
  the concatenation with a weighted identity used by the reference drug-screening code;
* ``"profile@softimpute"``, ``"lowrank:k@matrix"`` ...: a data-derived prior computed from a
  *completed* matrix instead of the observed entries (the reference code's "mixed priors"):
  ``@softimpute``, the built-in low-rank completion (:mod:`completion.softimpute`),
  ``@matrix``, a completed matrix the user supplies, or ``@stack``, the combination that
  ``mode="auto"`` chose among the fits with the other priors (chosen by auto only, see
  :class:`completion.matrix.NTKImputer`). The caller passes that matrix (and an all-True mask)
  to :func:`build_prior`; such priors are not refined.

Every prior is returned with rows scaled to unit mean squared norm (unit norm for ``onehot`` and
``+identity`` priors), so that kernels with a homogeneous activation see a fixed input scale.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from .fibres import fibre_mask, unfold
from .softimpute import column_means

__all__ = ["PriorSpec", "parse_prior", "build_prior", "align_features", "profile_prior",
           "lowrank_prior", "DATA_DERIVED", "SOURCES"]

_BASES = ("onehot", "features", "profile", "lowrank")
DATA_DERIVED = ("profile", "lowrank")  # priors computed from the matrix values themselves
SOURCES = ("softimpute", "matrix", "stack")  # completed matrices a data-derived prior may be computed from
_SPEC = re.compile(r"^(onehot|features|profile(?::unscaled)?|lowrank(?::(\d+))?)"
                   r"(?:\+identity(?::([0-9.eE+-]+))?)?(?:@(\w+))?$")


@dataclass(frozen=True)
class PriorSpec:
    """A parsed prior: ``base`` in {onehot, features, profile, lowrank}, ``rank`` (lowrank only),
    ``identity_weight`` (None = no identity block), ``source`` (None = the observed entries,
    else one of :data:`SOURCES`), ``scaled`` (profile only: False = coordinates centred, not
    standardised)."""
    base: str
    rank: int | None = None
    identity_weight: float | None = None
    source: str | None = None
    scaled: bool = True

    def __str__(self):
        text = self.base + (f":{self.rank}" if self.rank is not None else "")
        text += "" if self.scaled else ":unscaled"
        if self.identity_weight is not None:
            text += f"+identity:{self.identity_weight:g}"
        return text + (f"@{self.source}" if self.source else "")

    @property
    def data_derived(self):
        """Computed from the observed entries (and so refined on the completed matrix)."""
        return self.base in DATA_DERIVED and self.source is None


def parse_prior(spec) -> PriorSpec:
    """``"onehot"``, ``"features"``, ``"profile"``, ``"profile:unscaled"``, ``"lowrank:10"``,
    ``"features+identity:0.5"`` (identity weight defaults to 1) -> :class:`PriorSpec`; a
    PriorSpec is returned as is."""
    if isinstance(spec, PriorSpec):
        return spec
    m = _SPEC.match(str(spec).strip().lower().replace(" ", ""))
    if not m:
        raise ValueError(f"cannot read prior {spec!r}; write one of onehot, features, profile, "
                         "profile:unscaled, lowrank:K, optionally followed by +identity:W (e.g. "
                         "'features+identity:0.5') and, for profile and lowrank, by @softimpute "
                         "or @matrix")
    base = m.group(1).split(":")[0]
    rank = None
    if base == "lowrank":
        rank = int(m.group(2) or 10)
        if rank < 1:
            raise ValueError(f"lowrank rank must be >= 1, got {rank}")
    weight = None
    if "+identity" in m.group(0):
        if base == "onehot":
            raise ValueError("'onehot+identity' is just onehot; drop the +identity part")
        weight = float(m.group(3)) if m.group(3) else 1.0
        if not np.isfinite(weight) or weight < 0:
            raise ValueError(f"identity weight must be a finite number >= 0, got {m.group(3)}")
    source = m.group(4)
    scaled = m.group(1) != "profile:unscaled"
    if source is not None:
        if source not in SOURCES:
            raise ValueError(f"prior {spec!r}: unknown source @{source}; use one of "
                             f"{['@' + s for s in SOURCES]}")
        if base not in DATA_DERIVED:
            raise ValueError(f"prior {spec!r}: only profile and lowrank priors take a @source")
    return PriorSpec(base, rank, weight, source, scaled)


def align_features(features, labels, what="row"):
    """Features as an (len(labels), d) float array in the order of ``labels``.

    ``features``: a DataFrame indexed by labels (non-numeric columns are one-hot encoded), or an
    array with one row per item in matrix order. Raises ValueError listing missing/extra labels,
    and naming the first NaN (label and feature column).
    """
    import pandas as pd

    if isinstance(features, pd.DataFrame):
        index = features.index.map(str)
        wanted = pd.Index([str(lab) for lab in labels])
        if index.has_duplicates:
            dup = index[index.duplicated()].unique()[:10]
            raise ValueError(f"{what} features have duplicated labels: {list(dup)}")
        missing = wanted.difference(index, sort=False)
        extra = index.difference(wanted, sort=False)
        if len(missing):
            raise ValueError(f"{what} features are missing {len(missing)} {what} label(s) of the "
                             f"matrix: {_listing(missing)}" + (f"; and have {len(extra)} label(s) "
                             f"not in the matrix: {_listing(extra)}" if len(extra) else ""))
        if len(extra):
            raise ValueError(f"{what} features have {len(extra)} label(s) that are not {what}s of "
                             f"the matrix: {_listing(extra)}")
        frame = features.copy()
        frame.index = index
        frame = frame.loc[wanted]
        non_numeric = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
        if non_numeric:
            for col in non_numeric:
                if frame[col].isna().any():
                    lab = frame.index[frame[col].isna().to_numpy()][0]
                    raise ValueError(f"{what} features contain a missing value at {what} {lab!r}, "
                                     f"feature {col!r}")
            frame = pd.get_dummies(frame, columns=non_numeric, dtype=float)
        values = frame.to_numpy(dtype=np.float64)
        names = list(frame.columns)
    else:
        values = np.asarray(features, dtype=np.float64)
        if values.ndim != 2:
            raise ValueError(f"{what} features must be 2-D (items x features), got shape {values.shape}")
        if values.shape[0] != len(labels):
            raise ValueError(f"{what} features have {values.shape[0]} rows but the matrix has "
                             f"{len(labels)} {what}s")
        names = list(range(values.shape[1]))
    if values.shape[1] == 0:
        raise ValueError(f"{what} features have no columns")
    bad = ~np.isfinite(values)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(f"{what} features contain NaN or inf at {what} {labels[i]!r}, feature "
                         f"{names[j]!r}")
    return values


def _listing(index, limit=10):
    items = [str(v) for v in list(index)[:limit]]
    return ", ".join(items) + (f", ... ({len(index) - limit} more)" if len(index) > limit else "")


def _standardise(F):
    """Centre each column and divide by its standard deviation (constant columns become 0)."""
    F = F - F.mean(0)
    sd = F.std(0)
    return F / np.where(sd > 0, sd, 1.0)


def _unit_mean_square(F):
    scale = np.sqrt(np.mean(np.sum(F * F, axis=1)))
    return F / scale if scale > 0 else F


def profile_prior(X, mask, scaled=True):
    """(m, n) values with (m, n) bool mask -> (m, n) profiles (or (m, n, k) values with an
    (m, n, 1) mask -> (m, n, k), each feature's profiles): row i's values, each gap filled
    by its column's mean shifted by the row's mean offset from the column means (the additive
    row + column fit of the observed entries), each profile's own mean removed (rows compare by
    the shape of their profile, not by their level), then every coordinate standardised over
    the rows (``scaled=False``: centred only). A coordinate with no observed entry is 0 (its column would be rounding noise,
    which standardising blows up to unit variance); :class:`completion.prior_grams.ProfileGram`
    gives this prior's inner products from the observed entries alone."""
    counts = mask.sum(0)
    col_mean = column_means(X, mask)
    rcounts = mask.sum(1)
    offset = np.where(mask, X - col_mean, 0.0).sum(1) / np.maximum(rcounts, 1)
    F = np.where(mask, X, col_mean + offset[:, None])
    F = F - F.mean(1, keepdims=True)
    return np.where(counts > 0, _standardise(F) if scaled else F - F.mean(0), 0.0)


def lowrank_prior(X, mask, rank, n_rounds=5):
    """(m, n) values and mask -> (m, rank) embeddings U_k S_k^(1/2) of a hard-impute fit.

    Start from the column-mean-filled, column-centred matrix; each round replaces the missing
    entries by the rank-k reconstruction of the previous SVD. ``rank`` is capped at min(m, n).
    """
    col_mean = column_means(X, mask)
    R = np.where(mask, X - col_mean, 0.0)
    k = min(rank, *R.shape)
    # torch, not numpy: OpenBLAS after torch's OpenMP kernels was measured 5-20x slower here
    Rt, Mt = torch.from_numpy(R), torch.from_numpy(np.asarray(mask))
    filled = Rt
    for _ in range(n_rounds):
        U, s, Vt = torch.linalg.svd(filled, full_matrices=False)
        filled = torch.where(Mt, Rt, (U[:, :k] * s[:k]) @ Vt[:k])
    return (U[:, :k] * s[:k].sqrt()).numpy()


def build_prior(spec, X, mask, features=None, labels=None, what="row"):
    """The prior of the rows of (m, n) ``X`` (transpose X and mask for columns): (m, d) array.

    ``spec``: string or :class:`PriorSpec`; ``mask``: (m, n), True = observed; ``features``/
    ``labels`` for the ``features`` base (labels in matrix order). See the module docstring for
    each kind. ``X`` may be (m, n, k), vector entries (:mod:`completion.fibres`): a row's
    ``profile`` is then its k per-feature profiles side by side (n * k coordinates, each
    standardised, so the Gram matrix of the rows is the sum of the k per-feature profile Gram
    matrices, up to the overall scale), and ``lowrank`` is computed from the (m, n * k)
    unfolded matrix.
    """
    spec = parse_prior(spec)
    m = X.shape[0]
    if spec.base == "onehot":
        return np.eye(m)
    if spec.base == "features":
        if features is None:
            raise ValueError(f"prior {str(spec)!r} for the {what}s needs {what}_features")
        F = _standardise(align_features(features, labels if labels is not None else range(m), what))
    elif spec.base == "profile":
        F = profile_prior(X, fibre_mask(mask, X), spec.scaled).reshape(m, -1)
    else:
        F = lowrank_prior(*unfold(X, mask), spec.rank)
    if spec.identity_weight is None:
        return _unit_mean_square(F)
    norms = np.linalg.norm(F, axis=1, keepdims=True)
    F = F / np.where(norms > 0, norms, 1.0)
    Z = np.hstack([F, spec.identity_weight * np.eye(m)])
    return Z / np.linalg.norm(Z, axis=1, keepdims=True).clip(min=1e-300)
