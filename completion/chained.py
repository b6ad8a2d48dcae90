"""Chained (MICE-style) NTK regression: each column regressed on the other columns' estimates.

Rows mode with a per-column prior. Column j is a regression over the rows where it is observed;
the input of row i is its vector of the *other* columns' current estimates (observed values,
else the previous estimate), each column standardised over the rows and the whole scaled to
unit mean squared norm, so that the very entries being predicted never enter their own kernel.
The kernel ridge regression (NTK of a fully connected ReLU net) of the residual (values minus
the additive baseline) predicts the missing rows of column j, which immediately replace the
previous estimate (Gauss-Seidel order, as scikit-learn's IterativeImputer and MissForest do);
a round visits every column with a missing entry, and ``rounds`` rounds are run.

Each column's ridge (and, given several kernels, its kernel: ``NTKImputer`` offers the NTK with
and without a linear skip, :class:`LinearSkip`) is chosen before the first round by exact
leave-one-out error (eigendecomposition of its kernel on at most ``LOO_ROWS`` of its observed
rows, inputs from the baseline-filled matrix) over :data:`RIDGE_GRID`, and kept for every round:
the regressor tunes itself, as BayesianRidge does inside IterativeImputer. A row-order prior
(``neighbours``): the input of row i may also hold column j's own current values at rows i - 1
and i + 1 (never row i's own value), for matrices whose rows are a sequence (a time series, a
table sorted by some key); with ``neighbours="loo"`` the inputs with and without them are chosen
once for the whole matrix, by the least leave-one-out error summed over the first tuned columns
(``NEIGHBOUR_PROBE_ROWS`` LOO rows in all; each column's best over kernels and ridges, relative
to its mean square). With more than
``LOO_COLUMNS`` columns to fill, a random ``LOO_COLUMNS`` of them are tuned and the others take
the kernel chosen most often and the median ridge of the columns that chose it.
At most ``MAX_TRAIN_ROWS`` observed rows (a random subset) train each column's regression: a time
cap. Kernel blocks are computed from the inputs without column j (no m x m matrix is stored).

The cols orientation is the same on the transposed matrix (:func:`chained_fit` with ``axis=1``).
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.linalg import blas

from models.device import check_fits, limited_blas_threads, parse_bytes

from .softimpute import column_means

__all__ = ["chained_fit", "chained_flops", "loo_ridge", "loo_errors", "LinearSkip", "RIDGE_GRID",
           "MAX_TRAIN_ROWS", "LOO_ROWS", "LOO_COLUMNS", "NEIGHBOUR_WEIGHT",
           "NEIGHBOUR_PROBE_ROWS"]

RIDGE_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)  # relative to the mean kernel diagonal
MAX_TRAIN_ROWS = 1000
LOO_ROWS = 300
LOO_COLUMNS = 48
# each neighbouring-row input has this root mean square, the other columns together 1 (not tuned:
# 0.25 / 0.5 / 1 gave about the same held-out error on the two sequences tried, RESULTS.md)
NEIGHBOUR_WEIGHT = 0.5
# the input set (with or without the neighbours) is chosen on the first tuned columns whose
# leave-one-out rows number at least this many together (all of them if fewer)
NEIGHBOUR_PROBE_ROWS = 2400
# the kernel map (from float64 Gram matrices, rounded once: the same float32 kernel whatever the
# thread count), the leave-one-out eigendecompositions and the Cholesky factors are float32
# (digits' rows-chained fit, 2 rounds on one thread: 11.3 s -> 8.3 s, held-out RMSE the same to
# 4 digits; benchmarks/RESULTS.md); each column's system is solved by its float32 factor and
# float64 refinement steps (_solve_lower): at most REFINE_STEPS, until the correction is below
# REFINE_TOLERANCE of x; from REFINE_MIN_ROWS training rows on (below, a float64 factor is
# faster: one thread, 0.5 ms at 200 rows against 0.8 refined; about even at 600)
KERNEL_DTYPE = torch.float32
REFINE_STEPS = 5
REFINE_TOLERANCE = 1e-11
REFINE_MIN_ROWS = 500
KEPT_GRAM_RATIO = 8.0
KEPT_GRAM_BYTES = 2**28


def _standardised_column(z):
    sd = z.std()
    return (z - z.mean()) / (sd if sd > 0 else 1.0)


def loo_errors(K, y, grid=RIDGE_GRID):
    """(len(grid),) mean squared leave-one-out errors of kernel ridge regression on
    (K (t, t) tensor, y (t,) tensor) for each ridge of ``grid`` (relative to mean(diag K)):
    with K = V diag(s) V^T and H = (K + lam I)^{-1}, the LOO residual of point i is
    (H y)_i / H_ii."""
    s, V = torch.linalg.eigh(K)
    s = s.clamp(min=0.0)
    mean_diag = float(K.diagonal().mean())
    Vy = V.T @ y
    V2 = V * V
    errors = []
    for r in grid:
        inv = 1.0 / (s + r * mean_diag)
        errors.append(float(((V @ (Vy * inv)) / (V2 @ inv)).square().mean()))
    return np.array(errors)


def loo_ridge(K, y, grid=RIDGE_GRID):
    """The ridge of ``grid`` with the least leave-one-out error (:func:`loo_errors`)."""
    return grid[int(np.argmin(loo_errors(K, y, grid)))]


class LinearSkip:
    """``kernel`` plus the linear kernel c <x, y>, c the kernel's value at a unit input with
    itself: the tangent kernel of the same net with a linear skip connection from the input to
    the read-out, the two parts equally weighted at unit norm (a column that depends on the
    others almost linearly is fitted by the skip at no cost in smoothness)."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.weight = float(kernel.ntk_from_gram(torch.ones(()), 1.0, 1.0))

    def ntk_from_gram(self, gram, sq_norms_x, sq_norms_y, *, symmetric=False):
        """``symmetric``: the NTK part from ``gram``'s lower triangle, mirrored (``"lower"``:
        not mirrored, see ``FullyConnectedNTK.ntk_from_gram``), plus c ``gram``."""
        K = self.kernel.ntk_from_gram(gram, sq_norms_x, sq_norms_y, symmetric=symmetric)
        return K.add_(gram, alpha=self.weight)

    def __repr__(self):
        return f"LinearSkip({self.kernel!r})"


