"""Conjugate gradients: ``cg`` (preconditioned, one right-hand side) and ``block_cg``.

``cg`` solves ``A x = b`` for a symmetric positive (semi-)definite operator A, e.g. the NTK
``Θ_SS + λI`` (dual) or the Gauss–Newton ``G_S + λI`` (primal) of docs/theory.md, stopping when
``‖b − A x‖₂ ≤ max(rtol‖b‖₂, atol)``.

Backends: ``"scipy"`` wraps :func:`scipy.sparse.linalg.cg`; ``"numba"`` is fastntk's own PCG
loop with fused Numba vector updates (``"numpy"`` when Numba is missing); ``"cupy"`` and
``"torch"`` are the same own loop written against the array API standard (``array-api-compat``,
see :mod:`fastntk.solvers._xp`) on CuPy arrays or torch tensors of any device — a torch operator on
CUDA tensors is applied in place, with no host copy (CuPy's ``cg`` neither returns an iteration
count nor lets us recompute the true residual cheaply; our loop does one host sync per iteration,
for the convergence check).

Residual replacement: when the recursive residual says "converged", the true residual is
recomputed (one matvec).  If it is still above the tolerance (drift, e.g. in float32, CuPy
#7512), CG restarts from the current x with the true residual, up to ``MAX_RESTARTS`` times.
So ``converged`` is judged on the true residual, with no slack factor.
"""
from __future__ import annotations

import math
import sys
import time

import numpy as np

from . import _xp
from ._linop import make_system
from .result import SolveResult, finish

MAX_RESTARTS = 3


def _dot(xp, a, b):
    return _xp.dot(a, b)


def _norm(xp, a):
    return _xp.norm(xp, a)


def _apply(op, v, dtype):
    return _xp.astype(op.xp, op.matvec(v), dtype)


# ------------------------------------------------------------------------------------------
# own PCG loop (numba / numpy on NumPy; the same loop on CuPy arrays and torch tensors)
# ------------------------------------------------------------------------------------------
def _pcg_own(S, callback, use_numba):
    from . import _numba_kernels as K  # noqa: PLC0415
    from .precond import JacobiPreconditioner  # noqa: PLC0415

    xp, A, M, b, dt = S.xp, S.A, S.M, S.b, S.dtype
    tol, maxiter = S.tolerance, S.maxiter
    on_cpu = _xp.is_numpy(xp)  # NumPy arrays: fused (Numba) vector kernels; else array API updates
    if on_cpu:
        cgu, cguj, pu = K.kernels(use_numba)
        b = np.ascontiguousarray(b)
    jac = None
    if on_cpu and M is not None and isinstance(M.source, JacobiPreconditioner):
        jac = np.ascontiguousarray(M.source.dinv_for(b)).astype(dt, copy=False)
    if S.x0 is None:
        x = xp.zeros_like(b)
    else:
        x = np.ascontiguousarray(S.x0) if on_cpu else S.x0
    hist, it, restarts, breakdown = [], 0, 0, None
    r = _xp.copy(xp, b) if S.x0 is None or not bool(xp.any(x)) else b - _apply(A, x, dt)
    while True:
        rnorm = _norm(xp, r)
        hist.append(rnorm)
        if rnorm > tol and it < maxiter:
            if jac is not None:
                z = jac * r
                M.n_matvecs += 1
            else:
                z = r if M is None else _apply(M, r, dt)
            rz = _dot(xp, r, z)
            p = _xp.copy(xp, z)
            while it < maxiter:
                q = _apply(A, p, dt)
                pq = _dot(xp, p, q)
                if not pq > 0 or not math.isfinite(pq):
                    breakdown = f"pᵀAp = {pq:.3e} ≤ 0 at iteration {it}: the operator is not positive definite"
                    break
                alpha = rz / pq
                if on_cpu and jac is not None:
                    rr, rz_new = cguj(x, r, p, q, alpha, jac, z)
                    M.n_matvecs += 1
                elif on_cpu:
                    rr = cgu(x, r, p, q, alpha)
                    z = r if M is None else _apply(M, r, dt)
                    rz_new = rr if M is None else _dot(xp, r, z)
                else:
                    x += alpha * p
                    r -= alpha * q
                    z = r if M is None else _apply(M, r, dt)
                    rr = _dot(xp, r, r)
                    rz_new = rr if M is None else _dot(xp, r, z)
                it += 1
                rnorm = math.sqrt(max(rr, 0.0))
                hist.append(rnorm)
                if callback is not None:
                    callback(x)
                if not math.isfinite(rr):
                    breakdown = f"non-finite residual at iteration {it}"
                    break
                if rnorm <= tol:
                    break
                beta = rz_new / rz
                rz = rz_new
                if on_cpu:
                    pu(p, z, beta)
                else:
                    p *= beta
                    p += z
        rt = b - _apply(A, x, dt)
        tn = _norm(xp, rt)
        if tn <= tol or it >= maxiter or breakdown is not None or restarts >= MAX_RESTARTS:
            return x, it, hist, tn, dict(restarts=restarts, **({"breakdown": breakdown} if breakdown else {}))
        restarts += 1
        r = rt  # residual replacement; the next cycle starts from the true residual


