"""Files as users have them: outputs checked before work and written with the usual modes,
16-bit and RGBA images kept, lossy outputs scored as written, masks from image editors, and the
array types of OpenCV / scikit-image users accepted by ``inpaint()``."""
import os
import stat
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import cli
from cli import main
from completion.files import UnwritableOutput, atomic_output, check_writable, write_text
from completion.image import inpaint
from completion.image_io import load_image, read_image, write_image
from completion.masks import read_mask
from completion.metrics import psnr

SMALL_ARCH = "C3,L,D,C3,L,U,C3"


def smooth_rgb(h=24, w=20):
    r, c = np.mgrid[0:h, 0:w] / max(h, w)
    return np.dstack([0.5 + 0.3 * np.sin(4 * r), 0.4 + 0.2 * np.cos(3 * c), 0.2 + 0.5 * r * c])


def stroke_mask(h=24, w=20):
    m = np.zeros((h, w), bool)
    m[8:12, 3:17] = True
    return m


def write_mask_png(path, mask):
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    return path


# --- 1. outputs checked before any work: one line, exit status 2 --------------------------------

@pytest.fixture()
def no_work(monkeypatch):
    """Any computing fails the test: the checks must come first."""
    def compute(*args, **kwargs):
        raise AssertionError("computed before checking the output")
    monkeypatch.setattr("completion.inpaint_jobs.run_batch", compute)
    monkeypatch.setattr("completion.compare.compare_methods", compute)
    monkeypatch.setattr("completion.matrix_demo.run_demo", compute)
    monkeypatch.setattr("completion.matrix.NTKImputer.fit_transform", compute)


def assert_refused(res, *words):
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit), res.exception    # no traceback
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    for word in words:
        assert word in lines[0]


def test_unwritable_outputs_refused_before_work(tmp_path, no_work):
    img = tmp_path / "img.png"
    Image.fromarray((smooth_rgb() * 255).astype(np.uint8)).save(img)
    mask = write_mask_png(tmp_path / "m.png", stroke_mask())
    existing = tmp_path / "existing_file.png"
    existing.write_bytes(b"")
    run = lambda *args: CliRunner().invoke(main, [str(a) for a in args])
    assert_refused(run("inpaint", img, "--mask", mask, "-o", existing / "x.png"),
                   "existing_file.png is not a folder")
    assert_refused(run("inpaint", img, "--mask", mask, "-o", tmp_path / "out.xyz"), ".xyz")
    assert_refused(run("inpaint", img, "--mask", mask, "-o", tmp_path / "o.png",
                       "--save-mask", existing / "m.png"), "existing_file.png")
    assert_refused(run("compare", img, "--mask", mask, "--methods", "biharmonic",
                       "-o", existing / "cmp"), "existing_file.png is not a folder")
    assert_refused(run("demo", "-o", existing / "demo"), "existing_file.png is not a folder")
    csv = tmp_path / "m.csv"
    csv.write_text("id,a,b\nr1,1,\nr2,2,3\n")
    assert_refused(run("matrix", csv, "-o", existing / "o.csv"), "existing_file.png")
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_pseudo_file_system_output_refused(tmp_path, no_work):
    img = tmp_path / "img.png"
    Image.fromarray((smooth_rgb() * 255).astype(np.uint8)).save(img)
    res = CliRunner().invoke(main, ["inpaint", str(img), "--missing-fraction", "0.3",
                                    "-o", "/proc/x.png"])
    assert_refused(res, "/proc")


def test_check_writable_creates_nothing(tmp_path):
    check_writable(tmp_path / "a" / "b" / "c.png")          # missing folders can be created
    check_writable(tmp_path / "new_folder", folder=True)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "f").write_text("")
    with pytest.raises(UnwritableOutput, match="it is a file, expected a folder"):
        check_writable(tmp_path / "f", folder=True)
    with pytest.raises(UnwritableOutput, match="it is a folder"):
        check_writable(tmp_path)


