"""Fast solvers against dense oracles: the entry kernel built explicitly (from the NTK of the
actual joint inputs z_ij, or by looping over entry pairs) and solved by numpy."""

import numpy as np
import pytest
import torch

from completion.solvers import (JointKernelOperator, OneHotJointKernel, choose_solver,
                                nystrom_preconditioner, predict_onehot_joint, solve_cg,
                                solve_exact, solve_onehot_joint, solve_shared_kernel)
from models.device import MemoryBudgetError
from models.ntk import FullyConnectedNTK


def _rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def _dense_ridge_solve(K, y, ridge):
    """Oracle: numpy's LU solve of (K + ridge * mean(diag K) I) alpha = y."""
    return np.linalg.solve(K + ridge * np.mean(np.diag(K)) * np.eye(len(K)), y)


def _random_mask(shape, frac, seed, empty_cols=(), empty_rows=(), shared=()):
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) < frac
    for j in empty_cols:
        mask[:, j] = False
    for i in empty_rows:
        mask[i, :] = False
    for src, dst in shared:
        mask[:, dst] = mask[:, src]
    return mask


# -- exact -----------------------------------------------------------------------------------
def test_solve_exact_matches_dense_solve():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((30, 8))
    K = A @ A.T  # rank 8: needs the ridge
    y, Y = rng.standard_normal(30), rng.standard_normal((30, 3))
    np.testing.assert_allclose(solve_exact(K, y, 1e-3), _dense_ridge_solve(K, y, 1e-3), rtol=1e-8)
    np.testing.assert_allclose(solve_exact(K, Y, 0.1), _dense_ridge_solve(K, Y, 0.1), rtol=1e-10)


@pytest.mark.parametrize("K, y, ridge, message", [
    (np.eye(3)[:2], np.ones(2), 0.1, "square"),
    (np.eye(3), np.ones(4), 0.1, r"shape \(3,\)"),
    (np.eye(3), np.ones(3), -1.0, "ridge"),
    (np.eye(3), np.array([1.0, np.nan, 0]), 0.1, "finite"),
    (np.diag([1.0, -5.0, 1.0]), np.ones(3), 0.1, "not positive definite"),
])
def test_solve_exact_rejects_bad_input(K, y, ridge, message):
    with pytest.raises(ValueError, match=message):
        solve_exact(K, y, ridge)


# -- joint mode, one-hot priors ------------------------------------------------------------------
def _onehot_problem(shape, mask, kernel, a=1.0, b=0.7):
    """Observed entries, the four kernel values, and the dense oracle built from the real
    inputs z_ij = [a e_i; b e_j] with the NTK."""
    m, n = shape
    rows, cols = np.nonzero(mask)
    Z = lambda r, c: np.hstack([a * np.eye(m)[r], b * np.eye(n)[c]])
    q = a * a + b * b
    values = tuple(float(kernel.ntk_from_gram(g, q, q)) for g in (q, a * a, b * b, 0.0))
    return rows, cols, values, Z


ONEHOT_CASES = [
    ((12, 9), 0.35, dict(empty_cols=(2,), shared=((0, 5), (0, 6)))),
    ((7, 15), 0.5, dict(empty_rows=(1, 4))),
    ((20, 3), 0.2, dict()),
    ((1, 6), 0.9, dict()),
]


