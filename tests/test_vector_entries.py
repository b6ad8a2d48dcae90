"""Vector-valued entries: an (m, n, d) array completed with one kernel and d right-hand sides
must give exactly the numbers of d independent scalar fits under the same configuration."""
import numpy as np
import pytest

from completion.fibres import observed_fibres, unfold
from completion.matrix import NTKImputer, additive_baseline
from completion.priors import build_prior, profile_prior
from completion.solvers import solve_shared_kernel


def _tensor(m=24, n=15, d=3, missing=0.3, seed=0):
    rng = np.random.default_rng(seed)
    U, V, W = rng.normal(size=(m, 3)), rng.normal(size=(n, 3)), rng.normal(size=(3, d))
    X = np.einsum("ik,jk,kf->ijf", U, V, W) + 0.1 * rng.normal(size=(m, n, d))
    X += rng.normal(size=d) * 5  # features on different levels
    X[rng.random((m, n)) < missing] = np.nan
    return X, U + 0.2 * rng.normal(size=U.shape), V + 0.2 * rng.normal(size=V.shape)


@pytest.mark.parametrize("cfg", [
    {"mode": "rows", "prior": "features"},
    {"mode": "cols", "prior": "features+identity:0.5"},
    {"mode": "rows", "prior": "onehot"},
    {"mode": "joint", "prior": "onehot"},
    {"mode": "joint", "prior": ("features", "onehot"), "solver": "exact"},
    {"mode": "joint", "prior": ("features", "features"), "solver": "cg"},
])
def test_vector_fit_equals_independent_scalar_fits(cfg):
    X, rf, cf = _tensor()
    # scale=None: a 2-D fit may standardise its columns, the vector fit never does
    kw = dict(cfg, depth=2, ridge=0.05, row_features=rf, col_features=cf, scale=None)
    vector = NTKImputer(**kw).fit(X)
    scalar = np.stack([NTKImputer(**kw).fit(X[:, :, f]).completed_ for f in range(X.shape[2])], -1)
    tol = 1e-6 if cfg.get("solver") == "cg" else 1e-10  # CG stops at a relative residual of 1e-8
    np.testing.assert_allclose(vector.completed_, scalar, rtol=0, atol=tol)


def test_single_feature_tensor_equals_matrix_fit_with_profile_prior():
    X, _, _ = _tensor(d=1)
    kw = dict(mode="cols", prior="profile", depth=1, ridge=0.03, refine=1)
    np.testing.assert_allclose(NTKImputer(**kw).fit_transform(X)[:, :, 0],
                               NTKImputer(**kw).fit_transform(X[:, :, 0]), rtol=0, atol=1e-12)


def test_shapes_observed_fibres_kept_and_predict_entries():
    X, rf, _ = _tensor(d=4)
    imp = NTKImputer(mode="rows", prior="profile", depth=1, ridge=0.03)
    done = imp.fit_transform(X)
    observed = ~np.isnan(X[:, :, 0])
    assert done.shape == X.shape and not np.isnan(done).any()
    np.testing.assert_array_equal(done[observed], X[observed])
    rows, cols = np.array([0, 3, 5]), np.array([1, 0, 7])
    got = imp.predict_entries(rows, cols)
    assert got.shape == (3, 4)
    np.testing.assert_array_equal(got, imp.completed_[rows, cols])
    assert imp.transform(X[:4]).shape == (4,) + X.shape[1:]


def test_auto_mode_scores_held_out_fibres_and_beats_the_baseline():
    X, _, _ = _tensor(m=30, n=20, d=3, missing=0.0, seed=1)
    rng = np.random.default_rng(2)
    hidden = rng.random(X.shape[:2]) < 0.3
    given = X.copy()
    given[hidden] = np.nan
    imp = NTKImputer(random_state=0).fit(given)
    assert {r["mode"] for r in imp.cv_results_} <= {"rows", "cols", "joint", "softimpute"}
    base = additive_baseline(given, ~hidden)
    rmse = lambda Z: np.sqrt(np.mean((Z[hidden] - X[hidden]) ** 2))
    assert rmse(imp.transform()) < 0.5 * rmse(base)


