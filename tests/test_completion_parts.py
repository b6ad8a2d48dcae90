"""The parts NTKImputer's default combines, each against an independent oracle: SoftImpute,
the chained (MICE-style) NTK regression and its leave-one-out ridge, the convex stacking
weights, and priors computed from a completed matrix."""
import numpy as np
import pytest
import torch

from completion import chained
from completion.chained import LinearSkip, _solve_lower, chained_fit
from completion.matrix import NTKImputer, additive_baseline
from completion.priors import parse_prior, profile_prior
from completion.softimpute import singular_value_thresholded, soft_impute_cv, soft_impute_path
from completion.stacking import convex_weights
from models.ntk import FullyConnectedNTK


def low_rank(m=40, n=25, rank=2, missing=0.3, seed=0):
    rng = np.random.default_rng(seed)
    T = rng.standard_normal((m, rank)) @ rng.standard_normal((rank, n))
    mask = rng.random((m, n)) > missing
    return T, mask


def test_softimpute_fixed_point_and_low_rank_recovery():
    T, mask = low_rank()
    # at convergence Z = SVT_lambda(P_obs(X - mean) + P_miss(Z - mean)) + mean
    (frac, Z), = soft_impute_path(T, mask, [0.05], max_iter=2000, tol=1e-14)
    mean = np.array([T[mask[:, j], j].mean() for j in range(T.shape[1])])
    R = np.where(mask, T - mean, 0.0)
    lam = 0.05 * np.linalg.norm(R, 2)
    U, s, Vt = np.linalg.svd(np.where(mask, T - mean, Z - mean), full_matrices=False)
    np.testing.assert_allclose((U * np.maximum(s - lam, 0)) @ Vt + mean, Z, atol=1e-5)
    done, chosen, scores = soft_impute_cv(T, mask, random_state=0)
    hidden = ~mask
    col_mean_err = np.sqrt(np.mean((T - mean)[hidden] ** 2))
    assert np.sqrt(np.mean((done - T)[hidden] ** 2)) < 0.25 * col_mean_err
    assert scores[chosen] == min(scores.values())


@pytest.mark.parametrize("shape, rank", [((30, 50), 3), ((50, 30), 3), ((20, 20), 20)])
def test_singular_value_thresholding_equals_numpy_svd(shape, rank):
    """SoftImpute's step from the smaller Gram matrix's eigendecomposition equals the SVD's
    soft-thresholded singular values (numpy), wide or tall, for a shrinkage that keeps some
    directions, all of them, or none."""
    rng = np.random.default_rng(2)
    A = rng.standard_normal((shape[0], rank)) @ rng.standard_normal((rank, shape[1]))
    A += 0.01 * rng.standard_normal(shape)
    U, s, Vt = np.linalg.svd(A, full_matrices=False)
    for lam in (0.5 * s[1], 0.0, 1.1 * s[0]):
        expected = (U * np.maximum(s - lam, 0.0)) @ Vt
        got = singular_value_thresholded(torch.from_numpy(A), lam).numpy()
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12 * s[0])


def brute_force_chained_one_round(X, mask, base, ridge, depth=1):
    """Chained regression written out for a matrix where only column j0 has missing entries:
    the inputs are the other columns (baseline filled), standardised, scaled by 1/sqrt(n-1)."""
    m, n = X.shape
    Z = np.where(mask, X, base)
    j0 = int(np.flatnonzero((~mask).any(0))[0])
    others = [j for j in range(n) if j != j0]
    F = (Z[:, others] - Z[:, others].mean(0)) / Z[:, others].std(0) / np.sqrt(n - 1)
    kern = FullyConnectedNTK(depth=depth)
    obs, miss = np.flatnonzero(mask[:, j0]), np.flatnonzero(~mask[:, j0])
    K = kern.ntk(F[obs], device="cpu")
    y = X[obs, j0] - base[obs, j0]
    alpha = np.linalg.solve(K + ridge * np.mean(np.diag(K)) * np.eye(obs.size), y)
    Z[miss, j0] = kern.ntk(F[miss], F[obs], device="cpu") @ alpha + base[miss, j0]
    return Z


