"""Image-adaptive inpainting: image priors, the mixed kernel, the smooth Fourier-feature kernel,
the adaptive regression against dense solves, held-out selection, and the unchanged stationary
path."""
import dataclasses

import numpy as np
import pytest
import torch

from completion.image import CNTKInpainter
from completion.image_adaptive import KernelMix, Regression, normalised
from completion.image_priors import ImagePrior, is_image_prior, parse_image_prior
from completion.image_selection import held_out_mask, select_mix
from completion.masks import generate_mask
from completion.mixed_kernel import MixedKernel
from completion.smooth_kernel import fourier_correlation, smooth_kernel
from models.cntk import Sequential
from models.device import Compute
from models.ntk import FullyConnectedNTK

F64 = torch.float64


def stationary_default(shape):
    return Sequential.from_spec("C3,L,D,C3,L,U,C3,L,C3").ntk(shape, average_phases=True,
                                                             compute=Compute(dtype=F64))


def test_parse_image_prior():
    assert parse_image_prior("image") == ImagePrior(1, 0.0)
    assert parse_image_prior("image:2+meshgrid:0.25") == ImagePrior(2, 0.25)
    assert parse_image_prior("image:0").spec() == "image:0"
    assert is_image_prior("image:3") and not is_image_prior("identity") and not is_image_prior(None)
    for bad in ("image:9", "image:x", "image+noise:0.3", "image+meshgrid:1.5", "picture"):
        with pytest.raises(ValueError):
            parse_image_prior(bad)


def test_image_prior_features_mix_the_covariances():
    rng = np.random.default_rng(0)
    est = rng.random((3, 6, 5))
    z = ImagePrior(1, 0.3).features(est)
    from models.cntk import meshgrid_features
    mesh = meshgrid_features((6, 5))
    gram = np.einsum("cij,ckl->ijkl", z, z) / z.shape[0]
    expect = (0.7 * np.einsum("cij,ckl->ijkl", est, est) / 3
              + 0.3 * np.einsum("cij,ckl->ijkl", mesh, mesh) / 2)
    np.testing.assert_allclose(gram, expect, atol=1e-12)
    np.testing.assert_array_equal(ImagePrior().features(est), est)


def test_smooth_kernel_is_the_fc_ntk_of_explicit_fourier_features():
    h, w, scale = 6, 8, 1.3
    fr = np.fft.fftfreq(h)[:, None]
    fc = np.fft.fftfreq(w)[None, :]
    weights = np.exp(-2 * np.pi ** 2 * scale ** 2 * (fr ** 2 + fc ** 2)).ravel()
    weights /= weights.sum()
    freqs = np.stack(np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij"), -1).reshape(-1, 2)
    pos = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), -1).reshape(-1, 2)
    phase = 2 * np.pi * pos @ freqs.T                                  # (HW, n_freq)
    feats = np.concatenate([np.sqrt(weights) * np.cos(phase), np.sqrt(weights) * np.sin(phase)], 1)
    dense = np.asarray(FullyConnectedNTK(depth=2).ntk(feats, dtype=F64))
    kern = smooth_kernel((h, w), scale, depth=2)
    np.testing.assert_allclose(kern.dense().reshape(h * w, h * w), dense / dense[0, 0], atol=1e-10)
    assert fourier_correlation((h, w), scale)[0, 0] == 1.0


def random_banded(shape, band, seed=0):
    """The tapered banded CNTK of the image-prior network on a random prior."""
    rng = np.random.default_rng(seed)
    net = Sequential.from_spec("C3,G3.0,C1")
    return net.ntk_banded(shape, rng.random((2,) + shape), band=band, compute=Compute(dtype=F64)).tapered()