# --- 2. atomic writes keep the existing mode, else the umask default ----------------------------

def test_atomic_writes_keep_mode_or_use_umask(tmp_path):
    old = os.umask(0o027)
    try:
        write_text(tmp_path / "new.txt", "x")
        assert stat.S_IMODE(os.stat(tmp_path / "new.txt").st_mode) == 0o640   # 0o666 & ~0o027
        existing = tmp_path / "shared.png"
        existing.write_bytes(b"")
        os.chmod(existing, 0o664)
        write_image(existing, np.zeros((4, 4)))
        assert stat.S_IMODE(os.stat(existing).st_mode) == 0o664
        with pytest.raises(RuntimeError):
            with atomic_output(existing) as fh:
                fh.write(b"partial")
                raise RuntimeError("failed mid-write")
        assert read_image(existing).shape == (4, 4)          # untouched by the failed write
    finally:
        os.umask(old)


# --- 3. images: bit depth and alpha kept; lossy outputs warned about and scored as written ------

def test_sixteen_bit_grey_and_eight_bit_round_trip(tmp_path):
    pytest.importorskip("skimage")
    img = smooth_rgb()[:, :, 0]
    src16 = tmp_path / "g16.png"
    Image.fromarray(np.round(img * 65535).astype(np.uint16)).save(src16)
    src8 = tmp_path / "g8.png"
    Image.fromarray(np.round(img * 255).astype(np.uint8)).save(src8)
    mask = write_mask_png(tmp_path / "m.png", stroke_mask())
    for src, mode, bits in ((src16, "I;16", 16), (src8, "L", 8)):
        out = tmp_path / f"out_{src.name}"
        res = CliRunner().invoke(main, ["inpaint", str(src), "--mask", str(mask), "-o", str(out),
                                        "--method", "biharmonic"])
        assert res.exit_code == 0, res.output
        assert Image.open(out).mode == mode
        written, given = np.asarray(Image.open(out)), np.asarray(Image.open(src))
        m = stroke_mask()
        assert np.array_equal(written[~m], given[~m])           # every observed level kept
        assert load_image(out).bits == bits


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_sixteen_bit_colour_round_trip(tmp_path, suffix):
    cv2 = pytest.importorskip("cv2")
    levels = np.round(smooth_rgb() * 65535).astype(np.uint16)
    src = tmp_path / f"c16{suffix}"
    cv2.imwrite(str(src), levels[:, :, ::-1])                    # OpenCV writes BGR
    found = load_image(src)
    assert found.bits == 16 and np.array_equal(np.round(found.pixels * 65535), levels)
    mask = write_mask_png(tmp_path / "m.png", stroke_mask())
    out = tmp_path / f"out{suffix}"
    res = CliRunner().invoke(main, ["inpaint", str(src), "--mask", str(mask), "-o", str(out),
                                    "--arch", SMALL_ARCH, "-q"])
    assert res.exit_code == 0, res.output
    written = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)[:, :, ::-1]
    assert written.dtype == np.uint16
    assert np.array_equal(written[~stroke_mask()], levels[~stroke_mask()])


def test_rgba_alpha_carried_through_not_inpainted(tmp_path):
    rgb = np.round(smooth_rgb() * 255).astype(np.uint8)
    alpha = np.zeros(rgb.shape[:2], np.uint8)
    alpha[:, 10:] = 255                                          # left half transparent
    alpha[0, 0] = 77
    src = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(src)
    mask = write_mask_png(tmp_path / "m.png", stroke_mask())
    out = tmp_path / "out.png"
    res = CliRunner().invoke(main, ["inpaint", str(src), "--mask", str(mask), "-o", str(out),
                                    "--arch", SMALL_ARCH, "-q"])
    assert res.exit_code == 0, res.output
    written = np.asarray(Image.open(out))
    assert written.shape == (24, 20, 4)
    assert np.array_equal(written[:, :, 3], alpha)               # alpha unchanged, also in the hole
    m = stroke_mask()
    assert np.array_equal(written[:, :, :3][~m], rgb[~m])        # observed colour kept
    assert not np.array_equal(written[:, :, :3][m], rgb[m])      # the hole's colour inpainted


