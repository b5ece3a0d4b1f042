"""MINRES for symmetric (possibly indefinite or singular-but-consistent) systems ``A x = b``.

Why our own loop (the Paige–Saunders recurrences, as in SciPy's ``minres``): SciPy's ``minres``
stops on ``‖r‖ ≤ rtol·‖A‖·‖x‖`` and has no ``atol``, not on fastntk's criterion
``‖b − Ax‖ ≤ max(rtol‖b‖, atol)``, and CuPy's has the same rule.  ``backend="scipy"`` is still
offered: it wraps SciPy and then enforces our criterion by restarting from the returned x.

Residual history: MINRES's recursive estimate φ̄_k.  Without a preconditioner it is ‖r_k‖₂; with
M it is the M-norm ‖r_k‖_M = (r_kᵀ M r_k)^½, so the loop stops on φ̄_k ≤ tol·φ̄₀/‖r₀‖₂ and then
verifies the true 2-norm residual (one matvec); if that check fails it keeps iterating with a
10× tighter trigger (at most ``MAX_CHECKS`` checks).  The preconditioner must be SPD.
"""
from __future__ import annotations

import math
import sys
import time

import numpy as np

from . import _xp
from ._linop import make_system
from .result import SolveResult, finish

MAX_CHECKS = 10


def _minres_own(S, callback):
    xp, A, M, b, dt = S.xp, S.A, S.M, S.b, S.dtype
    tol, maxiter = S.tolerance, S.maxiter
    eps = float(np.finfo(dt).eps)
    def mv(op, v):
        return _xp.astype(xp, op.matvec(v), dt)

    x = xp.zeros_like(b) if S.x0 is None else S.x0
    r1 = _xp.copy(xp, b) if S.x0 is None or not bool(xp.any(x)) else b - mv(A, x)
    r0norm = _xp.norm(xp, r1)
    hist, it, checks, breakdown = [], 0, 0, None
    y = r1 if M is None else mv(M, r1)
    beta1 = _xp.dot(r1, y)
    if beta1 < 0:
        breakdown = "the preconditioner M is not positive definite (rᵀMr < 0)"
        beta1 = 0.0
    beta1 = math.sqrt(beta1)
    hist.append(beta1 if M is None else r0norm)
    trigger = tol if M is None else (tol * beta1 / r0norm if r0norm > 0 else 0.0)
    tn = r0norm
    if r0norm <= tol or beta1 == 0.0:
        it_done = True
    else:
        it_done = False
    if not it_done:
        oldb, beta, dbar, epsln, phibar = 0.0, beta1, 0.0, 0.0, beta1
        cs, sn = -1.0, 0.0
        w = xp.zeros_like(b)
        w2 = xp.zeros_like(b)
        r2 = r1
        while it < maxiter:
            s = 1.0 / beta
            v = s * y
            y = mv(A, v)
            if it >= 1:
                y = y - (beta / oldb) * r1
            alfa = _xp.dot(v, y)
            y = y - (alfa / beta) * r2
            r1, r2 = r2, y
            y = r2 if M is None else mv(M, r2)
            oldb = beta
            bb = _xp.dot(r2, y)
            if bb < 0:
                breakdown = "the preconditioner M is not positive definite (rᵀMr < 0)"
                break
            beta = math.sqrt(bb)
            oldeps = epsln
            delta = cs * dbar + sn * alfa
            gbar = sn * dbar - cs * alfa
            epsln = sn * beta
            dbar = -cs * beta
            gamma = max(math.hypot(gbar, beta), eps)
            cs, sn = gbar / gamma, beta / gamma
            phi = cs * phibar
            phibar = sn * phibar
            w1, w2 = w2, w
            w = (v - oldeps * w1 - delta * w2) * (1.0 / gamma)
            x += phi * w
            it += 1
            hist.append(abs(phibar))
            if callback is not None:
                callback(x)
            if not math.isfinite(phibar):
                breakdown = f"non-finite residual estimate at iteration {it}"
                break
            if abs(phibar) <= trigger or beta == 0.0:
                tn = _xp.norm(xp, b - mv(A, x))
                checks += 1
                if tn <= tol or checks >= MAX_CHECKS or beta == 0.0:
                    return x, it, hist, tn, dict(checks=checks, **({"breakdown": breakdown} if breakdown else {})), True
                trigger = abs(phibar) * 0.1 * tol / max(tn, 1e-300)
    tn = _xp.norm(xp, b - mv(A, x))
    return x, it, hist, tn, dict(checks=checks, **({"breakdown": breakdown} if breakdown else {})), True