def test_mixed_kernel_products_and_preconditioner():
    shape = (16, 16)
    stat = normalised(stationary_default(shape))
    band = random_banded(shape, 3)
    mixed = MixedKernel([(0.4, stat)], band, 0.6)
    dense = 0.4 * stat.dense() + 0.6 * band.dense()
    v = torch.randn(2, *shape, dtype=F64)
    expect = np.einsum("ijkl,ckl->cij", dense, v.numpy())
    np.testing.assert_allclose(mixed.matvec(v).numpy(), expect, atol=1e-10)
    np.testing.assert_allclose(mixed.diag().numpy(), np.einsum("ijij->ij", dense), atol=1e-12)
    # without a banded part the shifted solve is exact
    only = MixedKernel([(0.4, stat)])
    x = only.solve_shifted(v, 0.1)
    back = np.einsum("ijkl,ckl->cij", 0.4 * stat.dense(), x.numpy()) + 0.1 * x.numpy()
    np.testing.assert_allclose(back, v.numpy(), atol=1e-9)
    # with one, it is an SPD operator (what PCG needs)
    n = shape[0] * shape[1]
    basis = torch.eye(n, dtype=F64).reshape(n, *shape)
    prec = mixed.solve_shifted(basis, 0.05).reshape(n, n).numpy()
    np.testing.assert_allclose(prec, prec.T, atol=1e-10)
    assert np.linalg.eigvalsh(prec).min() > 0


def dense_fit(kern_dense, y, observed, ridge_abs, mean):
    """Cholesky oracle: K_ao (K_oo + ridge I)^-1 (y_o - mean) + mean, one channel."""
    n = y.size
    K = kern_dense.reshape(n, n)
    o = observed.ravel()
    alpha = np.linalg.solve(K[np.ix_(o, o)] + ridge_abs * np.eye(o.sum()), y.ravel()[o] - mean)
    return (K[:, o] @ alpha + mean).reshape(y.shape)


