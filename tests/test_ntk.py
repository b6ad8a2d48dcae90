"""FullyConnectedNTK against independent oracles: closed forms / quadrature for one hidden layer,
and the empirical NTK and NNGP of wide finite torch networks."""
import math

import numpy as np
import pytest
import torch

from models.device import MemoryBudgetError
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


# -- wide finite networks --------------------------------------------------------------------
def _finite_network(d, width, depth, activation, wv, bv, seed):
    g = torch.Generator().manual_seed(seed)
    fan_in = [d] + [width] * depth
    outs = [width] * depth + [1]
    # normals drawn in float32 (4x faster), the network itself runs in float64
    Ws = [torch.randn(o, i, generator=g).double() for i, o in zip(fan_in, outs)]
    bs = [torch.randn(o, generator=g).double() for o in outs]
    phi = {"relu": torch.relu, "erf": torch.erf,
           "leaky_relu": lambda t: torch.nn.functional.leaky_relu(t, SLOPE)}[activation]
    return Ws, bs, phi, fan_in


def _forward(net, X, wv, bv):
    """NTK parameterisation: h = sqrt(wv / fan_in) W a + sqrt(bv) b; returns (f, pre-acts, inputs)."""
    Ws, bs, phi, fan_in = net
    a, pre, ins = X, [], []
    for layer, (W, b, n_in) in enumerate(zip(Ws, bs, fan_in)):
        ins.append(a)
        h = math.sqrt(wv / n_in) * a @ W.T + math.sqrt(bv) * b
        h.retain_grad()
        pre.append(h)
        a = phi(h) if layer < len(Ws) - 1 else h
    return a[:, 0], pre, ins


def _empirical_kernels(net, X, wv, bv):
    """(NTK, NNGP) of one finite network: J J^T summed layer by layer, where for
    h = s W a + sqrt(bv) b the gradient wrt W is s * delta a^T, so its inner products are
    s^2 (delta . delta') (a . a') and those wrt b are bv (delta . delta')."""
    X = torch.as_tensor(X).clone().requires_grad_(True)  # so that every h gets a .grad
    f, pre, ins = _forward(net, X, wv, bv)
    f.sum().backward()  # samples are independent: h.grad[k] = d f(x_k) / d h(x_k)
    ntk = torch.zeros(len(X), len(X), dtype=torch.float64)
    for h, a, n_in in zip(pre, ins, net[3]):
        delta, a = h.grad, a.detach()
        ntk += (wv / n_in) * (delta @ delta.T) * (a @ a.T) + bv * (delta @ delta.T)
    last = net[2](pre[-2].detach())
    nngp = wv * (last @ last.T) / last.shape[1] + bv
    return ntk.numpy(), nngp.numpy()


def test_empirical_ntk_helper_is_the_full_jacobian():
    """The layer-wise J J^T above equals autograd's full parameter Jacobian (narrow net)."""
    wv, bv = 1.5, 0.2
    X = torch.as_tensor(_points(4, 3))
    net = _finite_network(3, 7, 2, "erf", wv, bv, seed=1)
    for p in net[0] + net[1]:
        p.requires_grad_(True)
    rows = []
    for k in range(len(X)):
        f, _, _ = _forward(net, X[k:k + 1], wv, bv)
        grads = torch.autograd.grad(f.sum(), net[0] + net[1])
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    J = torch.stack(rows)
    for p in net[0] + net[1]:
        p.requires_grad_(False)
    ntk, _ = _empirical_kernels(net, X, wv, bv)
    np.testing.assert_allclose(ntk, (J @ J.T).numpy(), rtol=1e-10)


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("activation", ACTS)
def test_matches_wide_finite_network(activation, depth):
    # a single width-2048 network is off by 3-7% (deeper = noisier); the average of 8 is
    # expected within ~1-2.5%, and the check allows 5%
    wv, bv, width, seeds, d = 2.0, 0.1, 2048, 8, 4
    X = _points(6, d, seed=depth)
    emp_ntk = np.zeros((6, 6))
    emp_nngp = np.zeros((6, 6))
    for seed in range(seeds):
        net = _finite_network(d, width, depth, activation, wv, bv, seed=100 * depth + seed)
        ntk, nngp = _empirical_kernels(net, X, wv, bv)
        emp_ntk += ntk / seeds
        emp_nngp += nngp / seeds
    # the finite net divides by sqrt(fan_in) at the first layer; the kernel takes inputs as given
    kern = FullyConnectedNTK(depth=depth, activation=activation, slope=SLOPE, weight_var=wv, bias_var=bv)
    exact_ntk = kern.ntk(X / math.sqrt(d))
    exact_nngp = kern.nngp(X / math.sqrt(d))
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


def test_matches_neural_tangents_when_installed():
    nt = pytest.importorskip("neural_tangents")
    stax = nt.stax
    wv, bv, d = 2.0, 0.1, 3
    X = _points(5, d)
    for activation, layer in (("relu", stax.Relu()), ("leaky_relu", stax.LeakyRelu(SLOPE)),
                              ("erf", stax.Erf(a=1.0, b=1.0, c=0.0))):
        dense = lambda width: stax.Dense(width, W_std=math.sqrt(wv), b_std=math.sqrt(bv))
        _, _, kernel_fn = stax.serial(dense(512), layer, dense(512), layer, dense(1))
        # stax divides the first layer by sqrt(d); our kernel takes inputs as given
        want = np.asarray(kernel_fn(X, None, ("nngp", "ntk")).ntk)
        kern = FullyConnectedNTK(depth=2, activation=activation, slope=SLOPE, weight_var=wv, bias_var=bv)
        np.testing.assert_allclose(kern.ntk(X / math.sqrt(d)), want, rtol=1e-4)


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
