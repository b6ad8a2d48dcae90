"""``ntk-complete inpaint``: single image and batch folder round trips, metrics, safety."""
import hashlib

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli import main
from completion.image_io import read_image
from completion.masks import generate_mask
from completion.metrics import psnr

SMALL_ARCH = "C3,L,D,C3,L,U,C3"  # one level: fast on 24 x 24 images


def smooth_image(h=24, w=24):
    r, c = np.mgrid[0:h, 0:w] / max(h, w)
    return 0.5 + 0.3 * np.sin(2 * np.pi * r) * np.cos(np.pi * c)


def save(path, arr):
    Image.fromarray(np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8)).save(path)
    return path


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_inpaint_with_mask_file_and_reference(tmp_path):
    clean = save(tmp_path / "clean.png", smooth_image())
    mask = generate_mask((24, 24), 0.5, seed=0)
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    damaged = read_image(clean)
    damaged[mask] = 0.0
    src = save(tmp_path / "damaged.png", damaged)
    before = digest(src)
    out = tmp_path / "out.png"
    res = CliRunner().invoke(main, ["inpaint", str(src), "--mask", str(tmp_path / "mask.png"), "-o", str(out),
                                    "--arch", SMALL_ARCH, "--reference", str(clean), "-q"])
    assert res.exit_code == 0, res.output
    assert "PSNR" in res.output and "SSIM" in res.output
    assert digest(src) == before
    filled = read_image(out)
    ref = read_image(clean)
    assert np.array_equal(filled[~mask], ref[~mask])                # observed pixels kept
    assert psnr(filled, ref) > psnr(damaged, ref) + 10              # far better than the zero fill


def test_generated_mask_saved_and_output_cannot_be_input(tmp_path):
    src = save(tmp_path / "img.png", smooth_image())
    runner = CliRunner()
    res = runner.invoke(main, ["inpaint", str(src), "-o", str(src), "--missing-fraction", "0.5",
                               "--method", "biharmonic"])
    assert res.exit_code != 0 and "never overwritten" in res.output
    res = runner.invoke(main, ["inpaint", str(src), "-o", str(tmp_path / "o.png"), "--missing-fraction", "0.3",
                               "--seed", "4", "--save-mask", str(tmp_path / "m.png"), "--method", "biharmonic"])
    assert res.exit_code == 0, res.output
    saved = np.asarray(Image.open(tmp_path / "m.png")) > 0
    assert np.array_equal(saved, generate_mask((24, 24), 0.3, seed=4))


def test_errors_name_the_files(tmp_path):
    src = save(tmp_path / "img.png", smooth_image())
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "small_mask.png")
    runner = CliRunner()
    res = runner.invoke(main, ["inpaint", str(src), "--mask", str(tmp_path / "small_mask.png"),
                               "-o", str(tmp_path / "o.png")])
    assert res.exit_code != 0
    assert f"mask {tmp_path / 'small_mask.png'} is 12x10 (WxH) but the image {src} is 24x24" \
        in res.output
    res = runner.invoke(main, ["inpaint", str(src), "-o", str(tmp_path / "o.png")])
    assert res.exit_code != 0 and "--missing-fraction" in res.output
    assert not (tmp_path / "o.png").exists()


def test_batch_folder(tmp_path):
    pytest.importorskip("skimage")
    src = tmp_path / "in"
    src.mkdir()
    refs = tmp_path / "refs"
    refs.mkdir()
    for i, name in enumerate(["a", "b"]):
        img = np.clip(smooth_image() + 0.1 * i, 0, 1)
        save(refs / f"{name}.png", img)
        save(src / f"{name}.png", img)
        mask = generate_mask((24, 24), 0.4, seed=i)
        Image.fromarray(mask.astype(np.uint8) * 255).save(src / f"{name}_mask.png")
    hashes = {p.name: digest(p) for p in src.iterdir()}
    res = CliRunner().invoke(main, ["inpaint", str(src), "-o", str(tmp_path / "out"), "--reference", str(refs),
                                    "--arch", SMALL_ARCH, "-q"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png"]
    assert res.output.count("PSNR") == 2
    assert {p.name: digest(p) for p in src.iterdir()} == hashes
    (src / "b_mask.png").unlink()
    res = CliRunner().invoke(main, ["inpaint", str(src), "-o", str(tmp_path / "out2"), "--method", "biharmonic"])
    assert res.exit_code != 0 and "b.png" in res.output and "b_mask.png" in res.output


def test_mask_file_with_generation_options_refused(tmp_path):
    src = save(tmp_path / "img.png", smooth_image())
    mask = tmp_path / "m.png"
    Image.fromarray(generate_mask((24, 24), 0.3, seed=0).astype(np.uint8) * 255).save(mask)
    out = tmp_path / "o.png"
    runner = CliRunner()
    for extra in (["--missing-fraction", "0.3"], ["--mask-type", "box"]):
        for command in (["inpaint", str(src), "-o", str(out)],
                        ["compare", str(src), "-o", str(tmp_path / "cmp")]):
            res = runner.invoke(main, [*command, "--mask", str(mask), *extra,
                                       "--method" if command[0] == "inpaint" else "--methods",
                                       "biharmonic"])
            assert res.exit_code == 2 and extra[0] in res.stderr and "--mask" in res.stderr
    res = runner.invoke(main, ["inpaint", str(src), "-o", str(out), "--missing-fraction", "0.3",
                               "--invert-mask"])
    assert res.exit_code == 2 and "--invert-mask" in res.stderr
    assert not out.exists() and not (tmp_path / "cmp").exists()


def test_no_progress_bars_when_stderr_is_not_a_terminal(tmp_path, monkeypatch):
    import cli
    src = save(tmp_path / "img.png", smooth_image())
    res = CliRunner().invoke(main, ["inpaint", str(src), "--missing-fraction", "0.3",
                                    "-o", str(tmp_path / "o.png"), "--arch", SMALL_ARCH])
    assert res.exit_code == 0, res.output
    assert "it/s" not in res.stderr and "%|" not in res.stderr, res.stderr   # CliRunner: no TTY
    monkeypatch.setattr(cli.sys.stderr, "isatty", lambda: True, raising=False)
    assert cli._show_progress(quiet=False) and not cli._show_progress(quiet=True)


@pytest.mark.parametrize("prior,expect", [("auto", "image-prior CNTK"),
                                           ("noise", "kernel: stationary CNTK (prior noise)")])
def test_verbose_reports_each_images_kernel(tmp_path, prior, expect):
    """-v prints what the CNTK used for each image of a folder (the per-image choice with its
    held-out errors for prior auto), through the batch runner; without -v nothing of it."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a", "b"):
        save(folder / f"{name}.png", smooth_image())
        mask = generate_mask((24, 24), 0.5, seed=len(name))
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"{name}_mask.png")
    args = ["inpaint", str(folder), "-o", str(tmp_path / "out"), "--arch", SMALL_ARCH,
            "--prior", prior, "-q"]
    loud = CliRunner().invoke(main, args + ["-v"])
    assert loud.exit_code == 0, loud.output
    assert loud.stderr.count(expect) >= 2, loud.stderr
    quiet = CliRunner().invoke(main, args[:2] + ["-o", str(tmp_path / "out2")] + args[4:])
    assert quiet.exit_code == 0, quiet.output
    assert expect not in quiet.stderr
