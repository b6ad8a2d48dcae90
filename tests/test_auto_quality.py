"""What mode='auto' adds to the chained fits and to the search: the per-column choice between
the NTK and the NTK with a linear skip (against brute-force leave-one-out), the screening of
far-behind refined candidates (it never changes the choice of the unscreened search), and a
choice that reproduces with a fixed random_state."""
import logging

import numpy as np
import pytest
import torch

import completion.matrix as matrix_module
from completion.chained import LinearSkip, chained_fit, loo_errors, loo_ridge
from completion.matrix import NTKImputer, additive_baseline
from models.ntk import FullyConnectedNTK


def _brute_force_loo(K, y, ridge):
    """Mean squared error of refitting kernel ridge regression without each point in turn."""
    lam = ridge * np.mean(np.diag(K))
    errs = []
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        a = np.linalg.solve(K[np.ix_(keep, keep)] + lam * np.eye(len(y) - 1), y[keep])
        errs.append(K[i, keep] @ a - y[i])
    return float(np.mean(np.square(errs)))


@pytest.mark.parametrize("seed, depth, activation", [(0, 2, np.sin), (2, 1, np.tanh)])
def test_loo_errors_and_ridge_match_refitting_without_each_point(seed, depth, activation):
    rng = np.random.default_rng(seed)
    F = rng.standard_normal((30, 5))
    y = activation(F[:, 0]) + 0.2 * rng.standard_normal(30)
    K = FullyConnectedNTK(depth).ntk(F, device="cpu")
    grid = (0.003, 0.1, 1.0, 3.0)
    expected = [_brute_force_loo(K, y, r) for r in grid]
    Kt, yt = torch.from_numpy(K), torch.from_numpy(y)
    np.testing.assert_allclose(loo_errors(Kt, yt, grid), expected, rtol=1e-8)
    assert loo_ridge(Kt, yt, grid) == grid[int(np.argmin(expected))]


def test_linear_skip_adds_a_linear_kernel_with_the_ntk_diagonal_at_unit_norm():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((7, 3))
    ntk = FullyConnectedNTK(1)
    skip = LinearSkip(ntk)
    # depth-1 ReLU NTK, weight variance 2, no bias: Theta(x, x) = 4 |x|^2 (arc-cosine closed form)
    assert skip.weight == pytest.approx(4.0, rel=1e-12)
    G = torch.from_numpy(X @ X.T)
    sq = torch.from_numpy((X * X).sum(1))
    got = skip.ntk_from_gram(G.clone(), sq, sq).numpy()
    # (1e-8: on the diagonal <x, x> and |x|^2 are summed in different orders, and arccos
    # near correlation 1 magnifies that rounding)
    np.testing.assert_allclose(got, ntk.ntk(X, device="cpu") + 4.0 * X @ X.T, rtol=1e-8)


def test_chained_kernel_choice_is_the_one_with_least_brute_force_loo_error():
    """One column to fill (the others complete), fewer rows than LOO_ROWS: the chained fit with
    two kernels must equal the fit with the kernel and ridge that brute-force LOO prefers."""
    rng = np.random.default_rng(2)
    m = 40
    Z = rng.standard_normal((m, 4))
    chosen = []
    for target in (Z[:, :3] @ np.array([1.0, -0.5, 0.3]),
                   np.sin(2 * Z[:, 0]) * Z[:, 1]):
        X = np.column_stack([Z[:, :3], target])
        mask = np.ones_like(X, dtype=bool)
        mask[rng.choice(m, 8, replace=False), 3] = False
        Xn = np.where(mask, X, np.nan)
        base = additive_baseline(Xn, mask)
        ntk = FullyConnectedNTK(1)
        kernels = (ntk, LinearSkip(ntk))
        got = chained_fit(kernels, Xn, mask, base, rounds=1, ridge="loo")
        # the oracle: inputs written out, every (kernel, ridge) scored by refitting
        obs = np.flatnonzero(mask[:, 3])
        F = np.where(mask, X, base)[:, :3]
        F = (F - F.mean(0)) / F.std(0) / np.sqrt(3)
        y = X[obs, 3] - base[obs, 3]
        from completion.chained import RIDGE_GRID
        best = min(((k, r) for k in kernels for r in RIDGE_GRID),
                   key=lambda kr: _brute_force_loo(_gram_kernel(kr[0], F[obs], F[obs]), y, kr[1]))
        expected = chained_fit(best[0], Xn, mask, base, rounds=1, ridge=best[1])
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-10)
        chosen.append(best[0])
    # the linear column is fitted with the skip, the nonlinear one without
    assert isinstance(chosen[0], LinearSkip) and not isinstance(chosen[1], LinearSkip)