def _minres_scipy(S, callback):
    import scipy.sparse.linalg as spla  # noqa: PLC0415

    A, b, dt, tol = S.A, S.b, S.dtype, S.tolerance
    L = A.to_scipy()
    ML = S.M.to_scipy() if S.M is not None else None
    hist, it, restarts = [], [0], 0
    x = np.zeros_like(b) if S.x0 is None else S.x0

    def cb(xk):
        # SciPy's recursive residual estimate is the local ``rnorm`` of its minres frame; NaN if absent
        it[0] += 1
        v = sys._getframe(1).f_locals.get("rnorm")
        hist.append(float(v) if v is not None else float("nan"))
        if callback is not None:
            callback(xk)

    # SciPy stops on ‖r‖ ≤ rtol‖A‖‖x‖ (its test1); ask for our relative tolerance on that scale
    first = True
    rt = max(S.rtol, 1e-15)
    while True:
        hist.append(float(S.bnorm) if (first and S.x0 is None) else float("nan"))
        first = False
        x, _info = spla.minres(L, b, x0=x, rtol=rt,
                               maxiter=max(S.maxiter - it[0], 1), M=ML, callback=cb)
        x = np.asarray(x, dtype=dt)
        tn = float(np.linalg.norm(b - A.matvec(x).astype(dt, copy=False)))
        if tn <= tol or it[0] >= S.maxiter or restarts >= 6:
            return x, it[0], hist, tn, dict(restarts=restarts, scipy_info=int(_info), scipy_rtol_last=rt)
        restarts += 1
        rt = max(rt * 1e-2, 1e-15)  # SciPy's test is relative to ‖A‖‖x‖: tighten until ours holds


def minres(A, b, *, rtol=1e-6, atol=0.0, maxiter=None, M=None, x0=None, callback=None, backend="auto",
           on_fail="raise") -> SolveResult:
    """MINRES for ``A x = b`` with A symmetric (indefinite allowed), M an SPD preconditioner ≈ A⁻¹.

    Same arguments, criterion (‖b − Ax‖₂ ≤ max(rtol‖b‖₂, atol)) and result as :func:`fastntk.solvers.cg`.
    ``backend``: "auto"/"numba"/"numpy" and "cupy" run fastntk's own loop (see module doc),
    "scipy" wraps :func:`scipy.sparse.linalg.minres` and restarts until our criterion holds.
    """
    t0 = time.perf_counter()
    S = make_system(A, b, x0=x0, M=M, rtol=rtol, atol=atol, maxiter=maxiter, backend=backend,
                    on_fail=on_fail, callback=callback, own_loop_only=True)
    if backend == "scipy":
        x, it, hist, tn, info = _minres_scipy(S, callback)
        be = "scipy"
    else:
        x, it, hist, tn, info, _ = _minres_own(S, callback)
        be = S.backend if S.backend != "scipy" else "numpy"
        if be == "numba":  # the MINRES loop has no fused kernels: report what really ran
            be = "numpy"
    info.update(backend_reason=S.reason, operator=S.A.kind, array_namespace=_xp.kind(S.xp))
    res = SolveResult(x=x, converged=bool(tn <= S.tolerance), iterations=it, matvecs=S.A.n_matvecs,
                      residual_history=hist, true_residual=tn, rhs_norm=S.bnorm, tolerance=S.tolerance,
                      seconds=time.perf_counter() - t0, backend=be, method="minres", info=info)
    return finish(res, on_fail)