# ------------------------------------------------------------------------------------------
# SciPy wrapper
# ------------------------------------------------------------------------------------------
def _cg_scipy(S, callback):
    import scipy.sparse.linalg as spla  # noqa: PLC0415

    A, b, dt, tol = S.A, S.b, S.dtype, S.tolerance
    L = A.to_scipy()
    ML = S.M.to_scipy() if S.M is not None else None
    hist, it, restarts = [], [0], 0
    x = np.zeros_like(b) if S.x0 is None else S.x0

    def cb(xk):
        # SciPy's callback only gets x_k; the recursive residual r is a local of scipy's cg frame
        # (SciPy ≥ 1.12).  If it is not found, NaN is recorded (the true residual is still exact).
        it[0] += 1
        r = sys._getframe(1).f_locals.get("r")
        hist.append(float(np.linalg.norm(r)) if isinstance(r, np.ndarray) else float("nan"))
        if callback is not None:
            callback(xk)

    first = True
    while True:
        if first and S.x0 is None:
            hist.append(float(S.bnorm))
        else:  # SciPy recomputes b − A x0 itself (one matvec); we record it from our own matvec
            before = A.n_matvecs
            r0 = b - A.matvec(x)
            A.n_matvecs = before  # the matvec SciPy will do is the one that counts
            hist.append(float(np.linalg.norm(r0)))
        first = False
        x, _info = spla.cg(L, b, x0=x, rtol=S.rtol, atol=S.atol, maxiter=max(S.maxiter - it[0], 1),
                           M=ML, callback=cb)
        x = np.asarray(x, dtype=dt)
        tn = float(np.linalg.norm(b - _apply(A, x, dt)))
        if tn <= tol or it[0] >= S.maxiter or restarts >= MAX_RESTARTS:
            return x, it[0], hist, tn, dict(restarts=restarts, scipy_info=int(_info))
        restarts += 1


def cg(A, b, *, rtol=1e-6, atol=0.0, maxiter=None, M=None, x0=None, callback=None, backend="auto",
       on_fail="raise") -> SolveResult:
    """Preconditioned conjugate gradients for ``A x = b``, A symmetric positive definite.

    Parameters
    ----------
    A : operator of shape (n, n) (NumPy/CuPy array, LinearOperator, object with ``to_scipy()``, or
        ``.shape``/``.dtype``/``.matvec``).  b : (n,).  M : preconditioner ≈ A⁻¹ (shape (n, n)).
    rtol, atol : stop when ‖b − A x‖₂ ≤ max(rtol‖b‖₂, atol).  maxiter : default 10 n.
    callback : called as ``callback(x_k)`` after every iteration; exceptions propagate.
    backend : "auto" | "scipy" | "numba" | "cupy" (see module doc; "auto" is explained in
        ``result.info["backend_reason"]``).  on_fail : "raise" | "warn" | "ignore".

    Returns a :class:`SolveResult`; ``converged`` is judged on the recomputed true residual.
    """
    t0 = time.perf_counter()
    S = make_system(A, b, x0=x0, M=M, rtol=rtol, atol=atol, maxiter=maxiter, backend=backend,
                    on_fail=on_fail, callback=callback)
    if S.backend == "scipy":
        x, it, hist, tn, info = _cg_scipy(S, callback)
    else:
        x, it, hist, tn, info = _pcg_own(S, callback, use_numba=(S.backend == "numba"))
    info.update(backend_reason=S.reason, operator=S.A.kind, array_namespace=_xp.kind(S.xp),
                precond_applications=(S.M.n_matvecs if S.M is not None else 0))
    res = SolveResult(x=x, converged=bool(tn <= S.tolerance), iterations=it, matvecs=S.A.n_matvecs,
                      residual_history=hist, true_residual=tn, rhs_norm=S.bnorm, tolerance=S.tolerance,
                      seconds=time.perf_counter() - t0, backend=S.backend,
                      method="pcg" if S.M is not None else "cg", info=info)
    return finish(res, on_fail)


# ------------------------------------------------------------------------------------------
# block CG
# ------------------------------------------------------------------------------------------
def _orth_basis(xp, P, rel_tol):
    """Orthonormal basis of range(P), dropping numerically dependent directions.

    CPU: column-pivoted (rank-revealing) QR; GPU: plain QR with the |R_ii| test.
    """
    if P.shape[1] == 0:
        return P
    Q, d = _xp.orth_qr(xp, P)
    d = np.asarray(_xp.to_numpy(d), dtype=np.float64)
    dmax = float(d.max()) if d.size else 0.0
    if dmax == 0.0:
        return P[:, :0]
    return _xp.take_columns(xp, Q, d > rel_tol * dmax)


def _matmat(op, X, dtype):
    return _xp.astype(op.xp, op.matmat(X), dtype)