def test_jpeg_output_warned_and_scored_as_written(tmp_path):
    pytest.importorskip("skimage")
    clean = tmp_path / "clean.png"
    Image.fromarray(np.round(smooth_rgb() * 255).astype(np.uint8)).save(clean)
    out = tmp_path / "out.jpg"
    res = CliRunner().invoke(main, ["inpaint", str(clean), "--missing-fraction", "0.3", "-o",
                                    str(out), "--method", "biharmonic", "--reference", str(clean)])
    assert res.exit_code == 0, res.output
    assert "warning: " in res.stderr and "JPEG" in res.stderr
    printed = float(res.output.split("PSNR ")[1].split(" dB")[0])
    assert printed == pytest.approx(psnr(read_image(out), read_image(clean)), abs=0.006)


# --- 4. masks from image editors; inpaint() takes OpenCV / scikit-image arrays ------------------

def test_rgba_masks_from_editors(tmp_path):
    strokes = stroke_mask()
    white = np.where(strokes, 255, 0).astype(np.uint8)
    opaque = np.dstack([white, white, white, np.full_like(white, 255)])   # black canvas
    Image.fromarray(opaque, "RGBA").save(tmp_path / "opaque.png")
    layer = np.dstack([np.full_like(white, 255)] * 3 + [white])           # white on transparent
    Image.fromarray(layer, "RGBA").save(tmp_path / "layer.png")
    for name in ("opaque.png", "layer.png"):
        assert np.array_equal(read_mask(tmp_path / name, strokes.shape), strokes), name


def test_jpeg_mask_thresholded_and_reported(tmp_path):
    strokes = stroke_mask()
    Image.fromarray(strokes.astype(np.uint8) * 255).save(tmp_path / "m.jpg", quality=70)
    noisy = np.asarray(Image.open(tmp_path / "m.jpg"))
    assert np.count_nonzero(noisy) > strokes.sum()                # compression noise is non-zero
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mask = read_mask(tmp_path / "m.jpg", strokes.shape)
    assert np.array_equal(mask, strokes)
    assert len(caught) == 1 and "mid-grey" in str(caught[0].message)
    assert "between 25% and 75% grey" in str(caught[0].message)


def test_inpaint_accepts_opencv_and_skimage_types():
    img = smooth_rgb(16, 16)
    strokes = np.zeros((16, 16), bool)
    strokes[6:9, 3:12] = True
    options = {"arch": SMALL_ARCH}
    as_float = inpaint(img, strokes, **options)
    u8 = np.round(img * 255).astype(np.uint8)
    for mask in (strokes.astype(np.uint8) * 255, strokes.astype(np.int64)):   # 0/255 and 0/1
        out = inpaint(u8, mask, **options)
        assert out.dtype == np.uint8 and out.shape == u8.shape
        assert np.array_equal(out[~strokes], u8[~strokes])
        assert np.abs(out[strokes].astype(float) / 255 - as_float[strokes]).max() < 0.02
    u16 = np.round(img * 65535).astype(np.uint16)
    out16 = inpaint(u16, strokes, **options)
    assert out16.dtype == np.uint16 and np.array_equal(out16[~strokes], u16[~strokes])
    out32 = inpaint(img.astype(np.float32), strokes, **options)
    assert out32.dtype == np.float32
    with pytest.raises(ValueError, match="uint8"):
        inpaint((img * 255).astype(np.int32), strokes, **options)
    with pytest.raises(ValueError, match="mask"):
        inpaint(img, strokes * 0.5, **options)
