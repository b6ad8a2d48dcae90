"""``ntk-complete matrix``: CSV round trip, labels kept, errors naming cells, input untouched."""
import hashlib
import io
import logging

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
    assert np.array_equal(done.to_numpy()[obs], observed.to_numpy()[obs])
    assert np.isfinite(done.to_numpy()).all()
    assert not list(out.parent.glob(".*.tmp"))  # atomic write left no temporary file


@pytest.mark.parametrize("header", [",a,b,c", "a,b,c"])  # empty row-label name, or none
def test_a_nameless_row_label_column_stays_nameless(tmp_path, header):
    path = tmp_path / "m.csv"
    rows = [f"r{i},{i},{(i * 7) % 5 if i % 4 else ''},{(i * 3) % 7}" for i in range(12)]
    path.write_text("\n".join([header, *rows]) + "\n")
    out = tmp_path / "done.csv"
    res = CliRunner().invoke(main, ["matrix", str(path), "-o", str(out), "--mode", "rows",
                                    *FAST])
    assert res.exit_code == 0, res.output
    assert out.read_text().splitlines()[0] == ",a,b,c"


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
    assert np.array_equal(done.to_numpy()[obs], observed.to_numpy()[obs])


def test_non_numeric_cell_names_row_and_column(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("id,a,b\nr1,1.0,\nr2,oops,3\nr3,NA,2\n")
    res = CliRunner().invoke(main, ["matrix", str(path), "-o", str(tmp_path / "o.csv"), *FAST])
    assert res.exit_code != 0
    assert "'oops' at row 'r2', column 'a'" in res.output
    assert not (tmp_path / "o.csv").exists()


@pytest.mark.parametrize("cell", ["inf", "-Infinity", "1e400"])
def test_infinite_cell_names_file_row_and_column(tmp_path, cell):
    """An infinite cell (written out, or a number beyond float64's range) is refused by the
    reader, naming the file, the row and the column, before any work."""
    path = tmp_path / "bad.csv"
    path.write_text(f"id,a,b\nr1,1.0,\nr2,2,3\nr3,{cell},2\n")
    res = CliRunner().invoke(main, ["matrix", str(path), "-o", str(tmp_path / "o.csv"), *FAST])
    assert res.exit_code != 0
    assert f"bad.csv: infinite value '{cell}' at row 'r3', column 'a'" in res.output
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


# --- files as users have them (issue 10) ------------------------------------------------------

TABLE = [["id", "a", "b", "c"], ["r1", "1", "", "3"], ["r2", "2", "5", ""],
         ["r3", "", "4", "2"], ["r4", "1.5", "2", "1"]]


def table_text(sep, rows=TABLE):
    return "".join(sep.join(row) + "\n" for row in rows)


def observed_kept(text, sep):
    """The completed text (same separator) keeps every observed cell's value, fills the rest."""
    got = pd.read_csv(io.StringIO(text), sep=sep, index_col=0)
    given = pd.read_csv(io.StringIO(table_text(sep)), sep=sep, index_col=0)
    obs = given.notna().to_numpy()
    assert list(got.columns) == list(given.columns) and got.shape == given.shape
    assert np.array_equal(got.to_numpy()[obs], given.to_numpy()[obs])
    assert np.isfinite(got.to_numpy()).all()


@pytest.mark.parametrize("sep,name", [("\t", "m.tsv"), (";", "m.csv"), (",", "m.csv")])
def test_separator_sniffed_and_kept(tmp_path, sep, name):
    path = tmp_path / name
    path.write_text(table_text(sep))
    res = CliRunner().invoke(main, ["matrix", str(path), "-o", "-", "-q", *FAST])
    assert res.exit_code == 0, res.output
    observed_kept(res.stdout, sep)
    res = CliRunner().invoke(main, ["matrix", str(path), "-o", "-", "-q", "--sep",
                                    {"\t": "tab"}.get(sep, sep), *FAST])
    assert res.exit_code == 0, res.output
    observed_kept(res.stdout, sep)


def test_wrong_separator_named(tmp_path):
    path = tmp_path / "m.tsv"
    path.write_text(table_text("\t"))
    res = CliRunner().invoke(main, ["matrix", str(path), "-o", "-", "--sep", ";", *FAST])
    assert res.exit_code == 1 and "semicolon-separated" in res.stderr and "--sep" in res.stderr


def test_latin1_file_suggests_encoding(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes(table_text(",").replace("id,a", "id,caf\u00e9").encode("latin-1"))
    res = CliRunner().invoke(main, ["matrix", str(path), "-o", "-", *FAST])
    assert res.exit_code == 1
    assert "latin.csv" in res.stderr and "--encoding latin-1" in res.stderr
    assert "line 1" in res.stderr
    res = CliRunner().invoke(main, ["matrix", str(path), "-o", "-", "-q", "--encoding", "latin-1",
                                    *FAST])
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines()[0] == "id,caf\u00e9,b,c"


def test_no_row_labels_and_standard_input(tmp_path):
    text = table_text(",", [row[1:] for row in TABLE])
    res = CliRunner().invoke(main, ["matrix", "-", "-o", "-", "--no-row-labels", "-q", *FAST],
                             input=text)
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines()[0] == "a,b,c"                  # no label column added
    got = pd.read_csv(io.StringIO(res.stdout))
    given = pd.read_csv(io.StringIO(text))
    obs = given.notna().to_numpy()
    assert np.array_equal(got.to_numpy()[obs], given.to_numpy()[obs])
    res = CliRunner().invoke(main, ["matrix", "-", "-o", "-", *FAST], input=text)
    assert res.exit_code == 1 and "--no-row-labels" in res.stderr  # a blank first-column cell


def test_duplicate_column_names_refused(tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text("id,a,b,a\nr1,1,,3\nr2,2,5,\nr3,,4,2\n")
    res = CliRunner().invoke(main, ["matrix", str(path), "-o", "-", *FAST])
    assert res.exit_code == 1 and "duplicated column label(s) ['a']" in res.stderr


def test_quiet_prints_only_results(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text(table_text(","))
    res = CliRunner().invoke(main, ["matrix", str(path), "-o", str(tmp_path / "o.csv"), *FAST])
    assert res.exit_code == 0 and "chosen:" in res.stderr
    res = CliRunner().invoke(main, ["matrix", str(path), "-o", str(tmp_path / "o.csv"), "-q",
                                    *FAST])
    assert res.exit_code == 0 and res.stderr == ""


def test_demo_completed_csv_keeps_observed_values_exactly(tmp_path):
    run_demo(tmp_path, seed=0)
    given = pd.read_csv(tmp_path / "responses.csv", index_col=0)
    done = pd.read_csv(tmp_path / "completed.csv", index_col=0)
    obs = given.notna().to_numpy()
    assert np.array_equal(done.to_numpy()[obs], given.to_numpy()[obs])   # hidden ones too
    assert np.isfinite(done.to_numpy()).all()


def test_scale_option_and_its_verbose_line(tmp_path, caplog):
    """A table of mixed units is fitted on standardised columns (-v says so); --scale none
    keeps its units; both keep the observed cells."""
    rng = np.random.default_rng(0)
    values = rng.standard_normal((25, 4)) * np.array([1000.0, 1.0, 0.01, 5.0])
    values[rng.random(values.shape) < 0.2] = np.nan
    path = tmp_path / "mixed.csv"
    pd.DataFrame(values, columns=list("abcd")).to_csv(path, index_label="id")
    caplog.set_level(logging.INFO, logger="completion.matrix")
    for scale, said in (("auto", True), ("none", False)):
        caplog.clear()
        out = tmp_path / f"{scale}.csv"
        res = CliRunner().invoke(main, ["matrix", str(path), "-o", str(out), "--scale", scale,
                                        "--mode", "rows", "--prior", "profile", "--depth", "1",
                                        "--ridge", "0.1", "-v"])
        assert res.exit_code == 0, res.output
        assert any("columns standardised" in r.getMessage() for r in caplog.records) == said
        done = pd.read_csv(out, index_col=0).to_numpy()
        assert np.isfinite(done).all()
        np.testing.assert_allclose(done[~np.isnan(values)], values[~np.isnan(values)], rtol=1e-12)
