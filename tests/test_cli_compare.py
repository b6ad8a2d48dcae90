"""``ntk-complete compare``: every method on one mask, all files written, tables consistent."""
import csv
import importlib.util

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cli import main
from completion.compare import first_reaching, parse_methods
from completion.dip import HistoryPoint
from completion.image_io import read_image
from completion.masks import generate_mask
from completion.metrics import psnr


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def clean_png(tmp_path):
    y, x = np.mgrid[0:40, 0:36] / 40.0
    texture = 0.08 * np.random.default_rng(0).standard_normal(x.shape)  # PSNRs near 20 dB
    img = np.clip(0.5 + 0.3 * np.sin(6 * x) * np.cos(4 * y) + texture, 0, 1)
    path = tmp_path / "clean.png"
    Image.fromarray(np.round(img * 255).astype(np.uint8)).save(path)
    return path


# OpenCV and matplotlib are optional extras ([compare]); CI installs only [test]
HAVE_CV2 = importlib.util.find_spec("cv2") is not None
HAVE_MPL = importlib.util.find_spec("matplotlib") is not None


def test_compare_writes_all_files_with_the_same_mask(tmp_path, clean_png):
    out = tmp_path / "cmp"
    methods = ["biharmonic", "telea", "dip"] if HAVE_CV2 else ["biharmonic", "dip"]
    result = CliRunner().invoke(main, ["compare", str(clean_png), "--missing-fraction", "0.5",
                                       "--seed", "3", "--methods", ",".join(methods),
                                       "--iterations", "5", "-o", str(out), "-q"]
                                + ([] if HAVE_MPL else ["--no-figures"]))
    assert result.exit_code == 0, result.output
    figures = ["comparison", "dip_curve"] if HAVE_MPL else []
    for name in ["mask", "corrupted", *methods, *figures]:
        assert (out / f"{name}.png").is_file(), name
    for name in ("table.csv", "table.md", "dip_curve.csv"):
        assert (out / name).is_file(), name
    clean = read_image(clean_png)
    mask = np.asarray(Image.open(out / "mask.png")) > 0
    np.testing.assert_array_equal(mask, generate_mask(clean.shape, 0.5, seed=3))
    rows = {r["method"]: r for r in csv.DictReader(open(out / "table.csv"))}
    assert list(rows) == methods
    for method, row in rows.items():
        filled = read_image(out / f"{method}.png")
        np.testing.assert_array_equal(filled[~mask], clean[~mask])  # observed pixels kept
        # the table's PSNR is that of the written output (up to 8-bit rounding)
        assert float(row["psnr_db"]) == pytest.approx(psnr(filled, clean), abs=0.05)
        assert float(row["seconds"]) > 0
    curve = list(csv.DictReader(open(out / "dip_curve.csv")))
    assert [int(r["iteration"]) for r in curve] == [5]
    assert "5 iterations" in rows["dip"]["note"]
    assert "| biharmonic |" in (out / "table.md").read_text()


def test_missing_optional_packages_are_named_before_any_work(tmp_path, clean_png, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("cv2", "matplotlib") else real(name, *a))
    res = CliRunner().invoke(main, ["compare", str(clean_png), "--missing-fraction", "0.5",
                                    "--methods", "telea,dip", "-o", str(tmp_path / "o")])
    assert res.exit_code != 0
    assert "OpenCV (for telea)" in res.output and "matplotlib" in res.output
    assert "ntk-completion[compare]" in res.output and not (tmp_path / "o").exists()


def test_compare_refuses_bad_requests(tmp_path, clean_png):
    runner = CliRunner()
    res = runner.invoke(main, ["compare", str(clean_png), "--methods", "biharmonic",
                               "--no-figures", "-o", str(tmp_path)])
    assert res.exit_code != 0 and "exactly one of --mask" in res.output
    res = runner.invoke(main, ["compare", str(clean_png), "--missing-fraction", "0.5",
                               "--methods", "biharmonic,nope", "-o", str(tmp_path)])
    assert res.exit_code != 0 and "nope" in res.output
    bad_mask = tmp_path / "m.png"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(bad_mask)
    res = runner.invoke(main, ["compare", str(clean_png), "--mask", str(bad_mask),
                               "--methods", "biharmonic", "--no-figures", "-o", str(tmp_path / "o")])
    assert res.exit_code != 0 and "m.png" in res.output
    # an output name equal to the input is refused, nothing is overwritten
    src = tmp_path / "biharmonic.png"
    src.write_bytes(clean_png.read_bytes())
    res = runner.invoke(main, ["compare", str(src), "--missing-fraction", "0.5",
                               "--methods", "biharmonic", "--no-figures", "-o", str(tmp_path)])
    assert res.exit_code != 0 and "never overwritten" in res.output
    assert src.read_bytes() == clean_png.read_bytes()