def chained_flops(shape, mask, rounds, axis=0):
    """Rough flop count of :func:`chained_fit` (used by ``mode='auto'`` to skip it when too
    slow): per column and round, a Cholesky factor of its training rows, the kernel blocks and
    the Gram matrices (the kept one's update: :func:`kept_gram`); plus one LOO
    eigendecomposition per column."""
    m, n = shape if axis == 0 else shape[::-1]
    mask = mask if axis == 0 else mask.T
    missing_cols = int((~mask).any(0).sum())
    t = min(m, MAX_TRAIN_ROWS)
    gram = KEPT_GRAM_RATIO * m * m if kept_gram(m, n, t) else 2 * t * m * n
    per = t**3 / 3 + gram + 30 * t * m + 3e7  # + Python overhead of a column, as flops
    return missing_cols * rounds * per + min(missing_cols, LOO_COLUMNS) * 10 * min(t, LOO_ROWS) ** 3


def chained_fit(kernel, values, mask, baseline, rounds, ridge="loo", axis=0, random_state=0,
                memory_budget=None, max_train_rows=MAX_TRAIN_ROWS, neighbours=False, say=None,
                screen=None, stop=None, offsets="baseline"):
    """Completed (m, n) matrix (baseline + prediction at missing entries, observed values kept).

    ``kernel``: e.g. :class:`models.ntk.FullyConnectedNTK` (anything with ``ntk_from_gram``),
    or a sequence of them, one chosen per column by leave-one-out with the ridge; ``values``
    (m, n) with anything where unobserved; ``mask`` (m, n) bool, True = observed; ``baseline``
    (m, n) additive fit (the start, and with ``offsets`` "baseline" the offset of every
    regression); ``rounds`` >= 1;
    ``ridge``: 'loo' (per column, module docstring) or a number relative to the mean kernel
    diagonal of the column's training rows; ``axis`` 0 regresses columns over rows, 1 rows over
    columns; ``max_train_rows``: at most this many observed rows (a random subset) train each
    column; ``neighbours``: False, True or "loo" (the row-order prior, module docstring);
    ``say``: optional callable given a line on the neighbours choice; ``screen``: optional test
    of the (m, n) estimates after the first of several rounds: when it returns True the fit
    stops there and returns None; ``stop``: optional ``threading.Event``, None is returned at
    the next column once it is set; ``offsets``: "baseline" (each column regresses its values
    minus ``baseline``) or "means" (minus the column's observed mean: the baseline's row effect
    holds the regressed value where it is observed and not where it is predicted, a leak of
    1 / (the row's observed count), large on narrow tables). Refused before any work when the
    inputs and kernel blocks exceed ``memory_budget``.
    """
    if axis == 1:
        Z = chained_fit(kernel, values.T, mask.T, baseline.T, rounds, ridge, 0, random_state,
                        memory_budget, max_train_rows, neighbours, say,
                        screen and (lambda Z: screen(Z.T)), stop, offsets)
        return None if Z is None else Z.T
    kernels = list(kernel) if isinstance(kernel, (list, tuple)) else [kernel]
    sets = (False, True) if neighbours == "loo" else (bool(neighbours),)
    cands = [(kern, nb) for nb in sets for kern in kernels]
    m, n = values.shape
    t = min(m, max_train_rows)
    kept = kept_gram(m, n, t)
    check_fits(8 * (2 * m * n + 4 * t * m + kept * m * m), parse_bytes(memory_budget),
               f"chained fit ({m} x {n} inputs, {t} x {m} kernel blocks)",
               "Use mode 'rows' or 'cols', or raise memory_budget.")
    rng = np.random.default_rng(random_state)
    Z = np.where(mask, values, baseline)
    scale = max(n - 1, 1) ** -0.5
    F = torch.from_numpy(np.stack([_standardised_column(Z[:, j]) for j in range(n)], 1)) * scale
    grams = _InputGrams(F, kept)
    todo = np.flatnonzero((~mask).any(0) & mask.any(0))
    grid = RIDGE_GRID if ridge == "loo" else (float(ridge),)
    if offsets == "means":  # column means of the observed values, for every row
        offset = np.broadcast_to(column_means(values, mask), values.shape)
    elif offsets == "baseline":
        offset = baseline
    else:
        raise ValueError(f"offsets must be 'baseline' or 'means', got {offsets!r}")
    choices = _loo_choices(cands, grid, grams, values, mask, offset, todo, rng, say) \
        if len(cands) * len(grid) > 1 else dict.fromkeys(todo.tolist(), (0, grid[0]))
    with limited_blas_threads(1):  # the residuals of _solve_lower: small calls
        for rnd in range(rounds):
            if rnd == 1 and screen is not None and screen(Z):
                return None
            if rnd:
                grams.refresh()
            for j in todo:
                if stop is not None and stop.is_set():
                    return None
                obs, miss = np.flatnonzero(mask[:, j]), np.flatnonzero(~mask[:, j])
                if obs.size > max_train_rows:
                    obs = np.sort(rng.choice(obs, max_train_rows, replace=False))
                which, lam = choices[j]
                A, K_mo = _kernel_blocks(*cands[which], grams, j, obs, miss)
                A.diagonal().add_(lam * float(A.diagonal().mean()))
                alpha = _solve_lower(A, torch.from_numpy(values[obs, j] - offset[obs, j]))
                if alpha is None:
                    raise ValueError(f"chained fit: the kernel of column {j} plus ridge {lam:g} "
                                     "is not positive definite; increase ridge")
                Z[miss, j] = (K_mo @ alpha.to(K_mo.dtype)).numpy() + offset[miss, j]
                grams.set_column(j, torch.from_numpy(_standardised_column(Z[:, j])) * scale)
        return Z


