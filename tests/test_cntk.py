"""CNTK engine (models.cntk) against independent oracles: a brute-force loop over pixel pairs
written here from the layer formulas, the public reference implementation's stored kernels,
hand-derived values, and empirical NTKs of wide finite torch networks."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.cntk import (DEFAULT_ARCHITECTURE, PRESETS, Architecture, Concat, Conv, Downsample, Gaussian, LeakyReLU, ReLU, Sequential,
                         StructuredKernel, Upsample, meshgrid_features)
from models.device import MemoryBudgetError
from models.device import Compute
from models.finite import FiniteCNN, jacobian_ntk



@pytest.fixture(autouse=True)
def _float64_default():
    """The oracles here build float64 tensors by default; restored afterwards so that other
    test modules see torch's usual float32 default."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


# ---------------------------------------------------------------- brute-force oracle --------
def _duals(x, slope):
    x = min(1.0, max(-1.0, x))
    theta = math.acos(x)
    sin = math.sqrt(max(0.0, 1 - x * x))
    k0 = (math.pi - theta) / math.pi
    k1 = (x * (math.pi - theta) + sin) / math.pi
    if slope:
        c = 2 * slope / (math.pi * (1 + slope ** 2))
        k0 += c * theta
        k1 += c * (x * theta - sin)
    return k0, k1


