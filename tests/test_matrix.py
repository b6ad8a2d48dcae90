"""NTKImputer and feature priors: dense brute-force oracles, accuracy against the additive
baseline on data with known structure, labels, and every validation error."""
import numpy as np
import pandas as pd
import pytest

import completion.matrix as matrix_module
from completion.matrix import NTKImputer
from completion.matrix_demo import synthetic_screen
from completion.priors import PriorSpec, align_features, build_prior, parse_prior, profile_prior
from models.ntk import FullyConnectedNTK


def small_matrix(m=9, n=7, seed=0, missing=0.3):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, 2)) @ rng.standard_normal((2, n)) + rng.standard_normal(n)
    X[rng.random((m, n)) < missing] = np.nan
    X[0, 0] = 1.5  # every row and column keeps an observation
    return X


def additive_by_loops(X):
    """mu_j + a_i written as plain loops over the observed entries."""
    m, n = X.shape
    col = np.array([np.mean([X[i, j] for i in range(m) if not np.isnan(X[i, j])]) for j in range(n)])
    row = np.array([np.mean([X[i, j] - col[j] for j in range(n) if not np.isnan(X[i, j])])
                    for i in range(m)])
    return col[None, :] + row[:, None]


def standardised_unit(F):
    F = (F - F.mean(0)) / F.std(0)
    return F / np.sqrt(np.mean(np.sum(F**2, 1)))


def dense_oracle(X, entry_input, depth, ridge):
    """Brute force: explicit input vector per entry, the NTK between them, a dense solve."""
    m, n = X.shape
    base = additive_by_loops(X)
    obs = [(i, j) for i in range(m) for j in range(n) if not np.isnan(X[i, j])]
    allp = [(i, j) for i in range(m) for j in range(n)]
    kern = FullyConnectedNTK(depth=depth)
    Z_obs = np.array([entry_input(i, j) for i, j in obs])
    Z_all = np.array([entry_input(i, j) for i, j in allp])
    K = kern.ntk(Z_obs, device="cpu")
    K_all = kern.ntk(Z_all, Z_obs, device="cpu")
    y = np.array([X[i, j] - base[i, j] for i, j in obs])
    alpha = np.linalg.solve(K + ridge * np.mean(np.diag(K)) * np.eye(len(obs)), y)
    return (K_all @ alpha).reshape(m, n) + base


def test_joint_onehot_matches_dense_entry_kernel():
    X = small_matrix()
    m, n = X.shape
    a = b = np.sqrt(0.5)
    z = lambda i, j: np.concatenate([a * np.eye(m)[i], b * np.eye(n)[j]])
    expected = dense_oracle(X, z, depth=2, ridge=0.05)
    imp = NTKImputer(mode="joint", prior="onehot", depth=2, ridge=0.05, device="cpu").fit(X)
    assert imp.chosen_["solver"] == "structured"
    rows, cols = np.indices(X.shape).reshape(2, -1)
    np.testing.assert_allclose(imp.predict_entries(rows, cols), expected.ravel(), rtol=1e-7, atol=1e-9)