def _gram_kernel(kernel, A, B):
    G = torch.from_numpy(A @ B.T)
    return kernel.ntk_from_gram(G, torch.from_numpy((A * A).sum(1)),
                                torch.from_numpy((B * B).sum(1))).numpy()


def _table(seed=0, m=120):
    """A table whose columns depend nonlinearly on three latent factors (chained fits win)."""
    rng = np.random.default_rng(seed)
    L = rng.standard_normal((m, 3))
    X = np.column_stack([L, np.sin(L[:, 0]) + L[:, 1] * L[:, 2], np.tanh(2 * L[:, 1]) - L[:, 0],
                         L[:, 2] ** 2 + 0.5 * L[:, 0], np.cos(L[:, 1]) * L[:, 0]])
    X += 0.05 * rng.standard_normal(X.shape)
    X = (X - X.mean(0)) / X.std(0)
    return np.where(rng.random(X.shape) < 0.2, np.nan, X)


def test_screening_never_changes_the_choice_of_the_unscreened_search(monkeypatch):
    Xn = _table()
    full = NTKImputer(random_state=0).fit(Xn)  # its first fold, 33 entries: nothing screened
    monkeypatch.setattr(matrix_module, "SCREEN_MARGIN", np.inf)
    assert NTKImputer(random_state=0).fit(Xn).cv_results_ == full.cv_results_
    monkeypatch.setattr(matrix_module, "SCREEN_MARGIN", 1.10)
    monkeypatch.setattr(matrix_module, "SCREEN_MIN_ENTRIES", 1)  # screening on so small a fold
    screened = NTKImputer(random_state=0, verbose=0).fit(Xn)
    scored_full = {repr(NTKImputer._normalised(r | {"cv_rmse": 0}) ): r["cv_rmse"]
                   for r in full.cv_results_}
    # the screening must have fired here (else this test shows nothing) ...
    assert len(screened.cv_results_) < len(full.cv_results_)
    # ... only on candidates the full search scored worse than the margin allows after refining
    best = min(r["cv_rmse"] for r in full.cv_results_)
    kept = {repr(NTKImputer._normalised(r | {"cv_rmse": 0})) for r in screened.cv_results_}
    dropped = [v for k, v in scored_full.items() if k not in kept]
    assert dropped and min(dropped) > best
    assert screened.chosen_ == full.chosen_
    np.testing.assert_allclose(screened.completed_, full.completed_, rtol=1e-12)


def test_auto_choice_reproduces_with_a_fixed_random_state():
    Xn = _table(seed=1, m=80)
    a = NTKImputer(random_state=3).fit(Xn)
    b = NTKImputer(random_state=3).fit(Xn)
    assert a.chosen_ == b.chosen_
    assert [r["cv_rmse"] for r in a.cv_results_] == [r["cv_rmse"] for r in b.cv_results_]
    np.testing.assert_array_equal(a.completed_, b.completed_)


def test_chained_neighbour_inputs_match_the_regression_written_out(gram_path):
    """With ``neighbours=True`` column j's inputs are the other columns plus its own values at
    the previous and next row (first/last row: their only neighbour twice), never its own."""
    from completion.chained import NEIGHBOUR_WEIGHT
    rng = np.random.default_rng(4)
    m, n, j0 = 25, 4, 1
    X = np.cumsum(rng.standard_normal((m, n)), 0)
    mask = np.ones_like(X, dtype=bool)
    mask[[0, 7, 8, 15, m - 1], j0] = False
    Xn = np.where(mask, X, np.nan)
    base = additive_baseline(Xn, mask)
    got = chained_fit(FullyConnectedNTK(1), Xn, mask, base, rounds=1, ridge=0.05, neighbours=True)
    Z = np.where(mask, X, base)
    S = (Z - Z.mean(0)) / Z.std(0)
    others = [j for j in range(n) if j != j0]
    before = [1] + list(range(m - 1))
    after = list(range(1, m)) + [m - 2]
    F = np.column_stack([S[:, others] / np.sqrt(n - 1), NEIGHBOUR_WEIGHT * S[before, j0],
                         NEIGHBOUR_WEIGHT * S[after, j0]])
    obs, miss = np.flatnonzero(mask[:, j0]), np.flatnonzero(~mask[:, j0])
    kern = FullyConnectedNTK(1)
    K = kern.ntk(F[obs], device="cpu")
    alpha = np.linalg.solve(K + 0.05 * np.mean(np.diag(K)) * np.eye(obs.size),
                            X[obs, j0] - base[obs, j0])
    Z[miss, j0] = kern.ntk(F[miss], F[obs], device="cpu") @ alpha + base[miss, j0]
    np.testing.assert_allclose(got, Z, rtol=1e-5, atol=1e-7)  # float32 kernel entries in the fit