def _upsample_taps(n, mode):
    """Per output index of a x2 upsampling of length n: [(input index, weight)]."""
    taps = []
    for i in range(2 * n):
        if mode == "nearest":
            taps.append([(i // 2, 1.0)])
        elif mode == "bilinear":        # periodic, half-pixel centres
            j = i // 2
            other = j - 1 if i % 2 == 0 else j + 1
            taps.append([(j % n, 0.75), (other % n, 0.25)])
        else:                           # align_corners=True
            x = i * (n - 1) / (2 * n - 1)
            j0 = min(int(math.floor(x)), max(n - 2, 0))
            f = x - j0 if n > 1 else 0.0
            taps.append([(j0, 1 - f), (min(j0 + 1, n - 1), f)])
    return taps


def brute_force_ntk(layers, S0, H, W):
    """NTK (H*W, H*W) by loops over pixel pairs: state (S, dS, K) per pair, as in the layer
    formulas (first conv: K = A; later convs: K' = sum_m [S + dS K]; linear resamplings map S
    and the product dS*K, which is what the next conv reads; a concatenation mixes the branch
    states with its channel fractions)."""
    n = H * W
    state = {"S": [[float(S0[p, q]) for q in range(n)] for p in range(n)],
             "dS": [[0.0] * n for _ in range(n)], "K": [[0.0] * n for _ in range(n)],
             "H": H, "W": W, "first": True}
    return np.array(_brute_force_chain(layers, state, readout=True))


def _brute_force_chain(layers, st, readout):
    S, dS, K, H, W = st["S"], st["dS"], st["K"], st["H"], st["W"]
    n = H * W
    for idx, layer in enumerate(layers):
        if isinstance(layer, Conv):
            h = (layer.k - 1) // 2
            nb = [[((r + a) % H) * W + (c + b) % W for a in range(-h, h + 1)
                   for b in range(-h, h + 1)] for r in range(H) for c in range(W)]
            Knew = [[sum(S[i][j] + dS[i][j] * K[i][j] for i, j in zip(nb[p], nb[q]))
                     for q in range(n)] for p in range(n)]
            if readout and idx == len(layers) - 1:
                return Knew
            A = [[sum(S[i][j] for i, j in zip(nb[p], nb[q])) for q in range(n)] for p in range(n)]
            act = layers[idx + 1]
            kk = layer.k ** 2
            S = [[0.0] * n for _ in range(n)]
            dS = [[0.0] * n for _ in range(n)]
            for p in range(n):
                for q in range(n):
                    n1, n2 = A[p][p], A[q][q]
                    if isinstance(act, Gaussian):   # E[2 cos(s u + b) cos(s v + b)], u, v ~ A/k^2
                        g = act.sigma ** 2 / kk
                        S[p][q] = math.exp(-g * (n1 + n2 - 2 * A[p][q]) / 2)
                        dS[p][q] = g * S[p][q]
                        continue
                    if n1 == 0 or n2 == 0:
                        Knew[p][q] = 0.0
                        continue
                    k0, k1 = _duals(A[p][q] / math.sqrt(n1 * n2), act.slope)
                    S[p][q] = k1 * math.sqrt(n1 * n2) / kk
                    dS[p][q] = k0 / kk
            K = A if st["first"] else Knew
            st = dict(st, first=False)
        elif isinstance(layer, Downsample):
            keep = [r * W + c for r in range(0, H, 2) for c in range(0, W, 2)]
            S = [[S[p][q] for q in keep] for p in keep]
            dS = [[dS[p][q] for q in keep] for p in keep]
            K = [[K[p][q] for q in keep] for p in keep]
            H, W, n = H // 2, W // 2, len(keep)
        elif isinstance(layer, Upsample):
            tr, tc = _upsample_taps(H, layer.mode), _upsample_taps(W, layer.mode)
            taps = [[(i * W + j, wi * wj) for i, wi in tr[r] for j, wj in tc[c]]
                    for r in range(2 * H) for c in range(2 * W)]
            M = [[dS[p][q] * K[p][q] for q in range(n)] for p in range(n)]
            H, W, n = 2 * H, 2 * W, 4 * n
            S = [[sum(wp * wq * S[i][j] for i, wp in taps[p] for j, wq in taps[q])
                  for q in range(n)] for p in range(n)]
            K = [[sum(wp * wq * M[i][j] for i, wp in taps[p] for j, wq in taps[q])
                  for q in range(n)] for p in range(n)]
            dS = [[1.0] * n for _ in range(n)]
        elif isinstance(layer, Concat):
            here = dict(st, S=S, dS=dS, K=K, H=H, W=W)
            a = _brute_force_chain(layer.skip, here, readout=False)
            b = _brute_force_chain(layer.main, here, readout=False)
            w = layer.alpha
            S = [[w * a["S"][p][q] + (1 - w) * b["S"][p][q] for q in range(n)] for p in range(n)]
            K = [[w * a["dS"][p][q] * a["K"][p][q] + (1 - w) * b["dS"][p][q] * b["K"][p][q]
                  for q in range(n)] for p in range(n)]
            dS = [[1.0] * n for _ in range(n)]
    if readout:
        raise AssertionError("network must end with a Conv")
    return dict(st, S=S, dS=dS, K=K, H=H, W=W)


def noise_prior(H, W):
    n = H * W
    return np.full((n, n), 1 / 400) + np.eye(n) * (1 / 300 - 1 / 400)


def as_matrix(kern):
    H, W = kern.shape
    return kern.dense().reshape(H * W, H * W)


# ---------------------------------------------------------------- exactness ------------------
ARCHS = [
    "C3,R,C3",
    "C3,L0.01,D,C3,L0.01,U,C3",
    "C3,R,D,C3,L0.2,Ub,C3",
    "2*(C3,L,D),C3,R,2*(U,C3,L),C3",
    "C5,R,D,C3,L0.1,D,C3,R,Ub,C3,R,U,C1,L,C3",
    "2*(C3,R,D),C3,R,Ub,C3,R,Ub,C3",
    "C3,L,[0.25|C1,R|D,C3,L,[0.5||D,C3,R,Ub],C3,L,U],C3,R,C3",
    "C5,G30,C1",
    "C3,G20,D,C3,L,Ub,C3,G3,C3",
]


@pytest.mark.parametrize("spec", ARCHS)
def test_structured_dense_and_brute_force_agree_8x8(spec):
    net = Sequential.from_spec(spec)
    oracle = brute_force_ntk(net.layers, noise_prior(8, 8), 8, 8)
    for engine in ("structured", "dense"):
        K = as_matrix(net.ntk((8, 8), engine=engine, compute=Compute("cpu", torch.float64)))
        np.testing.assert_allclose(K, oracle, rtol=1e-10, atol=1e-13 * np.abs(oracle).max())


def test_brute_force_16x16_two_levels_bilinear():
    net = Sequential.from_spec("C3,L0.1,D,C3,R,D,C3,L0.1,Ub,C3,R,U,C3")
    oracle = brute_force_ntk(net.layers, noise_prior(16, 16), 16, 16)
    structured = net.ntk((16, 16), engine="structured")
    assert structured.period == (4, 4)
    np.testing.assert_allclose(as_matrix(structured), oracle, rtol=1e-10)
    np.testing.assert_allclose(as_matrix(net.ntk((16, 16), engine="dense")), oracle, rtol=1e-10)


@pytest.mark.parametrize("spec", ["ed2", "ed3-bilinear", "ed2-relu", "C3,R,D,C5,L,U,C3,L,C3",
                                  "sym2", "skip2"])
def test_structured_equals_dense_16x16(spec):
    net = Sequential.from_spec(spec)
    s = net.ntk((16, 16), engine="structured").dense()
    d = net.ntk((16, 16), engine="dense").dense()
    np.testing.assert_allclose(s, d, rtol=1e-10, atol=1e-14)


def test_non_square_grid_and_identity_prior():
    net = Sequential.from_spec("C3,R,D,C3,L,Ub,C3")
    S0 = np.eye(8 * 16)
    oracle = brute_force_ntk(net.layers, S0, 8, 16)
    for engine in ("structured", "dense"):
        kern = net.ntk((8, 16), prior="identity", engine=engine)
        assert kern.shape == (8, 16)
        np.testing.assert_allclose(as_matrix(kern), oracle, rtol=1e-10, atol=1e-15)


def test_array_and_meshgrid_priors_against_brute_force():
    rng = np.random.default_rng(1)
    Z = rng.normal(size=(3, 8, 8))
    flat = Z.reshape(3, -1)
    net = Sequential.from_spec("C3,R,D,C3,L0.2,U,C3")
    np.testing.assert_allclose(as_matrix(net.ntk((8, 8), prior=Z)),
                               brute_force_ntk(net.layers, flat.T @ flat / 3, 8, 8), rtol=1e-10)
    mesh = meshgrid_features((8, 8)).reshape(2, -1)
    assert mesh[0].max() == mesh[1].max() == 1.0
    kern = net.ntk((8, 8), prior="meshgrid")
    assert kern.engine == "dense" and kern.table is None
    np.testing.assert_allclose(as_matrix(kern), brute_force_ntk(net.layers, mesh.T @ mesh / 2, 8, 8),
                               rtol=1e-10)


def test_bilinear_aligned_dense_only_against_brute_force():
    net = Sequential.from_spec("C3,R,D,C3,R,Ua,C3")
    oracle = brute_force_ntk(net.layers, noise_prior(8, 8), 8, 8)
    np.testing.assert_allclose(as_matrix(net.ntk((8, 8))), oracle, rtol=1e-10)
    with pytest.raises(ValueError, match="dense"):
        net.ntk((8, 8), engine="structured")


def test_tiled_dense_equals_untiled():
    net = Sequential.from_spec("2*(C3,L,D),C3,R,Ub,C3,L,U,C3")
    Z = np.random.default_rng(2).uniform(0, 0.1, size=(4, 16, 16))
    whole = net.ntk((16, 16), prior=Z, compute=Compute(memory_budget="1GB")).dense()
    tiled = net.ntk((16, 16), prior=Z, compute=Compute(memory_budget="1.5MB")).dense()
    np.testing.assert_allclose(tiled, whole, rtol=1e-12)


@pytest.mark.parametrize("spec", ["sym2", "C3,R,D,C3,L0.2,Ub,C3",
                                  "C3,L,[0.25|C1,R|D,C3,L,U],C3,R,C3"])
def test_phase_averaged_kernel_is_mean_over_joint_shifts(spec):
    net = Sequential.from_spec(spec)
    periodic = net.ntk((16, 16), engine="dense").dense()
    ph, pw = net.ntk((16, 16)).period
    oracle = np.mean([np.roll(periodic, (a, b, a, b), axis=(0, 1, 2, 3))
                      for a in range(ph) for b in range(pw)], axis=0)
    avg = net.ntk((16, 16), average_phases=True)
    assert avg.period == (1, 1) and avg.dtype == torch.float64
    np.testing.assert_allclose(avg.dense(), oracle, rtol=1e-10)
    single = net.ntk((16, 16), average_phases=True, compute=Compute(dtype=torch.float32))
    assert single.dtype == torch.float64  # accumulated in float64
    np.testing.assert_allclose(single.dense(), oracle, rtol=1e-5)
    if "[" not in spec:  # Concat networks are computed in one piece
        tiled = net.ntk((16, 16), average_phases=True, compute=Compute(memory_budget="40KB"))
        np.testing.assert_allclose(tiled.table.numpy(), avg.table.numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match="structured"):
        net.ntk((16, 16), average_phases=True, engine="dense")


# ---------------------------------------------------------------- reference implementation ---
@pytest.mark.parametrize("d", [8, 16])
def test_reference_notebook_net_reproduced(test_data, d):
    ref = np.load(test_data / f"cntk_reference_net_{d}x{d}.npy")
    net = Sequential.from_spec("reference")
    for engine in ("structured", "dense"):
        K = net.ntk((d, d), engine=engine).dense()
        assert np.abs(K / ref - 1).max() < 1e-5


def test_reference_net_hand_checked_entries(test_data):
    # 8x8: the three downsamplings reach a 1x1 grid, where every pair is a diagonal pair
    # (correlation 1, kap0 = kap1 = 1); each of the 7 convs then adds A = 9 * (1/300) to the
    # NTK: every entry is 7 * 0.03 = 0.21.
    ref8 = np.load(test_data / "cntk_reference_net_8x8.npy")
    K8 = Sequential.from_spec("reference").ntk((8, 8)).dense()
    assert np.allclose(ref8, 0.21, rtol=1e-6) and np.allclose(K8, 0.21, rtol=1e-12)
    # 16x16: symmetric and periodic with period 8 under joint shifts (three x2 upsamplings)
    K16 = Sequential.from_spec("reference").ntk((16, 16)).dense()
    for K in (K16, np.load(test_data / "cntk_reference_net_16x16.npy")):
        np.testing.assert_allclose(K, K.transpose(2, 3, 0, 1), rtol=1e-6)
        np.testing.assert_allclose(K, np.roll(K, (8, 8, 8, 8), axis=(0, 1, 2, 3)), rtol=1e-6)
        assert not np.allclose(K, np.roll(K, (4, 0, 4, 0), axis=(0, 1, 2, 3)), rtol=1e-3)


# ---------------------------------------------------------------- kernel algebra -------------
@pytest.mark.parametrize("spec,engine,size,average", [
    ("ed2", "structured", (16, 16), False),
    ("C3,R,D,C3,L,Ub,C3", "structured", (8, 16), False),
    ("ed2", "dense", (8, 8), False),
    ("C3,R,C3,L,C3", "structured", (8, 16), False),       # period (1, 1): Fourier-diagonal
    ("ed2", "structured", (16, 8), True)])                 # phase-averaged: period (1, 1)
def test_matvec_solve_diag_block_against_dense(spec, engine, size, average):
    kern = Sequential.from_spec(spec).ntk(size, engine=engine, average_phases=average)
    H, W = size
    K = kern.dense().reshape(H * W, H * W)
    rng = np.random.default_rng(0)
    v = rng.normal(size=(3, H, W))
    out = kern.matvec(v)
    assert isinstance(out, np.ndarray) and out.shape == v.shape
    np.testing.assert_allclose(out.reshape(3, -1), v.reshape(3, -1) @ K.T, atol=1e-12 * np.abs(K).max() * H * W)
    single = kern.matvec(torch.as_tensor(v[0]))
    assert isinstance(single, torch.Tensor) and single.shape == (H, W)
    np.testing.assert_allclose(single.numpy(), out[0], atol=1e-13)
    mu = 1e-3 * np.diag(K).mean()
    x = kern.solve_shifted(v, mu).reshape(3, -1)
    np.testing.assert_allclose((K + mu * np.eye(H * W)) @ x.T, v.reshape(3, -1).T, atol=1e-9)
    np.testing.assert_allclose(kern.diag().ravel(), np.diag(K), rtol=1e-14)
    rows, cols = [0, 7, H * W - 1], [3, 5, 11, H * W - 2]
    np.testing.assert_allclose(kern.block(rows, cols).numpy(), K[np.ix_(rows, cols)], rtol=1e-14)
    with pytest.raises(ValueError, match="shape"):
        kern.matvec(np.zeros((H + 1, W)))


def test_structured_kernel_rebuilt_from_its_table():
    kern = Sequential.from_spec("ed2").ntk((16, 16))
    again = StructuredKernel(kern.table.clone())
    assert again.period == kern.period == (4, 4) and again.shape == (16, 16)
    np.testing.assert_array_equal(again.dense(), kern.dense())
    with pytest.raises(ValueError, match="does not fit"):
        StructuredKernel(torch.zeros(3, 3, 16, 16))


# ---------------------------------------------------------------- finite wide networks -------
FINITE_ARCHS = ["C3,R,D,C3,R,U,C3", "C3,L0.2,D,C3,R,Ub,C3", "C5,R,D,C1,L0.1,U,C3",
                "C3,R,[0.5|C1,R|D,C5,L0.1,U],C3,R,C3", "C5,G30,C1", "C3,G20,D,C3,R,Ub,C3"]


@pytest.mark.parametrize("spec", FINITE_ARCHS)
def test_finite_network_ntk_factorisation_matches_jacobian(spec):
    z = torch.rand(3, 8, 8, dtype=torch.float64) * 0.1
    net = FiniteCNN(Sequential.from_spec(spec), 3, width=6, seed=0, dtype=torch.float64)
    np.testing.assert_allclose(net.empirical_ntk(z), jacobian_ntk(net, net(z[None]).reshape(-1)),
                               rtol=1e-10)


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bilinear_aligned"])
def test_finite_upsampling_is_the_oracles_linear_map(mode):
    """The finite network's x2 upsampling applies the brute-force oracle's taps (per axis)."""
    n = 5
    up = FiniteCNN(Sequential(Conv(1), ReLU(), Upsample(mode), Conv(1)), 1, 1).body[2]
    got = up(torch.eye(n)[:, None, :, None])[:, 0, :, 0]  # row j: e_j upsampled along one axis
    want = np.zeros((n, 2 * n))
    for i, taps in enumerate(_upsample_taps(n, mode)):
        for j, w in taps:
            want[j, i] += w
    np.testing.assert_allclose(got.numpy(), want, atol=1e-12)


# Networks with a Concat fluctuate more from seed to seed: many seeds of narrower networks.
@pytest.mark.parametrize("spec,width,seeds,dtype", [
    (FINITE_ARCHS[0], 512, 16, torch.float32), (FINITE_ARCHS[1], 512, 16, torch.float32),
    (FINITE_ARCHS[2], 384, 12, torch.float32), ("C3,R,[0.5||D,C3,R,U],C3", 64, 40, torch.float64),
    (FINITE_ARCHS[4], 512, 16, torch.float32), (FINITE_ARCHS[5], 512, 16, torch.float32)])
def test_empirical_ntk_of_wide_network(spec, width, seeds, dtype):
    layers = Sequential.from_spec(spec).layers
    Z = np.random.default_rng(3).uniform(0, 0.1, size=(16, 8, 8))
    theory = as_matrix(Sequential(*layers).ntk((8, 8), prior=Z))
    z = torch.as_tensor(Z, dtype=dtype)
    emp = np.mean([FiniteCNN(layers, 16, width, seed=s, dtype=dtype).empirical_ntk(z).numpy()
                   for s in range(seeds)], axis=0)
    err = np.linalg.norm(emp - theory) / np.linalg.norm(theory)
    assert err < 0.04, err


def test_noise_prior_is_expectation_of_uniform_noise():
    # E[z_p z_q] for z ~ U(0, 0.1): 1/300 on the diagonal, 1/400 elsewhere
    net = Sequential.from_spec("C3,R,D,C3,R,U,C3")
    Z = np.random.default_rng(4).uniform(0, 0.1, size=(20000, 8, 8))
    a = as_matrix(net.ntk((8, 8), prior=Z))
    b = as_matrix(net.ntk((8, 8), prior="noise"))
    assert np.linalg.norm(a - b) / np.linalg.norm(b) < 0.01


# ---------------------------------------------------------------- API, errors ----------------
def test_spec_round_trip_and_grammar():
    net = Sequential(Conv(3), LeakyReLU(0.01), Downsample(), Conv(5), ReLU(), Upsample("bilinear"),
                     Conv(3))
    assert net.spec() == "C3,L0.01,D,C5,R,Ub,C3"
    assert Sequential.from_spec(net.spec()) == net
    assert Sequential.from_spec(" c3 , l0.01,d, C5,R,ub ,C3") == net
    ref = Sequential.from_spec("reference")
    assert ref.spec() == Sequential.from_spec(PRESETS["reference"]).spec()
    assert ref.spec().count("C3") == 7 and ref.spec().count("D") == 3
    assert len(net.describe().splitlines()) == 7
    gauss = Sequential.from_spec("C5,g8,C3,G0.5,C1")
    assert gauss.spec() == "C5,G8.0,C3,G0.5,C1" and Sequential.from_spec(gauss.spec()) == gauss
    assert isinstance(gauss.layers[1], Gaussian) and gauss.layers[3].sigma == 0.5
    skip = Sequential.from_spec("skip2")
    assert Sequential.from_spec(skip.spec()) == skip and skip.spec().count("[") == 2
    for bad, msg in [("C3,X,C3", "cannot read layer"), ("C4,R,C3", "odd"),
                     ("C3,R", "last layer"), ("R,C3", "first layer"), ("C3,D,C3", "followed by"),
                     ("C3,R,R,C3", "directly follow"), ("2*(C3,R,C3", "unbalanced"),
                     ("C3,R,[0.5|C1|D,U],C3", "followed by"), ("C3,R,[1.5||D,U],C3", "fraction"),
                     ("C3,R,[0.5|D|D,U],C3", "different sizes"), ("C3,G,C3", "cannot read"),
                     ("C3,G0,C3", "sigma must be positive"), ("C3,G-1,C3", "sigma")]:
        with pytest.raises(ValueError, match=msg):
            Sequential.from_spec(bad)


@pytest.mark.parametrize("spec, multiple", [("C3,R,C3", 1), ("ed2", 4), ("sym5", 32),
                                            ("skip3", 8), ("C3,L,D,C3,L,U,C3,L,D,C3,L,U,C3", 2),
                                            ("C3,R,[0.5|C1,R|D,C3,R,D,C3,R,U,U],C3", 4)])
def test_size_multiple_is_what_the_engine_accepts(spec, multiple):
    net = Sequential.from_spec(spec)
    assert net.size_multiple == multiple
    if multiple <= 8:   # the engine itself: the multiple works, half of it (times 3) does not
        assert net.ntk((multiple, 3 * multiple)).shape == (multiple, 3 * multiple)
        if multiple > 1:
            with pytest.raises(ValueError, match="even"):
                net.ntk((3 * multiple // 2, multiple))


def test_architecture_spellings():
    default = Architecture.of("default")
    assert default.averaged and default.key() == Architecture.of(DEFAULT_ARCHITECTURE).key()
    assert default.networks == (Sequential.from_spec(DEFAULT_ARCHITECTURE[:-len("+avg")]),)
    assert default.size_multiple == 32
    pair = Architecture.of(["ed2", Sequential.from_spec("sym1")])
    assert not pair.averaged and pair.size_multiple == 4
    assert pair.key() == " || ".join(Sequential.from_spec(s).spec() for s in ("ed2", "sym1"))
    assert Architecture.of(pair) is pair
    for bad, msg in [("nonsense", "neither a preset"), (3, "preset name"), ([], "at least one")]:
        with pytest.raises(ValueError, match=msg):
            Architecture.of(bad)


def test_architecture_list_kernel_is_the_sum_of_its_networks_kernels():
    nets = [Sequential.from_spec("ed2"), Sequential.from_spec("sym1")]   # periods 4 and 2
    summed = Architecture.of(nets).ntk((8, 8))
    assert summed.period == (4, 4)
    np.testing.assert_allclose(summed.dense(), sum(n.ntk((8, 8), engine="dense").dense()
                                                   for n in nets), rtol=1e-10, atol=1e-12)
    averaged = Architecture.of("ed2+avg").ntk((8, 8))
    assert averaged.period == (1, 1)
    np.testing.assert_allclose(averaged.dense(), nets[0].ntk((8, 8), average_phases=True).dense())


def test_input_validation():
    net = Sequential.from_spec("C3,R,D,C3,R,U,C3")
    with pytest.raises(ValueError, match="even"):
        net.ntk((7, 8))
    with pytest.raises(ValueError, match="stationary"):
        net.ntk((8, 8), prior="meshgrid", engine="structured")
    with pytest.raises(ValueError, match="unknown prior"):
        net.ntk((8, 8), prior="gaussian")
    with pytest.raises(ValueError, match="spatial size"):
        net.ntk((8, 8), prior=np.ones((2, 4, 4)))
    with pytest.raises(ValueError, match="engine"):
        net.ntk((8, 8), engine="fast")


def test_memory_refusals_state_the_size():
    net = Sequential.from_spec("ed2")
    with pytest.raises(MemoryBudgetError, match=r"would need 128\.0 MB.*memory_budget"):
        net.ntk((64, 64), engine="dense", compute=Compute(memory_budget="16MB"))
    with pytest.raises(MemoryBudgetError, match=r"would need 8\.0 MB.*average_phases=True"):
        net.ntk((256, 256), compute=Compute(memory_budget="4MB"))     # periodic table, 4 x 4 phases
    assert net.ntk((256, 256), compute=Compute(memory_budget="4MB"), average_phases=True).period == (1, 1)
    kern = net.ntk((256, 256), compute=Compute(dtype=torch.float32))
    with pytest.raises(MemoryBudgetError, match="would need .* GB"):
        kern.dense()