@pytest.mark.parametrize("method", ["dense", "cg"])
@pytest.mark.parametrize("shape, frac, extra", ONEHOT_CASES)
def test_onehot_joint_matches_dense_ntk_regression(shape, frac, extra, method):
    mask = _random_mask(shape, frac, seed=sum(shape), **extra)
    mask[0, 0] = True
    kernel = FullyConnectedNTK(depth=2, activation="relu", bias_var=0.1)
    rows, cols, values, Z = _onehot_problem(shape, mask, kernel)
    y = np.random.default_rng(1).standard_normal((rows.size, 2))
    K = kernel.ntk(Z(rows, cols))
    for ridge in (1e-4, 0.3):
        want = _dense_ridge_solve(K, y, ridge)
        got = solve_onehot_joint(rows, cols, y, values, ridge, shape, method=method, tol=1e-13)
        assert _rel(got, want) < 1e-6
        got_1d = solve_onehot_joint(rows, cols, y[:, 0], values, ridge, shape, method=method, tol=1e-13)
        assert _rel(got_1d, want[:, 0]) < 1e-6
    # predictions at every entry, observed or not
    ti, tj = np.indices(shape).reshape(2, -1)
    want_pred = kernel.ntk(Z(ti, tj), Z(rows, cols)) @ want
    full = predict_onehot_joint(rows, cols, want, values, shape)
    assert full.shape == shape + (2,)
    np.testing.assert_allclose(full.reshape(-1, 2), want_pred, rtol=1e-9, atol=1e-9)
    pick = np.random.default_rng(2).integers(0, ti.size, 17)
    np.testing.assert_allclose(predict_onehot_joint(rows, cols, want, values, shape, ti[pick], tj[pick]),
                               want_pred[pick], rtol=1e-9, atol=1e-9)


def test_onehot_joint_matvec_and_erf_kernel():
    shape = (10, 8)
    mask = _random_mask(shape, 0.4, seed=3)
    kernel = FullyConnectedNTK(depth=3, activation="erf", bias_var=0.0)  # k_none = 0 here
    rows, cols, values, Z = _onehot_problem(shape, mask, kernel, a=0.8, b=1.3)
    K = kernel.ntk(Z(rows, cols))
    op = OneHotJointKernel(rows, cols, shape, values)
    np.testing.assert_allclose(op.dense(), K, rtol=1e-12)
    v = np.random.default_rng(4).standard_normal(rows.size)
    np.testing.assert_allclose(op.matvec(v), K @ v, rtol=1e-10, atol=1e-12)
    for method in ("dense", "cg"):
        assert _rel(op.solve(v, 1e-3, method=method, tol=1e-13), _dense_ridge_solve(K, v, 1e-3)) < 1e-6


@pytest.mark.parametrize("rows, cols, values, message", [
    ([0, 1, 1], [0, 2, 2], (3, 1, 1, 0.5), r"\(1, 2\) is listed twice"),
    ([0, 5], [0, 1], (3, 1, 1, 0.5), "row index 5, outside 0..3"),
    ([0, 1], [0, -1], (3, 1, 1, 0.5), "column index -1"),
    ([0, 1], [0, 1], (1, 2, 1, 0.5), "needs all >= 0"),
    ([0, 1], [0, 1], (3, 1, np.nan, 0.5), "4 finite numbers"),
    ([0.5, 1], [0, 1], (3, 1, 1, 0.5), "integer"),
    ([], [], (3, 1, 1, 0.5), "no observed"),
])
def test_onehot_joint_rejects_bad_input(rows, cols, values, message):
    with pytest.raises(ValueError, match=message):
        OneHotJointKernel(np.asarray(rows), np.asarray(cols), (4, 3), values)


def test_onehot_joint_rejects_bad_solve_arguments():
    op = OneHotJointKernel(np.array([0, 1]), np.array([0, 1]), (2, 2), (3.0, 1.0, 1.0, 0.5))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        op.solve(np.ones(3), 0.1)
    with pytest.raises(ValueError, match="method"):
        op.solve(np.ones(2), 0.1, method="qr")
    with pytest.raises(ValueError, match="both"):
        op.predict(np.ones(2), test_rows=np.array([0]))


# -- rows mode: one kernel over rows shared by every column -----------------------------------------
def _brute_force_rows_mode(K_rows, Y, mask, ridge):
    """Dense entry kernel K((i,j),(i',j')) = [j == j'] K_rows[i, i'] built by loops."""
    m, n = Y.shape
    obs = [(i, j) for j in range(n) for i in range(m) if mask[i, j]]
    K = np.array([[K_rows[i, k] if j == l else 0.0 for (k, l) in obs] for (i, j) in obs])
    alpha = _dense_ridge_solve(K, np.array([Y[i, j] for i, j in obs]), ridge)
    pred = np.zeros((m, n))
    for i in range(m):
        for j in range(n):
            pred[i, j] = sum(K_rows[i, k] * a for (k, l), a in zip(obs, alpha) if l == j)
    return pred