def test_neighbour_prior_is_chosen_for_a_sequence_and_not_for_shuffled_rows():
    """Smooth series in time order: the leave-one-out choice takes the neighbouring rows and
    fills the hidden entries better; the same rows shuffled: it declines them (the fit equals
    the one without)."""
    rng = np.random.default_rng(5)
    m = 150
    t = np.linspace(0, 6 * np.pi, m)
    X = np.column_stack([np.sin(t + p) * (1 + 0.3 * k) for k, p in enumerate(rng.random(6) * 3)])
    X = X + np.cumsum(0.1 * rng.standard_normal((m, 1)), 0) + 0.05 * rng.standard_normal((m, 6))
    hidden = rng.random(X.shape) < 0.2
    ntk = FullyConnectedNTK(1)
    kernels = (ntk, LinearSkip(ntk))

    def fit(rows, neighbours):
        Xn = np.where(hidden, np.nan, X)[rows]
        mask = ~hidden[rows]
        lines = []
        Z = chained_fit(kernels, Xn, mask, additive_baseline(Xn, mask), 3, "loo",
                        neighbours=neighbours, say=lines.append)
        return Z, np.sqrt(np.mean((Z - X[rows])[~mask] ** 2)), lines

    order = np.arange(m)
    with_loo, rmse_loo, lines = fit(order, "loo")
    _, rmse_without, _ = fit(order, False)
    assert "inputs taken" in lines[0] and rmse_loo < 0.7 * rmse_without
    shuffled = rng.permutation(m)
    with_loo, _, lines = fit(shuffled, "loo")
    assert "inputs declined" in lines[0]
    np.testing.assert_array_equal(with_loo, fit(shuffled, False)[0])


def test_verbose_says_the_neighbour_choice_once_per_final_chained_fit(caplog):
    """-v gives the row-order choice of the final fit of each chained configuration (a chosen
    one, or one started ahead of the choice), not one line per cross-validation fold (a small
    table is cross-validated on up to 20 folds)."""
    caplog.set_level(logging.INFO, logger=matrix_module.log.name)
    imp = NTKImputer(random_state=0, verbose=1).fit(_table(m=60))
    chosen = imp.chosen_
    fits = [c["fit"] for c in chosen.get("components", [])] + \
        [c["fit"] for c in chosen.get("source", {}).get("components", [])] \
        if chosen["mode"] == "stack" else [chosen]
    chained = {matrix_module.describe_choice(f) for f in fits
               if f["mode"] in matrix_module.CHAINED_AXIS}
    scored = {matrix_module.describe_choice({k: v for k, v in r.items() if k != "cv_rmse"})
              for r in imp.cv_results_ if r["mode"] in matrix_module.CHAINED_AXIS}
    lines = [r.getMessage() for r in caplog.records if "neighbour inputs" in r.getMessage()]
    said = [line[line.index("(") + 1:line.index("): ")] for line in lines]
    assert chained and all(said.count(text) == 1 for text in chained)
    assert set(said) <= scored and len(said) == len(set(said))


def test_chained_mode_with_too_few_points_per_regression_is_left_out():
    """A chained mode whose regressions average fewer than CHAINED_MIN_POINTS[mode] observed
    points is not a candidate: on a 120 x 7 table cols-chained (each row regressed on its ~5.6
    observed values) is left out and rows-chained (~96 rows a column) scored; transposed, the
    other way round."""
    Xn = _table(m=120)
    counts = (~np.isnan(Xn)).sum(0).mean(), (~np.isnan(Xn)).sum(1).mean()
    assert counts[1] < min(matrix_module.CHAINED_MIN_POINTS.values())
    assert counts[0] >= max(matrix_module.CHAINED_MIN_POINTS.values())
    for X, kept, left in ((Xn, "rows-chained", "cols-chained"),
                          (Xn.T, "cols-chained", "rows-chained")):
        modes = {r["mode"] for r in NTKImputer(random_state=0).fit(X).cv_results_}
        assert kept in modes and left not in modes


