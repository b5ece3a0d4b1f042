"""The one result type of every fastntk solve, direct or iterative."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, List, Optional

import numpy as np

from ..errors import ConvergenceError, InvalidInputError
from . import _xp


@dataclass
class SolveResult:
    """Outcome of a solve of ``A x = b`` (or ``A X = B`` for block CG), iterative or direct.

    One record for every solve: Krylov solves fill it in :func:`~fastntk.solvers.cg` and friends,
    direct (factorization) solves build it with :meth:`SolveResult.direct`, several inner solves
    are summed up by :meth:`SolveResult.combine`, and :meth:`summary` gives the same keys for all.

    Attributes
    ----------
    x : solution (also ``.solution``), same array library and device as ``b`` (NumPy, CuPy or
        torch), shape ``(n,)`` or ``(n, k)``.
    converged : ``true_residual <= tolerance`` (every column for block CG). Judged on the TRUE
        residual, never on the recursive one.
    iterations : Krylov iterations performed (all restarts together).
    matvecs : operator applications, per column (a block matmat on k columns counts k), including
        the final residual check and the initial residual when ``x0`` is given. Preconditioner
        build cost is *not* included (it is ``M.build_matvecs``).
    residual_history : recursive residual norms ‖r_k‖₂, starting with the initial one (for block CG:
        the largest column norm).
    true_residual : ‖b − A x‖₂ recomputed at the end with one extra matvec (array per column for
        block CG); also ``.residual_norm``.
    rhs_norm : ‖b‖₂ (array per column for block CG).
    tolerance : ``max(rtol‖b‖, atol)`` (array per column for block CG); ``None`` for a direct solve
        that was given none.
    seconds : wall time of the solve.
    backend : ``"scipy"``, ``"numba"``, ``"numpy"``, ``"cupy"`` or ``"torch"``.
    method : ``"cg"``, ``"pcg"``, ``"minres"``, ``"block_cg"``, ``"multishift_cg"``; for direct solves
        what was factorized (``"cholesky"``, ``"eigh"``, ...); ``"trivial"`` for ``b = 0``.
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

    # ------------------------------------------------------------------ uniform names
    @property
    def solution(self):
        """The solution ``x``."""
        return self.x

    @property
    def residual_norm(self) -> float:
        """‖b − A x‖₂ of the returned solution (the largest column's for a block solve)."""
        return float(np.max(self.true_residual))

    @property
    def is_direct(self) -> bool:
        return bool(self.info.get("direct", False))

    # ------------------------------------------------------------------ constructors
    @classmethod
    def direct(cls, solution, *, residual_norm, rhs_norm, tolerance: Optional[float] = None, seconds: float = 0.0,
               method: str = "cholesky", matvecs: int = 0, backend: Optional[str] = None,
               info: Optional[dict] = None) -> "SolveResult":
        """The record of a direct (factorization) solve.

        ``solution``: the computed x (any array library). ``residual_norm``: ‖b − A x‖₂ as checked by
        the caller (float or 0-d array). ``rhs_norm``: ‖b‖₂. ``tolerance``: the bound it was checked
        against (``converged = residual_norm <= tolerance``); without one, ``converged`` says only
        that the residual is finite. ``iterations`` is 0, ``residual_history`` is ``[residual_norm]``,
        ``backend`` defaults to the solution's array library, ``info["direct"] = True``.
        """
        r = float(np.max(_xp.to_numpy(residual_norm)))
        bn = float(np.max(_xp.to_numpy(rhs_norm)))
        if not math.isfinite(bn) or bn < 0:
            raise InvalidInputError(f"rhs_norm must be finite and >= 0; got {bn!r}.")
        if tolerance is not None:
            tolerance = float(tolerance)
            if not tolerance >= 0:
                raise InvalidInputError(f"tolerance must be >= 0; got {tolerance!r}.")
        converged = math.isfinite(r) and (tolerance is None or r <= tolerance)
        if backend is None:
            backend = _xp.kind(_xp.namespace(solution)) if _xp.is_array(solution) else "numpy"
        return cls(x=solution, converged=bool(converged), iterations=0, matvecs=int(matvecs), residual_history=[r],
                   true_residual=r, rhs_norm=bn, tolerance=tolerance, seconds=float(seconds), backend=backend,
                   method=method, info={"direct": True, **(info or {})})

    @classmethod
    def combine(cls, results: Iterable["SolveResult"], *, method: Optional[str] = None) -> "SolveResult":
        """One record for several solves (e.g. the inner solves of a Schur complement matvec).

        Iterations, matvecs and seconds add up; the residual, right-hand side norm and tolerance are
        the worst (largest) ones; ``converged`` only if every solve converged; ``x`` is the last
        solution; ``info["count"]`` is the number of solves.
        """
        rs = list(results)
        if not rs:
            raise InvalidInputError("combine() needs at least one SolveResult.")
        tols = [np.max(r.tolerance) for r in rs if r.tolerance is not None]
        hist = [h for r in rs for h in r.residual_history]
        return cls(x=rs[-1].x, converged=all(r.converged for r in rs), iterations=sum(r.iterations for r in rs),
                   matvecs=sum(r.matvecs for r in rs), residual_history=hist,
                   true_residual=max(r.residual_norm for r in rs), rhs_norm=float(max(np.max(r.rhs_norm) for r in rs)),
                   tolerance=float(max(tols)) if tols else None, seconds=sum(r.seconds for r in rs),
                   backend=rs[-1].backend, method=method or rs[-1].method,
                   info={"count": sum(r.info.get("count", 1) for r in rs), "direct": all(r.is_direct for r in rs)})

    def summary(self) -> dict:
        """The record without the vector: the same keys for direct and iterative solves."""
        tol = None if self.tolerance is None else float(np.max(self.tolerance))
        return dict(method=self.method, backend=self.backend, direct=self.is_direct, converged=bool(self.converged),
                    iterations=int(self.iterations), matvecs=int(self.matvecs), residual_norm=self.residual_norm,
                    rhs_norm=float(np.max(self.rhs_norm)), tolerance=tol, seconds=float(self.seconds),
                    restarts=int(self.info.get("restarts", 0)), count=int(self.info.get("count", 1)))

    def __repr__(self) -> str:  # keep the vector out of reprs
        tr = self.true_residual
        tr = f"{tr:.3e}" if np.ndim(tr) == 0 else f"max {np.max(tr):.3e}"
        tol = self.tolerance
        tol = "none" if tol is None else f"{tol:.3e}" if np.ndim(tol) == 0 else f"max {np.max(tol):.3e}"
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
        """Solutions stacked as columns, shape (n, n_shifts), in their own array library."""
        xs = [r.x for r in self.results]
        return _xp.namespace(xs[0]).stack(xs, axis=1)


def finish(result: SolveResult, on_fail: str) -> SolveResult:
    """Apply the on_fail policy: raise ConvergenceError, warn, or return silently ("ignore")."""
    if result.converged or on_fail == "ignore":
        return result
    tr = np.max(result.true_residual)
    tol = float("nan") if result.tolerance is None else np.max(result.tolerance)
    msg = (f"{result.method} ({result.backend}) did not converge: true residual ‖b − Ax‖ = {tr:.3e} > "
           f"tolerance {tol:.3e} after {result.iterations} iterations ({result.matvecs} matvecs). "
           f"Increase maxiter, add a preconditioner (M=...), increase the ridge, or loosen rtol/atol.")
    if "breakdown" in result.info:
        msg += f" Breakdown: {result.info['breakdown']}."
    if on_fail == "raise":
        raise ConvergenceError(msg, result)
    warnings.warn(msg, RuntimeWarning, stacklevel=3)
    return result
