"""Linear algebra of kernel-regression completion: (K + lam I) alpha = y and K_test alpha.

All solvers use the *relative* ridge of the design: lam = ridge * mean(diag K) over the
training points (the observed entries), so every fast solver solves exactly the system that
:func:`solve_exact` solves on the dense |Omega| x |Omega| entry kernel.

* :func:`solve_exact`: Cholesky in float64 of a given dense kernel.
* :class:`OneHotJointKernel` (:func:`solve_onehot_joint`, :func:`predict_onehot_joint`): joint
  mode with one-hot priors, where K between observed entries takes four values, so
  K = a I + b R R^T + c C C^T + d 1 1^T. Solved through an (m + n + 1)-dimensional reduced system
  (dense Cholesky when small, preconditioned CG with O(|Omega|) products otherwise); the
  |Omega| x |Omega| matrix is never formed.
* :func:`solve_shared_kernel`: rows (or, transposed, cols) mode, one kernel over rows shared by
  all columns; columns with the same observed pattern share one factorisation.
* :func:`solve_cg` with :class:`JointKernelOperator` (tiled products of the joint kernel from
  row and column Gram matrices, memory O(|Omega| * tile)) and :func:`nystrom_preconditioner`:
  joint mode with dense priors at large |Omega|.
* :func:`choose_solver`: the name of the solver ``solver="auto"`` uses for a problem size.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import scipy.linalg
import scipy.sparse
import scipy.sparse.csgraph
import torch
from tqdm.auto import tqdm

from models.device import check_fits, limited_threads, parse_bytes, resolve_device, resolve_dtype

__all__ = ["solve_exact", "OneHotJointKernel", "solve_onehot_joint", "predict_onehot_joint",
           "solve_shared_kernel", "shared_kernel_flops", "solve_cg", "CGResult", "JointKernelOperator",
           "nystrom_preconditioner", "choose_solver", "SOLVERS"]

SOLVERS = ("exact", "structured", "shared", "cg")

# (tile rows x observed rows) arrays alive while a block of a rows-mode prediction is evaluated
_SHARED_TILE_WORK = 10

# Above this many unknowns (m + n + 1) the one-hot reduced system is solved by CG, not Cholesky.
_REDUCED_DENSE_MAX = 4000


def _check_ridge(ridge):
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float, np.floating, np.integer)) \
            or not math.isfinite(ridge) or ridge < 0:
        raise ValueError(f"ridge must be a finite number >= 0, got {ridge!r}")
    return float(ridge)


def _not_positive_definite(lam, ridge):
    return ValueError(
        f"the kernel plus ridge (lambda = {lam:.3g}, ridge = {ridge:g} x mean diagonal) is not "
        "positive definite; increase ridge")


def _ridge_cholesky_solve(A, B, lam, ridge):
    """X = (A + lam I)^{-1} B for SPD A (C-contiguous float64 ndarray, overwritten by its
    factor), B (n,) or (n, t); float64.

    Dense factorisations and products run in torch: in a process that has just run torch's
    OpenMP-parallel kernels, OpenBLAS calls (numpy/scipy) compete with the spinning OpenMP
    threads and were measured 5-15x slower on 2 cores.
    """
    L = torch.from_numpy(A)
    L.diagonal().add_(lam)
    info = torch.empty((), dtype=torch.int32)
    torch.linalg.cholesky_ex(L, out=(L, info))  # in place: the lower triangle becomes the factor
    if int(info) != 0:
        raise _not_positive_definite(lam, ridge)
    Bt = torch.as_tensor(np.ascontiguousarray(B, dtype=np.float64))
    X = torch.cholesky_solve(Bt.reshape(Bt.shape[0], -1), L)
    return X.reshape(Bt.shape).numpy()


# -- exact ---------------------------------------------------------------------------------------
def solve_exact(K, Y, ridge, overwrite=False):
    """alpha = (K + ridge * mean(diag K) * I)^{-1} Y by Cholesky in float64.

    K: (n, n) symmetric positive semi-definite; Y: (n,) or (n, t). Returns alpha shaped like Y.
    ``overwrite=True`` factors a C-contiguous float64 K in place (no n x n copy; K is destroyed).
    """
    K = np.asarray(K, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    ridge = _check_ridge(ridge)
    if K.ndim != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(f"K must be a square matrix, got shape {K.shape}")
    if Y.ndim not in (1, 2) or Y.shape[0] != K.shape[0]:
        raise ValueError(f"Y must have shape ({K.shape[0]},) or ({K.shape[0]}, t), got {Y.shape}")
    if not (np.isfinite(K).all() and np.isfinite(Y).all()):
        raise ValueError("K and Y must be finite (no NaN or inf)")
    lam = ridge * float(np.mean(np.diag(K)))
    inplace = overwrite and K.flags.c_contiguous and K.flags.writeable
    return _ridge_cholesky_solve(K if inplace else K.copy(), Y, lam, ridge)


# -- preconditioned conjugate gradients -------------------------------------------------------
class CGResult:
    """Solution ``x`` (shaped like b), iterations ``n_iter``, final relative residual per
    right-hand side ``residual`` (array (t,)), and ``converged``."""

    def __init__(self, x, n_iter, residual, converged):
        self.x, self.n_iter, self.residual, self.converged = x, n_iter, residual, converged

    def __repr__(self):
        return (f"CGResult(n_iter={self.n_iter}, max residual={np.max(self.residual):.2e}, "
                f"converged={self.converged})")


def solve_cg(matvec, b, precond=None, tol=1e-8, maxiter=None, progress=False, return_info=False):
    """Preconditioned conjugate gradients for a symmetric positive definite operator.

    ``matvec(V)``: (N, t) -> (N, t) (called with 2-D blocks); ``b``: (N,) or (N, t), several
    right-hand sides iterate together; ``precond(R)``: (N, t) -> (N, t), an SPD approximation of
    the inverse (None = identity). Stops when every column has ||r|| <= tol * ||b||, or after
    ``maxiter`` (default 10 N) iterations with a RuntimeWarning. Works on numpy arrays or torch
    tensors (whatever ``b`` is). Returns x shaped like b, or a :class:`CGResult` when
    ``return_info``.
    """
    is_torch = isinstance(b, torch.Tensor)
    if is_torch:
        lib_norm, where = (lambda v: torch.linalg.vector_norm(v, dim=0)), torch.where
    else:
        lib_norm, where = (lambda v: np.linalg.norm(v, axis=0)), np.where
    one_d = b.ndim == 1
    B = b.reshape(-1, 1) if one_d else b
    if B.ndim != 2:
        raise ValueError(f"b must be 1-D or 2-D, got shape {tuple(b.shape)}")
    if not (tol > 0):
        raise ValueError(f"tol must be > 0, got {tol}")
    n = B.shape[0]
    maxiter = 10 * n if maxiter is None else int(maxiter)
    if maxiter < 1:
        raise ValueError(f"maxiter must be >= 1, got {maxiter}")
    apply_m = (lambda r: r) if precond is None else precond

    X = B * 0
    R = B.clone() if is_torch else B.copy()
    b_norm = lib_norm(B)
    b_norm = b_norm + (b_norm == 0)  # zero right-hand sides are converged at x = 0
    Z = apply_m(R)
    P = Z
    rz = (R * Z).sum(0)
    res = lib_norm(R) / b_norm
    it = 0
    bar = tqdm(total=maxiter, desc="CG", disable=not progress, leave=False)
    while it < maxiter and bool((res > tol).any()):
        active = res > tol
        AP = matvec(P)
        pap = (P * AP).sum(0)
        if bool(((pap <= 0) & active).any()):
            raise ValueError("CG met a non-positive curvature p^T A p <= 0: the operator is not "
                             "positive definite (increase the ridge)")
        step = where(active, rz / where(active, pap, 1.0), 0.0)  # converged columns stay put
        X = X + P * step
        R = R - AP * step
        Z = apply_m(R)
        rz_new = (R * Z).sum(0)
        P = Z + P * where(active, rz_new / where(active, rz, 1.0), 0.0)
        rz = rz_new
        res = lib_norm(R) / b_norm
        it += 1
        bar.update(1)
        if progress:
            bar.set_postfix(residual=f"{float(res.max()):.1e}")
    bar.close()
    converged = not bool((res > tol).any())
    if not converged:
        warnings.warn(f"CG stopped after {it} iterations with relative residual "
                      f"{float(res.max()):.2e} > tol {tol:g}", RuntimeWarning, stacklevel=2)
    x = X[:, 0] if one_d else X
    if return_info:
        res_np = res.cpu().numpy() if is_torch else np.asarray(res)
        return CGResult(x, it, res_np, converged)
    return x


# -- joint mode, one-hot priors: K = a I + b R R^T + c C C^T + d 1 1^T ---------------------------
def _validated_targets(y, n_observed):
    """y as float64, shape (n_observed,) or (n_observed, t), all finite; else ValueError."""
    y = np.asarray(y, dtype=np.float64)
    if y.ndim not in (1, 2) or y.shape[0] != n_observed:
        raise ValueError(f"y must have shape ({n_observed},) or ({n_observed}, t), got {y.shape}")
    if not np.isfinite(y).all():
        raise ValueError("y must be finite (no NaN or inf)")
    return y


def _validated_entries(rows, cols, shape, what="observed"):
    rows = np.asarray(rows)
    cols = np.asarray(cols)
    if rows.ndim != 1 or cols.ndim != 1 or rows.shape != cols.shape:
        raise ValueError(f"{what} rows and cols must be 1-D of equal length, got shapes "
                         f"{rows.shape} and {cols.shape}")
    if rows.size and not (np.issubdtype(rows.dtype, np.integer) and np.issubdtype(cols.dtype, np.integer)):
        raise ValueError(f"{what} rows and cols must be integer indices")
    m, n = shape
    for name, idx, size in (("row", rows, m), ("column", cols, n)):
        if idx.size and (idx.min() < 0 or idx.max() >= size):
            k = int(np.flatnonzero((idx < 0) | (idx >= size))[0])
            raise ValueError(f"{what} entry {k} has {name} index {int(idx[k])}, outside 0..{size - 1}")
    return rows.astype(np.int64), cols.astype(np.int64)


class OneHotJointKernel:
    """Kernel between observed entries in joint mode with one-hot row and column priors.

    ``rows``, ``cols``: (N,) integer indices of the N distinct observed entries of an (m, n)
    matrix (``shape``); ``values = (k_same, k_row, k_col, k_none)``: the kernel between an entry
    and itself, another entry of its row, of its column, and an entry sharing neither. Then
    K = a I + b R R^T + c C C^T + d 1 1^T with R (N, m), C (N, n) the indicator matrices and
    a = k_same - k_row - k_col + k_none, b = k_row - k_none, c = k_col - k_none, d = k_none.
    The kernels of this package give a, b, c, d >= 0 (the NTK is increasing and convex in
    <z, z'>); other values are refused.
    """

    def __init__(self, rows, cols, shape, values):
        if len(shape) != 2 or min(shape) < 1:
            raise ValueError(f"shape must be (m, n) with m, n >= 1, got {shape}")
        self.shape = (int(shape[0]), int(shape[1]))
        self.rows, self.cols = _validated_entries(rows, cols, self.shape)
        if self.rows.size == 0:
            raise ValueError("no observed entries")
        lin = self.rows * self.shape[1] + self.cols
        order = np.argsort(lin, kind="stable")
        dup = np.flatnonzero(np.diff(lin[order]) == 0)
        if dup.size:
            k = int(order[dup[0] + 1])
            raise ValueError(f"observed entry ({int(self.rows[k])}, {int(self.cols[k])}) is listed "
                             "twice; entries must be distinct")
        self._sorted_lin, self._order = lin[order], order
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (4,) or not np.isfinite(values).all():
            raise ValueError(f"values must be 4 finite numbers (k_same, k_row, k_col, k_none), got {values}")
        k_same, k_row, k_col, k_none = values
        self.values = values
        self.a = k_same - k_row - k_col + k_none
        self.b, self.c, self.d = k_row - k_none, k_col - k_none, k_none
        tol = 1e-12 * max(abs(k_same), 1e-300)
        if min(self.a, self.b, self.c, self.d) < -tol:
            raise ValueError(
                f"values {tuple(values)} give a = {self.a:.3g}, b = {self.b:.3g}, c = {self.c:.3g}, "
                f"d = {self.d:.3g}; the structured solver needs all >= 0 (k_same >= k_row, k_col >= "
                "k_none >= 0 and k_same + k_none >= k_row + k_col)")
        self.a, self.b, self.c, self.d = (max(v, 0.0) for v in (self.a, self.b, self.c, self.d))
        m, n = self.shape
        N = self.rows.size
        ones = np.ones(N)
        # transposed indicators, (m, N) and (n, N), as CSR for fast U^T products
        self._RT = scipy.sparse.csr_matrix((ones, (self.rows, np.arange(N))), shape=(m, N))
        self._CT = scipy.sparse.csr_matrix((ones, (self.cols, np.arange(N))), shape=(n, N))
        self.row_counts = np.bincount(self.rows, minlength=m).astype(np.float64)
        self.col_counts = np.bincount(self.cols, minlength=n).astype(np.float64)

    @property
    def n_observed(self):
        return self.rows.size

    def ridge_lambda(self, ridge):
        """Absolute ridge: ``ridge`` times the mean diagonal (= k_same)."""
        return _check_ridge(ridge) * float(self.values[0])

    # U = [R, C, 1] (N x (m + n + 1)), scaled by D^(1/2) = diag(sqrt b I_m, sqrt c I_n, sqrt d)
    def _reduced_scale(self):
        """D^(1/2) as a ((m + n + 1), 1) column."""
        m, n = self.shape
        return np.concatenate([np.full(m, math.sqrt(self.b)), np.full(n, math.sqrt(self.c)),
                               [math.sqrt(self.d)]])[:, None]

    def _U(self, p):
        """U p for p ((m + n + 1), t): the value per entry, (N, t)."""
        m, n = self.shape
        return p[:m][self.rows] + p[m:m + n][self.cols] + p[m + n]

    def _UT(self, e):
        """U^T e for e (N, t): ((m + n + 1), t)."""
        return np.vstack([self._RT @ e, self._CT @ e, e.sum(0, keepdims=True)])

    def matvec(self, alpha):
        """K alpha in O(N); alpha (N,) or (N, t)."""
        alpha = np.asarray(alpha, dtype=np.float64)
        A = alpha.reshape(self.n_observed, -1)
        out = self.a * A + self.b * (self._RT @ A)[self.rows] + self.c * (self._CT @ A)[self.cols] \
            + self.d * A.sum(0, keepdims=True)
        return out.reshape(alpha.shape)

    def dense(self):
        """The (N, N) kernel (for checks on small problems)."""
        same_row = self.rows[:, None] == self.rows[None, :]
        same_col = self.cols[:, None] == self.cols[None, :]
        k_same, k_row, k_col, k_none = self.values
        return np.where(same_row & same_col, k_same,
                        np.where(same_row, k_row, np.where(same_col, k_col, k_none)))

    # -- the reduced (m + n + 1) system M q = D^(1/2) U^T y, M = s I + D^(1/2) U^T U D^(1/2) ----
    def _reduced_dense(self, s):
        m, n = self.shape
        scale = self._reduced_scale()[:, 0]
        G = np.zeros((m + n + 1, m + n + 1))
        G[np.arange(m), np.arange(m)] = self.row_counts
        G[m + np.arange(n), m + np.arange(n)] = self.col_counts
        np.add.at(G, (self.rows, m + self.cols), 1.0)
        G[m:m + n, :m] = G[:m, m:m + n].T
        G[:m, -1] = G[-1, :m] = self.row_counts
        G[m:m + n, -1] = G[-1, m:m + n] = self.col_counts
        G[-1, -1] = self.n_observed
        G *= scale[:, None] * scale[None, :]
        G[np.diag_indices_from(G)] += s
        return G

    def _reduced_matvec(self, s):
        scale = self._reduced_scale()

        def matvec(Q):
            return s * Q + scale * self._UT(self._U(scale * Q))
        return matvec

    def _reduced_preconditioner(self, s, max_components=1000):
        """Jacobi plus an exact coarse correction on the per-component row/column constants.

        The near-null directions of M are "add t to every row effect and -t to every column
        effect" inside a connected component of the observation graph; the coarse space spans
        the row and column indicators of each component (largest ``max_components``) and the
        global constant, and its Galerkin matrix is known in closed form from entry counts.
        """
        m, n = self.shape
        b, c, d = self.b, self.c, self.d
        diag = np.concatenate([s + b * self.row_counts, s + c * self.col_counts,
                               [s + d * self.n_observed]])[:, None]
        graph = scipy.sparse.csr_matrix((np.ones(self.n_observed), (self.rows, m + self.cols)),
                                        shape=(m + n, m + n))
        _, label = scipy.sparse.csgraph.connected_components(graph, directed=False)
        entries_per = np.bincount(label[self.rows], minlength=label.max() + 1)
        comps = np.argsort(-entries_per, kind="stable")
        comps = comps[entries_per[comps] > 0][:max_components]
        k = comps.size
        pos = np.full(label.max() + 1, -1)
        pos[comps] = np.arange(k)
        row_comp, col_comp = pos[label[:m]], pos[label[m:]]
        n_rows = np.bincount(row_comp[row_comp >= 0], minlength=k)
        n_cols = np.bincount(col_comp[col_comp >= 0], minlength=k)
        w = entries_per[comps].astype(np.float64)
        # Galerkin matrix Z^T M Z on [row indicators (k), column indicators (k), constant]
        E = np.zeros((2 * k + 1, 2 * k + 1))
        ik = np.arange(k)
        E[ik, ik] = s * n_rows + b * w
        E[k + ik, k + ik] = s * n_cols + c * w
        E[ik, k + ik] = E[k + ik, ik] = math.sqrt(b * c) * w
        E[ik, -1] = E[-1, ik] = math.sqrt(b * d) * w
        E[k + ik, -1] = E[-1, k + ik] = math.sqrt(c * d) * w
        E[-1, -1] = s + d * self.n_observed
        coarse = scipy.linalg.cho_factor(E, lower=True)

        # Z: (m + n + 1, 2k + 1) indicators of the coarse space
        member = np.concatenate([row_comp, np.where(col_comp >= 0, k + col_comp, -1), [2 * k]])
        keep = np.flatnonzero(member >= 0)
        Z = scipy.sparse.csr_matrix((np.ones(keep.size), (keep, member[keep])),
                                    shape=(m + n + 1, 2 * k + 1))
        ZT = Z.T.tocsr()

        def precond(Rm):
            return Rm / diag + Z @ scipy.linalg.cho_solve(coarse, ZT @ Rm)
        return precond

    def solve(self, y, ridge, method="auto", tol=1e-12, maxiter=None, progress=False,
              return_info=False):
        """alpha = (K + ridge * k_same * I)^{-1} y; y (N,) or (N, t).

        ``method``: 'dense' (Cholesky of the (m + n + 1) reduced system, O(N + (m + n)^3)),
        'cg' (preconditioned CG on it, O(N) per iteration) or 'auto' (dense up to
        m + n + 1 = 4000 unknowns). With ``return_info``, returns (alpha, info) where info is a
        dict with 'method' and, for CG, 'n_iter' and 'residual' (reduced system).
        """
        y = _validated_targets(y, self.n_observed)
        if method not in ("auto", "dense", "cg"):
            raise ValueError(f"method must be 'auto', 'dense' or 'cg', got {method!r}")
        lam = self.ridge_lambda(ridge)
        s = self.a + lam
        if s <= 0:
            raise _not_positive_definite(lam, ridge)
        m, n = self.shape
        if method == "auto":
            method = "dense" if m + n + 1 <= _REDUCED_DENSE_MAX else "cg"
        Y = y.reshape(self.n_observed, -1)
        scale = self._reduced_scale()
        rhs = scale * self._UT(Y)
        info = {"method": method}
        if method == "dense":
            Q = _ridge_cholesky_solve(self._reduced_dense(s), rhs, 0.0, 0.0)
        else:
            result = solve_cg(self._reduced_matvec(s), rhs, precond=self._reduced_preconditioner(s),
                              tol=tol, maxiter=maxiter, progress=progress, return_info=True)
            Q = result.x
            info.update(n_iter=result.n_iter, residual=float(np.max(result.residual)))
        alpha = ((Y - self._U(scale * Q)) / s).reshape(y.shape)
        return (alpha, info) if return_info else alpha

    def predict(self, alpha, test_rows=None, test_cols=None):
        """K(test, observed) alpha in O(N + N_test); alpha (N,) or (N, t).

        ``test_rows``/``test_cols``: (N_test,) indices; both None = every entry, returned as
        (m, n) (or (m, n, t)). A test entry equal to an observed one gets the k_same term.
        """
        alpha = np.asarray(alpha, dtype=np.float64)
        if alpha.ndim not in (1, 2) or alpha.shape[0] != self.n_observed:
            raise ValueError(f"alpha must have shape ({self.n_observed},) or "
                             f"({self.n_observed}, t), got {alpha.shape}")
        A = alpha.reshape(self.n_observed, -1)
        m, n = self.shape
        row_sum, col_sum, total = self._RT @ A, self._CT @ A, A.sum(0)
        if test_rows is None and test_cols is None:
            out = (self.b * row_sum[:, None, :] + self.c * col_sum[None, :, :]
                   + self.d * total).reshape(m * n, -1)
            out[self.rows * n + self.cols] += self.a * A
            return out.reshape((m, n) + alpha.shape[1:])
        if test_rows is None or test_cols is None:
            raise ValueError("give both test_rows and test_cols, or neither")
        tr, tc = _validated_entries(test_rows, test_cols, self.shape, what="test")
        out = self.b * row_sum[tr] + self.c * col_sum[tc] + self.d * total
        lin = tr * n + tc
        pos = np.minimum(np.searchsorted(self._sorted_lin, lin), self.n_observed - 1)
        hit = self._sorted_lin[pos] == lin
        out[hit] += self.a * A[self._order[pos[hit]]]
        return out.reshape(tr.shape + alpha.shape[1:])


def solve_onehot_joint(rows, cols, y, values, ridge, shape, method="auto", tol=1e-12,
                       maxiter=None, progress=False):
    """Solve (K + ridge * k_same * I) alpha = y for the joint one-hot kernel without forming it.

    ``rows``, ``cols``: (N,) distinct observed entries of an (m, n) = ``shape`` matrix; ``y``:
    (N,) or (N, t); ``values``: (k_same, k_row, k_col, k_none). See :class:`OneHotJointKernel`.
    """
    return OneHotJointKernel(rows, cols, shape, values).solve(y, ridge, method, tol, maxiter, progress)


def predict_onehot_joint(rows, cols, alpha, values, shape, test_rows=None, test_cols=None):
    """K(test, observed) alpha for the joint one-hot kernel, O(N + N_test); both test index
    arrays None = the whole (m, n) matrix. See :meth:`OneHotJointKernel.predict`."""
    return OneHotJointKernel(rows, cols, shape, values).predict(alpha, test_rows, test_cols)


# -- rows / cols mode: one kernel over rows shared by every column -------------------------------
def solve_shared_kernel(K_rows, Y, mask, ridge, memory_budget=None, progress=False, method="auto"):
    """Complete Y column by column with one kernel over rows; returns the (m, n) prediction.

    ``K_rows``: the (m, m) kernel between rows (K((i, j), (i', j')) = [j == j'] K_rows[i, i']),
    either as an array or as a function ``K_rows(rows_a, rows_b)`` returning the
    (len(rows_a), len(rows_b)) block, so that large m never stores the m x m matrix (only the
    factor of each observed pattern and row tiles of the prediction).
    ``Y``: (m, n) values (anything, e.g. NaN, where unobserved); ``mask``: (m, n) bool,
    True = observed. Column j is regressed on its observed rows and predicted at every row
    (K_rows[:, obs] alpha_j, which at the observed rows is y - lam alpha_j); a column with no
    observation is predicted as 0 (the prior mean).
    The ridge is relative to the mean of diag(K_rows) over all observed entries, as for the
    dense entry kernel, so this equals :func:`solve_exact` on that kernel. Columns with the same
    observed pattern share one Cholesky factorisation (float64). ``memory_budget`` bounds the
    largest factor, the prediction and the tiles (refused before allocating).

    ``method``: 'direct' (factor each pattern's observed block), 'downdate' (invert the full
    m x m system once, then factor each pattern's missing block; array ``K_rows`` only) or
    'auto' (the one with fewer flops, downdate only when 3 m^2 floats fit the budget). Many
    distinct patterns with few missing rows each (random missingness) favour 'downdate'.
    """
    if method not in ("auto", "direct", "downdate"):
        raise ValueError(f"method must be 'auto', 'direct' or 'downdate', got {method!r}")
    if method == "downdate" and callable(K_rows):
        raise ValueError("method='downdate' needs K_rows as an array")
    mask = np.asarray(mask)
    Y = np.asarray(Y, dtype=np.float64)
    if mask.dtype != bool:
        raise ValueError(f"mask must be boolean (True = observed), got dtype {mask.dtype}")
    if Y.ndim != 2 or mask.shape != Y.shape:
        raise ValueError(f"Y and mask must be 2-D of the same shape, got {Y.shape} and {mask.shape}")
    m, n = Y.shape
    if callable(K_rows):
        block = K_rows
    else:
        K = np.asarray(K_rows, dtype=np.float64)
        if K.shape != (m, m):
            raise ValueError(f"K_rows must have shape ({m}, {m}) to match Y and mask {Y.shape}, "
                             f"got {K.shape}")
        if not np.isfinite(K).all():
            raise ValueError("K_rows must be finite (no NaN or inf)")
        block = lambda a, b: K[np.ix_(a, b)]
    if not mask.any():
        raise ValueError("mask has no observed entry")
    bad = mask & ~np.isfinite(Y)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(f"Y is not finite at observed entry (row {i}, column {j})")
    ridge = _check_ridge(ridge)

    # group columns by observed pattern
    _, first, group = np.unique(np.packbits(mask, axis=0).T, axis=0, return_index=True,
                                return_inverse=True)
    group = group.reshape(-1)
    largest = int(mask[:, first].sum(0).max())
    widest = int(np.bincount(group).max())
    budget = parse_bytes(memory_budget)
    fixed = 8 * (largest * largest + m * n + 2 * largest * widest)
    per_row = 8 * _SHARED_TILE_WORK * largest
    check_fits(fixed + per_row, budget,
               f"rows-mode solve (largest factor {largest} x {largest}, prediction {m} x {n})",
               "Raise memory_budget, or complete fewer rows at once.")
    tile = int(min(m, (budget - fixed) // per_row))

    counts = mask.sum(1)
    used = np.flatnonzero(counts)
    diag = np.concatenate([np.diag(block(used[s:s + tile], used[s:s + tile]))
                           for s in range(0, used.size, tile)])
    lam = ridge * float(diag @ counts[used]) / float(counts.sum())

    if method == "auto" and not callable(K_rows):
        method = "downdate" if (_downdate_is_cheaper(mask, first, group)
                                and 8 * (3 * m * m + 2 * m * n) <= budget) else "direct"
    if method == "downdate":
        check_fits(8 * (3 * m * m + 2 * m * n), budget, f"rows-mode downdate solve ({m} x {m} inverse)",
                   "Raise memory_budget or use method='direct'.")
        return _shared_by_downdates(K, Y, mask, first, group, lam, ridge, progress)
    pred = np.zeros((m, n))
    for g in tqdm(range(first.size), desc="column patterns", disable=not progress, leave=False):
        obs = np.flatnonzero(mask[:, first[g]])
        if obs.size == 0:
            continue
        cols = np.flatnonzero(group == g)
        y_obs = Y[np.ix_(obs, cols)]
        alpha = _ridge_cholesky_solve(np.array(block(obs, obs), dtype=np.float64), y_obs, lam, ridge)
        # at the observed rows K_oo alpha = y - lam alpha exactly; other rows from kernel tiles
        pred[np.ix_(obs, cols)] = y_obs - lam * alpha
        alpha = torch.from_numpy(alpha)
        unobserved = np.flatnonzero(~mask[:, first[g]])
        for start in range(0, unobserved.size, tile):
            rows = unobserved[start:start + tile]
            K_tile = torch.as_tensor(np.asarray(block(rows, obs), dtype=np.float64))
            pred[np.ix_(rows, cols)] = (K_tile @ alpha).numpy()
    return pred


def shared_kernel_flops(n_rows, observed, columns):
    """Estimated flops of the two rows-mode methods: returns (direct, downdate).

    ``n_rows``: m; ``observed``: observed rows |O| of each distinct column pattern;
    ``columns``: number of columns sharing each pattern. Direct: sum |O|^3 / 3 + 2 m |O| t;
    downdate: m^3 (inverse) + sum |M|^3 / 3 + 2 |O| |M| t, + 2 m^2 n (products).
    """
    m = float(n_rows)
    obs = np.asarray(observed, dtype=np.float64)
    t = np.asarray(columns, dtype=np.float64)
    direct = float((obs**3 / 3 + 2 * m * obs * t).sum())
    downdate = float(m**3 + ((m - obs) ** 3 / 3 + 2 * obs * (m - obs) * t).sum() + 2 * m * m * t.sum())
    return direct, downdate


def _downdate_is_cheaper(mask, first, group):
    direct, downdate = shared_kernel_flops(mask.shape[0], mask[:, first].sum(0), np.bincount(group))
    return downdate < direct


def _shared_by_downdates(K, Y, mask, first, group, lam, ridge, progress):
    """Rows mode through B = (K + lam I)^{-1} over all m rows: for a column observed on O and
    missing on M, (K_OO + lam I)^{-1} = B_OO - B_OM B_MM^{-1} B_MO, so each pattern costs a
    factor of its (small) missing block instead of its (large) observed block."""
    m, n = Y.shape
    A = torch.from_numpy(K.copy())
    A.diagonal().add_(lam)
    L, info = torch.linalg.cholesky_ex(A)
    if int(info) != 0:
        raise _not_positive_definite(lam, ridge)
    del A
    # (cholesky_inverse was measured up to 20x slower than this under CPU contention)
    B = torch.cholesky_solve(torch.eye(m, dtype=torch.float64), L)
    del L
    V = B @ torch.from_numpy(np.where(mask, Y, 0.0))  # B[:, O] y_O for every column
    coef = torch.zeros((m, n), dtype=torch.float64)
    with limited_threads(1):  # many small factors: parallel regions cost more than they save
        _downdate_patterns(B, V, coef, mask, first, group, lam, ridge, progress)
    pred = (torch.from_numpy(K) @ coef).numpy()
    # at the observed entries K_OO alpha = y - lam alpha exactly
    pred[mask] = Y[mask] - lam * coef.numpy()[mask]
    return pred


def _downdate_patterns(B, V, coef, mask, first, group, lam, ridge, progress):
    """Fill coef[O, cols] = (B_OO - B_OM B_MM^{-1} B_MO) y_O for every column pattern."""
    for g in tqdm(range(first.size), desc="column patterns", disable=not progress, leave=False):
        observed = mask[:, first[g]]
        obs, miss = np.flatnonzero(observed), np.flatnonzero(~observed)
        if obs.size == 0:
            continue
        cols = torch.from_numpy(np.flatnonzero(group == g))
        obs_t, miss_t = torch.from_numpy(obs), torch.from_numpy(miss)
        if miss.size == 0:
            coef[:, cols] = V[:, cols]
            continue
        B_m = B[miss_t]  # (|M|, m) rows; B is symmetric so B_OM = B_m[:, O]^T
        L_mm, info = torch.linalg.cholesky_ex(B_m[:, miss_t])
        if int(info) != 0:
            raise _not_positive_definite(lam, ridge)
        W = torch.cholesky_solve(V[miss_t][:, cols], L_mm)
        coef[obs_t[:, None], cols] = V[obs_t][:, cols] - B_m[:, obs_t].T @ W


# -- joint mode, dense priors: tiled kernel products for CG ----------------------------------------
class JointKernelOperator:
    """Joint-mode kernel between observed entries, evaluated in tiles and never stored.

    ``kernel``: an object with ``ntk_from_gram(gram, sq_x, sq_y)`` (e.g.
    :class:`models.ntk.FullyConnectedNTK`). ``row_gram`` (m, m) and ``col_gram`` (n, n): inner
    products of the *scaled* priors, <a r_i, a r_i'> and <b c_j, b c_j'>, so that
    <z_ij, z_i'j'> = row_gram[i, i'] + col_gram[j, j']. ``rows``, ``cols``: (N,) observed entries.
    Products with K cost O(N^2) kernel evaluations but O(N * tile) memory: ``memory_budget``
    bounds the Gram matrices plus one (tile x N) block and its kernel work arrays.
    """

    _WORK_ARRAYS = 10  # (tile x N) arrays alive while one block is evaluated

    def __init__(self, kernel, row_gram, col_gram, rows, cols, *, device="auto", dtype=None,
                 memory_budget=None):
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        row_gram = np.asarray(row_gram, dtype=np.float64)
        col_gram = np.asarray(col_gram, dtype=np.float64)
        for name, G in (("row_gram", row_gram), ("col_gram", col_gram)):
            if G.ndim != 2 or G.shape[0] != G.shape[1]:
                raise ValueError(f"{name} must be square, got shape {G.shape}")
            if not np.isfinite(G).all():
                raise ValueError(f"{name} must be finite")
        self.shape = (row_gram.shape[0], col_gram.shape[0])
        rows, cols = _validated_entries(rows, cols, self.shape)
        if rows.size == 0:
            raise ValueError("no observed entries")
        self.kernel = kernel
        self.n_observed = N = rows.size
        item = torch.empty((), dtype=self.dtype).element_size()
        fixed = item * (row_gram.size + col_gram.size) + 8 * 4 * N
        per_row = self._WORK_ARRAYS * item * N
        budget = parse_bytes(memory_budget)
        check_fits(fixed + per_row, budget, f"tiled joint kernel products over {N} observed entries",
                   "Raise memory_budget or use fewer observed entries.")
        self.tile = int(min(N, (budget - fixed) // per_row))
        self._budget = budget
        t = lambda a: torch.as_tensor(a, device=self.device)
        self._row_gram = t(row_gram).to(self.dtype)
        self._col_gram = t(col_gram).to(self.dtype)
        self._rows, self._cols = t(rows), t(cols)
        self._sq = self._sq_norms(self._rows, self._cols)

    def _sq_norms(self, r, c):
        return self._row_gram.diagonal()[r] + self._col_gram.diagonal()[c]

    def block(self, rows, cols):
        """Kernel between the entries (rows[k], cols[k]) and the observed ones: (T, N) tensor."""
        r = torch.as_tensor(rows, device=self.device)
        c = torch.as_tensor(cols, device=self.device)
        gram = self._row_gram[r][:, self._rows] + self._col_gram[c][:, self._cols]
        return self.kernel.ntk_from_gram(gram, self._sq_norms(r, c), self._sq)

    def dense(self, progress=False):
        """The (N, N) float64 kernel between observed entries as an ndarray, filled in row
        tiles (peak memory N^2 + one tile), e.g. for ``solve_exact(K, y, ridge, overwrite=True)``."""
        N = self.n_observed
        check_fits(8 * N * N, self._budget, f"the dense {N} x {N} joint kernel",
                   "Use the CG solver (solver='cg') or raise memory_budget.")
        K = np.empty((N, N))
        rows, cols = self._rows.cpu().numpy(), self._cols.cpu().numpy()
        for start in tqdm(range(0, N, self.tile), desc="kernel tiles", disable=not progress,
                          leave=False):
            stop = min(N, start + self.tile)
            K[start:stop] = self.block(rows[start:stop], cols[start:stop]).cpu().numpy()
        return K

    def diag(self):
        """(N,) tensor: K((i, j), (i, j)) for the observed entries."""
        return self.kernel.ntk_from_gram(self._sq, self._sq, self._sq)

    def ridge_lambda(self, ridge):
        return _check_ridge(ridge) * float(self.diag().mean())

    def _tensor(self, V):
        return torch.as_tensor(np.asarray(V, dtype=np.float64) if not isinstance(V, torch.Tensor)
                               else V, device=self.device).to(self.dtype)

    def predict(self, alpha, rows, cols, progress=False):
        """K(test, observed) alpha for test entries (rows[k], cols[k]); alpha (N,) or (N, t).
        Returns an ndarray (T,) or (T, t)."""
        rows, cols = _validated_entries(rows, cols, self.shape, what="test")
        A = self._tensor(alpha)
        if A.shape[0] != self.n_observed:
            raise ValueError(f"alpha must have {self.n_observed} rows, got shape {tuple(A.shape)}")
        out = torch.empty((rows.size,) + tuple(A.shape[1:]), dtype=self.dtype, device=self.device)
        for start in tqdm(range(0, rows.size, self.tile), desc="kernel tiles", disable=not progress,
                          leave=False):
            stop = min(rows.size, start + self.tile)
            out[start:stop] = self.block(rows[start:stop], cols[start:stop]) @ A
        return out.cpu().numpy()

    def matvec(self, V):
        """K V for V (N, t) tensor (or ndarray), in row tiles; same type back."""
        is_np = not isinstance(V, torch.Tensor)
        A = self._tensor(V)
        out = torch.empty_like(A)
        rows, cols = self._rows.cpu().numpy(), self._cols.cpu().numpy()
        for start in range(0, self.n_observed, self.tile):
            stop = min(self.n_observed, start + self.tile)
            out[start:stop] = self.block(rows[start:stop], cols[start:stop]) @ A
        return out.cpu().numpy() if is_np else out

    def solve(self, y, ridge, tol=1e-8, maxiter=None, rank=None, random_state=0, progress=False,
              return_info=False):
        """alpha = (K + ridge * mean(diag K) * I)^{-1} y by CG with a Nystrom preconditioner of
        ``rank`` landmarks (default min(N, 500), chosen uniformly at random); y (N,) or (N, t).
        Returns an ndarray shaped like y (or a :class:`CGResult` when ``return_info``)."""
        y = _validated_targets(y, self.n_observed)
        lam = self.ridge_lambda(ridge)
        N = self.n_observed
        rank = min(N, 500) if rank is None else int(rank)
        if not 1 <= rank <= N:
            raise ValueError(f"rank must be in 1..{N}, got {rank}")
        landmarks = np.sort(np.random.default_rng(random_state).choice(N, size=rank, replace=False))
        rows, cols = self._rows.cpu().numpy(), self._cols.cpu().numpy()
        columns = self.block(rows[landmarks], cols[landmarks]).T  # (N, rank) = K[:, landmarks]
        precond = nystrom_preconditioner(columns, landmarks, lam)
        result = solve_cg(lambda V: self.matvec(V) + lam * V, self._tensor(y), precond=precond,
                          tol=tol, maxiter=maxiter, progress=progress, return_info=True)
        result.x = result.x.cpu().numpy()
        return result if return_info else result.x


def nystrom_preconditioner(columns, landmarks, mu):
    """Randomized-Nystrom preconditioner for K + mu I from ``columns`` = K[:, landmarks].

    K ~ U diag(lam) U^T from the landmark columns; the returned function applies
    P^{-1} r = r + U ((lam_min + mu) / (lam + mu) - 1) U^T r, which is SPD, and cheap
    (O(N * rank)). ``columns``: (N, l) tensor or ndarray; ``landmarks``: (l,) indices;
    ``mu`` > 0. The returned function takes and returns the same type as ``columns``.
    """
    if mu <= 0:
        raise ValueError(f"mu must be > 0 for the Nystrom preconditioner, got {mu}")
    is_np = not isinstance(columns, torch.Tensor)
    C = torch.as_tensor(columns)
    W = C[torch.as_tensor(landmarks, device=C.device)]
    W = 0.5 * (W + W.T)
    shift = 1e-10 * float(W.diagonal().abs().max()) * W.shape[0]  # numerical safety only
    L = torch.linalg.cholesky(W + shift * torch.eye(W.shape[0], dtype=W.dtype, device=W.device))
    B = torch.linalg.solve_triangular(L, C.T, upper=False).T  # C L^{-T}: K ~ B B^T
    U, sing, _ = torch.linalg.svd(B, full_matrices=False)
    lam = (sing.square() - shift).clamp_(min=0.0)
    weight = ((lam[-1] + mu) / (lam + mu) - 1.0)[:, None]

    def apply(R):
        Rt = torch.as_tensor(R)
        out = Rt + U @ (weight * (U.T @ Rt))
        return out.numpy() if is_np else out
    return apply


def choose_solver(mode, shape, n_observed, onehot=False, memory_budget=None):
    """Name of the solver ``solver='auto'`` uses (one of :data:`SOLVERS`).

    rows/cols mode -> 'shared'; joint mode with one-hot row and column priors -> 'structured';
    joint mode with other priors -> 'exact' while the dense N x N float64 kernel, factored in
    place (:meth:`JointKernelOperator.dense` then ``solve_exact(..., overwrite=True)``), fits
    in ``memory_budget`` with a quarter to spare for the tiles, else 'cg' (tiled products,
    Nystrom-preconditioned; each product costs N^2 kernel evaluations).
    """
    if mode in ("rows", "cols"):
        return "shared"
    if mode != "joint":
        raise ValueError(f"mode must be 'rows', 'cols' or 'joint', got {mode!r}")
    if len(shape) != 2 or n_observed < 1 or n_observed > shape[0] * shape[1]:
        raise ValueError(f"n_observed = {n_observed} does not fit a matrix of shape {shape}")
    if onehot:
        return "structured"
    return "exact" if 1.25 * 8 * n_observed**2 <= parse_bytes(memory_budget) else "cg"
