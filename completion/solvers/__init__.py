"""Linear algebra of kernel-regression completion: (K + lam I) alpha = y and K_test alpha.

All solvers use the *relative* ridge of the design: lam = ridge * mean(diag K) over the
training points (the observed entries), so every fast solver solves exactly the system that
:func:`solve_exact` solves on the dense |Omega| x |Omega| entry kernel. One module per job:

* :mod:`.cholesky`: :func:`solve_exact`, Cholesky in float64 of a given dense kernel (in place).
* :mod:`.cg`: :func:`solve_cg` (preconditioned conjugate gradients) and
  :func:`nystrom_preconditioner`.
* :mod:`.onehot_joint`: :class:`OneHotJointKernel` (:func:`solve_onehot_joint`,
  :func:`predict_onehot_joint`): joint mode with one-hot priors, K = a I + b R R^T + c C C^T +
  d 1 1^T, through an (m + n + 1)-dimensional reduced system; the |Omega|^2 matrix is never formed.
* :mod:`.shared_kernel`: :func:`solve_shared_kernel`, rows (or, transposed, cols) mode, one kernel
  over rows shared by all columns; columns with the same observed pattern share one factorisation.
* :mod:`.joint_operator`: :class:`JointKernelOperator`, joint mode with dense priors: tiled
  products of the joint kernel from row and column Gram matrices (memory O(|Omega| * tile)) for
  CG, and the exact solve that fills and factors the |Omega|^2 kernel in place.
* :mod:`.per_output`: rows/cols mode on entry lists (sparse input): every output regressed on
  its own observed items in batched factorisations, exactly (N x N kernel) or in the feature
  space of a Nystrom factor.
* :mod:`.nystrom`: :func:`pivoted_nystrom`, the factor K ~ F F^T (randomly pivoted Cholesky).
* :mod:`.choice`: :func:`choose_solver`, the name of the solver ``solver="auto"`` uses, and
  :func:`parse_solver` (``"nystrom:R"``).
* :mod:`.checks`: argument checks shared by the above.
"""
from .cg import CGResult, nystrom_preconditioner, solve_cg
from .choice import SOLVERS, choose_solver, parse_solver
from .cholesky import solve_exact
from .joint_operator import JointKernelOperator
from .nystrom import pivoted_nystrom
from .onehot_joint import OneHotJointKernel, predict_onehot_joint, solve_onehot_joint
from .shared_kernel import shared_kernel_flops, solve_shared_kernel

__all__ = ["solve_exact", "OneHotJointKernel", "solve_onehot_joint", "predict_onehot_joint",
           "solve_shared_kernel", "shared_kernel_flops", "solve_cg", "CGResult", "JointKernelOperator",
           "nystrom_preconditioner", "choose_solver", "parse_solver", "SOLVERS",
           "pivoted_nystrom"]
