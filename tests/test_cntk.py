"""CNTK engine (models.cntk) against independent oracles: a brute-force loop over pixel pairs
written here from the layer formulas, the public reference implementation's stored kernels,
hand-derived values, and empirical NTKs of wide finite torch networks."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.cntk import (PRESETS, Activation, Concat, Conv, Downsample, Gaussian, LeakyReLU, ReLU,
                         Sequential, StructuredKernel, Upsample, meshgrid_features)
from models.device import MemoryBudgetError



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
        K = as_matrix(net.ntk((8, 8), engine=engine, dtype=torch.float64, device="cpu"))
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
    whole = net.ntk((16, 16), prior=Z, memory_budget="1GB").dense()
    tiled = net.ntk((16, 16), prior=Z, memory_budget="1.5MB").dense()
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
    single = net.ntk((16, 16), average_phases=True, dtype=torch.float32)
    assert single.dtype == torch.float64  # accumulated in float64
    np.testing.assert_allclose(single.dense(), oracle, rtol=1e-5)
    if "[" not in spec:  # Concat networks are computed in one piece
        tiled = net.ntk((16, 16), average_phases=True, memory_budget="40KB")
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
class FiniteNet:
    """A finite network of the same architecture in NTK parameterisation with the reference's
    kernel-size convention: standard normal weights, every conv scaled by 1/sqrt(input
    channels), every activation by sqrt(2 / (1 + slope^2)) / k with k the kernel size of the
    conv before it (= the usual 1/sqrt(C k^2) fan-in scaling when all kernels have one size),
    circular padding, no bias, one output channel; both branches of a Concat end with ``width``
    channels (or pass the input through), so use fraction 0.5."""

    def __init__(self, layers, in_channels, width, seed, dtype=torch.float32):
        self.gen, self.dtype, self.width = torch.Generator().manual_seed(seed), dtype, width
        self.convs = []
        self.steps, _ = self._build(layers, in_channels, readout=True)

    def _build(self, layers, channels, readout):
        steps = []
        for i, layer in enumerate(layers):
            if isinstance(layer, Conv):
                out_ch = 1 if readout and i == len(layers) - 1 else self.width
                w = torch.randn(out_ch, channels, layer.k, layer.k, generator=self.gen,
                                dtype=self.dtype)
                self.convs.append((w.requires_grad_(), channels ** -0.5, layer.k))
                steps.append(("conv", len(self.convs) - 1))
                channels = out_ch
            elif isinstance(layer, Gaussian):   # sqrt(2) cos(sigma h / k + b), b per channel
                phase = torch.rand(channels, generator=self.gen, dtype=self.dtype) * 2 * math.pi
                steps.append(("gauss", layer.sigma / layers[i - 1].k, phase))
            elif isinstance(layer, Activation):
                steps.append(("act", layer, math.sqrt(2 / (1 + layer.slope ** 2)) / layers[i - 1].k))
            elif isinstance(layer, Concat):
                skip, c1 = self._build(layer.skip, channels, False)
                main, c2 = self._build(layer.main, channels, False)
                assert c1 == c2, "FiniteNet: Concat branches must end with equal channel counts"
                steps.append(("concat", skip, main))
                channels = c1 + c2
            else:
                steps.append(("layer", layer))
        return steps, channels

    def _run(self, steps, h, inputs, outputs):
        for step in steps:
            if step[0] == "conv":
                w, scale, k = self.convs[step[1]]
                inputs.append(h[0].detach())
                pad = (k - 1) // 2
                h = F.conv2d(F.pad(h, (pad,) * 4, mode="circular"), w) * scale
                outputs.append(h)
                continue
            if step[0] == "concat":
                h = torch.cat([self._run(step[1], h, inputs, outputs),
                               self._run(step[2], h, inputs, outputs)], dim=1)
                continue
            if step[0] == "act":
                h = F.leaky_relu(h, step[1].slope) * step[2]
                continue
            if step[0] == "gauss":
                h = math.sqrt(2) * torch.cos(step[1] * h + step[2][None, :, None, None])
                continue
            layer = step[1]
            if isinstance(layer, Downsample):
                h = h[:, :, ::2, ::2]
            elif layer.mode == "nearest":
                h = h.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
            else:  # periodic bilinear, separable
                for dim in (2, 3):
                    even = 0.75 * h + 0.25 * torch.roll(h, 1, dims=dim)
                    odd = 0.75 * h + 0.25 * torch.roll(h, -1, dims=dim)
                    h = torch.stack([even, odd], dim=dim + 1).flatten(dim, dim + 1)
        return h

    def forward(self, z):
        """Output (H*W,), conv inputs [x_l (C, h, w)] and conv outputs [h_l (1, O, h, w)], in
        the order of ``self.convs``."""
        inputs, outputs = [], []
        out = self._run(self.steps, z[None], inputs, outputs)
        order = [i for i in self._conv_order(self.steps)]
        return (out.reshape(-1), [inputs[order.index(j)] for j in range(len(order))],
                [outputs[order.index(j)] for j in range(len(order))])

    def _conv_order(self, steps):
        for step in steps:
            if step[0] == "conv":
                yield step[1]
            elif step[0] == "concat":
                yield from self._conv_order(step[1])
                yield from self._conv_order(step[2])

    def ntk_by_jacobian(self, z):
        """sum over parameters of df_p/dw df_q/dw from the explicit Jacobian (small widths)."""
        out = self.forward(z)[0]
        eye = torch.eye(out.numel(), dtype=out.dtype)
        weights = [w for w, _, _ in self.convs]
        grads = torch.autograd.grad(out, weights, grad_outputs=eye, is_grads_batched=True)
        J = torch.cat([g.reshape(out.numel(), -1) for g in grads], 1)
        return (J @ J.T).double().numpy()

    def ntk(self, z):
        """The same sum without the Jacobian: for conv l with input x and output deltas
        d_p = df_p/dh_l, the weight-gradient products are
        scale^2 sum_{o, r, r'} d_p[o, r] X(r, r') d_q[o, r'] with X(r, r') = sum_m <x(r+m), x(r'+m)>."""
        out, inputs, outputs = self.forward(z)
        n = out.numel()
        deltas = torch.autograd.grad(out, outputs, grad_outputs=torch.eye(n, dtype=out.dtype),
                                     is_grads_batched=True)
        theta = torch.zeros(n, n, dtype=torch.float64)
        for (w, scale, k), x, d in zip(self.convs, inputs, deltas):
            h = (k - 1) // 2
            X = 0
            for a in range(-h, h + 1):
                for b in range(-h, h + 1):
                    xs = torch.roll(x, (-a, -b), dims=(1, 2)).reshape(x.shape[0], -1).double()
                    X = X + xs.T @ xs
            D = d.reshape(n, d.shape[2], -1).double()
            theta += scale ** 2 * (D @ X).reshape(n, -1) @ D.reshape(n, -1).T
        return theta.numpy()


FINITE_ARCHS = ["C3,R,D,C3,R,U,C3", "C3,L0.2,D,C3,R,Ub,C3", "C5,R,D,C1,L0.1,U,C3",
                "C3,R,[0.5|C1,R|D,C5,L0.1,U],C3,R,C3", "C5,G30,C1", "C3,G20,D,C3,R,Ub,C3"]


@pytest.mark.parametrize("spec", FINITE_ARCHS)
def test_finite_network_ntk_factorisation_matches_jacobian(spec):
    z = torch.rand(3, 8, 8, dtype=torch.float64) * 0.1
    net = FiniteNet(Sequential.from_spec(spec).layers, 3, width=6, seed=0, dtype=torch.float64)
    np.testing.assert_allclose(net.ntk(z), net.ntk_by_jacobian(z), rtol=1e-10)


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
    emp = np.mean([FiniteNet(layers, 16, width, seed=s, dtype=dtype).ntk(z)
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
        net.ntk((64, 64), engine="dense", memory_budget="16MB")
    with pytest.raises(MemoryBudgetError, match=r"would need 8\.0 MB.*average_phases=True"):
        net.ntk((256, 256), memory_budget="4MB")     # periodic table, 4 x 4 phases
    assert net.ntk((256, 256), memory_budget="4MB", average_phases=True).period == (1, 1)
    kern = net.ntk((256, 256), dtype=torch.float32)
    with pytest.raises(MemoryBudgetError, match="would need .* GB"):
        kern.dense()
