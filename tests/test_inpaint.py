"""Inpainting: masked kernel solver (CG vs Cholesky), padding, channels, masks, recovery quality."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from completion.image import CNTKInpainter, inpaint
from completion.image_grid import MIN_SIDE, pad_to_multiple, padded_size, validate_image_and_mask
from completion.inpaint_solver import cg_solve, exact_solve, relative_ridge
from models.cntk import StructuredKernel
from completion.masks import generate_mask, mask_to_image, read_mask
from completion.metrics import psnr

F64 = torch.float64


def torus_offsets(n):
    r = torch.arange(n, dtype=F64)
    return torch.minimum(r, n - r)


def matern_table(h, w, scale):
    """A stationary PSD table on the torus: exp(-|d| / scale) (Laplace kernel, product form)."""
    return torch.exp(-torus_offsets(h)[:, None] / scale) * torch.exp(-torus_offsets(w)[None, :] / scale)


class LoopKernel:
    """Periodic test kernel K(p, q) = a(p) a(q) t(q - p) (PSD: Schur product of a rank-one and
    a stationary PSD kernel), materialised by an explicit loop over pixel pairs; matvec, the
    shifted solve and the blocks use that dense matrix."""

    def __init__(self, h, w, period=2, seed=0):
        gen = torch.Generator().manual_seed(seed)
        amp = 1.0 + torch.rand(period, period, generator=gen, dtype=F64)
        t = matern_table(h, w, 2.0)
        self.h, self.w = h, w
        dense = torch.empty(h, w, h, w, dtype=F64)
        for pr in range(h):
            for pc in range(w):
                for qr in range(h):
                    for qc in range(w):
                        dense[pr, pc, qr, qc] = (amp[pr % period, pc % period] * amp[qr % period, qc % period]
                                                 * t[(qr - pr) % h, (qc - pc) % w])
        self._dense = dense

    def dense(self):
        return self._dense

    def block(self, rows, cols):
        return self._dense.reshape(self.h * self.w, -1)[rows][:, cols]

    def diag(self):
        return self._dense.reshape(self.h * self.w, -1).diagonal().reshape(self.h, self.w)

    def matvec(self, v):
        mat = self._dense.reshape(self.h * self.w, -1)
        return (v.reshape(-1, self.h * self.w) @ mat.T).reshape(v.shape)

    def solve_shifted(self, v, mu):
        mat = self._dense.reshape(self.h * self.w, -1) + mu * torch.eye(self.h * self.w, dtype=F64)
        return torch.linalg.solve(mat, v.reshape(-1, self.h * self.w).T).T.reshape(v.shape)


@pytest.mark.parametrize("precondition", [False, True])
def test_cg_matches_cholesky_per_channel_masks(precondition):
    kern = LoopKernel(10, 10, period=2)
    gen = torch.Generator().manual_seed(1)
    observed = torch.rand(3, 10, 10, generator=gen) > 0.5
    y = torch.randn(3, 10, 10, generator=gen, dtype=F64) * observed
    lam = relative_ridge(kern, 1e-3)
    exact, _ = exact_solve(kern, y, observed, lam)
    approx, info = cg_solve(kern, y, observed, lam, tol=1e-12, maxiter=2000, precondition=precondition)
    assert info.converged
    assert float((approx - exact).norm() / exact.norm()) < 1e-6
    assert not exact[~observed].any()
    # each channel is its own regression: the solve for channel 1 alone gives the same alpha
    single, _ = exact_solve(kern, y[1:2], observed[1:2], lam)
    assert torch.allclose(single[0], exact[1], rtol=1e-9, atol=1e-12)


def test_preconditioner_reduces_iterations():
    kern = StructuredKernel(matern_table(24, 24, 4.0)[None, None])
    gen = torch.Generator().manual_seed(2)
    observed = torch.rand(1, 24, 24, generator=gen) > 0.5
    y = torch.randn(1, 24, 24, generator=gen, dtype=F64) * observed
    lam = relative_ridge(kern, 1e-3)
    _, plain = cg_solve(kern, y, observed, lam, tol=1e-6, maxiter=1000, precondition=False)
    _, pre = cg_solve(kern, y, observed, lam, tol=1e-6, maxiter=1000, precondition=True)
    assert plain.converged and pre.converged
    assert pre.iterations < 0.7 * plain.iterations


@pytest.mark.parametrize("mode", ["reflect", "wrap", "missing"])
def test_pad_to_multiple_then_crop(mode):
    img = np.random.default_rng(0).random((13, 10, 2))
    mask = np.random.default_rng(1).random((13, 10, 2)) < 0.3
    img_p, mask_p = pad_to_multiple(img, mask, 8, margin=0, mode=mode)
    assert img_p.shape == (16, 16, 2) and mask_p.shape == (16, 16, 2)
    assert np.array_equal(img_p[:13, :10], img) and np.array_equal(mask_p[:13, :10], mask)
    if mode == "missing":
        assert mask_p[13:].all() and mask_p[:, 10:].all()
    if mode == "reflect":
        assert np.array_equal(img_p[13, :10], img[12]) and np.array_equal(mask_p[:13, 10], mask[:, 9])


@pytest.mark.parametrize("shape", [(13, 10), (7, 9, 3), (2, 2, 1)])
def test_missing_padding_adds_margin_and_minimum_at_bottom_right(shape):
    rng = np.random.default_rng(1)
    img, mask = rng.random(shape), rng.random(shape[:2]) < 0.3
    img_p, mask_p = pad_to_multiple(img, mask, 4, margin=3, mode="missing", minimum=12)
    hp, wp = padded_size(shape[:2], 4, 3, 12)
    smallest = lambda n: next(k for k in range(4, 100, 4) if k >= n + 3 and k >= 12)  # noqa: E731
    assert (hp, wp) == (smallest(shape[0]), smallest(shape[1]))
    assert img_p.shape == (hp, wp) + shape[2:] and mask_p.shape == (hp, wp)
    assert np.array_equal(img_p[:shape[0], :shape[1]], img)
    assert np.array_equal(mask_p[:shape[0], :shape[1]], mask)
    assert mask_p[shape[0]:].all() and mask_p[:, shape[1]:].all()


def test_reflect_padding_longer_than_the_image_wraps():
    img = np.arange(6.0).reshape(2, 3)
    img_p, mask_p = pad_to_multiple(img, np.zeros((2, 3), bool), 8, mode="reflect")
    assert img_p.shape == (8, 8) and not mask_p.any()
    np.testing.assert_array_equal(img_p[:, 3], img_p[:, 0])         # wrapped, not mirrored


def test_grey_and_colour_images_and_masks():
    rng = np.random.default_rng(2)
    grey = rng.random((6, 5))
    mask = rng.random((6, 5)) < 0.5
    img, m, was_grey = validate_image_and_mask(grey, mask)
    assert was_grey and img.shape == m.shape == (6, 5, 1)
    img, m, was_grey = validate_image_and_mask(grey[:, :, None], mask)
    assert not was_grey and img.shape == (6, 5, 1)
    rgb = rng.random((6, 5, 3))
    img, m, was_grey = validate_image_and_mask(rgb, mask)
    assert not was_grey and m.shape == (6, 5, 3) and all((m[:, :, c] == mask).all() for c in range(3))
    assert inpaint(grey, mask, prior="noise").shape == (6, 5)             # odd sizes: kept
    assert inpaint(rgb, mask, prior="noise").shape == (6, 5, 3)
    assert inpaint(rgb, mask, method="biharmonic").shape == (6, 5, 3)


@pytest.mark.parametrize("method", ["cntk", "biharmonic", "telea", "dip"])
def test_tiny_images_refused_with_their_size(method):
    for shape in [(1, 9), (9, 1), (1, 1, 3)]:
        with pytest.raises(ValueError, match=rf"image is {shape[0]} x {shape[1]} pixels; "
                                             rf"inpainting needs at least {MIN_SIDE} x {MIN_SIDE}"):
            inpaint(np.full(shape, 0.5), np.zeros(shape[:2], bool), method=method)
    two = np.full((2, 2), 0.5)
    two_mask = np.array([[True, False], [False, False]])
    options = {"iterations": 1, "progress": False} if method == "dip" else {}
    assert inpaint(two, two_mask, method=method, **options).shape == (2, 2)


def test_constant_image_comes_back_constant():
    # the adaptive default once divided 0 by 0 here (warm-started refinement of zero targets)
    img = np.full((16, 12, 3), 0.25)
    mask = np.random.default_rng(0).random((16, 12)) < 0.5
    np.testing.assert_allclose(inpaint(img, mask), img, atol=1e-12)


def test_validation_errors():
    img = np.zeros((8, 8))
    with pytest.raises(ValueError, match="bool"):
        validate_image_and_mask(img, np.zeros((8, 8), int))
    with pytest.raises(ValueError, match="shape"):
        validate_image_and_mask(img, np.zeros((8, 7), bool))
    with pytest.raises(ValueError, match="every pixel"):
        validate_image_and_mask(img, np.ones((8, 8), bool))
    with pytest.raises(ValueError, match="NaN"):
        validate_image_and_mask(np.full((8, 8), np.nan), np.zeros((8, 8), bool))
    with pytest.raises(ValueError, match="method"):
        inpaint(img, np.zeros((8, 8), bool), method="magic")


def test_generated_masks():
    pixels = generate_mask((64, 64), 0.5, seed=0, mask_type="pixels")
    assert pixels.dtype == bool and abs(pixels.mean() - 0.5) < 0.05
    assert np.array_equal(pixels, generate_mask((64, 64), 0.5, seed=0))
    assert not np.array_equal(pixels, generate_mask((64, 64), 0.5, seed=1))
    box = generate_mask((64, 48), 0.25, mask_type="box")
    rows, cols = np.nonzero(box)
    assert box.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)  # a rectangle
    assert abs(box.mean() - 0.25) < 0.03
    text = generate_mask((96, 96), 0.2, seed=0, mask_type="text")
    assert 0.2 <= text.mean() < 0.5
    with pytest.raises(ValueError, match="mask_type"):
        generate_mask((8, 8), 0.5, mask_type="blob")


def test_mask_file_semantics(tmp_path):
    arr = np.zeros((5, 7), np.uint8)
    arr[1, 2] = 255
    arr[3, 4] = 1  # any non-zero value means missing
    Image.fromarray(arr).save(tmp_path / "m.png")
    mask = read_mask(tmp_path / "m.png", (5, 7))
    assert mask.sum() == 2 and mask[1, 2] and mask[3, 4]
    assert np.array_equal(read_mask(tmp_path / "m.png", (5, 7, 3), invert=True), ~mask)
    with pytest.raises(ValueError, match=r"m\.png.*img\.png"):
        read_mask(tmp_path / "m.png", (6, 7), image_path=tmp_path / "img.png")
    mask_to_image(mask).save(tmp_path / "round.png")
    assert np.array_equal(read_mask(tmp_path / "round.png", (5, 7)), mask)


def test_classical_methods_fill_only_missing():
    pytest.importorskip("skimage")
    img = np.linspace(0, 1, 24 * 24).reshape(24, 24)
    mask = generate_mask(img.shape, 0.5, seed=0)
    for method in ("biharmonic", "telea"):
        out = inpaint(img, mask, method=method)
        assert np.array_equal(out[~mask], img[~mask])
        assert psnr(out, img) > 30


SMALL_ARCH = "2*(C3,L,D),C3,L,2*(U,C3,L),C3"


def smooth_rgb(h, w):
    r, c = np.mgrid[0:h, 0:w] / 16.0
    return np.stack([0.5 + 0.3 * np.sin(r + k) * np.cos(0.7 * c - k) for k in range(3)], axis=2)


def test_rgb_per_channel_masks_odd_size_equal_channelwise_fits():
    img = smooth_rgb(13, 11)                      # padded to 16 x 12, then cropped
    mask = np.random.default_rng(3).random(img.shape) < 0.5
    inp = CNTKInpainter(SMALL_ARCH, "noise", solver="cholesky", margin=0)
    out = inp.inpaint(img, mask)
    assert out.shape == img.shape and inp.last_info["padded_shape"] == (16, 12)
    default = CNTKInpainter(SMALL_ARCH, "noise", solver="cholesky")   # >= 16 missing pixels of margin
    assert default.inpaint(img, mask).shape == img.shape
    assert default.last_info["padded_shape"] == (32, 28)
    assert np.array_equal(out[~mask], img[~mask])
    for ch in range(3):  # each channel is its own regression: same as inpainting it alone
        alone = inp.inpaint(img[:, :, ch], mask[:, :, ch])
        assert np.allclose(out[:, :, ch], alone, atol=1e-10)


def test_cntk_cg_equals_cholesky_on_image():
    img = smooth_rgb(16, 16)[:, :, 0]
    mask = generate_mask(img.shape, 0.5, seed=1)
    exact = CNTKInpainter(SMALL_ARCH, "noise", solver="cholesky").inpaint(img, mask)
    cg = CNTKInpainter(SMALL_ARCH, "noise", solver="cg", tol=1e-10, maxiter=3000).inpaint(img, mask)
    assert np.abs(cg - exact).max() < 1e-6 * np.abs(exact).max()
    auto = CNTKInpainter(SMALL_ARCH, "noise")        # solver 'auto': Cholesky for few observed pixels
    auto.inpaint(img, mask)
    assert auto.last_info["solver"] == "cholesky"
    big = smooth_rgb(72, 72)[:, :, 0]                # > 2000 observed pixels: CG
    auto.inpaint(big, generate_mask(big.shape, 0.2, seed=1))
    assert auto.last_info["solver"] == "cg"


@pytest.mark.parametrize("arch", [SMALL_ARCH, SMALL_ARCH + "+avg"])
def test_smooth_image_recovered_far_better_than_mean_fill(arch):
    img = smooth_rgb(32, 32)[:, :, 1]
    mask = generate_mask(img.shape, 0.5, seed=0)
    out = CNTKInpainter(arch).inpaint(img, mask)
    mean_fill = np.where(mask, img[~mask].mean(), img)
    assert psnr(out, img) > psnr(mean_fill, img) + 10      # MSE 10x below the mean fill


def test_kernel_cache_roundtrip(tmp_path):
    img = smooth_rgb(16, 16)[:, :, 0]
    mask = generate_mask(img.shape, 0.5, seed=2)
    first = CNTKInpainter(SMALL_ARCH, "noise", cache_dir=tmp_path).inpaint(img, mask)
    files = list(tmp_path.glob("cntk-*.pt"))
    assert len(files) == 1
    again = CNTKInpainter(SMALL_ARCH, "noise", cache_dir=tmp_path).inpaint(img, mask)
    assert np.array_equal(first, again)
    CNTKInpainter(SMALL_ARCH, prior="identity", cache_dir=tmp_path).inpaint(img, mask)
    assert len(list(tmp_path.glob("cntk-*.pt"))) == 2      # the prior is part of the key


def test_demo_writes_images(tmp_path):
    pytest.importorskip("skimage")
    from completion.image_demo import run_demo
    res = run_demo(tmp_path)
    assert all(Path(f).exists() for f in res["files"])
    assert res["psnr_cntk"] > 25 and res["psnr_biharmonic"] > 20


def test_biharmonic_baseline_on_rgb_keeps_observed_pixels_and_fills_smoothly():
    pytest.importorskip("skimage")
    rows, cols = np.mgrid[0:48, 0:40] / 48.0
    image = np.stack([rows, cols, 0.5 * (rows + cols)], axis=2)   # channel planes not contiguous
    mask = np.random.default_rng(1).random((48, 40)) < 0.4
    out = inpaint(image, mask, method="biharmonic")
    assert out.shape == image.shape
    np.testing.assert_allclose(out[~mask], image[~mask], atol=1e-12)
    # a linear ramp is harmonic: the fill must be close to it, far better than zero-fill
    assert np.abs(out[mask] - image[mask]).max() < 0.02