def test_rows_chained_needs_fewer_points_than_cols_chained(caplog):
    """On a 16 x 16 table with 13 observed points a regression in either orientation,
    rows-chained (each column over the rows: IterativeImputer's orientation) is scored and
    cols-chained left out, with a -v line that says why."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(16, 3)) @ rng.normal(size=(3, 16)) + 0.1 * rng.normal(size=(16, 16))
    X[rng.random(X.shape) < 0.19] = np.nan
    points = (~np.isnan(X)).sum(0).mean(), (~np.isnan(X)).sum(1).mean()
    low, high = matrix_module.CHAINED_MIN_POINTS["rows-chained"], \
        matrix_module.CHAINED_MIN_POINTS["cols-chained"]
    assert low <= min(points) and max(points) < high
    caplog.set_level(logging.INFO, logger=matrix_module.log.name)
    imp = NTKImputer(random_state=0, verbose=1, refine=0, stack=1).fit(X)
    lines = [r.getMessage() for r in caplog.records]
    modes = {r["mode"] for r in imp.cv_results_}
    assert "rows-chained" in modes and "cols-chained" not in modes
    assert any("cols-chained left out" in line and f"fewer than {high}" in line for line in lines)


CHAINED_FLOPS = {"rows-chained": 3e9, "cols-chained": 2e9}  # set by _chained_budget_table


def _chained_budget_table(monkeypatch, total, each):
    """A 60 x 24 table, 10% missing (rows-chained's regressions: 54 observed points a column,
    cols-chained's: 22 a row), with each chained mode's flops set to CHAINED_FLOPS and the
    budgets AUTO_CHAINED_TOTAL_FLOPS and AUTO_CHAINED_FLOPS to ``total`` and ``each`` x 1e9."""
    rng = np.random.default_rng(6)
    X = rng.normal(size=(60, 3)) @ rng.normal(size=(3, 24)) + 0.1 * rng.normal(size=(60, 24))
    X[rng.random(X.shape) < 0.1] = np.nan
    monkeypatch.setattr(matrix_module, "chained_flops", lambda shape, mask, rounds, axis:
                        CHAINED_FLOPS[("rows-chained", "cols-chained")[axis]])
    monkeypatch.setattr(matrix_module, "AUTO_CHAINED_TOTAL_FLOPS", total * 1e9)
    monkeypatch.setattr(matrix_module, "AUTO_CHAINED_FLOPS", each * 1e9)
    return X


@pytest.mark.parametrize("total, each, taken", [
    (5, 2, {"rows-chained", "cols-chained"}),
    (4, 2, {"rows-chained"}),  # cols-chained: beyond what rows-chained left of the total
    (5, 1.5, {"rows-chained"}),  # cols-chained: beyond a second mode's budget
    (2.5, 2.5, {"cols-chained"}),  # rows-chained: beyond the total; cols-chained comes first
])
def test_chained_modes_share_one_flop_budget(total, each, taken, monkeypatch, caplog):
    """'auto' takes the chained modes, the one whose regressions have more observed points
    first (here rows-chained: 54 a column against 22 a row), while their estimated flops (here
    set: 3e9 and 2e9) add up to AUTO_CHAINED_TOTAL_FLOPS, a second mode taking at most
    AUTO_CHAINED_FLOPS of it; -v says the estimate and the budget of a mode left out."""
    X = _chained_budget_table(monkeypatch, total, each)
    caplog.set_level(logging.INFO, logger=matrix_module.log.name)
    imp = NTKImputer(random_state=0, verbose=1, refine=0, stack=1).fit(X)
    modes = {r["mode"] for r in imp.cv_results_} & set(matrix_module.CHAINED_AXIS)
    assert modes == taken
    said = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    left = set(matrix_module.CHAINED_AXIS) - taken
    assert len(said) == len(left)
    if left:  # rows-chained's turn comes first: its budget is the total
        mode, = left
        budget = total if mode == "rows-chained" else min(each, total - 3)
        assert said[0] == (f"  {mode} left out: about {CHAINED_FLOPS[mode]:.1e} flops "
                           f"(its budget {budget * 1e9:.1e})")


@pytest.mark.parametrize("total, each, offsets", [
    (12, 10, {"rows-chained": ["baseline", "means"], "cols-chained": ["baseline"]}),
    (20, 10, {"rows-chained": ["baseline", "means"], "cols-chained": ["baseline", "means"]}),
    (8, 10, {"rows-chained": ["baseline"], "cols-chained": ["baseline"]}),
    (20, 5, {"rows-chained": ["baseline"], "cols-chained": ["baseline", "means"]}),
])
def test_mean_offset_variants_count_in_the_chained_flop_budget(total, each, offsets,
                                                               monkeypatch):
    """A chained mode's column-mean-offset variant (twice its flops, here 3e9 and 2e9) is
    offered where that fits in AUTO_CHAINED_FLOPS and in what is left of
    AUTO_CHAINED_TOTAL_FLOPS, and then counts in that total: with a total of 12e9,
    rows-chained's two fits take 9e9 and leave cols-chained room for its plain fit only."""
    X = _chained_budget_table(monkeypatch, total, each)
    imp = NTKImputer(random_state=0, mode="rows", prior="profile", depth=1, ridge=0.03).fit(X)
    imp.set_params(mode="auto", prior="auto")  # the fitted matrix, asked for auto's candidates
    offered = {}
    for cfg in imp._candidates(~np.isnan(X)):
        if cfg["mode"] in CHAINED_FLOPS:
            offered.setdefault(cfg["mode"], []).append(cfg.get("offsets", "baseline"))
    assert offered == offsets