@pytest.mark.parametrize("shape, frac, extra", [
    ((15, 8), 0.6, dict(empty_cols=(3,), shared=((1, 4), (1, 6)))),
    ((9, 12), 0.3, dict(empty_rows=(0, 8))),
    ((20, 4), 0.8, dict(shared=((0, 1), (0, 2), (0, 3)))),
])
def test_shared_kernel_matches_brute_force(shape, frac, extra):
    mask = _random_mask(shape, frac, seed=shape[0], **extra)
    rng = np.random.default_rng(5)
    F = rng.standard_normal((shape[0], 4)) * rng.uniform(0.5, 2, (shape[0], 1))
    K_rows = FullyConnectedNTK(depth=2, bias_var=0.05).ntk(F)
    Y = np.where(mask, rng.standard_normal(shape), np.nan)
    for ridge in (1e-5, 0.1):
        want = _brute_force_rows_mode(K_rows, Y, mask, ridge)
        for method in ("direct", "downdate"):
            got = solve_shared_kernel(K_rows, Y, mask, ridge, method=method)
            assert _rel(got, want) < 1e-6
        # block function instead of the matrix, with a budget allowing row tiles of >= 4 rows
        m, n = shape
        blocks = solve_shared_kernel(lambda a, b: K_rows[np.ix_(a, b)], Y, mask, ridge,
                                     memory_budget=8 * (m * m + 3 * m * n + 40 * m))
        assert _rel(blocks, want) < 1e-6
    assert np.all(got[:, mask.sum(0) == 0] == 0.0)


@pytest.mark.parametrize("batch_entries", [1, 200, 1 << 22])
def test_batched_downdates_match_column_by_column_solves(monkeypatch, batch_entries):
    """Many small column patterns (random missingness on 12 rows, 300 columns; some patterns
    shared by 2 or 3 columns, one complete column, one empty, two outputs per entry): the
    downdate solver, which factors equally shaped patterns in batches (chunks of one pattern,
    of a few, or all), against numpy's solve of each column's observed block written out."""
    import completion.solvers.shared_kernel as shared_kernel
    monkeypatch.setattr(shared_kernel, "_BATCH_ENTRIES", batch_entries)
    mask = _random_mask((12, 300), 0.7, seed=8, empty_cols=(5,),
                        shared=((0, 1), (0, 2), (3, 4), (10, 11), (10, 12)))
    mask[:, 6] = True
    rng = np.random.default_rng(9)
    K_rows = FullyConnectedNTK(depth=1).ntk(rng.standard_normal((12, 3)))
    Y = np.where(mask[..., None], rng.standard_normal((12, 300, 2)), np.nan)
    lam = 0.05 * np.diag(K_rows) @ mask.sum(1) / mask.sum()  # over the observed entries
    want = np.zeros(Y.shape)
    for j in np.flatnonzero(mask.any(0)):
        o = np.flatnonzero(mask[:, j])
        alpha = np.linalg.solve(K_rows[np.ix_(o, o)] + lam * np.eye(o.size), Y[o, j])
        want[:, j] = K_rows[:, o] @ alpha
    got = solve_shared_kernel(K_rows, Y, mask, 0.05, method="downdate")
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * np.abs(want).max())


@pytest.mark.parametrize("args, message", [
    ((np.eye(3), np.zeros((3, 2)), np.ones((3, 2), bool), -0.1), "ridge"),
    ((np.eye(3), np.zeros((3, 2)), np.ones((3, 2)), 0.1), "boolean"),
    ((np.eye(3), np.zeros((4, 2)), np.ones((4, 2), bool), 0.1), "shape"),
    ((np.eye(3), np.zeros((3, 2)), np.zeros((3, 2), bool), 0.1), "no observed"),
    ((np.eye(3), np.zeros((3, 2)), np.ones((3, 2), bool), 0.1, None, False, "lu"), "method"),
    ((np.eye(3), np.full((3, 2), np.nan), np.eye(3, 2, dtype=bool), 0.1), r"row 0, column 0"),
])
def test_shared_kernel_rejects_bad_input(args, message):
    with pytest.raises(ValueError, match=message):
        solve_shared_kernel(*args)


