"""Which solver ``solver="auto"`` uses for a problem size, and the ``"nystrom:R"`` spelling."""
from __future__ import annotations

from models.device import parse_bytes

__all__ = ["SOLVERS", "choose_solver", "parse_solver"]

SOLVERS = ("exact", "structured", "shared", "cg", "nystrom")


def parse_solver(solver):
    """``"nystrom"`` -> ("nystrom", None); ``"nystrom:300"`` -> ("nystrom", 300) (at most 300
    landmarks); any other name -> (name, None). Raises ValueError for an unknown name."""
    name, _, rank = str(solver).partition(":")
    if name not in SOLVERS and name != "auto" or (rank and name != "nystrom"):
        raise ValueError(f"solver must be auto or one of {list(SOLVERS)} (or 'nystrom:R' with R "
                         f"landmarks), got {solver!r}")
    if not rank:
        return name, None
    if not rank.isdigit() or int(rank) < 1:
        raise ValueError(f"solver {solver!r}: the landmark count after 'nystrom:' must be an "
                         "integer >= 1")
    return name, int(rank)


def choose_solver(mode, shape, n_observed, onehot=False, memory_budget=None):
    """Name of the solver ``solver='auto'`` uses (one of :data:`SOLVERS`).

    rows/cols mode -> 'shared' (exact) while the N x N float64 kernel over the N rows (cols)
    fits in ``memory_budget`` with a quarter to spare, else 'nystrom' (memory O(N r), r
    landmarks). Nystrom is not chosen for speed: its cost per output, |O| min(|O|, r)^2
    flops plus |O| r gathered floats, is not below the exact |O|^3 / 3 plus |O|^2 / 2 unless
    r < |O| / 3, and measured on 100,000 x 10,000 ratings (2 % observed, |O| ~ 180 per user)
    the exact solve took 380-443 s where 500 landmarks took 414-466 s and 1000 took 366-470 s,
    with a test RMSE of 0.843 against 0.889 and 0.868 (benchmarks/RESULTS.md, "Sparse ratings
    at scale");
    joint mode with one-hot row and column priors -> 'structured';
    joint mode with other priors -> 'exact' while the dense N x N float64 kernel, filled in
    tiles and factored in place (:meth:`JointKernelOperator.solve_exact`), fits in
    ``memory_budget`` with a quarter to spare for the tiles, else 'cg' (tiled products,
    Nystrom-preconditioned; each product costs N^2 kernel evaluations).
    """
    if mode in ("rows", "cols"):
        N = shape[0] if mode == "rows" else shape[1]
        return "shared" if 1.25 * 8 * N**2 <= parse_bytes(memory_budget) else "nystrom"
    if mode != "joint":
        raise ValueError(f"mode must be 'rows', 'cols' or 'joint', got {mode!r}")
    if len(shape) != 2 or n_observed < 1 or n_observed > shape[0] * shape[1]:
        raise ValueError(f"n_observed = {n_observed} does not fit a matrix of shape {shape}")
    if onehot:
        return "structured"
    return "exact" if 1.25 * 8 * n_observed**2 <= parse_bytes(memory_budget) else "cg"
