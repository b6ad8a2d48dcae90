"""NTKImputer under scikit-learn's estimator contract: the library's own estimator checks,
clone / get_params / set_params, check_is_fitted, feature names, Pipeline and GridSearchCV."""
import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks
from sklearn.utils.validation import check_is_fitted

from completion.matrix import NTKImputer


@parametrize_with_checks([NTKImputer(mode="rows", prior="profile", depth=1, ridge=0.1),
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