def test_shared_kernel_refuses_over_budget():
    with pytest.raises(MemoryBudgetError, match="largest factor 300 x 300"):
        solve_shared_kernel(np.eye(300), np.zeros((300, 2)), np.ones((300, 2), bool), 0.1,
                            memory_budget="100KB")


# -- conjugate gradients --------------------------------------------------------------------
def _spd(n, cond, seed):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (Q * np.geomspace(1, cond, n)) @ Q.T


def test_cg_converges_with_and_without_preconditioner():
    A = _spd(60, 1e4, 0)
    B = np.random.default_rng(1).standard_normal((60, 3))
    want = np.linalg.solve(A, B)
    plain = solve_cg(lambda V: A @ V, B, tol=1e-12, return_info=True)
    jacobi = solve_cg(lambda V: A @ V, B, precond=lambda R: R / np.diag(A)[:, None], tol=1e-12,
                      return_info=True)
    for result in (plain, jacobi):
        assert result.converged
        assert _rel(result.x, want) < 1e-6
    x_torch = solve_cg(lambda V: torch.as_tensor(A) @ V, torch.as_tensor(B[:, 0]), tol=1e-12)
    assert isinstance(x_torch, torch.Tensor) and _rel(x_torch.numpy(), want[:, 0]) < 1e-6
    assert np.all(solve_cg(lambda V: A @ V, np.zeros(60)) == 0)


def test_cg_reports_non_convergence_and_indefinite_operators():
    A = _spd(40, 1e6, 2)
    with pytest.warns(RuntimeWarning, match="CG stopped after 3 iterations"):
        result = solve_cg(lambda V: A @ V, np.ones(40), tol=1e-12, maxiter=3, return_info=True)
    assert not result.converged
    with pytest.raises(ValueError, match="not positive definite"):
        solve_cg(lambda V: -V, np.ones(5))
    with pytest.raises(ValueError, match="tol"):
        solve_cg(lambda V: V, np.ones(5), tol=0)


# -- joint mode with dense priors: tiled operator + CG ----------------------------------------------
def test_joint_operator_cg_matches_dense_ntk_regression():
    rng = np.random.default_rng(6)
    m, n = 25, 18
    R = rng.standard_normal((m, 5)) * 0.4  # scaled row priors a * r_i
    C = rng.standard_normal((n, 3)) * 0.6
    mask = _random_mask((m, n), 0.4, seed=7)
    rows, cols = np.nonzero(mask)
    kernel = FullyConnectedNTK(depth=2, activation="leaky_relu", slope=0.1, bias_var=0.1)
    Z = lambda r, c: np.hstack([R[r], C[c]])
    K = kernel.ntk(Z(rows, cols))
    op = JointKernelOperator(kernel, R @ R.T, C @ C.T, rows, cols, device="cpu",
                             memory_budget=1_000_000)  # several tiles
    assert op.tile < rows.size / 2
    V = rng.standard_normal((rows.size, 2))
    np.testing.assert_allclose(op.matvec(V), K @ V, rtol=1e-8, atol=1e-8)
    K_tiled = op.dense()
    np.testing.assert_allclose(K_tiled, K, rtol=1e-8, atol=1e-8)
    y2 = rng.standard_normal((rows.size, 2))
    np.testing.assert_allclose(solve_exact(K_tiled, y2, 1e-3, overwrite=True),
                               _dense_ridge_solve(K, y2, 1e-3), rtol=1e-6)
    y = rng.standard_normal(rows.size)
    want = _dense_ridge_solve(K, y, 1e-2)
    result = op.solve(y, 1e-2, tol=1e-11, rank=60, return_info=True)
    assert result.converged and _rel(result.x, want) < 1e-6
    ti, tj = np.nonzero(~mask)
    np.testing.assert_allclose(op.predict(want, ti, tj), kernel.ntk(Z(ti, tj), Z(rows, cols)) @ want,
                               rtol=1e-8, atol=1e-8)


