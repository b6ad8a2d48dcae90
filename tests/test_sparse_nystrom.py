"""Sparse input and the Nystrom rows/cols solver against dense oracles: the exact shared-kernel
solver (solve_shared_kernel), the dense profile prior, and NTKImputer on the same matrix with NaN."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from completion.matrix import NTKImputer
from completion.prior_grams import ProfileGram
from completion.priors import build_prior
from completion.solvers import choose_solver, parse_solver, pivoted_nystrom, solve_shared_kernel
from completion.solvers.per_output import (batches_by_count, predict_pairs_exact, relative_lambda,
                                           solve_outputs_exact, solve_outputs_in_features)
from completion.sparse_matrix import fit_entries, observed_entries
from models.device import MemoryBudgetError
from models.ntk import FullyConnectedNTK


def _kernel(N, seed, scale=10.0):
    Z = np.random.default_rng(seed).normal(size=(N, 5))
    return np.exp(-((Z[:, None] - Z[None]) ** 2).sum(-1) / scale)


def _problem(N=50, T=30, frac=0.4, seed=0):
    rng = np.random.default_rng(seed)
    Y = rng.normal(size=(N, T))
    mask = rng.random((N, T)) < frac
    mask[:, 3] = False  # an output with no observation
    items, outputs = np.nonzero(mask)
    return Y, mask, items, outputs


def _nystrom_prediction(K, items, outputs, y, T, ridge, rank, correct=True):
    lam, _ = relative_lambda(np.diag(K), items, ridge)
    Kt = torch.from_numpy(K)
    F, _, resid = pivoted_nystrom(lambda S: Kt[:, S], np.diag(K), rank, tol=0)
    W = solve_outputs_in_features(F, items, outputs, y, T, lam, residual=resid if correct else None)
    return (F @ W).numpy()


@pytest.mark.parametrize("correct", [True, False])
def test_nystrom_with_every_item_a_landmark_is_the_exact_solver(correct):
    K = _kernel(50, 1)
    Y, mask, items, outputs = _problem()
    exact = solve_shared_kernel(K, Y, mask, 0.01)
    pred = _nystrom_prediction(K, items, outputs, Y[items, outputs], Y.shape[1], 0.01, 50, correct)
    assert np.abs(pred - exact).max() < 1e-8
    assert np.abs(pred[:, 3]).max() == 0.0  # no observation: the prior mean


def test_float32_products_change_the_nystrom_weights_only_by_rounding():
    K = _kernel(50, 1)
    Y, mask, items, outputs = _problem()
    lam, _ = relative_lambda(np.diag(K), items, 0.01)
    F, _, resid = pivoted_nystrom(lambda S: torch.from_numpy(K)[:, S], np.diag(K), 20)
    W64, W32 = (solve_outputs_in_features(F, items, outputs, Y[items, outputs], 30, lam,
                                          residual=resid, products=dt)
                for dt in (torch.float64, torch.float32))
    assert W32.dtype == torch.float64
    assert 0 < (W32 - W64).abs().max() < 1e-5 * W64.abs().max()


def test_default_rank_is_lowered_to_what_fits_the_budget():
    from completion.solvers.nystrom import DEFAULT_RANK, default_rank, nystrom_memory
    assert default_rank(1000, 500, "8GB") == DEFAULT_RANK
    budget = nystrom_memory(20_000, 100_000, 300) + 100
    r = default_rank(20_000, 100_000, budget)
    assert r == 300 and nystrom_memory(20_000, 100_000, r + 1) > budget


def test_nystrom_error_decreases_with_landmarks_on_a_low_rank_kernel():
    rng = np.random.default_rng(2)
    A = rng.normal(size=(80, 12)) * 0.6 ** np.arange(12)  # rank 12, decaying spectrum
    K = A @ A.T
    Y, mask, items, outputs = _problem(N=80, T=20, frac=0.5, seed=3)
    exact = solve_shared_kernel(K, Y, mask, 0.05)
    errors = [np.abs(_nystrom_prediction(K, items, outputs, Y[items, outputs], 20, 0.05, r)
                     - exact).max() for r in (2, 4, 8, 12)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-8


def test_pivoted_nystrom_reproduces_the_kernel_and_survives_duplicates():
    K = _kernel(40, 4)
    K = K[np.r_[0:40, 0:5]][:, np.r_[0:40, 0:5]]  # five items twice: rank 40 of 45
    Kt = torch.from_numpy(K)
    F, landmarks, resid = pivoted_nystrom(lambda S: Kt[:, S], np.diag(K), 45, tol=1e-14)
    assert np.abs((F @ F.T).numpy() - K).max() < 1e-8
    assert F.shape[1] <= 40 and resid.max() < 1e-8 and len(set(landmarks)) == len(landmarks)
    with pytest.raises(ValueError, match="sampling"):
        pivoted_nystrom(lambda S: Kt[:, S], np.diag(K), 5, sampling="kmeans")


@pytest.mark.parametrize("same_count", [False, True])
def test_batches_by_count_hold_every_output_once_with_its_own_entries(same_count):
    outputs = np.random.default_rng(3).integers(0, 40, 600)
    outputs[outputs == 7] = 8  # an output without entries
    seen = []
    for outs, idx in batches_by_count(outputs, 41, 1, batch_bytes=8 * 20**3, same_count=same_count):
        for t, row in zip(outs, idx):
            assert sorted(row[row >= 0]) == list(np.flatnonzero(outputs == t))
        if same_count:
            assert (idx >= 0).all()
        seen.extend(outs)
    assert sorted(seen) == sorted(set(range(41)) - {7, 40})


def test_exact_per_output_solve_matches_the_shared_kernel_solver():
    K = _kernel(50, 5)
    Y, mask, items, outputs = _problem(seed=6)
    exact = solve_shared_kernel(K, Y, mask, 0.03)
    lam, _ = relative_lambda(np.diag(K), items, 0.03)
    alpha = solve_outputs_exact(torch.from_numpy(K), items, outputs, Y[items, outputs], 30, lam)
    want_i, want_t = np.nonzero(~mask)
    pred = predict_pairs_exact(torch.from_numpy(K), alpha, items, outputs, 30, want_i, want_t)
    assert np.abs(pred - exact[want_i, want_t]).max() < 1e-10


@pytest.mark.parametrize("axis", [0, 1])
def test_profile_gram_equals_the_dense_profile_prior(axis):
    rng = np.random.default_rng(7)
    X = rng.normal(size=(30, 20)) + np.arange(20)
    mask = rng.random((30, 20)) < 0.35
    mask[4] = False
    mask[:, 6] = False
    V, M = (X, mask) if axis == 0 else (X.T, mask.T)
    P = build_prior("profile", V, M)
    i, u = np.nonzero(M)
    gram = ProfileGram(i, u, V[i, u], *V.shape)
    assert np.abs(gram.columns(np.arange(V.shape[0])) - P @ P.T).max() < 1e-12
    assert np.abs(gram.sq_norms - (P * P).sum(1)).max() < 1e-12


def _ratings(m=60, n=25, frac=0.35, seed=8):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(m, 3)) @ rng.normal(size=(3, n)) + 0.2 * rng.normal(size=(m, n))
    X[0, 0] = 0.0  # an observed zero: stored explicitly in the sparse matrix
    mask = rng.random((m, n)) < frac
    mask[0, 0] = True
    rows, cols = np.nonzero(mask)
    return X, mask, sp.csr_array((X[rows, cols], (rows, cols)), shape=(m, n))


@pytest.mark.parametrize("mode", ["rows", "cols"])
@pytest.mark.parametrize("solver", ["shared", "nystrom:60"])
def test_sparse_input_gives_the_numbers_of_the_dense_nan_input(mode, solver):
    X, mask, S = _ratings()
    assert S.nnz == mask.sum()  # the stored zero counts
    kw = dict(mode=mode, prior="profile", depth=1, ridge=0.03, refine=0)
    dense = NTKImputer(solver="shared", **kw).fit(np.where(mask, X, np.nan))
    sparse = NTKImputer(solver=solver, **kw).fit(S)
    r, c = np.nonzero(~mask)
    tol = 1e-8 if solver == "shared" else 1e-5  # Nystrom: float32 products (per_output)
    assert np.abs(sparse.predict_entries(r, c) - dense.predict_entries(r, c)).max() < tol
    assert np.abs(sparse.transform() - dense.transform()).max() < tol
    assert not hasattr(sparse, "completed_")


def test_dense_input_with_the_nystrom_solver_at_full_rank_is_the_exact_fit():
    X, mask, _ = _ratings(seed=9)
    Xn = np.where(mask, X, np.nan)
    kw = dict(mode="rows", prior="profile", depth=2, ridge=0.01, refine=1)
    exact = NTKImputer(solver="shared", **kw).fit_transform(Xn)
    nystrom = NTKImputer(solver="nystrom:60", **kw).fit_transform(Xn)
    assert np.abs(exact - nystrom).max() < 1e-6 * np.abs(exact).max()  # float32 products


def test_mode_auto_on_sparse_input_cross_validates_rows_and_cols():
    _, _, S = _ratings(seed=10)
    est = NTKImputer(random_state=0).fit(S)
    assert est.chosen_["mode"] in ("rows", "cols")
    assert {r["mode"] for r in est.cv_results_} == {"rows", "cols"}
    assert all(np.isfinite(r["cv_rmse"]) for r in est.cv_results_)


def test_solver_auto_takes_nystrom_when_the_kernel_does_not_fit():
    assert choose_solver("cols", (100_000, 10_000), 10**6) == "shared"  # 0.8 GB kernel
    assert choose_solver("rows", (100_000, 10_000), 10**6) == "nystrom"  # 80 GB kernel
    assert choose_solver("rows", (1000, 10), 100, memory_budget="1MB") == "nystrom"
    assert parse_solver("nystrom:300") == ("nystrom", 300)
    for bad in ("nystrom:0", "nystrom:x", "shared:5", "falkon"):
        with pytest.raises(ValueError, match="solver"):
            parse_solver(bad)


@pytest.mark.parametrize("solver", ["cg", "structured", "exact"])
def test_a_solver_that_does_not_apply_is_refused_before_any_sparse_fit(solver, monkeypatch):
    def no_fit(*args, **kwargs):
        raise AssertionError("a fit started before the solver was checked")

    monkeypatch.setattr("completion.sparse_selection.fit_entries", no_fit)
    with pytest.raises(ValueError, match=f"solver '{solver}' does not apply to mode 'rows'"):
        NTKImputer(mode="rows", prior="profile", depth=1, ridge=0.1, solver=solver) \
            .fit(_ratings()[2])


class _NoKernel:
    """A kernel that fails if evaluated: refusals must come before any kernel work."""

    def ntk_from_gram(self, *args):
        raise AssertionError("kernel evaluated before the budget check")


@pytest.mark.parametrize("solver", [("shared", None), ("nystrom", 50)])
def test_budget_refusal_comes_before_any_kernel_work(solver):
    _, _, S = _ratings()
    with pytest.raises(MemoryBudgetError, match="would need"):
        fit_entries(observed_entries(S), "rows", "profile", _NoKernel(), 0.03, solver,
                    memory_budget="16KB")


def test_dense_transform_of_a_sparse_fit_is_refused_over_budget(monkeypatch):
    _, _, S = _ratings()
    est = NTKImputer(mode="rows", prior="profile", depth=1, ridge=0.03, solver="shared").fit(S)
    monkeypatch.setattr("models.device.DEFAULT_MEMORY_BUDGET", 1000)
    with pytest.raises(MemoryBudgetError, match="60 x 25 completed matrix"):
        est.transform()
    assert est.predict_entries([0, 1], [2, 3]).shape == (2,)  # pairs still work


def test_bad_sparse_input_is_refused_naming_the_entry():
    fixed = dict(mode="rows", prior="profile", depth=1, ridge=0.03)
    S = sp.csr_array(np.array([[1.0, 0, 2], [0, np.nan, 3], [4, 5, 0]]))
    with pytest.raises(ValueError, match="stores nan at row 1, column 1"):
        NTKImputer(**fixed).fit(S)
    dup = sp.coo_array((np.array([1.0, 2.0, 3.0]), (np.array([0, 0, 1]), np.array([1, 1, 2]))),
                       shape=(3, 3))
    with pytest.raises(ValueError, match=r"\(row 0, column 1\) more than once"):
        NTKImputer(**fixed).fit(dup)
    with pytest.raises(ValueError, match="no stored"):
        NTKImputer(**fixed).fit(sp.csr_array((3, 3)))
    with pytest.raises(ValueError, match="Complex"):
        NTKImputer(**fixed).fit(sp.csr_array(np.array([[1 + 1j, 0], [0, 2]])))
    dense_fit = NTKImputer(**fixed).fit(np.where(_ratings()[1], _ratings()[0], np.nan))
    with pytest.raises(TypeError, match="fit the sparse matrix"):
        dense_fit.transform(_ratings()[2])
    with pytest.raises(ValueError, match="sparse input"):
        NTKImputer(mode="joint", prior="onehot", depth=1, ridge=0.1).fit(_ratings()[2])
    with pytest.raises(ValueError, match="not available for sparse input"):
        NTKImputer(mode="rows", prior="lowrank:3", depth=1, ridge=0.1).fit(_ratings()[2])
    with pytest.raises(ValueError, match="not available for sparse input"):
        NTKImputer(mode="rows", prior="profile:unscaled", depth=1, ridge=0.1).fit(_ratings()[2])


def test_predict_entries_after_a_sparse_fit_checks_the_pairs():
    _, _, S = _ratings()
    est = NTKImputer(mode="cols", prior="profile", depth=1, ridge=0.03).fit(S)
    with pytest.raises(ValueError, match="same length"):
        est.predict_entries([0, 1, 2], [0, 1])
    with pytest.raises(ValueError, match="outside 0..59"):
        est.predict_entries([60], [0])
    with pytest.raises(ValueError, match="integer"):
        est.predict_entries([0.5], [0])
    with pytest.raises(ValueError, match="predict_entries"):
        est.transform(sp.csr_array((60, 25)))
