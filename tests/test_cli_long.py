"""``ntk-complete matrix --long``: long tables in, wide matrices or predicted pairs out; bad
input refused with one line naming the line and the column, exit status 2, nothing written."""
import hashlib
import re

import numpy as np
import pandas as pd
import pytest
import scipy.sparse
from click.testing import CliRunner

from cli import main
from completion.matrix import NTKImputer
from completion.matrix_long import parse_long_spec, read_long_csv, sparse_observed

FAST = ["--mode", "rows", "--prior", "profile", "--depth", "1", "--ridge", "0.05"]


def _ratings(m=12, n=8, d=1, missing=0.3, seed=0):
    """(long DataFrame user,item,v..., dense (m, n, d) truth with NaN where not listed)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(m, 2)) @ rng.normal(size=(2, n * d)) + rng.normal(size=(1, n * d))
    X = X.reshape(m, n, d)
    X[rng.random((m, n)) < missing] = np.nan
    rows, cols = np.nonzero(~np.isnan(X[:, :, 0]))
    order = rng.permutation(rows.size)  # lines in any order
    rows, cols = rows[order], cols[order]
    names = ["rating"] if d == 1 else [f"g{f}" for f in range(d)]
    frame = pd.DataFrame({"user": [f"u{i}" for i in rows], "item": [f"i{j}" for j in cols]})
    for f, name in enumerate(names):
        frame[name] = X[rows, cols, f]
    return frame, X


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_wide_output_equals_the_fit_of_the_dense_matrix(tmp_path):
    frame, _ = _ratings()
    frame["note"] = "x"  # other columns are ignored
    path = tmp_path / "ratings.csv"
    frame.to_csv(path, index=False)
    before = _digest(path)
    out = tmp_path / "wide.csv"
    res = CliRunner().invoke(main, ["matrix", str(path), "--long", "user,item,rating", "-o",
                                    str(out), *FAST])
    assert res.exit_code == 0, res.output
    assert _digest(path) == before
    wide = pd.read_csv(out, index_col=0)
    assert wide.index.name == "user"
    # the same matrix built independently from the long table (labels in first-seen order)
    dense = frame.pivot(index="user", columns="item", values="rating")
    dense = dense.loc[frame["user"].unique(), frame["item"].unique()]
    want = NTKImputer(mode="rows", prior="profile", depth=1, ridge=0.05).fit_transform(
        dense.to_numpy())
    assert list(wide.index) == list(dense.index) and list(wide.columns) == list(dense.columns)
    np.testing.assert_allclose(wide.to_numpy(), want, rtol=1e-12)


def test_predict_pairs_vector_entries_and_observed_values(tmp_path):
    frame, X = _ratings(d=3, seed=1)
    path = tmp_path / "profiles.tsv"
    frame.to_csv(path, index=False, sep="\t")
    pairs = pd.DataFrame({"item": ["i2", "i0", frame["item"][0]],
                          "user": ["u3", "u5", frame["user"][0]]})
    ppath = tmp_path / "pairs.csv"
    pairs.to_csv(ppath, index=False)
    out = tmp_path / "pred.tsv"
    res = CliRunner().invoke(main, ["matrix", str(path), "--long", "user,item,*", "--predict",
                                    str(ppath), "-o", str(out), *FAST])
    assert res.exit_code == 0, res.output
    got = pd.read_csv(out, sep="\t")
    assert list(got.columns) == ["item", "user", "g0", "g1", "g2"]
    assert list(got["user"]) == list(pairs["user"]) and list(got["item"]) == list(pairs["item"])
    # the first line of the table is an observed pair: its values come back as given
    np.testing.assert_array_equal(got.iloc[2, 2:].to_numpy(dtype=float),
                                  frame.iloc[0, 2:].to_numpy(dtype=float))
    table = read_long_csv(path, "user,item,*")
    fit = NTKImputer(mode="rows", prior="profile", depth=1, ridge=0.05).fit(table.dense())
    r = table.row_labels.get_indexer(pairs["user"])
    c = table.col_labels.get_indexer(pairs["item"])
    want = fit.transform()[r, c]
    np.testing.assert_allclose(got.iloc[:, 2:].to_numpy(), want, rtol=1e-12)


def test_sparse_observed_keeps_explicit_zeros_and_dense_matches(tmp_path):
    frame, _ = _ratings(seed=2)
    frame.loc[0, "rating"] = 0.0  # an observed zero must stay a stored entry
    path = tmp_path / "r.csv"
    frame.to_csv(path, index=False)
    table = read_long_csv(path, "user,item,rating")
    S = sparse_observed(table)
    dense = table.dense()
    observed = ~np.isnan(dense)
    assert isinstance(S, scipy.sparse.csr_array) and S.nnz == len(frame) == observed.sum()
    coo = S.tocoo()
    assert set(zip(coo.row.tolist(), coo.col.tolist())) == set(zip(*np.nonzero(observed)))
    np.testing.assert_array_equal(S.toarray()[observed], dense[observed])


@pytest.mark.parametrize("text, message", [
    ("user,item,rating\nu1,i1,1\nu2,i1,2\nu1,i1,3\n",
     r"line 4: the pair \(user 'u1', item 'i1'\) is given again \(first on line 2\)"),
    ("user,item,rating\nu1,i1,1\n\nu2,i1,abc\n", r"line 4, column 'rating': non-numeric value 'abc'"),
    ("user,item,rating\nu1,i1,1\nu2,i1,-inf\n", r"line 3, column 'rating': infinite value -inf"),
    ("user,item,rating\nu1,i1,1\n\nu2,i1,1e999\n", r"line 4, column 'rating': infinite value inf"),
    ("user,item,rating\nu1,i1,1\n,i1,2\n", r"line 3, column 'user': empty row label"),
    ("user,item,rating\nu1,i1,1\nu2,  ,2\n", r"line 3, column 'item': empty column label"),
    ("user,film,rating\nu1,i1,1\n", r"line 1: no column 'item' in the header"),
    ("user,item,score\nu1,i1,1\n", r"line 1: no column 'rating' in the header"),
    ("user,item,rating\nu1,i1,NA\n", r"has no observed entry"),
])
def test_bad_long_input_is_refused_naming_the_line(tmp_path, text, message):
    path = tmp_path / "ratings.csv"
    path.write_text(text)
    out = tmp_path / "out.csv"
    out.write_text("keep me")
    res = CliRunner().invoke(main, ["matrix", str(path), "--long", "user,item,rating", "-o",
                                    str(out), *FAST])
    assert res.exit_code == 2, res.output
    assert re.search(message, res.output), res.output
    assert len(res.output.strip().splitlines()) == 1
    assert out.read_text() == "keep me"


@pytest.mark.parametrize("text, message", [
    ("user,item\nu1,i9\n", r"pairs.csv, line 2, column 'item': column label 'i9' is not in"),
    ("user,item\nu1,i0\n,i0\n", r"line 3, column 'user': empty row label"),
    ("user,film\nu1,i0\n", r"line 1: no column 'item'"),
])
def test_bad_pairs_file_is_refused(tmp_path, text, message):
    frame, _ = _ratings()
    path = tmp_path / "ratings.csv"
    frame.to_csv(path, index=False)
    ppath = tmp_path / "pairs.csv"
    ppath.write_text(text)
    out = tmp_path / "out.csv"
    res = CliRunner().invoke(main, ["matrix", str(path), "--long", "user,item,rating",
                                    "--predict", str(ppath), "-o", str(out), *FAST])
    assert res.exit_code == 2, res.output
    assert re.search(message, res.output), res.output
    assert not out.exists()


def test_vector_partly_missing_entry_and_option_clashes(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("cell;drug;g1;g2\nc1;d1;1;2\nc2;d1;3;\n")
    res = CliRunner().invoke(main, ["matrix", str(path), "--long", "cell,drug,*", "--predict",
                                    str(path), "-o", "-"])
    assert res.exit_code == 2 and "line 3, column 'g2': missing value" in res.output
    path.write_text("cell;drug;g1;g2\nc1;d1;1;2\nc2;d1;3;4\n")
    res = CliRunner().invoke(main, ["matrix", str(path), "--long", "cell,drug,*", "-o", "-"])
    assert res.exit_code == 2 and "2 value columns" in res.output and "--predict" in res.output
    for extra in (["--holdout", "0.1"], ["--no-row-labels"]):
        res = CliRunner().invoke(main, ["matrix", str(path), "--long", "cell,drug,g1", "-o", "-",
                                        *extra])
        assert res.exit_code == 2 and "does not combine with --long" in res.output
    res = CliRunner().invoke(main, ["matrix", str(path), "--predict", str(path), "-o", "-"])
    assert res.exit_code == 2 and "--long" in res.output


def test_wide_output_refused_with_its_size_when_over_budget(tmp_path, monkeypatch):
    import models.device
    monkeypatch.setattr(models.device, "DEFAULT_MEMORY_BUDGET", 100)
    frame, _ = _ratings()
    path = tmp_path / "ratings.csv"
    frame.to_csv(path, index=False)
    res = CliRunner().invoke(main, ["matrix", str(path), "--long", "user,item,rating", "-o",
                                    str(tmp_path / "o.csv")])
    assert res.exit_code == 2
    assert "12 x 8 float64: 768 B, over the memory budget of 100 B" in res.output
    assert not (tmp_path / "o.csv").exists()


@pytest.mark.parametrize("text, message", [
    ("user,item", "give the row column"), ("a,b,a", "named twice"), ("a,*,c", "every other"),
    ("a,b,c,*", "every other"),
])
def test_long_spec_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_long_spec(text)


def test_over_budget_pairs_hand_ntkimputer_the_sparse_observed_matrix(tmp_path, monkeypatch):
    import models.device
    monkeypatch.setattr(models.device, "DEFAULT_MEMORY_BUDGET", 100)
    seen = []

    def fit(self, X, y=None):
        seen.append(X)
        raise ValueError("stop here")

    monkeypatch.setattr(NTKImputer, "fit", fit)
    frame, _ = _ratings()
    path = tmp_path / "ratings.csv"
    frame.to_csv(path, index=False)
    ppath = tmp_path / "pairs.csv"
    ppath.write_text("user,item\nu1,i2\n")
    res = CliRunner().invoke(main, ["matrix", str(path), "--long", "user,item,rating",
                                    "--predict", str(ppath), "-o", str(tmp_path / "o.csv")])
    assert "stop here" in res.output
    (X,) = seen
    assert isinstance(X, scipy.sparse.csr_array) and X.shape == (12, 8) and X.nnz == len(frame)


def test_sparse_path_predicts_what_the_dense_path_predicts(tmp_path, monkeypatch):
    """A long table whose dense matrix would not fit goes to NTKImputer as the sparse matrix of
    its observed entries; the predicted pairs equal the dense path's."""
    from completion import matrix_long
    frame, _ = _ratings(m=14, n=9)
    path = tmp_path / "ratings.csv"
    frame.to_csv(path, index=False)
    ppath = tmp_path / "pairs.csv"
    pd.DataFrame({"user": ["u0", "u3", "u7", "u13"], "item": ["i8", "i0", "i4", "i2"]}).to_csv(
        ppath, index=False)
    args = ["matrix", str(path), "--long", "user,item,rating", "--predict", str(ppath),
            "--mode", "cols", "--prior", "profile", "--depth", "1", "--ridge", "0.03", "-q"]
    dense = CliRunner().invoke(main, args + ["-o", str(tmp_path / "dense.csv")])
    assert dense.exit_code == 0, dense.output
    monkeypatch.setattr(matrix_long.LongMatrix, "dense_bytes", lambda self: 10**15)
    sparse = CliRunner().invoke(main, args + ["-o", str(tmp_path / "sparse.csv")])
    assert sparse.exit_code == 0, sparse.output
    a, b = pd.read_csv(tmp_path / "dense.csv"), pd.read_csv(tmp_path / "sparse.csv")
    assert list(a["user"]) == ["u0", "u3", "u7", "u13"]
    np.testing.assert_allclose(b["rating"], a["rating"], rtol=1e-9, atol=1e-9)


def test_solver_option_reaches_the_fit_and_a_bad_one_is_refused(tmp_path):
    """--solver nystrom:R with R >= the number of columns is the exact solve (every column a
    landmark); an unknown solver is refused before any work."""
    frame, _ = _ratings(m=14, n=9)
    path = tmp_path / "ratings.csv"
    frame.to_csv(path, index=False)
    base = ["matrix", str(path), "--long", "user,item,rating", "--mode", "cols",
            "--prior", "profile", "--depth", "1", "--ridge", "0.03", "-q"]
    outs = {}
    for solver in ("shared", "nystrom:9"):
        res = CliRunner().invoke(main, base + ["--solver", solver, "-o", str(tmp_path / "o.csv")])
        assert res.exit_code == 0, res.output
        outs[solver] = pd.read_csv(tmp_path / "o.csv", index_col=0).to_numpy()
    np.testing.assert_allclose(outs["nystrom:9"], outs["shared"], rtol=1e-6, atol=1e-6)
    res = CliRunner().invoke(main, base + ["--solver", "magic", "-o", str(tmp_path / "x.csv")])
    assert res.exit_code == 2 and "solver" in res.output and not (tmp_path / "x.csv").exists()