@pytest.mark.parametrize("axis, depth", [(0, 2), (1, 2), (0, 1)])
def test_chained_fit_matches_the_regression_written_out(axis, depth, gram_path):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((30, 6))
    X[:, 2] = np.sin(X[:, 0]) + X[:, 1] ** 2
    mask = np.ones_like(X, dtype=bool)
    mask[rng.choice(30, 8, replace=False), 2] = False
    if axis == 1:
        X, mask = X.T.copy(), mask.T.copy()
    Xn = np.where(mask, X, np.nan)
    base = additive_baseline(Xn, mask)
    got = chained_fit(FullyConnectedNTK(depth), Xn, mask, base, rounds=1, ridge=0.05, axis=axis)
    if axis == 1:
        expected = brute_force_chained_one_round(Xn.T, mask.T, base.T, 0.05, depth=depth).T
    else:
        expected = brute_force_chained_one_round(Xn, mask, base, 0.05, depth=depth)
    # the fit's kernel entries are float32 (chained.KERNEL_DTYPE), the oracle's float64: they
    # agree to float32 rounding, amplified by the ridge system (here 2e-6 relative at most)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("axis", [0, 1])
def test_chained_fit_with_the_kept_gram_matrix_equals_the_one_with_products(axis, monkeypatch):
    """Three rounds over every column of a table with missing entries everywhere (each column's
    new estimates update the kept Gram matrix before the next column reads it), kernel and
    ridge chosen per column, neighbour inputs tried: the same completion as the fit that forms
    every column's inputs and their products, to float32 rounding."""
    rng = np.random.default_rng(5)
    X = np.cumsum(rng.standard_normal((40, 9)), 0) + rng.standard_normal((40, 9))
    mask = rng.random(X.shape) > 0.25
    Xn = np.where(mask, X, np.nan)
    base = additive_baseline(Xn, mask)
    kern = FullyConnectedNTK(1, bias_var=2.0)
    done = {}
    for ratio in (0.0, np.inf):
        monkeypatch.setattr(chained, "KEPT_GRAM_RATIO", ratio)
        assert chained.kept_gram(40, 9, 40) == (ratio == 0.0)
        done[ratio] = chained_fit((kern, LinearSkip(kern)), Xn, mask, base, 3, "loo", axis,
                                  neighbours="loo")
    np.testing.assert_array_equal(done[0.0][mask], X[mask])
    np.testing.assert_allclose(done[0.0], done[np.inf], rtol=1e-4, atol=1e-5)


def test_chained_fit_with_mean_offsets_recovers_an_exact_linear_column():
    """y = x + z exactly: offsets "means" (y's values minus y's mean regressed on (x, z))
    recover the hidden y's; the baseline offsets do not: the row effect of a row with y
    observed holds y itself, (x' + z' + y') / 3, that of a row with y missing only
    (x' + z') / 2, so their prediction is 5/6 of the centred truth."""
    rng = np.random.default_rng(5)
    x, z = rng.standard_normal((2, 200))
    X = np.column_stack([x, z, x + z + 3.0])
    mask = np.ones_like(X, dtype=bool)
    mask[rng.choice(200, 40, replace=False), 2] = False
    Xn = np.where(mask, X, np.nan)
    base = additive_baseline(Xn, mask)
    kern = LinearSkip(FullyConnectedNTK(1))
    rmse = {off: np.sqrt(np.mean((chained_fit(kern, Xn, mask, base, 1, ridge=1e-6,
                                              offsets=off) - X)[~mask] ** 2))
            for off in ("means", "baseline")}
    assert rmse["means"] < 0.05 * X[~mask].std() < rmse["baseline"] / 2  # 0.022 and 0.165 sd
    with pytest.raises(ValueError, match="offsets"):
        chained_fit(kern, Xn, mask, base, 1, ridge=1e-6, offsets="rows")


def test_auto_scores_the_chained_fits_with_both_offsets_as_one_family():
    """mode auto on a small table: each chained candidate is also offered with offsets "means"
    (scored on the same held-out entries); the combination holds at most one of the two."""
    rng = np.random.default_rng(6)
    Z = rng.standard_normal((80, 4))
    X = np.column_stack([Z, Z[:, 0] - Z[:, 1] + 0.1 * rng.standard_normal(80)])
    X[rng.random(X.shape) < 0.2] = np.nan
    imp = NTKImputer(random_state=0).fit(X)
    offered = [c.get("offsets", "baseline") for c in imp._candidates(~np.isnan(X))
               if c["mode"] == "rows-chained"]
    assert offered == ["baseline", "means"]
    fits = [c["fit"] for c in imp.chosen_["components"]] if imp.chosen_["mode"] == "stack" \
        else [imp.chosen_]
    assert sum(f["mode"] == "rows-chained" for f in fits) <= 1
    explicit = NTKImputer(mode="rows-chained", random_state=0).fit(X)
    assert "offsets" not in explicit.chosen_  # an explicit chained mode keeps the baseline


