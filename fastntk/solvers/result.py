"""The one result type of every fastntk solve."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, List

import numpy as np

from ..errors import ConvergenceError


@dataclass
class SolveResult:
    """Outcome of a solve of ``A x = b`` (or ``A X = B`` for block CG).

    Attributes
    ----------
    x : solution, same array module as ``b`` (NumPy or CuPy), shape ``(n,)`` or ``(n, k)``.
    converged : ``true_residual <= tolerance`` (every column for block CG). Judged on the TRUE
        residual, never on the recursive one.
    iterations : Krylov iterations performed (all restarts together).
    matvecs : operator applications, per column (a block matmat on k columns counts k), including
        the final residual check and the initial residual when ``x0`` is given. Preconditioner
        build cost is *not* included (it is ``M.build_matvecs``).
    residual_history : recursive residual norms ‖r_k‖₂, starting with the initial one (for block CG:
        the largest column norm).
    true_residual : ‖b − A x‖₂ recomputed at the end with one extra matvec (array per column for
        block CG).
    rhs_norm : ‖b‖₂ (array per column for block CG).
    tolerance : ``max(rtol‖b‖, atol)`` (array per column for block CG).
    seconds : wall time of the solve.
    backend : ``"scipy"``, ``"numba"``, ``"numpy"`` or ``"cupy"``.
    method : ``"cg"``, ``"pcg"``, ``"minres"``, ``"block_cg"``, ``"multishift_cg"``.
    info : anything else: why the backend was chosen, restarts, breakdowns, shift...
    """

    x: Any
    converged: bool
    iterations: int
    matvecs: int
    residual_history: List[float]
    true_residual: Any
    rhs_norm: Any
    tolerance: Any
    seconds: float
    backend: str
    method: str
    info: dict = field(default_factory=dict)

    def __repr__(self) -> str:  # keep the vector out of reprs
        tr = self.true_residual
        tr = f"{tr:.3e}" if np.ndim(tr) == 0 else f"max {np.max(tr):.3e}"
        tol = self.tolerance
        tol = f"{tol:.3e}" if np.ndim(tol) == 0 else f"max {np.max(tol):.3e}"
        return (f"SolveResult(method={self.method!r}, backend={self.backend!r}, converged={self.converged}, "
                f"iterations={self.iterations}, matvecs={self.matvecs}, true_residual={tr}, "
                f"tolerance={tol}, seconds={self.seconds:.3g})")


@dataclass
class MultiShiftResult:
    """Solutions of ``(A + s_k I) x_k = b`` for every shift ``s_k`` from one Krylov space.

    ``results[k]`` is a :class:`SolveResult` for shift ``shifts[k]``; ``matvecs`` is the total
    (shared) count: one operator matvec per iteration for all shifts together, plus one true-residual
    check per shift at the end.
    """

    shifts: np.ndarray
    results: List[SolveResult]
    iterations: int
    matvecs: int
    seconds: float
    converged: bool
    info: dict = field(default_factory=dict)

    def __len__(self):
        return len(self.results)

    def __getitem__(self, i):
        return self.results[i]

    def __iter__(self):
        return iter(self.results)

    @property
    def X(self):
        """Solutions stacked as columns, shape (n, n_shifts)."""
        xs = [r.x for r in self.results]
        mod = type(xs[0]).__module__
        if mod.startswith("cupy"):
            import cupy  # noqa: PLC0415

            return cupy.stack(xs, axis=1)
        return np.stack(xs, axis=1)


def finish(result: SolveResult, on_fail: str) -> SolveResult:
    """Apply the on_fail policy: raise ConvergenceError, warn, or return silently ("ignore")."""
    if result.converged or on_fail == "ignore":
        return result
    tr = np.max(result.true_residual)
    tol = np.max(result.tolerance) if np.ndim(result.tolerance) else result.tolerance
    msg = (f"{result.method} ({result.backend}) did not converge: true residual ‖b − Ax‖ = {tr:.3e} > "
           f"tolerance {tol:.3e} after {result.iterations} iterations ({result.matvecs} matvecs). "
           f"Increase maxiter, add a preconditioner (M=...), increase the ridge, or loosen rtol/atol.")
    if "breakdown" in result.info:
        msg += f" Breakdown: {result.info['breakdown']}."
    if on_fail == "raise":
        raise ConvergenceError(msg, result)
    warnings.warn(msg, RuntimeWarning, stacklevel=3)
    return result
