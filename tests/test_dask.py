"""Where work runs (completion.scheduling) and batch inpainting on Dask: the in-process path,
the one-line refusals, and a real LocalCluster of 2 worker processes (same numbers as
in-process, one kernel per size class, a bad image reported, a killed worker losing nothing)."""
import dataclasses
import functools
import os
import signal
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cli import main
from completion import scheduling
from completion.files import atomic_output
from completion.image_io import read_image
from completion.inpaint_jobs import Method, plan_jobs, run_batch
from completion.masks import generate_mask
from completion.matrix import NTKImputer
from completion.scheduling import check_scheduler, map_tasks
from models import ntk
from models.cntk import Sequential, banded
from models.device import Compute, MemoryBudgetError
from models.cntk.priors import make_prior

SMALL_ARCH = "C3,L,D,C3,L,U,C3"  # one level: 32 x 32 images pad to 48 x 48
NEEDS_DASK = "needs the [dask] extra: pip install 'ntk-completion[dask]'"


def smooth_image(h, w, phase=0.0):
    r, c = np.mgrid[0:h, 0:w] / max(h, w)
    return 0.5 + 0.3 * np.sin(2 * np.pi * r + phase) * np.cos(np.pi * c)


def image_folder(folder, sizes):
    """Images img0.png ... of the given (H, W) sizes, each with img*_mask.png beside it."""
    folder.mkdir()
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(np.round(smooth_image(h, w, i) * 255).astype(np.uint8)).save(folder / f"img{i}.png")
        Image.fromarray(generate_mask((h, w), 0.5, seed=i).astype(np.uint8) * 255).save(
            folder / f"img{i}_mask.png")
    return folder


# --- the in-process path and the refusals (no Dask needed) ------------------------------------

def test_in_process_map_is_the_plain_loop_with_one_prepare_per_group():
    prepared = []

    def prepare(key):
        prepared.append(key)
        return 100 * key

    done = []
    out = map_tasks(lambda x, shared: (x, shared), [1, 2, 3, 4, 5], prepare=prepare,
                    group=lambda x: x % 2 if x < 5 else None,
                    on_done=lambda i, item, res: done.append((i, item, res)))
    assert out == [(1, 100), (2, 0), (3, 100), (4, 0), (5, None)]
    assert prepared == [1, 0]                                       # once per key, None = none
    assert done == [(i, x, res) for i, (x, res) in enumerate(zip([1, 2, 3, 4, 5], out))]


def test_in_process_failures_raise_or_take_their_place():
    def fn(x):
        if x == 2:
            raise ValueError("two is bad")
        return x
    with pytest.raises(ValueError, match="two is bad"):
        map_tasks(fn, [1, 2, 3])
    out = map_tasks(fn, [1, 2, 3], return_exceptions=True)
    assert out[0] == 1 and out[2] == 3 and isinstance(out[1], ValueError)
    failing_prepare = map_tasks(lambda x, s: x, [1, 2], prepare=lambda k: 1 / 0,
                                return_exceptions=True)
    assert all(isinstance(o, ZeroDivisionError) for o in failing_prepare)


@pytest.mark.parametrize("spec", ["local:0", "local:x", "local", "localhost:8786", "http://h:1", 3])
def test_bad_scheduler_spelling_is_one_line(spec):
    with pytest.raises(ValueError) as err:
        check_scheduler(spec)
    assert "\n" not in str(err.value) and "local:N" in str(err.value)


def test_scheduler_without_dask_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)          # import fails
    with pytest.raises(ImportError, match=r"pip install 'ntk-completion\[dask\]'"):
        check_scheduler("local:2")
    assert check_scheduler(None) is None                            # in-process needs no Dask


def test_cli_refuses_bad_scheduler_before_work(tmp_path, monkeypatch):
    folder = image_folder(tmp_path / "in", [(32, 32)])
    monkeypatch.setattr("completion.inpaint_jobs.run_batch", lambda *a, **k: pytest.fail("worked"))
    res = CliRunner().invoke(main, ["inpaint", str(folder), "-o", str(tmp_path / "out"),
                                    "--scheduler", "local:zero"])
    assert res.exit_code == 1 and "scheduler must be local:N" in res.output
    assert not (tmp_path / "out").exists()


