"""FullyConnectedNTK against independent oracles: closed forms / quadrature for one hidden layer,
and the empirical NTK and NNGP of wide finite torch networks."""
import math

import numpy as np
import pytest
import torch

from models.device import MemoryBudgetError
from models.finite import FiniteFullyConnected
from models.ntk import FullyConnectedNTK

ACTS = ["relu", "leaky_relu", "erf"]
SLOPE = 0.2


def _points(n=6, d=4, seed=0):
    """Rows of different norms (0.3 .. 2.5), some nearly parallel pairs."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    X[1] = X[0] + 0.05 * rng.standard_normal(d)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X * np.linspace(0.3, 2.5, n)[:, None]


# -- one hidden layer: independent formulas ------------------------------------------------------
def _relu_moments(q1, q2, c):
    """Cho & Saul arc-cosine kernels for Gaussian (u, v): E[relu relu], E[step step]."""
    theta = np.arccos(np.clip(c / np.sqrt(q1 * q2), -1, 1))
    k1 = np.sqrt(q1 * q2) / (2 * np.pi) * (np.sin(theta) + (np.pi - theta) * np.cos(theta))
    k0 = (np.pi - theta) / (2 * np.pi)
    return k1, k0


def _leaky_moments(q1, q2, c, s):
    """leaky(u) = (1 - s) relu(u) + s u, with E[relu(u) v] = c / 2 and P(u > 0) = 1/2."""
    k1, k0 = _relu_moments(q1, q2, c)
    return (1 - s) ** 2 * k1 + s * (1 - s) * c + s**2 * c, (1 - s) ** 2 * k0 + s * (1 - s) + s**2


def _erf_moments_quadrature(q1, q2, c):
    """E[erf(u) erf(v)], E[erf'(u) erf'(v)] by adaptive quadrature over u of the conditional
    expectations given u (v | u ~ N(mu, s2)): E[erf(v) | u] = erf(mu / sqrt(1 + 2 s2)) and
    E[exp(-v^2) | u] = exp(-mu^2 / (1 + 2 s2)) / sqrt(1 + 2 s2)."""
    from scipy.integrate import quad
    from scipy.special import erf
    s2 = max(q2 - c * c / q1, 0.0)
    density = lambda u: np.exp(-u * u / (2 * q1)) / np.sqrt(2 * np.pi * q1)
    mu = lambda u: c / q1 * u
    lim = 12 * np.sqrt(q1)
    e_phi = quad(lambda u: density(u) * erf(u) * erf(mu(u) / np.sqrt(1 + 2 * s2)), -lim, lim,
                 epsabs=1e-13, epsrel=1e-12, limit=200)[0]
    e_dphi = quad(lambda u: density(u) * np.exp(-u * u) * np.exp(-mu(u) ** 2 / (1 + 2 * s2))
                  / np.sqrt(1 + 2 * s2), -lim, lim, epsabs=1e-13, epsrel=1e-12, limit=200)[0]
    return e_phi, 4 / np.pi * e_dphi


@pytest.mark.parametrize("activation", ACTS)
def test_one_hidden_layer_closed_form(activation):
    wv, bv = 1.7, 0.3
    X = _points(5, 3)
    kern = FullyConnectedNTK(depth=1, activation=activation, slope=SLOPE, weight_var=wv, bias_var=bv)
    nngp, ntk = kern.nngp(X), kern.ntk(X)
    for i in range(len(X)):
        for j in range(len(X)):
            q1, q2 = wv * X[i] @ X[i] + bv, wv * X[j] @ X[j] + bv
            c = wv * X[i] @ X[j] + bv
            if activation == "relu":
                e_phi, e_dphi = _relu_moments(q1, q2, c)
            elif activation == "leaky_relu":
                e_phi, e_dphi = _leaky_moments(q1, q2, c, SLOPE)
            else:
                e_phi, e_dphi = _erf_moments_quadrature(q1, q2, c)
            want_nngp = wv * e_phi + bv
            want_ntk = want_nngp + c * wv * e_dphi
            assert nngp[i, j] == pytest.approx(want_nngp, rel=1e-9, abs=1e-11)
            assert ntk[i, j] == pytest.approx(want_ntk, rel=1e-9, abs=1e-11)


# -- wide finite networks (models.finite: the same layer list as the kernel) -----------------------
def test_empirical_ntk_is_the_full_jacobian():
    """The layer-wise J J^T of FiniteFullyConnected equals autograd's full parameter Jacobian
    (narrow net)."""
    X = torch.as_tensor(_points(4, 3))
    kern = FullyConnectedNTK(depth=2, activation="erf", weight_var=1.5, bias_var=0.2)
    net = FiniteFullyConnected(kern, 3, width=7, seed=1)
    ntk, _ = net.empirical_kernels(X)
    rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(net(X[k:k + 1]).sum(),
                                                                    list(net.parameters()))])
            for k in range(len(X))]
    J = torch.stack(rows)
    np.testing.assert_allclose(ntk.numpy(), (J @ J.T).numpy(), rtol=1e-10)


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("activation", ACTS)
def test_matches_wide_finite_network(activation, depth):
    # a single width-2048 network is off by 3-7% (deeper = noisier); the average of 8 is
    # expected within ~1-2.5%, and the check allows 5%
    wv, bv, width, seeds, d = 2.0, 0.1, 2048, 8, 4
    X = _points(6, d, seed=depth) / math.sqrt(d)
    kern = FullyConnectedNTK(depth=depth, activation=activation, slope=SLOPE, weight_var=wv, bias_var=bv)
    emp_ntk = np.zeros((6, 6))
    emp_nngp = np.zeros((6, 6))
    for seed in range(seeds):
        net = FiniteFullyConnected(kern, d, width, seed=100 * depth + seed)
        ntk, nngp = net.empirical_kernels(torch.as_tensor(X))
        emp_ntk += ntk.numpy() / seeds
        emp_nngp += nngp.numpy() / seeds
    exact_ntk = kern.ntk(X)
    exact_nngp = kern.nngp(X)
    rel = lambda a, b: np.linalg.norm(a - b) / np.linalg.norm(b)
    assert rel(emp_ntk, exact_ntk) < 0.05
    assert rel(emp_nngp, exact_nngp) < 0.05


# -- properties -----------------------------------------------------------------------------
@pytest.mark.parametrize("activation", ACTS)
def test_symmetric_positive_semidefinite(activation):
    X = np.random.default_rng(3).standard_normal((40, 5)) * np.linspace(0.1, 3, 40)[:, None]
    Y = np.random.default_rng(4).standard_normal((7, 5))
    kern = FullyConnectedNTK(depth=3, activation=activation, slope=SLOPE, bias_var=0.05)
    for K in (kern.ntk(X), kern.nngp(X)):
        np.testing.assert_allclose(K, K.T, rtol=1e-13)
        eig = np.linalg.eigvalsh(K)
        assert eig.min() > -1e-10 * eig.max()
    np.testing.assert_allclose(kern.ntk(X, Y), kern.ntk(Y, X).T, rtol=1e-12)


def test_relu_without_bias_is_homogeneous_in_input_norm():
    """Bias-free ReLU NTK/NNGP are positively homogeneous of degree 1 in each input."""
    X, Y = _points(5, 3, seed=1), _points(4, 3, seed=2)
    kern = FullyConnectedNTK(depth=2, activation="relu", bias_var=0.0)
    np.testing.assert_allclose(kern.ntk(3.0 * X, Y), 3.0 * kern.ntk(X, Y), rtol=1e-12)
    np.testing.assert_allclose(kern.nngp(X, 0.5 * Y), 0.5 * kern.nngp(X, Y), rtol=1e-12)


def test_ntk_from_gram_on_arrays_tensors_and_scalars():
    X, Y = _points(5, 3, seed=1), _points(4, 3, seed=2)
    kern = FullyConnectedNTK(depth=2, activation="erf", bias_var=0.2)
    G, qx, qy = X @ Y.T, (X**2).sum(1), (Y**2).sum(1)
    want = kern.ntk(X, Y)
    got_np = kern.ntk_from_gram(G, qx, qy)
    assert isinstance(got_np, np.ndarray) and got_np.shape == (5, 4)
    np.testing.assert_allclose(got_np, want, rtol=1e-12)
    got_t = kern.ntk_from_gram(torch.as_tensor(G), torch.as_tensor(qx), torch.as_tensor(qy))
    assert isinstance(got_t, torch.Tensor)
    np.testing.assert_allclose(got_t.numpy(), want, rtol=1e-12)
    assert float(kern.ntk_from_gram(G[1, 2], qx[1], qy[2])) == pytest.approx(want[1, 2], rel=1e-12)
    np.testing.assert_allclose(kern.nngp_from_gram(G, qx, qy), kern.nngp(X, Y), rtol=1e-12)


def test_tiling_does_not_change_the_result():
    X = np.random.default_rng(5).standard_normal((50, 6))
    Y = np.random.default_rng(6).standard_normal((30, 6))
    kern = FullyConnectedNTK(depth=2, activation="leaky_relu", slope=SLOPE, bias_var=0.1)
    whole = kern.ntk(X, Y)
    # budgets barely above output + inputs: tiles of one or two rows (only the rounding of the
    # Gram products may differ between tile shapes)
    np.testing.assert_allclose(kern.ntk(X, Y, memory_budget=20_000), whole, rtol=1e-12, atol=0)
    np.testing.assert_allclose(kern.ntk(X, memory_budget=30_000), kern.ntk(X), rtol=1e-12, atol=0)


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("activation", ACTS)
def test_cache_tiles_do_not_change_the_map(monkeypatch, activation, depth):
    """ntk_from_gram maps a block in row tiles of _CACHE_TILE_ENTRIES entries: tiles of one
    row, of three rows (a ragged last tile) and one tile give the same numbers, bit for bit
    (each entry is mapped on its own, in work arrays reused from tile to tile), also with a
    zero input and a full (n, m) norm array."""
    import models.ntk as ntk_module
    X = np.vstack([np.zeros(4), _points(9, 4, seed=3)])
    Y = _points(7, 4, seed=4)
    G = torch.as_tensor(X @ Y.T)
    qx, qy = torch.as_tensor((X**2).sum(1)), torch.as_tensor((Y**2).sum(1))
    kern = FullyConnectedNTK(depth=depth, activation=activation, slope=SLOPE, bias_var=0.1)
    results = []
    for entries in (1, 3 * Y.shape[0], 10**6):
        monkeypatch.setattr(ntk_module, "_CACHE_TILE_ENTRIES", entries)
        results.append([kern.ntk_from_gram(G, qx, qy), kern.nngp_from_gram(G, qx, qy),
                        kern.ntk_from_gram(G, qx[:, None].expand(G.shape), qy),
                        torch.as_tensor(kern.ntk(X, Y))])
    for got in results[:2]:
        for a, b in zip(got, results[2]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("entries", [1, 40, 10**6])
def test_symmetric_map_is_the_mirrored_lower_triangle(monkeypatch, entries):
    """symmetric=True maps only the lower triangle of a square gram (tile by tile, ragged
    tiles included): the result equals the full map of the gram made symmetric from its lower
    triangle, is exactly symmetric, and ignores the upper triangle (here garbage)."""
    import models.ntk as ntk_module
    monkeypatch.setattr(ntk_module, "_CACHE_TILE_ENTRIES", entries)
    X = np.vstack([np.zeros(4), _points(12, 4, seed=5)])
    G = torch.as_tensor(X @ X.T)
    lower = G.tril() + G.tril(-1).mT
    G_garbage = G.tril() + 7.0 * torch.ones_like(G).triu(1)
    q = torch.as_tensor((X**2).sum(1))
    kern = FullyConnectedNTK(depth=2, activation="relu", bias_var=0.1)
    for mapping in (kern.ntk_from_gram, kern.nngp_from_gram):
        got = mapping(G_garbage, q, q, symmetric=True)
        torch.testing.assert_close(got, mapping(lower, q, q), rtol=0, atol=0)
        assert torch.equal(got, got.T)
        # "lower": the same lower triangle, nothing mirrored
        assert torch.equal(mapping(G_garbage, q, q, symmetric="lower").tril(), got.tril())
    with pytest.raises(ValueError, match="symmetric must be"):
        kern.ntk_from_gram(G, q, q, symmetric="upper")
    with pytest.raises(ValueError, match="square"):
        kern.ntk_from_gram(G[:, :5], q, q[:5], symmetric=True)


@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
@pytest.mark.parametrize("bias_var", [0.0, 2.0])
def test_one_layer_closed_form_map_equals_the_layers(activation, bias_var):
    """The NTK of one hidden ReLU / leaky ReLU layer is mapped in closed form
    (models.ntk._one_layer_relu_ntk): it equals the generic layer updates run on the same
    blocks to 1e-15 of the largest entry, on a zero input, a repeated input (correlation 1 with
    its twin), inputs of different norms, a full (n, m) norm array, scalars, and float32."""
    X = np.vstack([np.zeros(4), _points(9, 4, seed=3)])
    X[4] = X[7]
    Y = np.vstack([_points(7, 4, seed=4), X[7]])
    kern = FullyConnectedNTK(depth=1, activation=activation, slope=SLOPE, bias_var=bias_var)
    qx, qy = torch.as_tensor((X**2).sum(1)), torch.as_tensor((Y**2).sum(1))
    cases = [(torch.as_tensor(X @ Y.T), qx[:, None], qy[None, :]),
             (torch.as_tensor(X @ Y.T), qx[:, None].expand(len(X), len(Y)).clone(), qy[None, :]),
             (torch.as_tensor(X @ X.T), qx[:, None], qx[None, :]),
             (torch.tensor(0.3), torch.tensor(1.0), torch.tensor(0.5)),
             (torch.as_tensor(X @ Y.T, dtype=torch.float32), qx[:, None].float(),
              qy[None, :].float())]
    for gram, sx, sy in cases:
        want = kern._propagate(gram.clone(), sx, sy, True).ntk
        got = kern._mapped(gram.clone(), sx, sy, True)
        tol = (1e-15 if gram.dtype == torch.float64 else 1e-6) * float(want.abs().max())
        torch.testing.assert_close(got, want, rtol=0, atol=tol)
    # the map is the one ntk_from_gram and ntk() use, and other kernels keep the layers
    G = torch.as_tensor(X @ Y.T)
    torch.testing.assert_close(kern.ntk_from_gram(G, qx, qy),
                               kern._propagate(G.clone(), qx[:, None], qy[None, :], True).ntk,
                               rtol=0, atol=1e-15 * float(G.abs().max() + 10))


def test_refuses_when_one_row_tile_does_not_fit():
    X = np.ones((200, 3))
    kern = FullyConnectedNTK()
    with pytest.raises(MemoryBudgetError, match=r"200 x 200 NTK.*would need .*KB.*memory_budget"):
        kern.ntk(X, memory_budget="100KB")


@pytest.mark.parametrize("kwargs, message", [
    (dict(depth=0), "depth"), (dict(depth=1.5), "depth"), (dict(activation="tanh"), "activation"),
    (dict(weight_var=0.0), "weight_var"), (dict(bias_var=-1.0), "bias_var"),
    (dict(slope=float("nan")), "slope")])
def test_bad_hyperparameters_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FullyConnectedNTK(**kwargs)


def test_bad_inputs_raise():
    kern = FullyConnectedNTK()
    with pytest.raises(ValueError, match="2-D"):
        kern.ntk(np.ones(3))
    with pytest.raises(ValueError, match=r"NaN or inf \(first at row 1, column 2\)"):
        kern.ntk(np.array([[1.0, 2, 3], [1, 2, np.nan]]))
    with pytest.raises(ValueError, match="3 features per row but Y has 2"):
        kern.ntk(np.ones((2, 3)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="does not broadcast"):
        kern.ntk_from_gram(np.ones((2, 3)), np.ones(3), np.ones(3))


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("activation", ACTS)
def test_matches_stored_neural_tangents_kernels(test_data, activation, depth):
    """NNGP and NTK computed once by Neural Tangents 0.6.5 (stax, float64; see
    tests/data/README.md), for inputs of norms 0.3 .. 2.5 and two (weight_var, bias_var) cases.
    The two implementations agreed to 1.3e-15 relative when the file was made; 1e-12 allows for
    other BLAS builds and catches any formula change."""
    ref = np.load(test_data / "neural_tangents_reference.npz")
    X = ref["X"]
    for case, (wv, bv) in enumerate(zip(ref["weight_var"], ref["bias_var"])):
        kern = FullyConnectedNTK(depth=depth, activation=activation, slope=float(ref["slope"]),
                                 weight_var=float(wv), bias_var=float(bv))
        # stax divides the first layer by sqrt(d); our kernel takes inputs as given
        Z = X / math.sqrt(X.shape[1])
        for which, got in (("nngp", kern.nngp(Z)), ("ntk", kern.ntk(Z))):
            want = ref[f"{activation}_depth{depth}_{case}_{which}"]
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * np.abs(want).max(),
                                       err_msg=f"{which}, weight_var={wv}, bias_var={bv}")


@pytest.mark.parametrize("activation", ACTS)
def test_zero_input_and_float32(activation):
    """A zero input to a bias-free network has zero pre-activations everywhere, so its NNGP and
    NTK rows vanish (no NaN from the 0/0 correlation); float32 agrees with float64."""
    X = np.vstack([np.zeros(3), _points(4, 3)])
    kern = FullyConnectedNTK(depth=2, activation=activation, slope=SLOPE, bias_var=0.0)
    K64, K32 = kern.ntk(X, device="cpu"), kern.ntk(X, device="cpu", dtype="float32")
    assert K32.dtype == np.float32
    np.testing.assert_array_equal(K64[0], 0.0)
    np.testing.assert_array_equal(kern.nngp(X)[:, 0], 0.0)
    np.testing.assert_allclose(K32, K64, rtol=1e-5, atol=1e-6 * np.abs(K64).max())
