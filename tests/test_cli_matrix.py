"""``ntk-complete matrix``: CSV round trip, labels kept, errors naming cells, input untouched."""
import hashlib
import io

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from cli import main
from completion.matrix_demo import run_demo, synthetic_screen

FAST = ["--prior", "profile", "--depth", "1", "--ridge", "0.05"]


@pytest.fixture()
def screen_csv(tmp_path):
    observed, _, feats = synthetic_screen(n_cells=40, n_drugs=12, seed=1)
    path = tmp_path / "screen.csv"
    observed.to_csv(path)
    fpath = tmp_path / "cells.csv"
    feats.to_csv(fpath)
    return path, fpath, observed


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_round_trip_keeps_labels_and_observed_values(tmp_path, screen_csv):
    path, _, observed = screen_csv
    before = digest(path)
    out = tmp_path / "out" / "done.csv"
    res = CliRunner().invoke(main, ["matrix", str(path), "-o", str(out), *FAST])
    assert res.exit_code == 0, res.output
    assert digest(path) == before
    done = pd.read_csv(out, index_col=0)
    assert list(done.index) == list(observed.index) and done.index.name == "cell"
    assert list(done.columns) == list(observed.columns)
    obs = observed.notna().to_numpy()
    np.testing.assert_allclose(done.to_numpy()[obs], observed.to_numpy()[obs], rtol=1e-12)
    assert np.isfinite(done.to_numpy()).all()
    assert not list(out.parent.glob(".*.tmp"))  # atomic write left no temporary file


def test_stdout_output_and_features(screen_csv):
    path, fpath, observed = screen_csv
    res = CliRunner().invoke(main, ["matrix", str(path), "-o", "-", "--row-features", str(fpath),
                                    "--prior", "features+identity:0.5", "--depth", "1",
                                    "--ridge", "0.1"])
    assert res.exit_code == 0, res.output
    text = res.stdout
    done = pd.read_csv(io.StringIO(text), index_col=0)
    assert done.shape == observed.shape


def test_holdout_prints_scores_next_to_baseline(tmp_path, screen_csv):
    path, _, observed = screen_csv
    out = tmp_path / "done.csv"
    res = CliRunner().invoke(main, ["matrix", str(path), "-o", str(out), "--holdout", "0.2",
                                    "--seed", "3", *FAST])
    assert res.exit_code == 0, res.output
    lines = {ln.split()[0]: ln.split()[1:] for ln in res.stderr.splitlines() if ln.strip()}
    assert "ntk" in lines and "additive" in lines
    ntk_rmse, base_rmse = float(lines["ntk"][0]), float(lines["additive"][0])
    assert ntk_rmse < base_rmse  # the screen has interactions the baseline cannot express
    n_obs = int(observed.notna().sum().sum())
    assert f"{round(0.2 * n_obs)} of {n_obs} observed entries" in res.stderr
    done = pd.read_csv(out, index_col=0)  # the written matrix keeps the hidden values too
    obs = observed.notna().to_numpy()
    np.testing.assert_allclose(done.to_numpy()[obs], observed.to_numpy()[obs], rtol=1e-12)


def test_non_numeric_cell_names_row_and_column(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("id,a,b\nr1,1.0,\nr2,oops,3\nr3,NA,2\n")
    res = CliRunner().invoke(main, ["matrix", str(path), "-o", str(tmp_path / "o.csv"), *FAST])
    assert res.exit_code != 0
    assert "'oops' at row 'r2', column 'a'" in res.output
    assert not (tmp_path / "o.csv").exists()


def test_na_values_tokens_and_blank_cells(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("id,a,b,c\nr1,1.0,,2\nr2,?,3,1\nr3,NA,2,0.5\nr4,2,1,\n")
    out = tmp_path / "o.csv"
    res = CliRunner().invoke(main, ["matrix", str(path), "-o", str(out), "--na-values", "?",
                                    "--mode", "joint", "--prior", "onehot", "--depth", "1",
                                    "--ridge", "0.1"])
    assert res.exit_code == 0, res.output
    done = pd.read_csv(out, index_col=0)
    assert np.isfinite(done.to_numpy()).all() and done.loc["r4", "a"] == 2


def test_refuses_to_overwrite_input(screen_csv):
    path, _, _ = screen_csv
    before = digest(path)
    res = CliRunner().invoke(main, ["matrix", str(path), "-o", str(path), *FAST])
    assert res.exit_code != 0 and "never overwritten" in res.output
    assert digest(path) == before


def test_misaligned_features_listed(tmp_path, screen_csv):
    path, _, observed = screen_csv
    fpath = tmp_path / "f.csv"
    pd.DataFrame({"x": [1.0, 2.0]}, index=["cell_0", "stranger"]).to_csv(fpath)
    res = CliRunner().invoke(main, ["matrix", str(path), "-o", "-", "--row-features", str(fpath),
                                    "--prior", "features", "--depth", "1", "--ridge", "0.1"])
    assert res.exit_code != 0
    assert "missing 39 row label(s)" in res.output and "stranger" in res.output


def test_bad_options(tmp_path, screen_csv):
    path, _, _ = screen_csv
    res = CliRunner().invoke(main, ["matrix", str(path), "-o", "-", "--depth", "deep"])
    assert res.exit_code != 0 and "expected 'auto' or a int" in res.output
    res = CliRunner().invoke(main, ["matrix", str(path), "-o", "-", "--holdout", "1.5", *FAST])
    assert res.exit_code != 0 and "holdout fraction must be in (0, 1)" in res.output


def test_help_has_example():
    res = CliRunner().invoke(main, ["matrix", "--help"])
    assert res.exit_code == 0
    assert "ntk-complete matrix ic50.csv -o completed.csv" in res.output


def test_run_demo_beats_baseline(tmp_path):
    result = run_demo(tmp_path, seed=0)
    assert result["ntk"]["rmse"] < 0.5 * result["additive"]["rmse"]
    for f in result["files"]:
        assert (tmp_path / f.split("/")[-1]).exists()
