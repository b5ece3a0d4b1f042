"""Solve bookkeeping shared by every unlearning route: CG through :mod:`fastntk.solvers`, float64 direct solves.

:class:`SolveContext` holds one request's solver settings and records every solve under a name
(``ctx.solves``: name -> :class:`fastntk.solvers.SolveResult` or a summary dict); :func:`solve_primal_direct`
solves ``(JᵀJ + λI) x = g`` by a float64 Cholesky factor in the smaller space from a cached ``J``.
"""
from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch

from ..errors import InvalidInputError, NumericalError
from ..operators.base import TorchLinearOperator

log = logging.getLogger("fastntk")

__all__ = ["SolveContext", "solve_summary", "check_norm_bound", "jv64", "jtv64", "gram64", "cholesky64", "solve_primal_direct"]


def solve_summary(s) -> dict:
    if isinstance(s, dict):
        return s
    return {
        "method": getattr(s, "method", None),
        "backend": getattr(s, "backend", None),
        "iterations": int(getattr(s, "iterations", 0)),
        "matvecs": int(getattr(s, "matvecs", 0)),
        "true_residual": float(np.max(getattr(s, "true_residual", np.nan))),
        "tolerance": float(np.max(getattr(s, "tolerance", np.nan))),
        "converged": bool(getattr(s, "converged", False)),
        "seconds": float(getattr(s, "seconds", 0.0)),
    }


class SolveContext:
    """Common solver settings and the solve bookkeeping of one request."""

    def __init__(self, *, rtol, maxiter, preconditioner, precond_rank, backend, callback, on_fail, progress):
        self.rtol = rtol
        self.maxiter = maxiter
        self.preconditioner = preconditioner
        self.precond_rank = precond_rank
        self.backend = backend
        self.callback = callback
        self.on_fail = on_fail
        self.progress = progress
        self.solves: dict = {}
        self._precond_cache: dict = {}

    def _precond(self, op: TorchLinearOperator, key):
        name = self.preconditioner
        if name in (None, "none"):
            return None
        if key is not None and key in self._precond_cache:
            return self._precond_cache[key]
        from .. import solvers

        sop = op.to_scipy()
        if name == "jacobi":
            M = solvers.JacobiPreconditioner(op.diagonal().double().cpu().numpy())
        elif name == "nystrom":
            M = solvers.NystromPreconditioner.build(sop, rank=min(self.precond_rank, op.shape[0] - 1), ridge=getattr(op, "ridge", 0.0), seed=0)
        else:
            raise InvalidInputError(f"unknown preconditioner {name!r}; choose 'none', 'jacobi' or 'nystrom'")
        log.info("fastntk: preconditioner %s built for %s", name, key)
        if key is not None:
            self._precond_cache[key] = M
        return M

    def solve(self, op: TorchLinearOperator, b: torch.Tensor, name: str, *, rtol=None, key=None, quiet=False) -> torch.Tensor:
        """``op⁻¹ b`` by preconditioned CG (fastntk.solvers); the result is recorded under ``name``."""
        from .. import solvers

        if float(b.norm()) == 0.0:
            x = torch.zeros_like(b)
            self.solves[name] = {"method": "trivial", "iterations": 0, "matvecs": 0, "true_residual": 0.0, "converged": True}
            return x
        M = self._precond(op, key)
        bar = None
        cb = self.callback
        if self.progress and not quiet:
            from tqdm.auto import tqdm

            bar = tqdm(desc=f"solve {name}", unit="it", leave=False)

            def cb(xk, _user=self.callback):
                bar.update(1)
                if _user is not None:
                    _user(xk)

        try:
            res = solvers.cg(
                op.to_scipy(),
                b.detach().cpu().numpy(),
                rtol=self.rtol if rtol is None else rtol,
                maxiter=self.maxiter,
                M=M,
                callback=cb,
                backend=self.backend,
                on_fail=self.on_fail,
            )
        finally:
            if bar is not None:
                bar.close()
        # inner solves (quiet) accumulate into one summary; an outer solve is recorded as is
        self.solves[name] = _merge(self.solves.get(name), res) if quiet else res
        return torch.as_tensor(np.asarray(res.x), dtype=b.dtype, device=b.device)


def _merge(prev, res):
    """Accumulate inner solves (dual form) into one summary dict."""
    s = solve_summary(res)
    if prev is None:
        s["count"] = 1
        return s
    prev = dict(prev)
    prev["count"] = prev.get("count", 1) + 1
    prev["iterations"] += s["iterations"]
    prev["matvecs"] += s["matvecs"]
    prev["true_residual"] = max(prev["true_residual"], s["true_residual"])
    prev["converged"] = prev["converged"] and s["converged"]
    prev["seconds"] += s["seconds"]
    return prev