def test_first_reaching_and_method_parsing():
    hist = [HistoryPoint(10, 0.1, 20.0, 1.0), HistoryPoint(20, 0.05, 25.0, 2.0),
            HistoryPoint(30, 0.04, 24.0, 3.0), HistoryPoint(40, 0.03, 27.0, 4.0)]
    assert first_reaching(hist, 24.5).iteration == 20
    assert first_reaching(hist, 26.0).iteration == 40
    assert first_reaching(hist, 30.0) is None
    assert parse_methods(" CNTK, dip ") == ["cntk", "dip"]
    with pytest.raises(ValueError, match="repeats"):
        parse_methods("dip,dip")


def test_compare_scores_outputs_clipped_to_valid_range():
    from completion.compare import compare_methods
    from completion.image import inpaint
    stripes = np.tile((np.arange(32) // 4 % 2).astype(float), (32, 1))   # 0/1 bars: overshoot
    mask = generate_mask(stripes.shape, 0.5, seed=0)
    raw = inpaint(stripes, mask, method="cntk", arch="sym2+avg")
    assert raw.min() < 0 or raw.max() > 1          # the unclipped fit leaves [0, 1]
    run, = compare_methods(stripes, mask, ["cntk"], reference=stripes, progress=False,
                           cntk_options={"arch": "sym2+avg"})
    assert 0 <= run.image.min() and run.image.max() <= 1
    assert run.psnr == pytest.approx(psnr(np.clip(raw, 0, 1), stripes), abs=1e-9)


def test_dip_on_cpu_warns_with_a_measured_estimate():
    import warnings

    from completion.dip import dip_inpaint

    class Stop(Exception):
        pass

    def stop(point):
        raise Stop  # the estimate comes from the first steps; no need to train further

    img = np.random.default_rng(0).random((16, 16))
    mask = generate_mask(img.shape, 0.3, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(Stop):
            dip_inpaint(img, mask, iterations=100_000, log_every=5, callback=stop,
                        progress=False, device="cpu")
    messages = [str(w.message) for w in caught if "DIP on the CPU" in str(w.message)]
    assert len(messages) == 1 and "100000 iterations" in messages[0] and "s per step" in messages[0]
    seconds_per_step = float(messages[0].split("(")[1].split(" s per step")[0])
    hours = float(messages[0].split("about ")[1].split(" h")[0])
    assert hours == pytest.approx(100_000 * seconds_per_step / 3600, rel=0.05)
    with warnings.catch_warnings(record=True) as caught:   # a short run is not warned about
        warnings.simplefilter("always")
        dip_inpaint(img, mask, iterations=5, progress=False, device="cpu")
    assert not [w for w in caught if "DIP on the CPU" in str(w.message)]


def _examples(command):
    """The example command lines in ``ntk-complete COMMAND --help`` (continuations joined)."""
    text = CliRunner().invoke(main, [command, "--help"], terminal_width=200).output
    text = text.split("Example")[1].replace("\\\n", " ")
    return [ln.split("#")[0].split() for ln in text.splitlines() if "ntk-complete" in ln]


@pytest.mark.parametrize("command", ["matrix", "inpaint", "compare", "demo"])
def test_help_examples_finish_quickly(command):
    """No example trains DIP for more than 100 iterations (about 2 s each on a CPU)."""
    examples = _examples(command)
    assert examples
    for words in examples:
        value = lambda flag, default: words[words.index(flag) + 1] if flag in words else default
        methods = value("--methods", "cntk,dip,biharmonic,telea" if command == "compare" else "")
        runs_dip = "dip" in methods.split(",") or value("--method", "") == "dip"
        iterations = int(value("--iterations", 3000))
        assert not runs_dip or iterations <= 100, " ".join(words)
