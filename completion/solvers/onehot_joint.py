"""Joint mode with one-hot row and column priors, where the kernel between observed entries
takes four values: K = a I + b R R^T + c C C^T + d 1 1^T. Solved through an (m + n + 1)-dimensional
reduced system (dense Cholesky when small, preconditioned CG with O(|Omega|) products otherwise);
the |Omega| x |Omega| matrix is never formed."""
from __future__ import annotations

import math

import numpy as np
import scipy.linalg
import scipy.sparse
import scipy.sparse.csgraph

from .cg import solve_cg
from .checks import check_ridge, validated_entries, validated_targets
from .cholesky import not_positive_definite, ridge_cholesky_solve

__all__ = ["OneHotJointKernel", "solve_onehot_joint", "predict_onehot_joint"]

# Above this many unknowns (m + n + 1) the one-hot reduced system is solved by CG, not Cholesky.
_REDUCED_DENSE_MAX = 4000


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
        self.rows, self.cols = validated_entries(rows, cols, self.shape)
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
        return check_ridge(ridge) * float(self.values[0])

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
        y = validated_targets(y, self.n_observed)
        if method not in ("auto", "dense", "cg"):
            raise ValueError(f"method must be 'auto', 'dense' or 'cg', got {method!r}")
        lam = self.ridge_lambda(ridge)
        s = self.a + lam
        if s <= 0:
            raise not_positive_definite(lam, ridge)
        m, n = self.shape
        if method == "auto":
            method = "dense" if m + n + 1 <= _REDUCED_DENSE_MAX else "cg"
        Y = y.reshape(self.n_observed, -1)
        scale = self._reduced_scale()
        rhs = scale * self._UT(Y)
        info = {"method": method}
        if method == "dense":
            Q = ridge_cholesky_solve(self._reduced_dense(s), rhs, 0.0, 0.0)
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
        tr, tc = validated_entries(test_rows, test_cols, self.shape, what="test")
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