def check_norm_bound(x, b, lam, solve, name):
    """Guard rail: for ``(G + λI) x = b + r`` with ``‖r‖`` the certified residual, ``‖x‖ ≤ (‖b‖ + ‖r‖)/λ``.

    A violation means the solve exploded (non-PSD operator, overflow): raise, never write.
    """
    if lam <= 0 or solve is None:
        return
    r = float(solve.get("true_residual", 0.0) if isinstance(solve, dict) else np.max(solve.true_residual))
    bound = (float(b.double().norm()) + r) / lam
    nx = float(x.double().norm())
    if not math.isfinite(nx) or nx > bound * (1 + 1e-4) + 1e-30:
        raise NumericalError(f"{name}: ‖Δ‖ = {nx:.3e} exceeds the bound (‖b‖ + ‖r‖)/λ = {bound:.3e}; the solve is unreliable "
                             "(operator not PSD or overflow). Nothing was written")
    if isinstance(solve, dict):
        solve["norm_bound"] = bound
    else:
        solve.info["norm_bound"] = bound


def _chunks(n, size):
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def jv64(J, v, rows=4096):
    """``J v`` in float64, row chunks (no float64 copy of the whole ``J``)."""
    return torch.cat([J[a:b].double() @ v for a, b in _chunks(J.shape[0], rows)])


def jtv64(J, u, rows=4096):
    out = torch.zeros(J.shape[1], *u.shape[1:], dtype=torch.float64, device=J.device)
    for a, b in _chunks(J.shape[0], rows):
        out += J[a:b].double().T @ u[a:b]
    return out


def gram64(J, *, side="params", rows=4096):
    """``JᵀJ`` (side="params", p × p) or ``JJᵀ`` (side="samples", nC × nC) in float64, chunked."""
    if side == "params":
        G = torch.zeros(J.shape[1], J.shape[1], dtype=torch.float64, device=J.device)
        for a, b in _chunks(J.shape[0], rows):
            Jc = J[a:b].double()
            G += Jc.T @ Jc
        return G
    K = torch.zeros(J.shape[0], J.shape[0], dtype=torch.float64, device=J.device)
    for a, b in _chunks(J.shape[1], max(1, int(2e8 // max(1, 8 * J.shape[0])))):
        Jc = J[:, a:b].double()
        K += Jc @ Jc.T
    return K


def cholesky64(H: torch.Tensor, what: str) -> torch.Tensor:
    """Cholesky factor of the SPD matrix ``H``, or a :class:`NumericalError` naming it."""
    L, info = torch.linalg.cholesky_ex(H)
    if int(info) != 0:
        raise NumericalError(f"{what} is not positive definite; increase the ridge")
    return L


def solve_primal_direct(src, g, lam, ctx, name):
    """``(JᵀJ + λI)⁻¹ g`` with a float64 Cholesky factor in the smaller space.

    ``p ≤ nC``: factor ``H = JᵀJ + λI`` (p × p).  ``nC < p``: push-through,
    ``(JᵀJ + λI)⁻¹ g = (g − Jᵀ (JJᵀ + λI)⁻¹ J g) / λ`` with ``JJᵀ + λI`` (nC × nC).
    Needs the cached ``J``.  The true residual ``‖(JᵀJ + λI) x − g‖`` is recorded.
    """
    t = time.perf_counter()
    J = src.J
    gd = g.double()
    m, p = J.shape
    if p <= m or lam <= 0:
        H = gram64(J, side="params")
        H.diagonal().add_(lam)
        L = cholesky64(H, f"G_r + λI (λ = {lam})")
        x = torch.cholesky_solve(gd.unsqueeze(1), L)[:, 0]
        res = float((H @ x - gd).norm())
        space = f"primal (p = {p})"
    else:
        K = gram64(J, side="samples")
        K.diagonal().add_(lam)
        L = cholesky64(K, f"Θ_rr + λI (λ = {lam})")
        x = (gd - jtv64(J, torch.cholesky_solve(jv64(J, gd).unsqueeze(1), L)[:, 0])) / lam
        res = float((jtv64(J, jv64(J, x)) + lam * x - gd).norm())
        space = f"kernel (nC = {m})"
    tol = max(ctx.rtol * float(gd.norm()), 0.0)
    ctx.solves[name] = {"method": f"cholesky, {space} space", "backend": "torch", "iterations": 0, "matvecs": 2,
                        "true_residual": res, "tolerance": tol, "converged": res <= tol or res == 0.0,
                        "seconds": time.perf_counter() - t}
    if not res <= max(tol, 1e3 * torch.finfo(torch.float64).eps * float(gd.norm())):
        raise NumericalError(f"direct solve {name!r}: residual {res:.3e} above tolerance {tol:.3e} (ill-conditioned); increase the ridge")
    return x.to(g.dtype)