def test_joint_exact_solve_tiles_the_kernel_and_refuses_before_work():
    """The exact joint path fills the kernel in small row tiles into a Fortran-ordered array
    (factored in place) and gives the same bits as forming the whole block at once; a budget
    that holds the tiles but not the N x N kernel is refused before any kernel evaluation."""
    rng = np.random.default_rng(8)
    m, n = 20, 15
    R, C = rng.standard_normal((m, 4)) * 0.5, rng.standard_normal((n, 3)) * 0.5
    rows, cols = np.nonzero(_random_mask((m, n), 0.5, seed=9))
    N = rows.size
    kernel = FullyConnectedNTK(depth=2, activation="erf", bias_var=0.1)
    op = JointKernelOperator(kernel, R @ R.T, C @ C.T, rows, cols, device="cpu")
    heights = []
    block = op.block
    op.block = lambda r, c: heights.append(len(r)) or block(r, c)
    K = op.dense()
    assert K.flags.f_contiguous and max(heights) <= N // 40 and sum(heights) == N
    whole = block(rows, cols).numpy()
    np.testing.assert_array_equal(K, whole)
    y = rng.standard_normal((N, 2))
    np.testing.assert_array_equal(op.solve_exact(y, 1e-3), solve_exact(whole, y, 1e-3))
    oracle = kernel.ntk(np.hstack([R[rows], C[cols]]))
    np.testing.assert_allclose(op.solve_exact(y, 1e-3), _dense_ridge_solve(oracle, y, 1e-3),
                               rtol=1e-6)

    tight = JointKernelOperator(kernel, R @ R.T, C @ C.T, rows, cols, device="cpu",
                                memory_budget=8 * N * N)
    heights.clear()
    tight.block = op.block
    with pytest.raises(MemoryBudgetError, match=rf"dense {N} x {N} joint kernel.*would need"):
        tight.solve_exact(y, 1e-3)
    assert heights == []
    with pytest.raises(ValueError, match="y must have shape"):
        op.solve_exact(y[:-1], 1e-3)


def test_joint_operator_refuses_over_budget():
    with pytest.raises(MemoryBudgetError, match="over 1000 observed entries"):
        JointKernelOperator(FullyConnectedNTK(), np.eye(50), np.eye(20), np.repeat(np.arange(50), 20),
                            np.tile(np.arange(20), 50), device="cpu", memory_budget="50KB")


def test_nystrom_preconditioner_is_exact_inverse_at_full_rank():
    """With every column as landmark the Nystrom factorisation is K itself, so the
    preconditioned matrix P^{-1}(K + mu I) has all eigenvalues equal to lam_min + mu."""
    A = _spd(20, 1e3, 3)
    apply = nystrom_preconditioner(A, np.arange(20), mu=0.5)
    M = apply(A + 0.5 * np.eye(20))
    eig = np.linalg.eigvals(M).real
    np.testing.assert_allclose(eig, np.full(20, eig.mean()), rtol=1e-6)
    np.testing.assert_allclose(eig.mean(), np.linalg.eigvalsh(A).min() + 0.5, rtol=1e-6)


def test_choose_solver():
    assert choose_solver("rows", (100, 10), 500) == "shared"
    assert choose_solver("cols", (100, 10), 500) == "shared"
    assert choose_solver("joint", (5000, 5000), 1_000_000, onehot=True) == "structured"
    assert choose_solver("joint", (100, 100), 2000) == "exact"
    assert choose_solver("joint", (1000, 1000), 14_000) == "exact"  # 1.5 GB kernel in 2 GB
    assert choose_solver("joint", (1000, 1000), 200_000) == "cg"
    with pytest.raises(ValueError, match="mode"):
        choose_solver("diagonal", (3, 3), 4)
    with pytest.raises(ValueError, match="does not fit"):
        choose_solver("joint", (3, 3), 10)