def smooth_test_image(n, seed=0):
    rng = np.random.default_rng(seed)
    r, c = np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n), indexing="ij")
    img = 0.5 + 0.3 * np.sin(5 * r + 3 * c) * np.cos(4 * c) + 0.05 * rng.standard_normal((n, n))
    img[n // 3: n // 2, :] += 0.3                         # an edge
    return img.clip(0, 1)


def test_image_mix_fit_equals_dense_regression():
    n = 16
    img = smooth_test_image(n)
    missing = generate_mask((n, n), 0.4, 1)
    y = torch.as_tensor(img[None])
    observed = torch.as_tensor(~missing[None])
    problem = Regression(y, observed, stationary_default((n, n)), tol=1e-10, maxiter=2000)
    mix = KernelMix("image", weight=0.6, h=0.4, band=3, patch=3, prior=ImagePrior(rounds=0))
    first = problem.fit(KernelMix("stationary"))
    fit = problem.fit(mix, first=first)
    kern = MixedKernel([(0.4, problem.stationary)], problem.image_kernel(first, mix), 0.6)
    dense = 0.4 * problem.stationary.dense() + 0.6 * kern.banded.dense()
    mean = img[~missing].mean()
    ridge_abs = mix.ridge * float(np.einsum("ijij->ij", dense).mean())
    expect = dense_fit(dense, img, ~missing, ridge_abs, mean)
    np.testing.assert_allclose(fit[0].numpy(), expect, atol=1e-6)


def test_stationary_kind_equals_the_plain_inpainter():
    """The adaptive code's stationary candidate is the old default path (prior='noise')."""
    n = 32
    img = smooth_test_image(n)
    missing = generate_mask((n, n), 0.5, 2)
    arch = "C3,L,D,C3,L,U,C3,L,C3+avg"
    plain = CNTKInpainter(arch, "noise", margin=0, tol=1e-8, maxiter=2000, dtype=F64,
                          solver="cg")
    out = plain.inpaint(img, missing)
    problem = Regression(torch.as_tensor(img[None]), torch.as_tensor(~missing[None]),
                         plain.kernel((n, n)), tol=1e-8, maxiter=2000)
    fit = problem.fit(KernelMix("stationary"))[0].numpy()
    np.testing.assert_allclose(np.where(missing, fit, img), out, atol=1e-6)


def test_held_out_mask_mimics_the_missing_pattern():
    box = generate_mask((40, 40), 0.25, 0, "box")[:, :, None]
    held = held_out_mask(~box, box)
    assert not (held & box).any()
    assert held.sum() > 0.3 * box.sum()                      # a displaced box, mostly observed
    rows, cols = np.nonzero(held[:, :, 0])
    assert rows.max() - rows.min() < 20 and cols.max() - cols.min() < 20   # one compact region
    assert held[:, :, 0][rows.min():rows.max() + 1, cols.min():cols.max() + 1].mean() > 0.7
    pixels = generate_mask((128, 128), 0.5, 1)[:, :, None]   # scattered: f^3 of the observed
    held = held_out_mask(~pixels, pixels)
    assert not (held & pixels).any()
    covered = (128 - 35) ** 2 / 128 ** 2         # below/right of the largest displacement (35)
    assert not held[:35].any() and not held[:, :35].any()
    assert abs(held.sum() / (~pixels).sum() - 0.125 * covered) < 0.015


def test_select_mix_returns_its_best_candidate_and_auto_inpaints():
    n = 32
    img = smooth_test_image(n, 3)
    missing = generate_mask((n, n), 0.5, 4)
    y = torch.as_tensor(img[None])
    observed = torch.as_tensor(~missing[None])
    problem = Regression(y, observed, stationary_default((n, n)), maxiter=2000)
    held = torch.as_tensor(held_out_mask(~missing[:, :, None], missing[:, :, None])[None, :, :, 0])
    sel = select_mix(problem, held, band=3, final_band=3)
    best = min(sel.scores, key=lambda s: s[1])
    assert dataclasses.replace(sel.mix, prior=ImagePrior(0)).describe() == best[0] or \
        sel.mix.describe() == best[0]
    assert len(sel.scores) >= 3 and "chose" in sel.report()
    img = smooth_test_image(64, 3)          # enough held-out pixels (>= 64) to select
    missing = generate_mask(img.shape, 0.5, 4)
    inp = CNTKInpainter("C3,L,D,C3,L,U,C3,L,C3+avg", "auto", margin=0, maxiter=2000)
    out = inp.inpaint(img, missing)
    np.testing.assert_array_equal(out[~missing], img[~missing])
    assert inp.last_info["chosen"] and inp.last_info["selection"].startswith("chose")
    assert np.sqrt(np.mean((out - img)[missing] ** 2)) < np.std(img[missing])


def test_cli_prior_auto_reports_the_choice_and_rejects_bad_priors(tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from cli import main
    img = smooth_test_image(64, 5)
    src = tmp_path / "clean.png"
    Image.fromarray(np.round(img * 255).astype(np.uint8)).save(src)
    arch = "C3,L,D,C3,L,U,C3,L,C3+avg"
    runner = CliRunner()
    res = runner.invoke(main, ["inpaint", str(src), "-o", str(tmp_path / "out.png"), "--arch", arch,
                               "--missing-fraction", "0.5", "--prior", "auto", "-v", "-q"])
    assert res.exit_code == 0, res.output
    assert "chose:" in res.output and "held-out RMSE" in res.output
    res = runner.invoke(main, ["inpaint", str(src), "-o", str(tmp_path / "o2.png"), "--arch", arch,
                               "--missing-fraction", "0.5", "--prior", "image:7", "-q"])
    assert res.exit_code != 0 and "rounds must be in 0..3" in res.output


def test_image_prior_with_a_periodic_architecture_matches_dense_products():
    """A non-averaged architecture (period 2) mixes with the banded kernel too."""
    shape = (8, 8)
    stat = normalised(Sequential.from_spec("C3,L,D,C3,L,U,C3").ntk(shape, compute=Compute(dtype=F64)))
    band = random_banded(shape, 2, seed=1)
    mixed = MixedKernel([(0.5, stat)], band, 0.5)
    v = torch.randn(1, *shape, dtype=F64)
    dense = 0.5 * stat.dense() + 0.5 * band.dense()
    np.testing.assert_allclose(mixed.matvec(v).numpy(), np.einsum("ijkl,ckl->cij", dense, v.numpy()),
                               atol=1e-10)
    img = smooth_test_image(24, 6)
    missing = generate_mask(img.shape, 0.5, 7)
    out = CNTKInpainter("C3,L,D,C3,L,U,C3", "image", margin=0).inpaint(img, missing)
    np.testing.assert_array_equal(out[~missing], img[~missing])
    assert np.sqrt(np.mean((out - img)[missing] ** 2)) < np.std(img[missing])