def _solve_lower(A, y):
    """(t,) solution of A x = y for the symmetric positive definite (t, t) float32 tensor ``A``
    given by its lower triangle (the strict upper one is not read), or None when A is not
    positive definite: its float32 Cholesky factor with iterative refinement in float64
    (residual y - A x from A's lower triangle), so that x is A's solution to float64 accuracy
    whatever the thread count (a float32 solve's rounding, amplified by A's condition number,
    would change x by about 1e-4 of it from one thread count to another). The correction
    shrinks by about cond(A) x 6e-8 a step (1e-4 on digits' columns), and the steps stop when
    it is below REFINE_TOLERANCE of x; after REFINE_STEPS steps without getting there, or when
    float32 cannot factor A, the float64 factor solves instead, as it does below
    REFINE_MIN_ROWS rows."""
    A64 = A.to(torch.float64)
    Ad = A64.numpy().T  # column-major view: A's lower triangle is its upper one
    L32, info = torch.linalg.cholesky_ex(A.to(torch.float32)) if len(A) >= REFINE_MIN_ROWS \
        else (None, 1)
    if int(info) == 0:
        x = torch.cholesky_solve(y[:, None].to(torch.float32), L32)[:, 0].to(torch.float64)
        for _ in range(REFINE_STEPS):
            r = y.numpy() - blas.dsymv(1.0, Ad, x.numpy(), lower=0)
            dx = torch.cholesky_solve(torch.from_numpy(r)[:, None].to(torch.float32), L32)[:, 0]
            x += dx.to(torch.float64)
            if float(dx.abs().max()) <= REFINE_TOLERANCE * float(x.abs().max()):
                return x
    L, info = torch.linalg.cholesky_ex(A64)
    return torch.cholesky_solve(y[:, None], L)[:, 0] if int(info) == 0 else None


