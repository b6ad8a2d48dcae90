"""The CPU thread setting reaches the work and is restored after: ``threads=`` of inpaint(),
CNTKInpainter, dip_inpaint and NTKImputer, ``$NTK_THREADS``, and ``--threads`` of the
inpaint / compare / matrix commands. Each probe reads torch.get_num_threads() inside the work
(a wrapped solver or kernel call) with a setting that differs from the one outside."""
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import completion.image
import completion.image_adaptive
import models.ntk
from cli import main
from completion.dip import dip_inpaint
from completion.image import CNTKInpainter, inpaint
from completion.matrix import NTKImputer
from completion.matrix_demo import synthetic_screen
from models.device import THREADS_ENV
from models.dip import DIPConfig

CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
SMALL_ARCH = "C3,L,D,C3,L,U,C3"
pytestmark = pytest.mark.skipif(CORES < 2, reason="needs two cores to tell 1 thread from 2")


@pytest.fixture
def outside():
    """Two threads outside the work, the previous setting restored after the test."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield 2
    torch.set_num_threads(before)


@pytest.fixture
def seen(monkeypatch):
    """Thread counts recorded inside the CNTK solve and the FC NTK kernel evaluation."""
    counts = []

    def probe(real):
        def wrapped(*args, **kwargs):
            counts.append(torch.get_num_threads())
            return real(*args, **kwargs)
        return wrapped

    for module in (completion.image, completion.image_adaptive):
        monkeypatch.setattr(module, "solve_observed", probe(module.solve_observed))
    monkeypatch.setattr(models.ntk.FullyConnectedNTK, "ntk", probe(models.ntk.FullyConnectedNTK.ntk))
    return counts


def image_and_mask():
    r, c = np.mgrid[0:16, 0:16] / 16
    return 0.5 + 0.3 * np.sin(2 * np.pi * r) * c, np.random.default_rng(0).random((16, 16)) < 0.4


def test_inpaint_threads_parameter_and_environment(outside, seen, monkeypatch):
    img, mask = image_and_mask()
    inpaint(img, mask, arch=SMALL_ARCH, prior="noise", threads=1)
    assert seen and set(seen) == {1} and torch.get_num_threads() == outside
    seen.clear()
    monkeypatch.setenv(THREADS_ENV, "1")
    CNTKInpainter(SMALL_ARCH, "noise").inpaint(img, mask)
    assert set(seen) == {1} and torch.get_num_threads() == outside
    seen.clear()
    inpaint(img, mask, arch=SMALL_ARCH, prior="noise", threads=2)   # the parameter wins
    assert set(seen) == {2}


def test_default_follows_the_idle_cores(outside, seen, monkeypatch):
    img, mask = image_and_mask()
    monkeypatch.delenv(THREADS_ENV, raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (CORES + 5.0, 0.0, 0.0))   # a busy machine
    inpaint(img, mask, arch=SMALL_ARCH, prior="noise")
    assert set(seen) == {1}
    seen.clear()
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))           # an idle one
    inpaint(img, mask, arch=SMALL_ARCH, prior="noise")
    assert set(seen) == {CORES}


def test_dip_trains_on_its_threads(outside):
    img, mask = image_and_mask()
    counts = []
    dip_inpaint(img, mask, iterations=2, config=DIPConfig(input_channels=2, scales=2, down=4,
                                                         up=4, skip=2),
                progress=False, device="cpu", threads=1, log_every=1,
                callback=lambda point: counts.append(torch.get_num_threads()))
    assert counts == [1, 1] and torch.get_num_threads() == outside


def test_imputer_threads_parameter(outside, seen):
    observed, _, _ = synthetic_screen(n_cells=20, n_drugs=8, seed=1)
    NTKImputer(mode="rows", prior="profile", depth=1, ridge=0.05, threads=1).fit(observed)
    assert seen and set(seen) == {1} and torch.get_num_threads() == outside


@pytest.mark.parametrize("command", ["inpaint", "compare", "matrix"])
def test_cli_threads_option(tmp_path, outside, seen, command):
    if command == "matrix":
        observed, _, _ = synthetic_screen(n_cells=20, n_drugs=8, seed=1)
        observed.to_csv(tmp_path / "m.csv")
        args = ["matrix", str(tmp_path / "m.csv"), "-o", str(tmp_path / "out.csv"), "--prior",
                "profile", "--depth", "1", "--ridge", "0.05", "--mode", "rows"]
    else:
        img, _ = image_and_mask()
        Image.fromarray(np.round(img * 255).astype(np.uint8)).save(tmp_path / "img.png")
        args = [command, str(tmp_path / "img.png"), "--missing-fraction", "0.4", "-q"]
        args += (["-o", str(tmp_path / "out.png"), "--arch", SMALL_ARCH, "--prior", "noise"]
                 if command == "inpaint" else ["-o", str(tmp_path / "cmp"), "--methods", "cntk",
                                               "--no-figures"])
    res = CliRunner().invoke(main, args + ["--threads", "1"])
    assert res.exit_code == 0, res.output
    assert seen and set(seen) == {1} and torch.get_num_threads() == outside
    res = CliRunner().invoke(main, args[:2] + ["--threads", "0"] + args[2:])
    assert res.exit_code == 2 and "--threads" in res.output
