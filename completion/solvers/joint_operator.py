"""Joint mode with dense priors: the kernel between observed entries from row and column Gram
matrices, evaluated in tiles under a memory budget, for CG products, predictions, and the exact
solve (the dense kernel filled in tiles and factored in place)."""
from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from models.device import check_fits, parse_bytes, resolve_device, resolve_dtype

from .cg import nystrom_preconditioner, solve_cg
from .checks import check_ridge, validated_entries, validated_targets
from .cholesky import ridge_cholesky_solve

__all__ = ["JointKernelOperator"]


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
        rows, cols = validated_entries(rows, cols, self.shape)
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
        self._budget, self._fixed, self._per_row = budget, fixed, per_row
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
        """The (N, N) float64 kernel between observed entries as a Fortran-ordered ndarray (so
        that :meth:`solve_exact` factors it in place), filled in row tiles of at most
        N / (4 x work arrays) rows: peak about 1.25 N^2 floats. Refused before any work (with
        the size it would need) when the kernel, the Gram matrices and a one-row tile do not
        fit ``memory_budget``."""
        N = self.n_observed
        check_fits(8 * N * N + self._fixed + self._per_row, self._budget,
                   f"the dense {N} x {N} joint kernel (float64, filled in tiles)",
                   "Use the CG solver (solver='cg') or raise memory_budget.")
        tile = int(min(self.tile, (self._budget - 8 * N * N - self._fixed) // self._per_row,
                       max(1, N // (4 * self._WORK_ARRAYS))))
        K = np.empty((N, N), order="F")
        rows, cols = self._rows.cpu().numpy(), self._cols.cpu().numpy()
        for start in tqdm(range(0, N, tile), desc="kernel tiles", disable=not progress,
                          leave=False):
            stop = min(N, start + tile)
            block = self.block(rows[start:stop], cols[start:stop])
            if not bool(torch.isfinite(block).all()):
                raise ValueError(f"the joint kernel is not finite in rows {start}..{stop - 1}")
            K[start:stop] = block.cpu().numpy()
        return K

    def solve_exact(self, y, ridge, progress=False):
        """alpha = (K + ridge * mean(diag K) * I)^{-1} y by Cholesky in float64 of the dense
        kernel (:meth:`dense`, factored in place: peak about 1.25 N^2 floats, checked against
        ``memory_budget`` before any work); y (N,) or (N, t). Returns an ndarray shaped like y."""
        y = validated_targets(y, self.n_observed)
        ridge = check_ridge(ridge)
        K = self.dense(progress)
        return ridge_cholesky_solve(K, y, ridge * float(np.mean(np.diag(K))), ridge)

    def diag(self):
        """(N,) tensor: K((i, j), (i, j)) for the observed entries."""
        return self.kernel.ntk_from_gram(self._sq, self._sq, self._sq)

    def ridge_lambda(self, ridge):
        return check_ridge(ridge) * float(self.diag().mean())

    def _tensor(self, V):
        return torch.as_tensor(np.asarray(V, dtype=np.float64) if not isinstance(V, torch.Tensor)
                               else V, device=self.device).to(self.dtype)

    def predict(self, alpha, rows, cols, progress=False):
        """K(test, observed) alpha for test entries (rows[k], cols[k]); alpha (N,) or (N, t).
        Returns an ndarray (T,) or (T, t)."""
        rows, cols = validated_entries(rows, cols, self.shape, what="test")
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
        y = validated_targets(y, self.n_observed)
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

