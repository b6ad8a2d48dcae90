"""Banded CNTK engine (models.cntk.banded) and BandedKernel against the dense engine (an
independent layout of the same kernel), brute-force products and closed forms."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.cntk import BandedKernel, Sequential
from models.cntk.banded import BandedPropagator
from models.cntk.priors import make_prior
from models.device import Compute, MemoryBudgetError


def band_of(dense: np.ndarray, band: int) -> np.ndarray:
    """(H, W, 2R+1, 2R+1) restriction of a dense (H, W, H, W) kernel to the band."""
    H, W = dense.shape[:2]
    r = np.arange(H)[:, None, None, None]
    c = np.arange(W)[None, :, None, None]
    off = np.arange(-band, band + 1)
    return dense[r, c, (r + off[:, None]) % H, (c + off[None, :]) % W]


def random_prior(size, channels=3, seed=0):
    """A non-stationary prior: smooth-ish random feature maps plus a ramp."""
    rng = np.random.default_rng(seed)
    H, W = size
    Z = rng.normal(size=(channels, H, W))
    Z[0] += np.linspace(0, 2, H)[:, None]
    return Z


ARCHS = ["C3,R,C3", "C5,G2,C1", "C3,L,C3,G0.5,C3", "C3,L,D,C3,R,U,C3", "C3,L0.2,D,C3,R,Ub,C3",
         "C5,G4,D,C3,R,Ub,C3", "ed2", "sym2", "C3,L,[0.25|C1,R|D,C3,L,U],C3,R,C3", "skip2"]


# every architecture at 16 x 16 with two bands; a few at 32 x 32 (the dense oracle is slow)
CASES = ([(spec, (16, 16), band) for spec in ARCHS for band in (3, 6)] +
         [(spec, (32, 32), 5) for spec in ("C5,G2,C1", "ed2", "C3,L,[0.25|C1,R|D,C3,L,U],C3,R,C3")])


@pytest.mark.parametrize("spec,size,band", CASES)
def test_banded_equals_dense_within_band(spec, size, band):
    net = Sequential.from_spec(spec)
    Z = random_prior(size)
    dense = net.ntk(size, prior=Z, engine="dense").dense()
    kern = net.ntk_banded(size, Z, band)
    assert kern.shape == size and kern.band == band and kern.dtype == torch.float64
    assert tuple(kern.table.shape) == size + (2 * band + 1,) * 2
    np.testing.assert_allclose(kern.table.numpy(), band_of(dense, band), rtol=0,
                               atol=1e-10 * np.abs(dense).max())
    np.testing.assert_array_equal(kern.diag().numpy(), kern.table.numpy()[:, :, band, band])


@pytest.mark.parametrize("spec", ["C3,R,C3", "ed2", "C3,L0.2,D,C3,R,Ub,C3",
                                  "C3,L,[0.25|C1,R|D,C3,L,U],C3,R,C3", "C5,G4,D,C3,R,Ub,C3"])
def test_pieces_equal_whole_grid(spec):
    # a budget that admits 4 groups of row offsets, then one that admits one row offset over a
    # quarter of the rows per piece
    net = Sequential.from_spec(spec)
    Z = random_prior((32, 32), seed=1)
    whole = net.ntk_banded((32, 32), Z, 6, compute=Compute(memory_budget="1GB")).table
    prop = BandedPropagator(net.layers, (32, 32), 6, make_prior(Z, (32, 32)),
                            torch.device("cpu"), torch.float64)
    offsets = torch.arange(-6, 7)
    for groups, blocks in [(4, 1), (13, 4)]:
        parts = [prop.target(g, None if blocks == 1 else (8 * b, 8 * b + 8))
                 for g in torch.tensor_split(offsets, groups) for b in range(blocks)]
        planes = prop.compute(whole.numel() * 8 + max(prop.peak_bytes(x) for x in parts))
        assert prop.pieces == (groups, blocks)
        np.testing.assert_array_equal(planes.permute(2, 3, 0, 1).numpy(), whole.numpy())


@pytest.mark.parametrize("spec", ["ed2", "C5,G30,D,C3,R,Ub,C3"])
def test_stationary_prior_banded_equals_structured_and_wide_band_aliases(spec):
    # band 9 on a 16 x 16 grid: offsets -9..-7 and 7..9 alias (d and d + 16 are one pair)
    net = Sequential.from_spec(spec)
    dense = net.ntk((16, 16), prior="noise", engine="structured").dense()
    kern = net.ntk_banded((16, 16), "noise", np.int64(9))
    assert kern.band == 9
    np.testing.assert_allclose(kern.table.numpy(), band_of(dense, 9), rtol=1e-12)


def test_refusals():
    net = Sequential.from_spec("C3,R,D,C3,R,Ua,C3")
    with pytest.raises(ValueError, match="bilinear_aligned"):
        net.ntk_banded((16, 16), "noise", 2)
    net = Sequential.from_spec("C5,G2,C1")
    with pytest.raises(ValueError, match="ntk_banded"):
        net.ntk((16, 16), engine="banded")
    with pytest.raises(ValueError, match="band"):
        net.ntk_banded((16, 16), "noise", -1)
    with pytest.raises(MemoryBudgetError, match=r"would need 24\.5 MB.*memory_budget"):
        net.ntk_banded((256, 256), "noise", 3, compute=Compute(dtype=torch.float64, memory_budget="4MB"))
    with pytest.raises(MemoryBudgetError, match="one row offset of one row"):
        net.ntk_banded((256, 256), "noise", 3, compute=Compute(memory_budget="24.6MB"))


# ---------------------------------------------------------------- the kernel object ----------
def _image_kernel(size=(16, 16), band=4, spec="C3,G6,C3,L,C1", seed=2):
    rng = np.random.default_rng(seed)
    H, W = size
    image = np.cumsum(rng.normal(size=(H, W)), axis=1) * 0.1 + rng.normal(size=(H, W)) * 0.05
    return Sequential.from_spec(spec).ntk_banded(size, image[None], band), image


def test_matvec_equals_dense_product():
    kern, _ = _image_kernel(band=5)
    H, W = kern.shape
    K = kern.dense().reshape(H * W, H * W)
    v = torch.as_tensor(np.random.default_rng(0).normal(size=(3, H, W)))
    out = kern.matvec(v)
    assert isinstance(out, torch.Tensor) and out.shape == v.shape
    np.testing.assert_allclose(out.numpy().reshape(3, -1), v.numpy().reshape(3, -1) @ K.T,
                               rtol=0, atol=1e-10 * np.abs(K).max())
    np.testing.assert_allclose(kern.matvec(v[1]).numpy(), out[1].numpy(), rtol=1e-14)
    single = BandedKernel(kern.table.float())
    assert single.dtype == torch.float32
    np.testing.assert_allclose(single.matvec(v).numpy(), out.numpy(), rtol=0,
                               atol=1e-5 * np.abs(out.numpy()).max())
    with pytest.raises(ValueError, match="shape"):
        kern.matvec(torch.zeros(2, H + 1, W))
    with pytest.raises(TypeError, match="torch"):
        kern.matvec(np.zeros((H, W)))


def test_dense_matrix_is_the_engine_kernel_on_the_band():
    # 2R + 1 <= H, W: every pair within the band appears once, the others are zero
    net = Sequential.from_spec("C3,G6,C3,L,C1")
    Z = random_prior((16, 16), seed=3)
    full = net.ntk((16, 16), prior=Z, engine="dense").dense()
    K = net.ntk_banded((16, 16), Z, 3).dense()
    r = np.arange(16)
    dist = np.abs((r[:, None] - r[None, :] + 8) % 16 - 8)                 # circular distance
    inside = (dist[:, None, :, None] <= 3) & (dist[None, :, None, :] <= 3)
    np.testing.assert_allclose(K, np.where(inside, full, 0), rtol=1e-12, atol=1e-300)


def test_untapered_band_is_symmetric():
    kern, _ = _image_kernel(band=4, spec="C3,G6,D,C3,R,Ub,C3")
    T = kern.table.numpy()
    H, W, B, _ = T.shape
    R = kern.band
    r = np.arange(H)[:, None, None, None]
    c = np.arange(W)[None, :, None, None]
    i = np.arange(B)[None, None, :, None]
    j = np.arange(B)[None, None, None, :]
    # table[p, d] == table[p + d, -d]
    mirrored = T[(r + i - R) % H, (c + j - R) % W, B - 1 - i, B - 1 - j]
    np.testing.assert_allclose(T, mirrored, rtol=1e-12)
    assert np.abs(T - T[:, :, ::-1, ::-1]).max() > 1e-3 * np.abs(T).max()   # not stationary


@pytest.mark.parametrize("band", [2, 5, 9])
def test_tapered_kernel_is_psd(band):
    kern, _ = _image_kernel(band=band)
    tap = kern.tapered()
    assert tap.band == band and tap.shape == kern.shape
    H, W = kern.shape
    K = tap.dense().reshape(H * W, H * W)
    np.testing.assert_allclose(K, K.T, rtol=1e-12, atol=1e-300)
    eig = np.linalg.eigvalsh(K)
    assert eig[0] >= -1e-10 * eig[-1]
    # the untapered band is not PSD here: the taper is what makes it a kernel
    raw = np.linalg.eigvalsh(kern.dense().reshape(H * W, H * W))
    assert raw[0] < -1e-6 * raw[-1]
    # the taper: 1 at offset 0 (diagonal unchanged), in (0, 1] for |d|_2 < R + 1, else 0
    np.testing.assert_array_equal(tap.diag().numpy(), kern.diag().numpy())
    w = tap.table.numpy() / kern.table.numpy()
    off = np.arange(-band, band + 1)
    inside = np.hypot(off[:, None], off[None, :]) < band + 1
    assert np.all((w[:, :, inside] > 0) & (w[:, :, inside] <= 1)) and np.all(w[:, :, ~inside] == 0)
    with pytest.raises(ValueError, match="taper"):
        kern.tapered("gaussian")


def test_gaussian_layer_gives_patch_similarity_weights():
    # C5, Gaussian(sigma), C1 on an image prior: K(p, q) = S'(p, q) (1 + sigma^2 a_pq) with
    # S' = exp(-sigma^2 msd / 2), msd the mean squared difference of the 5 x 5 patches at p and
    # q and a_pq the mean of their products (both from the image directly, circular patches).
    sigma = 5.0
    _, image = _image_kernel()
    kern = Sequential.from_spec(f"C5,G{sigma},C1").ntk_banded((16, 16), image[None], 4)
    H, W = image.shape
    patches = np.stack([np.roll(image, (-a, -b), axis=(0, 1)) for a in range(-2, 3)
                        for b in range(-2, 3)])                                   # (25, H, W)
    T = kern.table.numpy()
    for (pr, pc), (dr, dc) in [((0, 0), (0, 0)), ((3, 7), (2, -1)), ((15, 2), (-4, 4)),
                               ((9, 9), (1, 3))]:
        p = patches[:, pr, pc]
        q = patches[:, (pr + dr) % H, (pc + dc) % W]
        msd, a_pq = np.mean((p - q) ** 2), np.mean(p * q)
        expected = np.exp(-sigma ** 2 * msd / 2) * (1 + sigma ** 2 * a_pq)
        assert T[pr, pc, 4 + dr, 4 + dc] == pytest.approx(expected, rel=1e-12)


def test_float32_kernel_close_to_float64():
    kern, image = _image_kernel((32, 32), band=6, spec="C5,G8,C3,L,C1")
    single = Sequential.from_spec("C5,G8,C3,L,C1").ntk_banded((32, 32), image[None], 6,
                                                              compute=Compute(dtype="float32"))
    assert single.dtype == torch.float32
    np.testing.assert_allclose(single.table.numpy(), kern.table.numpy(), rtol=0,
                               atol=1e-5 * kern.table.abs().max().item())
