"""Krylov solvers, eigensolvers and preconditioners for any symmetric LinearOperator.

Nothing here knows about neural networks: the operators of docs/theory.md (NTK ``Θ_SS + λI``,
Gauss–Newton ``G_S + λI``, their sum and Schur complement) are just LinearOperators to these functions.
One code path for NumPy, CuPy and torch arrays (the array API standard, :mod:`fastntk.solvers._xp`):
a torch right-hand side runs the solve on its device, with torch operators applied directly.
Convergence everywhere: ‖b − A x‖₂ ≤ max(rtol‖b‖₂, atol), checked on the recomputed true residual.
"""
from __future__ import annotations

from ._linop import NUMBA_CROSSOVER_N, as_operator, make_system
from ._numba_kernels import HAVE_NUMBA
from .cg import block_cg, cg
from .lanczos import eigsh, estimate_condition, lanczos
from .minres import minres
from .multishift import choose_ridge, multishift_cg
from .precond import (
    DeflationPreconditioner,
    IdentityPreconditioner,
    JacobiPreconditioner,
    NystromPreconditioner,
    check_preconditioner,
    make_preconditioner,
)
from .result import MultiShiftResult, SolveResult

__all__ = [
    "SolveResult",
    "MultiShiftResult",
    "cg",
    "block_cg",
    "minres",
    "multishift_cg",
    "choose_ridge",
    "eigsh",
    "lanczos",
    "estimate_condition",
    "JacobiPreconditioner",
    "NystromPreconditioner",
    "DeflationPreconditioner",
    "IdentityPreconditioner",
    "make_preconditioner",
    "check_preconditioner",
    "as_operator",
    "make_system",
    "HAVE_NUMBA",
    "NUMBA_CROSSOVER_N",
]
