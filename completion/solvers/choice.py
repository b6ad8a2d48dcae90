"""Which solver ``solver="auto"`` uses for a problem size."""
from __future__ import annotations

from models.device import parse_bytes

__all__ = ["SOLVERS", "choose_solver"]

SOLVERS = ("exact", "structured", "shared", "cg")


def choose_solver(mode, shape, n_observed, onehot=False, memory_budget=None):
    """Name of the solver ``solver='auto'`` uses (one of :data:`SOLVERS`).

    rows/cols mode -> 'shared'; joint mode with one-hot row and column priors -> 'structured';
    joint mode with other priors -> 'exact' while the dense N x N float64 kernel, filled in
    tiles and factored in place (:meth:`JointKernelOperator.solve_exact`), fits in
    ``memory_budget`` with a quarter to spare for the tiles, else 'cg' (tiled products,
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
