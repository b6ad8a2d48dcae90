"""Banded CNTK engine (models.cntk.banded) and BandedKernel against the dense engine (an
independent layout of the same kernel), brute-force products and closed forms."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.cntk import BandedKernel, Sequential
from models.cntk.banded import BandedPropagator
from models.cntk.priors import make_prior
from models.device import MemoryBudgetError


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


@pytest.mark.parametrize("spec", ARCHS)
@pytest.mark.parametrize("size,band", [((16, 16), 3), ((16, 16), 6), ((32, 32), 5)])
def test_banded_equals_dense_within_band(spec, size, band):
    if size == (32, 32) and spec not in ("C5,G2,C1", "ed2", "C3,L,[0.25|C1,R|D,C3,L,U],C3,R,C3"):
        pytest.skip("32 x 32: a few architectures (the dense oracle is slow)")
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
def test_row_blocks_equal_whole_grid(spec):
    net = Sequential.from_spec(spec)
    Z = random_prior((32, 32), seed=1)
    whole = net.ntk_banded((32, 32), Z, 6, memory_budget="1GB").table
    prop = BandedPropagator(net.layers, (32, 32), 6, make_prior(Z, (32, 32)),
                            torch.device("cpu"), torch.float64)
    quarters = [(8 * i, 8 * i + 8) for i in range(4)]
    planes = prop.compute(whole.numel() * 8 + max(prop.peak_bytes(b) for b in quarters))
    assert prop.n_blocks == 4
    np.testing.assert_allclose(planes.permute(2, 3, 0, 1).numpy(), whole.numpy(), rtol=0,
                               atol=1e-13 * whole.abs().max().item())


def test_stationary_prior_banded_equals_structured_and_wide_band_aliases():
    # band 9 on a 16 x 16 grid: offsets -9..-7 and 7..9 alias (d and d + 16 are one pair)
    net = Sequential.from_spec("ed2")
    dense = net.ntk((16, 16), prior="noise", engine="structured").dense()
    kern = net.ntk_banded((16, 16), "noise", 9)
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
        net.ntk_banded((256, 256), "noise", 3, dtype=torch.float64, memory_budget="4MB")
    with pytest.raises(MemoryBudgetError, match="one row of positions"):
        net.ntk_banded((256, 256), "noise", 3, memory_budget="25MB")
