"""Solve bookkeeping shared by every unlearning route: CG through :mod:`fastntk.solvers`, float64 direct solves.

:class:`SolveContext` holds one request's solver settings and records every solve under a name
(``ctx.solves``: name -> :class:`fastntk.solvers.SolveResult`, direct solves included: :func:`record_direct`).
The float64 factorizations live in :mod:`fastntk.update.dense`.
"""
from __future__ import annotations

import logging
import math
import time

import torch

from ..errors import NumericalError
from ..operators.base import TorchLinearOperator

log = logging.getLogger("fastntk")

__all__ = ["SolveContext", "solve_summary", "record_direct", "check_norm_bound"]


def solve_summary(s) -> dict:
    """The record of a solve without its vector (:meth:`fastntk.solvers.SolveResult.summary`)."""
    return s.summary() if hasattr(s, "summary") else dict(s)


def record_direct(solves: dict, name: str, x, *, residual: float, rhs_norm: float, tolerance: float, t0: float,
                  method: str, matvecs: int = 0):
    """Record a direct (factorization) solve under ``name`` as a :class:`fastntk.solvers.SolveResult`."""
    from ..solvers import SolveResult

    solves[name] = rec = SolveResult.direct(x, residual_norm=residual, rhs_norm=rhs_norm, tolerance=tolerance,
                                            seconds=time.perf_counter() - t0, method=method, matvecs=matvecs, backend="torch")
    return rec


class SolveContext:
    """One request's solver settings (:class:`fastntk.update.options.SolverOptions`) and its solve records.

    ``solves``: name -> :class:`fastntk.solvers.SolveResult`, for iterative and direct solves alike.
    """

    def __init__(self, *, rtol, maxiter=None, preconditioner="none", precond_rank=50, backend="auto", callback=None,
                 on_fail="raise", progress=False):
        self.rtol, self.maxiter, self.preconditioner, self.precond_rank = rtol, maxiter, preconditioner, precond_rank
        self.backend, self.callback, self.on_fail, self.progress = backend, callback, on_fail, progress
        self.solves: dict = {}
        self._precond_cache: dict = {}

    @classmethod
    def from_options(cls, opts, *, rtol=None, progress=False) -> "SolveContext":
        """From :class:`~fastntk.update.options.SolverOptions` (``rtol``: the plan's, floored for float32)."""
        return cls(rtol=opts.rtol if rtol is None else rtol, maxiter=opts.maxiter, preconditioner=opts.preconditioner,
                   precond_rank=opts.precond_rank, backend=opts.backend, callback=opts.callback, on_fail=opts.on_fail,
                   progress=progress)

    @property
    def on_host(self) -> bool:
        """CG through SciPy/Numba (``backend="scipy" | "numba"``): NumPy copies of the operator and vector."""
        return self.backend in ("scipy", "numba")

    def _system(self, op: TorchLinearOperator, b: torch.Tensor):
        if self.on_host:
            return op.to_scipy(), b.detach().cpu().numpy()
        if self.backend == "cupy":
            import cupy

            return op.to_cupy(), cupy.from_dlpack(b.detach().contiguous())
        return op, b.detach()

    def _precond(self, op: TorchLinearOperator, A, key):
        name = self.preconditioner
        if name in (None, "none", "auto"):  # "auto": only the CE route's cached-row solves build one (update.tilted)
            return None
        if key is not None and key in self._precond_cache:
            return self._precond_cache[key]
        from .. import solvers

        if name == "jacobi":
            d = op.diagonal().double()
            M = solvers.JacobiPreconditioner(d.cpu().numpy() if self.on_host else d)
        else:
            M = solvers.NystromPreconditioner.build(A, rank=min(self.precond_rank, op.shape[0] - 1),
                                                    ridge=getattr(op, "ridge", 0.0), seed=0)
        log.info("fastntk: preconditioner %s built for %s", name, key)
        if key is not None:
            self._precond_cache[key] = M
        return M

    def _callback(self, name, quiet):
        if not self.progress or quiet:
            return self.callback, None
        from tqdm.auto import tqdm

        bar = tqdm(desc=f"solve {name}", unit="it", leave=False)

        def cb(xk, _user=self.callback):
            bar.update(1)
            if _user is not None:
                _user(xk)

        return cb, bar

    def solve(self, op: TorchLinearOperator, b: torch.Tensor, name: str, *, rtol=None, key=None, quiet=False,
              M=None) -> torch.Tensor:
        """``op⁻¹ b`` by preconditioned CG (:func:`fastntk.solvers.cg`, on torch tensors unless the backend is a host
        one); recorded under ``name`` (``quiet``: inner solves, combined into one record).  ``M``: a preconditioner the
        caller built (instead of the one ``preconditioner`` names)."""
        from .. import solvers

        if float(b.norm()) == 0.0:
            self.solves[name] = solvers.SolveResult.direct(torch.zeros_like(b), residual_norm=0.0, rhs_norm=0.0,
                                                           tolerance=0.0, method="trivial")
            return torch.zeros_like(b)
        A, rhs = self._system(op, b)
        M = self._precond(op, A, key) if M is None else M
        cb, bar = self._callback(name, quiet)
        try:
            res = solvers.cg(A, rhs, rtol=self.rtol if rtol is None else rtol, maxiter=self.maxiter, M=M, callback=cb,
                             backend=self.backend, on_fail=self.on_fail)
        finally:
            if bar is not None:
                bar.close()
        self.record(name, res, quiet=quiet)
        return torch.as_tensor(res.x, dtype=b.dtype, device=b.device)

    def record(self, name: str, res, *, quiet: bool = False) -> None:
        """Record ``res`` under ``name``; ``quiet`` (inner solves): combined with the earlier ones of that name."""
        from ..solvers import SolveResult

        prev = self.solves.get(name) if quiet else None
        self.solves[name] = res if prev is None else SolveResult.combine([prev, res], method=prev.method)


def check_norm_bound(x, b, lam, solve, name):
    """Guard rail: for ``(G + λI) x = b + r`` with ``‖r‖`` the certified residual, ``‖x‖ ≤ (‖b‖ + ‖r‖)/λ``.

    A violation means the solve exploded (non-PSD operator, overflow): raise, never write.
    """
    if lam <= 0 or solve is None:
        return
    bound = (float(b.double().norm()) + solve.residual_norm) / lam
    nx = float(x.double().norm())
    if not math.isfinite(nx) or nx > bound * (1 + 1e-4) + 1e-30:
        raise NumericalError(f"{name}: ‖Δ‖ = {nx:.3e} exceeds the bound (‖b‖ + ‖r‖)/λ = {bound:.3e}; the solve is unreliable "
                             "(operator not PSD or overflow). Nothing was written")
    solve.info["norm_bound"] = bound