class _InputGrams:
    """Gram matrices of column j's regression inputs (:func:`_inputs`) between rows, from the
    (m, n) float64 tensor ``F`` of standardised estimates, whose columns :meth:`set_column`
    replaces. With ``kept`` the whole (m, m) Gram matrix F F^T is kept (KERNEL_DTYPE, computed
    in float64 at every :meth:`refresh`) and updated by two rank-one terms when a column
    changes: the inputs without column j then cost a gather and a rank-one correction instead
    of a product over the other n - 1 columns (GDSC's 988 x 265 rows-chained fit,
    :func:`kept_gram`)."""

    def __init__(self, F, kept):
        self.F, self.kept, self.G = F, kept, None
        self.refresh()

    def refresh(self):
        """The kept Gram matrix computed afresh from F (no rounding carried over)."""
        if self.kept:
            self.G = (self.F @ self.F.T).to(KERNEL_DTYPE)

    def set_column(self, j, column):
        """Column j of F becomes ``column`` ((m,) float64 tensor)."""
        if self.kept:
            old, new = self.F[:, j].to(KERNEL_DTYPE), column.to(KERNEL_DTYPE)
            self.G.addr_(old, old, alpha=-1.0).addr_(new, new)
        self.F[:, j] = column

    def blocks(self, j, neighbours, rows_a, rows_b=None):
        """(gram_aa, sq_a, gram_ba, sq_b) tensors: the inputs' Gram matrix between ``rows_a``
        (int array, t) and themselves ((t, t)), their squared norms ((t,)), and the same
        between ``rows_b`` and ``rows_a`` ((len(rows_b), t), (len(rows_b),); None without
        ``rows_b``)."""
        if not self.kept:
            Fa = _inputs(self.F, j, rows_a, neighbours)
            Fb = None if rows_b is None else _inputs(self.F, j, rows_b, neighbours)
            return (Fa @ Fa.T, (Fa * Fa).sum(1),
                    None if Fb is None else Fb @ Fa.T, None if Fb is None else (Fb * Fb).sum(1))
        own = self.F[:, j].to(KERNEL_DTYPE)  # in F F^T, not in the inputs
        near = None  # the neighbour coordinates: in the inputs, not in F F^T
        if neighbours:
            near = _neighbour_inputs(self.F, j, torch.arange(len(own))).to(KERNEL_DTYPE)

        def gram(rows, ia):
            ib = torch.from_numpy(rows)
            g = self.G.index_select(0, ib).index_select(1, ia).addr_(own[ib], own[ia], alpha=-1.0)
            return g if near is None else g.addmm_(near[ib], near[ia].T)
        ia = torch.from_numpy(rows_a)
        g_aa = gram(rows_a, ia)
        # the norms from g_aa's own diagonal: a row's cosine with itself must be 1 to the bit
        # (the arc-cosine's slope is infinite there)
        sq_a = g_aa.diagonal().clone()
        if rows_b is None:
            return g_aa, sq_a, None, None
        ib = torch.from_numpy(rows_b)
        sq_b = self.G.diagonal()[ib] - own[ib] ** 2
        if near is not None:
            sq_b += (near[ib] ** 2).sum(1)
        return g_aa, sq_a, gram(rows_b, ia), sq_b


def kept_gram(m, n, t):
    """Whether a chained fit of ``m`` rows and ``n`` columns (at most ``t`` training rows per
    column) keeps the whole Gram matrix (:class:`_InputGrams`): where the product over the other
    columns (2 n t m flops a column) costs more than KEPT_GRAM_RATIO x the m x m update."""
    return 2.0 * n * t * m > KEPT_GRAM_RATIO * m * m and 8 * m * m <= KEPT_GRAM_BYTES


def _inputs(F, j, rows, neighbours):
    """Inputs of column j's regression at ``rows`` (int array): F (m, n) without column j,
    (len(rows), n - 1); with ``neighbours`` the two coordinates of :func:`_neighbour_inputs`
    more."""
    keep = torch.ones(F.shape[1], dtype=torch.bool)
    keep[j] = False
    idx = torch.from_numpy(rows)
    inputs = F[idx][:, keep]
    return torch.cat([inputs, _neighbour_inputs(F, j, idx)], 1) if neighbours else inputs