def test_rerun_skips_existing_outputs_unless_overwrite(tmp_path):
    folder = image_folder(tmp_path / "in", [(24, 24), (24, 24)])
    out = tmp_path / "out"
    run = lambda *extra: CliRunner().invoke(main, ["inpaint", str(folder), "-o", str(out),
                                                   "--method", "biharmonic", *extra])
    assert run().exit_code == 0
    (out / "img0.png").unlink()
    before = (out / "img1.png").stat().st_mtime_ns
    os.utime(out / "img1.png", ns=(before - 10**9, before - 10**9))  # an older, untouched file
    res = run()
    assert res.exit_code == 0 and "skipping 1 of 2 images" in res.output
    assert (out / "img0.png").exists() and (out / "img1.png").stat().st_mtime_ns == before - 10**9
    res = run("--overwrite")
    assert res.exit_code == 0 and "skipping" not in res.output
    assert (out / "img1.png").stat().st_mtime_ns > before - 10**9


# --- a real LocalCluster of 2 worker processes ------------------------------------------------

@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed", reason=NEEDS_DASK)
    import logging
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, silence_logs=logging.ERROR) as cluster, \
            distributed.Client(cluster) as c:
        yield c


def test_unreachable_address_is_one_line(monkeypatch):
    pytest.importorskip("distributed", reason=NEEDS_DASK)
    monkeypatch.setattr(scheduling, "CONNECT_TIMEOUT_S", 1)
    with pytest.raises(ConnectionError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9 "):
        with scheduling.connect("tcp://127.0.0.1:9"):
            pass


def fold_score(pair, data):
    """A toy CV score of (candidate, fold): pure, so the grid's choice must not depend on
    where it ran."""
    candidate, fold = pair
    x, y = data
    test = np.arange(len(x)) % 3 == fold
    coef = np.polyfit(x[~test], y[~test], candidate)
    return float(np.mean((np.polyval(coef, x[test]) - y[test]) ** 2))


def test_cv_grid_on_workers_matches_in_process_in_submission_order(client):
    rng = np.random.default_rng(0)
    x = np.linspace(-1, 1, 60)
    data = (x, np.sin(3 * x) + 0.1 * rng.standard_normal(60))
    pairs = [(degree, fold) for degree in range(1, 8) for fold in range(3)]
    here = map_tasks(fold_score, pairs, prepare=lambda key: data)
    there = map_tasks(fold_score, pairs, scheduler=client, prepare=lambda key: data)
    assert there == here                                            # same floats, same order
    assert len(set(here)) == len(here)                              # a real, non-constant grid


@dataclasses.dataclass(frozen=True)
class CountedMethod(Method):
    """A Method whose kernel preparations leave one marker file each in ``marks``."""
    marks: str = ""

    def prepared(self, key):
        Path(self.marks, f"{os.getpid()}-{os.urandom(4).hex()}").touch()
        return super().prepared(key)


def test_batch_on_workers_gives_in_process_numbers_one_kernel_per_size(tmp_path, client):
    sizes = [(32, 32), (24, 24), (32, 32), (31, 32), (24, 24), (32, 40)]   # 3 padded sizes
    folder = image_folder(tmp_path / "in", sizes)
    counts = {}
    for where in ("here", "dask"):
        marks = tmp_path / f"marks-{where}"
        marks.mkdir()
        jobs = plan_jobs(folder, tmp_path / where)
        method = CountedMethod(arch=SMALL_ARCH, prior="noise", marks=str(marks))
        out = run_batch(jobs, method, scheduler=client if where == "dask" else None)
        assert not any(isinstance(o, Exception) for o in out), out
        counts[where] = len(list(marks.iterdir()))
    assert counts == {"here": 3, "dask": 3}                         # 32 and 31 (+16) both pad to 48
    for i in range(len(sizes)):
        a, b = read_image(tmp_path / "here" / f"img{i}.png"), read_image(tmp_path / "dask" / f"img{i}.png")
        assert np.array_equal(a, b), i


def test_prepared_kernel_fills_identically_on_a_worker(client):
    method = Method(arch=SMALL_ARCH, prior="noise")
    img = smooth_image(32, 32)
    mask = generate_mask((32, 32), 0.5, seed=3)
    fill = lambda pair, inpainter: inpainter.inpaint(*pair)
    here = map_tasks(fill, [(img, mask)], prepare=method.prepared, group=lambda p: (0, (48, 48)))
    there = map_tasks(fill, [(img, mask)], scheduler=client, prepare=method.prepared,
                      group=lambda p: (0, (48, 48)))
    np.testing.assert_allclose(there[0], here[0], rtol=0, atol=1e-12)


def test_cli_on_a_scheduler_address_reports_a_bad_image_and_writes_the_rest(tmp_path, client):
    folder = image_folder(tmp_path / "in", [(32, 32), (32, 32), (24, 24)])
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(folder / "broken_mask.png")
    res = CliRunner().invoke(main, ["inpaint", str(folder), "-o", str(tmp_path / "out"),
                                    "--arch", SMALL_ARCH, "--scheduler", client.scheduler.address])
    assert res.exit_code == 1, res.output
    assert "broken.png" in res.output and "1 of 4 images failed: broken.png" in res.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["img0.png", "img1.png", "img2.png"]


def write_then_die_once(item):
    """Write ``item``'s bytes atomically; the first call dies half-way through the write."""
    out, marker, payload = item
    with atomic_output(out, "wb") as fh:
        fh.write(payload[:len(payload) // 2])
        fh.flush()
        if not os.path.exists(marker):
            Path(marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        fh.write(payload[len(payload) // 2:])
    return os.getpid()


def test_worker_killed_mid_write_leaves_no_partial_output(tmp_path, client):
    payload = os.urandom(1 << 20)
    out, marker = tmp_path / "out.bin", tmp_path / "died"
    pids = map_tasks(write_then_die_once, [(out, marker, payload)], scheduler=client)
    assert marker.exists()                                          # a worker did die
    assert out.read_bytes() == payload                              # rerun: complete output
    assert pids[0] != os.getpid()


@dataclasses.dataclass(frozen=True)
class DieOnceMethod(Method):
    """A CNTK Method whose first image solved kills its worker process (``marker`` remembers)."""
    marker: str = ""

    def prepared(self, key):
        inpainter = super().prepared(key)
        return types.SimpleNamespace(inpaint=functools.partial(_die_once, self.marker, inpainter))


def _die_once(marker, inpainter, image, mask):
    if not os.path.exists(marker):
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return inpainter.inpaint(image, mask)


def test_worker_killed_mid_batch_loses_no_output(tmp_path, client):
    folder = image_folder(tmp_path / "in", [(32, 32)] * 4)
    marker = tmp_path / "died"
    jobs = plan_jobs(folder, tmp_path / "out")
    method = DieOnceMethod(arch=SMALL_ARCH, prior="noise", marker=str(marker))
    out = run_batch(jobs, method, scheduler=client)
    assert marker.exists()
    assert not any(isinstance(o, Exception) for o in out), out
    reference = run_batch(plan_jobs(folder, tmp_path / "ref"), Method(arch=SMALL_ARCH, prior="noise"))
    assert not any(isinstance(o, Exception) for o in reference)
    for i in range(4):
        assert np.array_equal(read_image(tmp_path / "out" / f"img{i}.png"),
                              read_image(tmp_path / "ref" / f"img{i}.png"))


def test_compare_over_a_folder_writes_one_subfolder_per_image_and_the_means(tmp_path):
    pytest.importorskip("skimage", reason="biharmonic needs scikit-image ([compare] extra)")
    folder = image_folder(tmp_path / "in", [(24, 24), (24, 32)])
    out = tmp_path / "cmp"
    run = lambda *extra: CliRunner().invoke(main, ["compare", str(folder), "--methods", "biharmonic",
                                                   "--no-figures", "-o", str(out), *extra])
    res = run()
    assert res.exit_code == 0, res.output
    for i in range(2):
        assert {p.name for p in (out / f"img{i}").iterdir()} == \
            {"mask.png", "corrupted.png", "biharmonic.png", "table.csv", "table.md"}
    mean_line = next(line for line in res.output.splitlines() if line.startswith("| biharmonic"))
    # no reference and mask files: nothing to score against, so no PSNR, but the mean of times
    assert "mean of 2 images" in mean_line
    res = run()
    assert res.exit_code == 0 and "skipping 2 of 2 images" in res.output


def test_compare_over_a_folder_on_workers_scores_as_in_process(tmp_path, client):
    pytest.importorskip("skimage", reason="biharmonic needs scikit-image ([compare] extra)")
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.round(smooth_image(24, 24, i) * 255).astype(np.uint8)).save(folder / f"c{i}.png")
    (folder / "zz_broken.png").write_bytes(b"not a png")
    outputs = {}
    for name, extra in (("here", []), ("dask", ["--scheduler", client.scheduler.address])):
        res = CliRunner().invoke(main, ["compare", str(folder), "--missing-fraction", "0.4",
                                        "--methods", "biharmonic", "--no-figures",
                                        "-o", str(tmp_path / name), *extra])
        assert res.exit_code == 1 and "1 of 4 images failed: zz_broken.png" in res.output, res.output
        outputs[name] = [line.split("| ")[2] for line in res.output.splitlines()
                         if line.startswith("| biharmonic")]                # mean PSNR column
    assert outputs["here"] == outputs["dask"] and float(outputs["here"][0]) > 20


# --- the matrix CV grid on workers --------------------------------------------------------------

def low_rank_with_gaps(m=30, n=12, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, 3)) @ rng.standard_normal((3, n)) + 0.1 * rng.standard_normal((m, n))
    X[rng.random(X.shape) < 0.3] = np.nan
    return X


def test_matrix_auto_on_workers_chooses_and_completes_as_in_process(client):
    X = low_rank_with_gaps()
    here = NTKImputer(random_state=0, cv_folds=5, cv_max_folds=2).fit(X)  # 2 folds of 50 entries
    there = NTKImputer(random_state=0, cv_folds=5, cv_max_folds=2, scheduler=client).fit(X)
    assert len(here.cv_results_) >= 8 and here.chosen_["mode"] == "stack"   # a real grid
    assert there.chosen_.keys() == here.chosen_.keys()
    for a, b in zip(there.chosen_["components"], here.chosen_["components"]):
        assert a["fit"] == b["fit"] and abs(a["weight"] - b["weight"]) < 1e-12
    assert [{k: v for k, v in r.items() if k != "cv_rmse"} for r in there.cv_results_] == \
        [{k: v for k, v in r.items() if k != "cv_rmse"} for r in here.cv_results_]
    # the chained fits' kernel entries and predictions are float32 (rounded from float64 Gram
    # matrices, and float32 products), whose last bits may depend on the BLAS threads of the
    # process (in-process fits and workers differ there): 3e-10 apart in a CV RMSE
    np.testing.assert_allclose([r["cv_rmse"] for r in there.cv_results_],
                               [r["cv_rmse"] for r in here.cv_results_], rtol=1e-8, atol=0)
    np.testing.assert_allclose(there.completed_, here.completed_, rtol=1e-6, atol=1e-9)


def test_matrix_auto_with_vector_entries_on_workers_is_the_in_process_fit(client):
    rng = np.random.default_rng(3)
    X = np.einsum("ik,jk,kf->ijf", rng.standard_normal((24, 3)), rng.standard_normal((12, 3)),
                  rng.standard_normal((3, 2)))
    X[rng.random((24, 12)) < 0.3] = np.nan  # missing fibres
    here = NTKImputer(random_state=0, cv_max_folds=1).fit(X)
    there = NTKImputer(random_state=0, cv_max_folds=1, scheduler=client).fit(X)
    assert any("softimpute" in str(r["prior"]) for r in here.cv_results_)  # the shipped SoftImpute
    assert there.chosen_ == here.chosen_
    np.testing.assert_allclose(there.completed_, here.completed_, rtol=0, atol=1e-12)


class FailsAtRidge001(NTKImputer):
    """An NTKImputer whose CV fits at ridge 0.01 raise ``ValueError(message)`` (the final fit
    does not): the candidate fails on a worker as it would here."""
    message = "the kernel plus ridge is not positive definite; increase ridge"

    def _complete(self, values, mask, cfg, targets=None, screen=None, **kwargs):
        if targets is not None and cfg.get("ridge") == 0.01:
            raise ValueError(self.message)
        return super()._complete(values, mask, cfg, targets, screen, **kwargs)


class BrokenAtRidge001(FailsAtRidge001):
    message = "something else went wrong"


def test_matrix_candidate_failing_on_a_worker_is_handled_as_in_process(client):
    X = low_rank_with_gaps(seed=1)
    kw = dict(mode="cols", prior="profile", random_state=0, stack=1)
    here = FailsAtRidge001(**kw).fit(X)
    there = FailsAtRidge001(**kw, scheduler=client).fit(X)
    ridges = [r["ridge"] for r in here.cv_results_]
    assert 0.01 not in ridges and 0.1 in ridges                      # skipped, the rest scored
    assert there.cv_results_ == here.cv_results_ and there.chosen_ == here.chosen_
    for scheduler in (None, client):                                 # other errors propagate
        with pytest.raises(ValueError, match="^something else went wrong$"):
            BrokenAtRidge001(**kw, scheduler=scheduler).fit(X)


def test_cli_matrix_on_a_scheduler_address_writes_the_in_process_completion(tmp_path, client):
    X = low_rank_with_gaps(20, 8, seed=2)
    path = tmp_path / "m.csv"
    pd.DataFrame(X, index=[f"r{i}" for i in range(20)]).to_csv(path)
    for name, extra in (("here", []), ("dask", ["--scheduler", client.scheduler.address])):
        res = CliRunner().invoke(main, ["matrix", str(path), "-o", str(tmp_path / f"{name}.csv"),
                                        "--mode", "rows", *extra])
        assert res.exit_code == 0, res.output
    assert (tmp_path / "dask.csv").read_text() == (tmp_path / "here.csv").read_text()


# --- a large kernel's pieces on workers ---------------------------------------------------------

def test_ntk_tiles_on_workers_match_in_process(client):
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((96, 6)), 2 * rng.standard_normal((70, 6))
    tiles = []

    def on_workers(fn, items, shared):
        tiles.append(len(items))
        return map_tasks(fn, items, scheduler=client, shared=shared)

    net = ntk.FullyConnectedNTK(depth=2)
    for args in ((X,), (X, Y)):
        here = net.ntk(*args, device="cpu")
        there = net.ntk(*args, device="cpu", map_tiles=on_workers)
        np.testing.assert_allclose(there, here, rtol=0, atol=1e-12)
    np.testing.assert_allclose(net.nngp(X, device="cpu", map_tiles=on_workers),
                               net.nngp(X, device="cpu"), rtol=0, atol=1e-12)
    assert tiles == [ntk.MAP_TILES_COUNT] * 3                       # really in tiles


def test_ntk_tile_too_large_for_a_worker_is_refused_before_work():
    X = np.ones((50, 10000))                                        # 8 MB of inputs per worker
    never = lambda *a, **k: pytest.fail("mapped despite the budget")  # noqa: E731
    with pytest.raises(MemoryBudgetError, match="a one-row tile of the 50 x 50 NTK on a worker"):
        ntk.FullyConnectedNTK().ntk(X, device="cpu", memory_budget=2 ** 20, map_tiles=never)

def test_banded_kernel_pieces_on_workers_match_in_process(client, monkeypatch):
    net = Sequential.from_spec("C3,G2,C3,L,C1")
    prior = np.random.default_rng(0).random((1, 24, 28))
    monkeypatch.setattr(banded, "PIECE_WORK_BYTES", 1 << 16)          # many small pieces
    on_workers = functools.partial(map_tasks, scheduler=client)
    here = net.ntk_banded((24, 28), prior, band=3, compute=Compute(device="cpu"))
    there = net.ntk_banded((24, 28), prior, band=3, compute=Compute(device="cpu"),
                           map_pieces=on_workers)
    prop = banded.BandedPropagator(net.layers, (24, 28), 3, make_prior(prior, (24, 28)),
                                   torch.device("cpu"), torch.float64)
    prop.compute(1 << 30)
    assert prop.pieces[0] * prop.pieces[1] >= 4                      # really split
    np.testing.assert_allclose(there.table, here.table, rtol=0, atol=1e-12)


def test_local_one_is_a_worker_thread_in_this_process():
    pytest.importorskip("distributed", reason=NEEDS_DASK)
    assert map_tasks(lambda x: (x, os.getpid()), [1, 2], scheduler="local:1") == \
        [(1, os.getpid()), (2, os.getpid())]


def test_screening_on_workers_screens_what_in_process_screens(client, monkeypatch):
    """Screening decides in scoring order on the recorded first rounds: a tight margin screens
    some candidates out, the same ones on workers as here, with the same choice."""
    import completion.matrix as matrix_module
    X = low_rank_with_gaps(seed=3)
    kw = dict(random_state=0, depth=1, ridge=0.03, stack=2)
    monkeypatch.setattr(matrix_module, "SCREEN_MARGIN", np.inf)
    monkeypatch.setattr(matrix_module, "SCREEN_MIN_ENTRIES", 1)  # this matrix's folds are small
    unscreened = NTKImputer(**kw).fit(X)
    monkeypatch.setattr(matrix_module, "SCREEN_MARGIN", 1.0001)
    here = NTKImputer(**kw).fit(X)
    there = NTKImputer(**kw, scheduler=client).fit(X)
    assert len(here.cv_results_) < len(unscreened.cv_results_)          # some were screened
    assert there.cv_results_ == here.cv_results_ and there.chosen_ == here.chosen_
    np.testing.assert_allclose(there.completed_, here.completed_, rtol=0, atol=1e-12)
