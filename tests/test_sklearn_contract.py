"""NTKImputer under scikit-learn's estimator contract: the library's own estimator checks,
clone / get_params / set_params, check_is_fitted, feature names, Pipeline and GridSearchCV,
set_output."""
import numpy as np
import pandas as pd
import pytest
from sklearn import config_context
from sklearn.base import clone
from sklearn.compose import ColumnTransformer
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import check_set_output_transform, parametrize_with_checks
from sklearn.utils.validation import check_is_fitted

from completion.matrix import NTKImputer


FIXED = dict(mode="rows", prior="profile", depth=1, ridge=0.1)  # no CV: quick, deterministic


@parametrize_with_checks([NTKImputer(**FIXED),
                          NTKImputer(mode="rows-chained", ridge=0.1, refine=0)])
def test_scikit_learn_estimator_checks(estimator, check):
    # Transform of a matrix other than the fitted one completes its rows together with the
    # fitted rows (NTKImputer.transform), so no check has to be marked as an expected failure.
    check(estimator)


def table(seed=0, m=60, missing=0.2):
    """A table whose last column is a smooth function of the others, plus a target."""
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((m, 3))
    X = np.column_stack([Z, np.sin(Z[:, 0]) + Z[:, 1] * Z[:, 2]])
    y = X @ np.array([1.0, -1.0, 0.5, 2.0]) + 0.1 * rng.standard_normal(m)
    X[rng.random(X.shape) < missing] = np.nan
    return X, y


def test_clone_params_fitted_state_and_repr():
    imp = NTKImputer(mode="cols", ridge=0.1)
    assert "mode='cols'" in repr(imp) and "ridge=0.1" in repr(imp)
    assert imp.get_params()["mode"] == "cols" and imp.get_params()["stack"] == 3
    twin = clone(imp).set_params(depth=2)
    assert twin.get_params()["depth"] == 2 and imp.get_params()["depth"] == "auto"
    with pytest.raises(NotFittedError):
        check_is_fitted(imp)
    with pytest.raises(NotFittedError):
        imp.transform()
    X, _ = table()
    frame = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    imp.fit(frame)
    check_is_fitted(imp)
    assert imp.n_features_in_ == 4 and list(imp.feature_names_in_) == ["a", "b", "c", "d"]
    assert not hasattr(imp.fit(X), "feature_names_in_")  # an array has no feature names


def test_pipeline_and_grid_search_over_a_downstream_estimator():
    """The documented way to tune an imputer in scikit-learn: inside a Pipeline, scored by the
    downstream estimator (each test fold's rows are completed with the fitted rows)."""
    X, y = table(seed=3, m=80)
    pipe = make_pipeline(NTKImputer(mode="rows", prior="profile", depth=1), Ridge(alpha=1e-3))
    search = GridSearchCV(pipe, {"ntkimputer__ridge": [0.01, 1.0]}, cv=3,
                          scoring="neg_mean_squared_error").fit(X, y)
    assert set(search.cv_results_["param_ntkimputer__ridge"]) == {0.01, 1.0}
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    pred = search.predict(X)
    # imputing with the kernel beats a regression on column-mean-filled data
    mean_filled = np.where(np.isnan(X), np.nanmean(X, 0), X)
    base = Ridge(alpha=1e-3).fit(mean_filled, y).predict(mean_filled)
    assert np.mean((pred - y) ** 2) < np.mean((base - y) ** 2)


def test_set_output_default_and_pandas():
    """scikit-learn's check that set_output("default") changes nothing; then "pandas", set on
    the imputer or globally: the default output's values in a DataFrame whose columns are
    get_feature_names_out's after an array, the fitted labels after a DataFrame. (scikit-learn's
    pandas checks take the default output of a DataFrame to be an array; here a DataFrame
    gives a DataFrame by default, so they do not apply.)"""
    check_set_output_transform("NTKImputer", NTKImputer(**FIXED))
    X, _ = table()
    plain = NTKImputer(**FIXED).fit_transform(X)
    frame = pd.DataFrame(X, columns=["a", "b", "c", "d"], index=[f"r{i}" for i in range(len(X))])
    for data, columns in ((X, ["x0", "x1", "x2", "x3"]), (frame, ["a", "b", "c", "d"])):
        local = NTKImputer(**FIXED).set_output(transform="pandas").fit(data)
        with config_context(transform_output="pandas"):
            glob = NTKImputer(**FIXED).fit(data)
            outputs = [local.transform(data), glob.transform(data), glob.fit_transform(data)]
        for out in outputs + [local.fit_transform(data)]:
            assert isinstance(out, pd.DataFrame) and list(out.columns) == columns
            assert list(out.index) == list(range(len(X)) if data is X else frame.index)
            np.testing.assert_allclose(out.to_numpy(), plain)
    assert isinstance(NTKImputer(**FIXED).fit_transform(X), np.ndarray)  # the global one reset


def test_set_output_in_a_pipeline_and_a_column_transformer():
    """A Pipeline or ColumnTransformer set to pandas output sets the imputer's: an array in
    gives a DataFrame out (columns x0.. through the pipeline, prefixed names in the column
    transformer), with the values of the default output; clone keeps the setting; an output
    the imputer cannot give is refused by name."""
    X, _ = table()
    plain = NTKImputer(**FIXED).fit_transform(X)
    assert isinstance(plain, np.ndarray)
    out = make_pipeline(NTKImputer(**FIXED)).set_output(transform="pandas").fit_transform(X)
    assert isinstance(out, pd.DataFrame) and list(out.columns) == ["x0", "x1", "x2", "x3"]
    np.testing.assert_allclose(out.to_numpy(), plain)
    frame = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    ct = ColumnTransformer([("imp", NTKImputer(**FIXED), ["a", "b", "c"])],
                           remainder="passthrough").set_output(transform="pandas")
    got = ct.fit_transform(frame)
    assert list(got.columns) == ["imp__a", "imp__b", "imp__c", "remainder__d"]
    assert not got[["imp__a", "imp__b", "imp__c"]].isna().any().any()
    kept = clone(NTKImputer(**FIXED).set_output(transform="pandas"))
    assert isinstance(kept.fit_transform(X), pd.DataFrame)
    with pytest.raises(ValueError, match="transform must be one of"):
        NTKImputer().set_output(transform="polars")