def _neighbour_inputs(F, j, idx):
    """(len(idx), 2): column j's current values at the previous and the next row of each row of
    ``idx`` (int tensor; the first row's previous is its next, the last row's next is its
    previous: never the row's own value), standardised and scaled by NEIGHBOUR_WEIGHT."""
    last = F.shape[0] - 1
    # F's columns have root mean square 1/sqrt(n - 1): column j rescaled to NEIGHBOUR_WEIGHT
    own = F[:, j] * (NEIGHBOUR_WEIGHT * max(F.shape[1] - 1, 1) ** 0.5)
    before = own[torch.where(idx > 0, idx - 1, idx + 1)]
    after = own[torch.where(idx < last, idx + 1, idx - 1)]
    return torch.stack([before, after], 1)


def _kernel_blocks(kernel, neighbours, grams, j, rows_a, rows_b=None):
    """NTK between rows ``rows_a`` (and ``rows_b``) on column j's inputs (:func:`_inputs`, their
    Gram matrices from ``grams``, an :class:`_InputGrams`): (K_aa, K_ba) tensors (K_ba None
    without ``rows_b``); only K_aa's lower triangle is computed (its strict upper triangle is
    unspecified: Cholesky and eigh read the lower)."""
    dt = KERNEL_DTYPE
    g_aa, sq_a, g_ba, sq_b = grams.blocks(j, neighbours, rows_a, rows_b)
    sq_a = sq_a.to(dt)
    K_aa = kernel.ntk_from_gram(g_aa.to(dt), sq_a, sq_a, symmetric="lower")
    if rows_b is None:
        return K_aa, None
    return K_aa, kernel.ntk_from_gram(g_ba.to(dt), sq_b.to(dt), sq_a)


def _loo_choices(cands, grid, grams, values, mask, offset, todo, rng, say=None):
    """{column: (candidate index, ridge)} with the least leave-one-out error on at most LOO_ROWS
    rows, for at most LOO_COLUMNS columns of ``todo``, among ``cands`` ((kernel, neighbours)
    pairs) of one input set (neighbours or not): the set with the least LOO error summed over
    the first of these columns that hold NEIGHBOUR_PROBE_ROWS LOO rows together (each column's
    best, relative to its mean square). The other columns get the candidate chosen most often
    and the median ridge (as a grid position) of the columns that chose it."""
    tuned = todo if todo.size <= LOO_COLUMNS else rng.choice(todo, LOO_COLUMNS, replace=False)
    sets = sorted({nb for _, nb in cands})
    members = [[c for c, (_, nb) in enumerate(cands) if nb == s] for s in sets]

    def least_total(scored):  # -> (per set: summed best errors), candidates of the best set
        totals = [sum(float(e[idx].min()) for e in scored) for idx in members]
        return totals, members[int(np.argmin(totals))]

    errors, allowed, rows = {}, None, 0
    for j in tuned:
        if allowed is None and len(sets) > 1 and rows >= NEIGHBOUR_PROBE_ROWS:
            # the input set is chosen: the other columns score its candidates only
            probed, (totals, allowed) = len(errors), least_total(errors.values())
        obs = np.flatnonzero(mask[:, j])
        sub = np.sort(rng.choice(obs, min(obs.size, LOO_ROWS), replace=False))
        y = torch.from_numpy(values[sub, j] - offset[sub, j]).to(KERNEL_DTYPE)
        rows += sub.size
        errors[int(j)] = np.stack([
            loo_errors(_kernel_blocks(*cand, grams, j, sub)[0], y, grid)
            if allowed is None or c in allowed else np.full(len(grid), np.inf)
            for c, cand in enumerate(cands)]) / max(float(y.square().mean()), 1e-300)
    if allowed is None:
        probed, (totals, allowed) = len(errors), least_total(errors.values())
    if say is not None and len(sets) > 1 and errors:
        say(f"neighbour inputs {'taken' if allowed == members[1] else 'declined'} (relative "
            f"LOO error on {probed} regressions: without {totals[0] / probed:.4f}, with "
            f"{totals[1] / probed:.4f})")
    out = {}
    for j, e in errors.items():
        which, r = np.unravel_index(int(np.argmin(e[allowed])), e[allowed].shape)
        out[j] = (allowed[which], grid[r])
    if out:
        which = int(np.bincount([k for k, _ in out.values()]).argmax())
        picks = [grid.index(r) for k, r in out.values() if k == which]
        rest = (which, grid[int(np.median(picks))])
        out.update({int(j): rest for j in todo if int(j) not in out})
    return out