def block_cg(A, B, *, rtol=1e-6, atol=0.0, maxiter=None, M=None, X0=None, callback=None, backend="auto",
             on_fail="raise") -> SolveResult:
    """Block (preconditioned) CG for ``A X = B`` with B of shape (n, k), A SPD.

    Why our own: neither SciPy nor CuPy has a block Krylov solver, and forget requests (one
    right-hand side per forget sample / class) and Nyström sketches come in blocks; one block
    matmat per iteration lets an operator share its forward passes across the k columns.

    Algorithm (O'Leary 1980, in the QR-stabilised form of Dubrulle 2001): search block P_j is
    replaced by an orthonormal basis of its range (column-pivoted QR, dependent directions
    dropped), step ``α = (PᵀAP)⁻¹ PᵀR`` (Galerkin on span P), ``X += Pα, R −= (AP)α``; columns whose
    residual meets their tolerance ``max(rtol‖B_j‖, atol)`` stop generating directions
    (deflation), the next block is ``P ← Z_active − P (PᵀAP)⁻¹ (AP)ᵀ Z_active`` with ``Z = M R``.
    The true residual of every column is recomputed at the end (k matvecs, counted); columns
    that drifted get a restart (residual replacement), as in :func:`cg`.

    Returns one :class:`SolveResult` with ``x`` of shape (n, k), ``true_residual``, ``rhs_norm``
    and ``tolerance`` arrays of length k; ``residual_history`` holds max_j ‖R_j‖₂ (recursive) per
    iteration, ``info["residual_history_columns"]`` every column's norm.
    """
    t0 = time.perf_counter()
    S = make_system(A, B, x0=X0, M=M, rtol=rtol, atol=atol, maxiter=maxiter, backend=backend,
                    on_fail=on_fail, callback=callback, block=True, own_loop_only=True)
    xp, Aop, Mop, Bm, dt = S.xp, S.A, S.M, S.b, S.dtype
    n, k = Bm.shape
    tol_h = np.asarray(S.tolerance, dtype=np.float64)
    X = xp.zeros_like(Bm) if S.x0 is None else S.x0
    R = _xp.copy(xp, Bm) if S.x0 is None or not bool(xp.any(X)) else Bm - _matmat(Aop, X, dt)
    hist, hist_cols, it, restarts, breakdown = [], [], 0, 0, None
    rel = max(n, 10) * float(np.finfo(dt).eps)

    def colnorms(R_):
        return np.asarray(_xp.to_numpy(_xp.norm(xp, R_, axis=0)), dtype=np.float64)

    def precond(R_):
        if Mop is None:
            return R_
        return _matmat(Mop, R_, dt)

    while True:
        rn = colnorms(R)
        hist.append(float(rn.max()))
        hist_cols.append(rn.tolist())
        active = rn > tol_h
        if active.any() and it < S.maxiter:
            P = _orth_basis(xp, precond(_xp.take_columns(xp, R, active)), rel)
            while it < S.maxiter and P.shape[1] > 0:
                Q = _matmat(Aop, P, dt)
                PtQ = P.T @ Q
                PtQ = 0.5 * (PtQ + PtQ.T)
                try:
                    L = xp.linalg.cholesky(PtQ)
                except Exception:  # numpy LinAlgError / torch linalg error / cupy returns NaN
                    L = None
                if L is None or not bool(xp.all(xp.isfinite(L))):
                    breakdown = f"PᵀAP not positive definite at iteration {it}: the operator is not SPD"
                    break

                def solve(Rhs, L=L):  # (PᵀAP)⁻¹ Rhs with the Cholesky factor L Lᵀ = PᵀAP
                    return _xp.solve_triangular(xp, L.T, _xp.solve_triangular(xp, L, Rhs, lower=True), lower=False)

                alpha = solve(P.T @ R)
                X += P @ alpha
                R -= Q @ alpha
                it += 1
                rn = colnorms(R)
                hist.append(float(rn.max()))
                hist_cols.append(rn.tolist())
                if callback is not None:
                    callback(X)
                if not np.all(np.isfinite(rn)):
                    breakdown = f"non-finite residual at iteration {it}"
                    break
                active = rn > tol_h
                if not active.any():
                    break
                Z = precond(_xp.take_columns(xp, R, active))
                Pn = Z - P @ solve(Q.T @ Z)
                P = _orth_basis(xp, Pn, rel)
        Rt = Bm - _matmat(Aop, X, dt)
        tn = colnorms(Rt)
        if np.all(tn <= tol_h) or it >= S.maxiter or breakdown is not None or restarts >= MAX_RESTARTS:
            break
        restarts += 1
        R = Rt
    info = dict(restarts=restarts, backend_reason=S.reason, operator=Aop.kind, residual_history_columns=hist_cols,
                matmat_calls=Aop.n_matmat_calls, array_namespace=_xp.kind(xp))
    if breakdown:
        info["breakdown"] = breakdown
    be = _xp.kind(xp)  # block CG is BLAS-3 array API code on every library, no Numba kernels
    res = SolveResult(x=X, converged=bool(np.all(tn <= tol_h)), iterations=it, matvecs=Aop.n_matvecs,
                      residual_history=hist, true_residual=tn, rhs_norm=np.asarray(S.bnorm), tolerance=tol_h,
                      seconds=time.perf_counter() - t0, backend=be, method="block_cg", info=info)
    return finish(res, on_fail)