def test_per_feature_baseline_and_profile_prior():
    X, _, _ = _tensor(d=3)
    mask = observed_fibres(X)
    base = additive_baseline(X, mask)
    for f in range(3):
        np.testing.assert_allclose(base[:, :, f], additive_baseline(X[:, :, f], mask), atol=1e-12)
    # the vector profile is the per-feature profiles side by side, scaled to unit mean square
    P = np.hstack([profile_prior(X[:, :, f], mask) for f in range(3)])
    P /= np.sqrt(np.mean(np.sum(P * P, axis=1)))
    got = build_prior("profile", X, mask)
    # columns ordered (column, feature) as in the unfolded matrix
    np.testing.assert_allclose(got @ got.T, P @ P.T, atol=1e-10)
    flat, flat_mask = unfold(X, mask)
    assert flat.shape == (24, 45) and flat_mask.sum() == 3 * mask.sum()


def test_shared_kernel_solver_takes_many_right_hand_sides():
    rng = np.random.default_rng(3)
    m, n, d = 20, 12, 5
    A = rng.normal(size=(m, 6))
    K = A @ A.T
    Y = rng.normal(size=(m, n, d))
    mask = rng.random((m, n)) < 0.7
    for method in ("direct", "downdate"):
        got = solve_shared_kernel(K, Y, mask, 0.1, method=method)
        want = np.stack([solve_shared_kernel(K, Y[:, :, f], mask, 0.1, method=method)
                         for f in range(d)], -1)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("change, kwargs, message", [
    (lambda X: X.__setitem__((2, 3, 1), np.nan), {}, r"\(row 2, column 3\) is partly missing"),
    (lambda X: X.__setitem__((1, 1, 0), np.inf), {}, "inf at row 1, column 1"),
    (lambda X: None, {"mode": "rows-chained"}, "does not apply to vector entries"),
    (lambda X: None, {"mode": "cols-chained"}, "does not apply to vector entries"),
])
def test_vector_input_errors(change, kwargs, message):
    X, _, _ = _tensor()
    X[1, 1] = X[2, 3] = 1.0  # observed fibres
    change(X)
    with pytest.raises(ValueError, match=message):
        NTKImputer(**kwargs).fit(X)


def test_transform_refuses_other_entry_shape():
    X, _, _ = _tensor(d=3)
    imp = NTKImputer(mode="rows", prior="onehot", depth=1, ridge=0.1).fit(X)
    with pytest.raises(ValueError, match=r"entries of shape \(2,\)"):
        imp.transform(X[:3, :, :2])
    with pytest.raises(ValueError, match="2-D matrix .or 3-D"):
        NTKImputer().fit(X[..., None])


def test_auto_leaves_softimpute_out_above_the_unfolded_svd_cost(monkeypatch):
    import completion.matrix
    X, _, _ = _tensor(m=20, n=12, d=3)
    small = NTKImputer(random_state=0, depth=1, ridge=0.03).fit(X)
    assert any("softimpute" in str(r.get("prior", r["mode"])) for r in small.cv_results_)
    monkeypatch.setattr(completion.matrix, "AUTO_UNFOLDED_SVD_FLOPS", 4.0 * 20 * 36 * 20 - 1)
    monkeypatch.setattr(completion.matrix, "SCREEN_MARGIN", np.inf)  # every mode scored in full
    large = NTKImputer(random_state=0, depth=1, ridge=0.03).fit(X)
    assert not any("softimpute" in str(r.get("prior", r["mode"])) for r in large.cv_results_)
    assert {r["mode"] for r in large.cv_results_} == {"rows", "cols", "joint"}