def test_joint_dense_features_matches_dense_entry_kernel():
    X = small_matrix(seed=1)
    m, n = X.shape
    rng = np.random.default_rng(5)
    Fr, Fc = rng.standard_normal((m, 3)), rng.standard_normal((n, 4))
    r, c = standardised_unit(Fr), standardised_unit(Fc)
    z = lambda i, j: np.concatenate([np.sqrt(0.5) * r[i], np.sqrt(0.5) * c[j]])
    expected = dense_oracle(X, z, depth=1, ridge=0.1)
    for solver in ("exact", "cg"):
        imp = NTKImputer(mode="joint", prior="features", depth=1, ridge=0.1, row_features=Fr,
                         col_features=Fc, solver=solver, device="cpu", scale=None).fit(X)
        full = imp.predict_entries(*np.indices(X.shape).reshape(2, -1)).reshape(m, n)
        np.testing.assert_allclose(full, expected, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("mode", ["rows", "cols"])
def test_rows_and_cols_modes_match_dense_entry_kernel(mode):
    X = small_matrix(seed=2)
    m, n = X.shape
    rng = np.random.default_rng(3)
    F = rng.standard_normal((m if mode == "rows" else n, 3))
    p = standardised_unit(F)
    # the entry kernel straight from its definition: [j == j'] NTK(r_i, r_i') (rows mode)
    kern = FullyConnectedNTK(depth=2)
    base = additive_by_loops(X)
    obs = [(i, j) for i in range(m) for j in range(n) if not np.isnan(X[i, j])]
    Kp = kern.ntk(p, device="cpu")
    if mode == "rows":
        same, item = (lambda e, f: e[1] == f[1]), (lambda e: e[0])
    else:
        same, item = (lambda e, f: e[0] == f[0]), (lambda e: e[1])
    K = np.array([[Kp[item(e), item(f)] * same(e, f) for f in obs] for e in obs])
    y = np.array([X[e] - base[e] for e in obs])
    alpha = np.linalg.solve(K + 0.02 * np.mean(np.diag(K)) * np.eye(len(obs)), y)
    allp = [(i, j) for i in range(m) for j in range(n)]
    K_all = np.array([[Kp[item(e), item(f)] * same(e, f) for f in obs] for e in allp])
    expected = (K_all @ alpha).reshape(m, n) + base
    kw = {"row_features": F} if mode == "rows" else {"col_features": F}
    imp = NTKImputer(mode=mode, prior="features", depth=2, ridge=0.02, device="cpu", **kw).fit(X)
    full = imp.predict_entries(*np.indices(X.shape).reshape(2, -1)).reshape(m, n)
    np.testing.assert_allclose(full, expected, rtol=1e-7, atol=1e-9)


def test_beats_additive_baseline_on_low_rank_structure():
    observed, truth, feats = synthetic_screen(n_cells=120, n_drugs=40, seed=3)
    X = observed.to_numpy()
    hidden = np.isnan(X)
    T = truth.to_numpy()
    imp = NTKImputer(mode="rows", prior="profile", depth=1, ridge=0.03, refine=1)
    done = imp.fit_transform(X)
    base = additive_by_loops(X)
    rmse = lambda P: np.sqrt(np.mean((P[hidden] - T[hidden]) ** 2))
    assert rmse(done) < 0.5 * rmse(base)
    # features predict rows that are missing entirely; the additive baseline cannot
    Xn = X.copy()
    Xn[:10] = np.nan
    done = NTKImputer(mode="rows", prior="features", depth=1, ridge=0.03,
                      row_features=feats.to_numpy()).fit_transform(Xn)
    col_mean_error = np.sqrt(np.mean((T[:10] - np.nanmean(Xn, 0)) ** 2))
    assert np.sqrt(np.mean((done[:10] - T[:10]) ** 2)) < 0.85 * col_mean_error


def test_auto_single_best_chooses_by_cv_and_reports():
    observed, truth, feats = synthetic_screen(n_cells=60, n_drugs=20, seed=4)
    imp = NTKImputer(mode="auto", random_state=0, refine=0, stack=1).fit(observed)
    assert imp.chosen_["mode"] in ("rows", "cols", "joint", "rows-chained", "cols-chained")
    kernel_results = [r for r in imp.cv_results_ if r["mode"] != "softimpute"]
    best = min(kernel_results, key=lambda r: r["cv_rmse"])
    assert {k: best[k] for k in imp.chosen_} == imp.chosen_
    modes = {r["mode"] for r in imp.cv_results_}
    assert {"rows", "cols", "joint", "rows-chained"} <= modes
    # each of the 60 rows has about 16 observed drugs: too few points for cols-chained
    per_row = (~np.isnan(observed)).sum(1).mean()
    assert per_row < matrix_module.CHAINED_MIN_POINTS["cols-chained"]
    assert "cols-chained" not in modes


def test_auto_default_is_a_convex_combination_of_refitted_components():
    observed, _, _ = synthetic_screen(n_cells=50, n_drugs=16, seed=5)
    imp = NTKImputer(random_state=0, refine=1, scale=None).fit(observed)  # the oracle's units
    assert imp.chosen_["mode"] == "stack"
    comps = imp.chosen_["components"]
    weights = np.array([c["weight"] for c in comps])
    assert len(comps) >= 2 and np.all(weights > 0) and weights.sum() == pytest.approx(1.0)
    assert len({(c["fit"]["mode"], str(c["fit"].get("prior"))) for c in comps}) == len(comps)
    np.testing.assert_allclose(imp.completed_, refitted(imp.chosen_, observed, imp),
                               rtol=1e-6, atol=1e-8)


def refitted(chosen, observed, imp):
    """Oracle: a combination's completion from its components, each refitted on its own with its
    configuration given explicitly; an @stack prior is the same prior @matrix with the source
    combination's completion (refitted the same way, observed values kept) as prior_matrix."""
    from completion.softimpute import FRACTIONS, soft_impute_path
    X = observed.to_numpy()
    source = None
    if "source" in chosen:
        source = np.where(np.isnan(X), refitted(chosen["source"], observed, imp), X)
    total = np.zeros_like(X)
    for c in chosen["components"]:
        fit = c["fit"]
        if fit["mode"] == "softimpute":
            frac = imp._softimpute_fraction
            *_, (_, part) = soft_impute_path(X, ~np.isnan(X), [f for f in FRACTIONS if f >= frac])
        else:
            kw = {k: fit[k] for k in ("mode", "depth", "ridge")}
            if fit["mode"] in ("rows", "cols", "joint"):
                kw["prior"] = fit["prior"]
                if fit["prior"].endswith("@stack"):
                    kw.update(prior=fit["prior"].replace("@stack", "@matrix"), prior_matrix=source)
            if fit["ridge"] == "loo":
                kw["ridge"] = "auto"
            if fit.get("offsets", "baseline") != "baseline":  # not an estimator parameter
                part = chained_with_offsets(X, fit, refine=1)
            else:
                part = NTKImputer(random_state=0, refine=1, scale=None,
                                  **kw).fit(observed).completed_
        total += c["weight"] * part
    return total


def chained_with_offsets(X, fit, refine):
    """A chained component with non-default offsets, refitted by chained_fit itself (the
    kernels as NTKImputer builds them: the NTK with biases, with and without a linear skip)."""
    from completion.chained import LinearSkip, chained_fit
    mask = ~np.isnan(X)
    kern = FullyConnectedNTK(fit["depth"], bias_var=matrix_module.CHAINED_BIAS_VAR)
    return chained_fit((kern, LinearSkip(kern)), X, mask, matrix_module.additive_baseline(X, mask),
                       1 + refine, "loo", matrix_module.CHAINED_AXIS[fit["mode"]], 0,
                       neighbours="loo", offsets=fit["offsets"])


def test_auto_second_round_reads_the_first_combination_and_walks_its_ridge():
    """The second round's candidates (rows and cols mode, STACK_PRIORS) are scored after the
    first combination; each walked ridge is a local minimum of the ridges scored for it, and
    those ridges are contiguous on STACK_RIDGE_GRID; a chosen @stack component carries that
    first combination as its source (whose completion is checked by the oracle above)."""
    from completion.matrix import STACK_PRIORS, STACK_RIDGE_GRID
    observed, _, _ = synthetic_screen(n_cells=50, n_drugs=16, seed=5)
    imp = NTKImputer(random_state=0, refine=1).fit(observed)
    second = [r for r in imp.cv_results_ if str(r.get("prior")).endswith("@stack")]
    assert {(r["mode"], r["prior"]) for r in second} >= {(mo, p) for mo in ("rows", "cols")
                                                         for p in STACK_PRIORS}
    for mode in ("rows", "cols"):
        walked = [r for r in second if r["mode"] == mode and r["ridge"] != 0.03]
        assert len({r["prior"] for r in walked}) == 1   # the better prior only
        ridges = {r["ridge"]: r["cv_rmse"] for r in second if r["mode"] == mode
                  and r["prior"] == walked[0]["prior"]}
        at = sorted(STACK_RIDGE_GRID.index(r) for r in ridges)
        assert at == list(range(at[0], at[-1] + 1)) and len(at) >= 3
        best = min(ridges, key=ridges.get)
        assert best not in (STACK_RIDGE_GRID[at[0]], STACK_RIDGE_GRID[at[-1]]) or \
            best in (STACK_RIDGE_GRID[0], STACK_RIDGE_GRID[-1])
    assert imp.chosen_["mode"] == "stack"
    if any(c["fit"].get("prior", "").endswith("@stack") for c in imp.chosen_["components"]):
        assert imp.chosen_["source"]["mode"] == "stack"


def test_auto_second_combination_is_taken_only_when_its_held_out_rmse_is_lower(monkeypatch):
    """The second round's combination replaces the first only where it scores better on the
    held-out entries: on a drug-screen-like matrix the two differ by 1e-6 the wrong way and
    the first is kept; on a table the second is better and is taken (with its source)."""
    from test_auto_quality import _table
    calls = []
    combination = NTKImputer._combination

    def recorded(self, *args):
        calls.append(combination(self, *args))
        return calls[-1]
    monkeypatch.setattr(NTKImputer, "_combination", recorded)
    screen = synthetic_screen(n_cells=40, n_drugs=12, seed=3)[0].to_numpy()
    outcomes = []
    for X in (screen, _table(seed=2, m=60)):
        calls.clear()
        chosen = NTKImputer(random_state=0, refine=1).fit(X).chosen_
        (first, first_rmse), (second, second_rmse) = calls
        if second_rmse >= first_rmse:
            assert chosen == first
        else:
            assert chosen["components"] == second["components"] and chosen["source"] == first
        outcomes.append(second_rmse < first_rmse)
    assert outcomes == [False, True]


def test_tiny_matrices_complete_and_unrelated_errors_are_not_swallowed(monkeypatch):
    X = np.array([[1.0, 2.0, np.nan], [2.0, np.nan, 4.0], [3.0, 4.0, 5.0]])
    for kw in ({}, {"mode": "rows"}, {"mode": "rows", "ridge": 1.0}, {"mode": "cols"}):
        done = NTKImputer(**kw).fit_transform(X)
        assert np.isfinite(done).all() and np.array_equal(done[~np.isnan(X)], X[~np.isnan(X)])
    # a constant matrix: the profiles are all zero, the kernel predicts no residual
    const = np.array([[1.0, 1.0, np.nan], [1.0, np.nan, 1.0], [1.0, 1.0, 1.0]])
    np.testing.assert_allclose(NTKImputer(mode="rows").fit_transform(const), 1.0)

    def broken(self, *args, **kwargs):
        raise ValueError("the real cause")
    monkeypatch.setattr(NTKImputer, "_complete", broken)
    with pytest.raises(ValueError, match="the real cause"):
        NTKImputer(mode="rows").fit(X)


def test_empty_column_is_filled_from_row_effects_and_global_mean_with_a_warning():
    rng = np.random.default_rng(0)
    ratings = rng.integers(1, 6, size=(30, 8)).astype(float)
    ratings[rng.random(ratings.shape) < 0.2] = np.nan
    ratings[:, 5] = np.nan
    frame = pd.DataFrame(ratings, columns=[f"item{j}" for j in range(8)])
    with pytest.warns(UserWarning, match="column.*'item5'.*no observed entry"):
        done = NTKImputer(mode="rows", prior="profile", depth=1, ridge=0.1).fit_transform(frame)
    filled = done["item5"].to_numpy()
    base = additive_by_loops(np.delete(ratings, 5, axis=1))  # row effects of the other columns
    row_effect = base[:, 0] - np.nanmean(np.delete(ratings, 5, axis=1), 0)[0]
    expected = np.nanmean(ratings) + row_effect  # global mean plus the row's offset
    np.testing.assert_allclose(filled, expected, atol=1e-9)
    assert 1.0 <= filled.mean() <= 5.0


def test_an_extreme_value_is_reported_by_row_and_column():
    rng = np.random.default_rng(1)
    ratings = rng.integers(1, 6, size=(20, 6)).astype(float)
    ratings[rng.random(ratings.shape) < 0.2] = np.nan
    ratings[7, 2] = 1e12
    frame = pd.DataFrame(ratings, index=[f"user{i}" for i in range(20)], columns=list("abcdef"))
    with pytest.warns(UserWarning, match="1e\\+12 at row 'user7', column 'c'"):
        NTKImputer(mode="rows", prior="profile", depth=1, ridge=0.1).fit(frame)
    ratings[7, 2] = 4.0  # ordinary data: no warning
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        NTKImputer(mode="rows", prior="profile", depth=1, ridge=0.1).fit(ratings)


def test_sparse_columns_are_not_reported_as_extreme():
    """A column of mostly zeros with a few large counts (MAD 0) is data, not a typo: judged on
    the whole matrix's spread it raises no warning; a 1e12 typo in such a column still does."""
    rng = np.random.default_rng(2)
    counts = rng.poisson(3.0, size=(1000, 6)).astype(float)
    counts[:, 4] = 0.0
    counts[rng.choice(1000, 2, replace=False), 4] = [12.0, 16.0]  # as in scikit-learn's digits
    counts[rng.random(counts.shape) < 0.1] = np.nan
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        NTKImputer(mode="rows", prior="profile", depth=1, ridge=0.1).fit(counts)
    counts[np.flatnonzero(counts[:, 4] == 0)[0], 4] = 1e12
    with pytest.warns(UserWarning, match="1e\\+12 at row"):
        NTKImputer(mode="rows", prior="profile", depth=1, ridge=0.1).fit(counts)


def test_dataframe_in_dataframe_out_observed_unchanged():
    X = small_matrix()
    frame = pd.DataFrame(X, index=[f"r{i}" for i in range(X.shape[0])],
                         columns=[f"c{j}" for j in range(X.shape[1])])
    out = NTKImputer(mode="cols", prior="profile", depth=1, ridge=0.1).fit_transform(frame)
    assert isinstance(out, pd.DataFrame)
    assert list(out.index) == list(frame.index) and list(out.columns) == list(frame.columns)
    obs = ~np.isnan(X)
    assert np.array_equal(out.to_numpy()[obs], X[obs])
    assert np.isfinite(out.to_numpy()).all()
    arr = NTKImputer(mode="rows", prior="onehot", depth=1, ridge=0.1).fit_transform(X)
    assert isinstance(arr, np.ndarray) and np.array_equal(arr[obs], X[obs])


def test_small_ridge_interpolates_observed_entries():
    X = small_matrix()
    imp = NTKImputer(mode="joint", prior="onehot", depth=1, ridge=1e-9).fit(X)
    rows, cols = np.nonzero(~np.isnan(X))
    np.testing.assert_allclose(imp.predict_entries(rows, cols), X[rows, cols], atol=1e-6)


def test_predict_by_labels():
    X = small_matrix()
    frame = pd.DataFrame(X, index=list("abcdefghi"), columns=list("ABCDEFG"))
    imp = NTKImputer(mode="rows", prior="profile", depth=1, ridge=0.1).fit(frame)
    out = imp.transform()
    assert imp.predict_entries(["c"], ["D"])[0] == pytest.approx(imp.completed_[2, 3])
    if np.isnan(X[2, 3]):
        assert out.loc["c", "D"] == pytest.approx(imp.completed_[2, 3])
    with pytest.raises(ValueError, match="unknown row label"):
        imp.predict_entries(["zz"], ["A"])
    ints = pd.DataFrame(X, index=range(100, 109))  # integer labels are labels, not positions
    imp = NTKImputer(mode="rows", prior="profile", depth=1, ridge=0.1).fit(ints)
    assert imp.predict_entries([102], [3])[0] == pytest.approx(imp.completed_[2, 3])


# -- priors --------------------------------------------------------------------------------------
def test_parse_prior():
    assert parse_prior("profile") == PriorSpec("profile")
    assert parse_prior("lowrank:7") == PriorSpec("lowrank", 7)
    assert parse_prior("features+identity:0.5") == PriorSpec("features", None, 0.5)
    assert parse_prior("profile+identity") == PriorSpec("profile", None, 1.0)
    assert str(parse_prior("lowrank:3+identity:2")) == "lowrank:3+identity:2"
    assert parse_prior("profile:unscaled@stack") == PriorSpec("profile", source="stack",
                                                              scaled=False)
    assert str(parse_prior("profile:unscaled@softimpute")) == "profile:unscaled@softimpute"
    for bad in ("pca", "lowrank:x", "onehot+identity:1", "features+identity:-1"):
        with pytest.raises(ValueError):
            parse_prior(bad)


def test_profile_prior_by_hand():
    X = np.array([[1.0, 2.0, np.nan], [3.0, np.nan, 5.0], [0.0, 4.0, 1.0]])
    mask = ~np.isnan(X)
    # column means (4/3, 3, 3) plus the row's mean offset from them: row 0 -2/3, row 1 +11/6
    filled = np.array([[1.0, 2.0, 3 - 2 / 3], [3.0, 3 + 11 / 6, 5.0], [0.0, 4.0, 1.0]])
    filled -= filled.mean(1, keepdims=True)
    expected = (filled - filled.mean(0)) / filled.std(0)
    np.testing.assert_allclose(profile_prior(X, mask), expected)


def test_unscaled_profile_is_the_profile_before_its_coordinates_are_scaled():
    X = small_matrix(seed=3)
    mask = ~np.isnan(X)
    U = profile_prior(X, mask, scaled=False)
    np.testing.assert_allclose(U.mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(U / U.std(0), profile_prior(X, mask), atol=1e-12)
    P = build_prior("profile:unscaled", X, mask)
    np.testing.assert_allclose(P, U / np.sqrt(np.mean(np.sum(U**2, 1))))


def test_identity_prior_rows_have_unit_norm_and_weight():
    F = np.random.default_rng(0).standard_normal((5, 3))
    P = build_prior("features+identity:0.5", np.zeros((5, 2)), np.ones((5, 2), bool), features=F)
    np.testing.assert_allclose(np.linalg.norm(P, axis=1), 1.0)
    np.testing.assert_allclose(P[:, 3:], np.eye(5) * 0.5 / np.sqrt(1.25))


def test_lowrank_prior_recovers_row_space():
    rng = np.random.default_rng(1)
    U = rng.standard_normal((40, 2))
    X = U @ rng.standard_normal((2, 15))
    mask = rng.random(X.shape) > 0.1
    P = build_prior("lowrank:2", X, mask)
    # the column-centred matrix has the embedding's span (projection residual ~ 0)
    Xc = X - X.mean(0)
    coef, *_ = np.linalg.lstsq(P, Xc, rcond=None)
    assert np.linalg.norm(P @ coef - Xc) < 0.05 * np.linalg.norm(Xc)


# -- validation ----------------------------------------------------------------------------------
@pytest.mark.parametrize("X, message", [
    (np.ones(5), "2-D"),
    (np.ones((2, 2, 2, 2)), "2-D"),
    (np.array([[1.0, np.inf], [1.0, 2.0]]), "inf at row 0, column 1"),
    (np.full((3, 2), np.nan), "no observed entry"),
    (np.array([["a", "b"], ["c", "d"]]), "numeric"),
    (np.zeros((0, 3)), "empty"),
])
def test_matrix_validation(X, message):
    """(each error names what is wrong)"""
    with pytest.raises(ValueError, match=message):
        NTKImputer(prior="onehot", depth=1, ridge=0.1).fit(X)


def test_feature_label_errors_list_labels():
    X = pd.DataFrame(small_matrix(4, 3), index=["a", "b", "c", "d"], columns=["x", "y", "z"])
    feats = pd.DataFrame({"f": [1.0, 2.0, 3.0, 4.0]}, index=["a", "b", "c", "e"])
    with pytest.raises(ValueError, match=r"missing 1 row label.*: d; and have 1 label.*: e"):
        NTKImputer(prior="features", row_features=feats, depth=1, ridge=0.1).fit(X)
    feats = pd.DataFrame({"f": [1.0, np.nan, 3.0, 4.0]}, index=["a", "b", "c", "d"])
    with pytest.raises(ValueError, match="NaN or inf at row 'b', feature 'f'"):
        NTKImputer(prior="features", row_features=feats, depth=1, ridge=0.1).fit(X)
    with pytest.raises(ValueError, match="features have 2 rows but the matrix has 4 rows"):
        NTKImputer(prior="features", row_features=np.ones((2, 3)), depth=1, ridge=0.1).fit(X)
    with pytest.raises(ValueError, match="needs row_features"):
        NTKImputer(prior="features", depth=1, ridge=0.1).fit(X)


def test_categorical_features_are_encoded():
    feats = pd.DataFrame({"tissue": ["lung", "skin", "lung"], "x": [1.0, 0.0, 2.0]},
                         index=[10, 11, 12])
    values = align_features(feats, [12, 10, 11])
    assert values.shape == (3, 3)
    np.testing.assert_allclose(values[:, 0], [2.0, 1.0, 0.0])


@pytest.mark.parametrize("params, message", [
    ({"mode": "diagonal"}, "mode must be"),
    ({"depth": 0}, "depth must be"),
    ({"ridge": -1.0}, "ridge must be"),
    ({"activation": "tanh"}, "activation must be"),
    ({"prior": "pca"}, "cannot read prior"),
    ({"solver": "structured", "mode": "rows", "prior": "onehot"}, "does not apply"),
    ({"solver": "structured", "mode": "joint", "prior": "profile"}, "needs one-hot"),
    ({"cv_folds": 1}, "cv_folds"),
    ({"prior": "profile@stack"}, "chosen by prior='auto' only"),
])
def test_parameter_validation(params, message):
    kw = {"depth": 1, "ridge": 0.1, "prior": "onehot"}
    kw.update(params)
    with pytest.raises(ValueError, match=message):
        NTKImputer(**kw).fit(small_matrix())


def test_unfitted_and_other_matrix_errors():
    with pytest.raises(ValueError, match="not fitted"):
        NTKImputer().predict_entries([0], [0])
    imp = NTKImputer(mode="rows", prior="onehot", depth=1, ridge=0.1).fit(small_matrix())
    with pytest.raises(ValueError, match="X has 3 features, but NTKImputer is expecting 7"):
        imp.transform(small_matrix(seed=5)[:, :3])
    with pytest.raises(ValueError, match="outside"):
        imp.predict_entries([100], [0])


def test_transform_of_new_rows_completes_them_with_the_fitted_rows():
    X, Y = small_matrix(seed=1), small_matrix(6, 7, seed=8)
    # in the input's units (scale=None): a scale fitted on X alone differs from the stack's
    imp = NTKImputer(mode="rows", prior="profile", depth=2, ridge=0.05, scale=None).fit(X)
    stacked = NTKImputer(mode="rows", prior="profile", depth=2, ridge=0.05,
                         scale=None).fit_transform(np.vstack([X, Y]))
    np.testing.assert_allclose(imp.transform(Y), stacked[len(X):], rtol=1e-10)
    np.testing.assert_array_equal(imp.transform(X), imp.fit_transform(X))  # the fitted matrix


def test_cv_folds_keep_single_observations_in_training():
    X = small_matrix(12, 8, seed=6)
    X[3, :] = np.nan
    X[3, 5] = 0.7  # the only observation of row 3
    imp = NTKImputer(mode="rows", prior="profile", random_state=1, cv_folds=2, cv_max_folds=2)
    imp._validate_params()
    folds = imp._folds(~np.isnan(X))
    assert len(folds) == 2 and not any(f[3, 5] for f in folds)
    assert np.isfinite(imp.fit(X).transform()).all()


@pytest.mark.parametrize("shape, expected", [((40, 10), 20), ((120, 40), 4), ((300, 40), 3),
                                             ((1200, 40), 1)])
def test_default_cv_holds_out_small_folds_until_enough_entries(shape, expected):
    """Default CV: folds of 1/20 of the observed entries (each validation fit sees nearly the
    final fit's missing entries), as many as hold out MIN_VALIDATION_ENTRIES, at most 4, or on a
    small matrix as many as keep the evaluated folds' observed entries within SMALL_CV_ENTRIES
    (all 20 on 40 x 10, 4 on 120 x 40)."""
    from completion.cv_grid import MIN_VALIDATION_ENTRIES, SMALL_CV_ENTRIES, evaluated_folds
    X = small_matrix(*shape, seed=2)
    mask = ~np.isnan(X)
    imp = NTKImputer(random_state=0)
    folds = imp._folds(mask)
    n = int(mask.sum())
    assert len(folds) == expected == evaluated_folds(n, 20, "auto")
    assert expected <= max(4, SMALL_CV_ENTRIES // n)
    sizes = [int(f.sum()) for f in folds]
    assert all(abs(s - n / 20) <= 1 for s in sizes)  # no entry here is alone in its row/column
    assert sum(sizes) >= min(MIN_VALIDATION_ENTRIES, expected * n // 20)
    assert not np.logical_and(folds[0], folds[-1]).any() or len(folds) == 1
    assert evaluated_folds(n, 20, 1) == 1 and evaluated_folds(n, 3, 4) <= 3
    assert evaluated_folds(n, 20, 4) == min(4, expected)  # an explicit cap holds


def test_auto_solver_takes_nystrom_where_the_dense_exact_inverse_costs_too_much(monkeypatch):
    """A dense rows (cols) fit takes the exact 'shared' solver while N^3 <= DENSE_SHARED_FLOPS
    and the Nystrom solver above it; an explicit solver is kept."""
    X = small_matrix(60, 8, seed=3)
    monkeypatch.setattr(matrix_module, "DENSE_SHARED_FLOPS", 1e5)  # 8^3 below, 60^3 above
    fixed = dict(prior="profile", depth=1, ridge=0.03)
    assert NTKImputer(mode="rows", **fixed).fit(X).chosen_["solver"] == "nystrom"
    assert NTKImputer(mode="cols", **fixed).fit(X).chosen_["solver"] == "shared"
    assert NTKImputer(mode="rows", solver="shared", **fixed).fit(X).chosen_["solver"] == "shared"
    # auto: both rounds (the second's priors read the first combination) follow the same rule
    results = NTKImputer(random_state=0, refine=0).fit(X).cv_results_
    solvers = {(r["mode"], str(r["prior"]).endswith("@stack"), r["solver"]) for r in results
               if r["mode"] in ("rows", "cols")}
    assert solvers == {(mode, second, solver) for mode, solver in (("rows", "nystrom"),
                       ("cols", "shared")) for second in (False, True)}
    monkeypatch.setattr(matrix_module, "DENSE_SHARED_FLOPS", 1e11)
    assert NTKImputer(mode="rows", **fixed).fit(X).chosen_["solver"] == "shared"


def _mixed_units(seed=0):
    """A 40 x 5 table whose columns are in different units (standard deviations 0.5 to 500)."""
    rng = np.random.default_rng(seed)
    L = rng.standard_normal((40, 2))
    Z = L @ rng.standard_normal((2, 5)) + 0.3 * rng.standard_normal((40, 5))
    X = Z * np.array([500.0, 0.5, 3.0, 40.0, 1.0]) + np.array([2000.0, 0.5, 10.0, 0.0, -3.0])
    X[rng.random(X.shape) < 0.2] = np.nan
    return X


def test_scale_auto_fits_mixed_units_on_standardised_columns():
    """scale="auto" standardises columns whose standard deviations spread more than
    SCALE_RATIO-fold (spread_ratio): the completion is that of the standardised table (fitted
    in its units), mapped back; observed entries are kept exactly; a column's unit does not
    matter."""
    X = _mixed_units()
    imp = NTKImputer(random_state=0, stack=1, refine=1).fit(X)
    means, sds = np.nanmean(X, 0), np.nanstd(X, 0)
    np.testing.assert_allclose(imp.scale_[0], means)
    np.testing.assert_allclose(imp.scale_[1], sds)
    oracle = NTKImputer(random_state=0, stack=1, refine=1, scale=None).fit((X - means) / sds)
    assert oracle.scale_ is None and oracle.chosen_ == imp.chosen_
    np.testing.assert_allclose((imp.completed_ - means) / sds, oracle.completed_, atol=1e-6)
    done = imp.transform()
    assert np.array_equal(done[~np.isnan(X)], X[~np.isnan(X)]) and np.isfinite(done).all()
    rescaled = X * np.array([1.0, 1000.0, 1.0, 1.0, 1.0])  # column 1 in other units
    again = NTKImputer(random_state=0, stack=1, refine=1).fit(rescaled).completed_
    np.testing.assert_allclose(again[:, 1] / 1000.0, imp.completed_[:, 1], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.delete((again - imp.completed_) / sds, 1, 1), 0.0, atol=1e-6)


def test_scale_auto_keeps_the_units_of_commensurate_columns_and_scale_is_validated():
    X = small_matrix(30, 6, seed=3)  # column spreads within a factor of 10
    sds = np.nanstd(X, 0)
    assert matrix_module.spread_ratio(sds) <= matrix_module.SCALE_RATIO
    q10, q90 = 1.0 + 0.4 * 1.0, 8.0 + 0.6 * 92.0  # percentiles of 1, 2, 4, 8, 100 by hand
    assert matrix_module.spread_ratio([1.0, 2.0, 100.0, 4.0, 8.0, 0.0]) == pytest.approx(q90 / q10)
    assert matrix_module.spread_ratio([3.0, 0.0]) == 1.0
    imp = NTKImputer(mode="rows", prior="profile", depth=1, ridge=0.1).fit(X)
    assert imp.scale_ is None
    fixed = NTKImputer(mode="rows", prior="profile", depth=1, ridge=0.1, scale=None).fit(X)
    np.testing.assert_array_equal(imp.completed_, fixed.completed_)
    forced = NTKImputer(mode="rows", prior="profile", depth=1, ridge=0.1, scale="columns").fit(X)
    np.testing.assert_allclose(forced.scale_[1], sds)
    with pytest.raises(ValueError, match=r"scale must be auto or one of \['columns', None\], got 'rows'"):
        NTKImputer(scale="rows").fit(X)


def test_new_rows_are_completed_in_the_fitted_units():
    """transform() of new rows of a mixed-unit table: the fitted scale is applied to them and
    undone; the rows' observed entries are kept."""
    X = _mixed_units(seed=1)
    imp = NTKImputer(mode="rows", prior="profile", depth=1, ridge=0.1).fit(X[:30])
    assert imp.scale_ is not None
    done = imp.transform(X[30:])
    oracle = NTKImputer(mode="rows", prior="profile", depth=1, ridge=0.1, scale=None)
    means, sds = imp.scale_
    oracle.fit((X[:30] - means) / sds)
    expected = oracle.transform((X[30:] - means) / sds) * sds + means
    np.testing.assert_allclose((done - expected) / sds, 0.0, atol=1e-6)
    assert np.array_equal(done[~np.isnan(X[30:])], X[30:][~np.isnan(X[30:])])


def test_progress_shows_the_fit_stages_on_stderr_and_nothing_without_it(capfd):
    """progress=True writes one status line on stderr, rewritten in place ('\\r'): the
    cross-validation, the candidates scored and the final fit; the default writes nothing."""
    X = synthetic_screen(30, 12, seed=0)[0]  # 20% missing
    done = NTKImputer(random_state=0, refine=0, progress=True).fit(X).completed_
    err = capfd.readouterr().err
    stages = [line.strip() for line in err.split("\r") if line.strip()]
    assert stages and all(line.startswith("NTKImputer: ") for line in stages)
    text = "\n".join(stages)
    for said in ("cross-validation of ", "CV RMSE ", "final fit"):
        assert said in text
    quiet = NTKImputer(random_state=0, refine=0).fit(X).completed_
    assert capfd.readouterr().err == ""
    np.testing.assert_array_equal(done, quiet)


def test_fit_progress_is_off_in_a_copy_for_another_process():
    """A fit's status line belongs to the process that shows it: a pickled copy (as shipped
    to Dask workers with the imputer) shows nothing."""
    import pickle

    from completion.fit_progress import FitProgress
    with FitProgress(True) as shown:
        copy = pickle.loads(pickle.dumps(shown))
    assert shown.enabled and not copy.enabled
    with copy:
        copy.stage("nothing to show")  # no terminal line, no thread
    assert copy._bar is None and copy._ticker is None