def test_chained_solve_in_float32_with_refinement_equals_the_float64_solve():
    """_solve_lower: a float32 Cholesky factor refined in float64 gives the float64 solution
    (to 1e-12) from the lower triangle alone (the upper one here garbage); an ill-conditioned
    system (cond 1e11, beyond float32) falls back to the float64 factor, the same numbers as
    solving with it; a matrix that is not positive definite gives None."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((600, 8)) / np.sqrt(8)
    K = FullyConnectedNTK(1).ntk(X)
    y = torch.as_tensor(rng.standard_normal(600))
    Q = np.linalg.qr(rng.standard_normal((600, 600)))[0]
    stiff = (Q * np.geomspace(1.0, 1e-11, 600)) @ Q.T
    for A, refined in ((K + 3e-3 * np.mean(np.diag(K)) * np.eye(600), True), (stiff, False)):
        A = torch.as_tensor(A)
        garbage = A.tril() + 5.0 * torch.ones_like(A).triu(1)
        want = torch.cholesky_solve(y[:, None], torch.linalg.cholesky(A))[:, 0]
        got = _solve_lower(garbage, y)
        if refined:
            assert float((got - want).abs().max()) <= 1e-12 * float(want.abs().max())
            assert not torch.equal(got, want)  # (the float32 path, not the fallback)
        else:
            assert torch.linalg.cond(A) > 1e9 and torch.equal(got, want)
    assert _solve_lower(torch.as_tensor(K - 0.1 * np.eye(600)), y) is None
    # below REFINE_MIN_ROWS rows the float64 factor, the same numbers
    small = torch.as_tensor(K[:100, :100] + 0.01 * np.eye(100))
    assert torch.equal(_solve_lower(small, y[:100]), torch.cholesky_solve(
        y[:100, None], torch.linalg.cholesky(small))[:, 0])


def test_chained_mode_learns_a_nonlinear_column():
    rng = np.random.default_rng(3)
    Z = rng.standard_normal((150, 4))
    X = np.column_stack([Z, np.sin(2 * Z[:, 0]) + Z[:, 1] * Z[:, 2]])
    hidden = rng.random(X.shape) < 0.15
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer
    Xn = np.where(hidden, np.nan, X)
    done = NTKImputer(mode="rows-chained", random_state=0).fit_transform(Xn)
    linear = IterativeImputer(random_state=0).fit_transform(Xn)  # chained linear regressions
    rmse = lambda P: np.sqrt(np.mean((P - X)[hidden[:, 4], 4] ** 2))
    assert rmse(done) < 0.9 * rmse(linear)


def test_convex_weights_against_the_closed_form_for_two_fits():
    rng = np.random.default_rng(4)
    y = rng.standard_normal(200)
    for a, b in ((0.3, 0.8), (0.0, 1.5), (2.0, 0.2)):
        P1, P2 = y + a * rng.standard_normal(200), y + b * rng.standard_normal(200)
        d = P1 - P2
        w1 = np.clip(d @ (y - P2) / (d @ d), 0.0, 1.0)  # argmin over the segment
        np.testing.assert_allclose(convex_weights(np.column_stack([P1, P2]), y), [w1, 1 - w1],
                                   atol=1e-6)
    w = convex_weights(rng.standard_normal((50, 4)), rng.standard_normal(50))
    assert np.all(w >= 0) and w.sum() == pytest.approx(1.0)


def test_profile_prior_from_a_given_matrix_is_that_matrix_profile():
    T, mask = low_rank(20, 8, seed=5)
    X = np.where(mask, T, np.nan)
    P = T + 0.1 * np.random.default_rng(5).standard_normal(T.shape)  # "another method's" output
    given = NTKImputer(mode="rows", prior="profile@matrix", prior_matrix=P, depth=1,
                       ridge=0.1).fit(X)
    as_features = NTKImputer(mode="rows", prior="features", depth=1, ridge=0.1,
                             row_features=profile_prior(P, np.ones_like(mask))).fit(X)
    np.testing.assert_allclose(given.completed_, as_features.completed_, rtol=1e-9, atol=1e-10)
    assert str(parse_prior("lowrank:4@softimpute")) == "lowrank:4@softimpute"
    with pytest.raises(ValueError, match="needs prior_matrix"):
        NTKImputer(mode="rows", prior="profile@matrix", depth=1, ridge=0.1).fit(X)
    with pytest.raises(ValueError, match="NaN or inf at row 2, column 3"):
        P[2, 3] = np.nan
        NTKImputer(mode="rows", prior="profile@matrix", prior_matrix=P, depth=1, ridge=0.1).fit(X)
    with pytest.raises(ValueError, match="only profile and lowrank"):
        parse_prior("features@softimpute")
