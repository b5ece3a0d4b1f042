"""Multi-shift CG: ``(A + s_k I) x_k = b`` for a whole grid of shifts from ONE Krylov space.

The Krylov space K_m(A + sI, b) = K_m(A, b) does not depend on s, and CG residuals of the
shifted systems are collinear with those of a seed system: r^s_j = ζ^s_j r_j.  CG-M (Jegerlehner
1996; van den Eshof & Sleijpen 2004) runs CG on the seed system ``A + s₀I`` (s₀ = min shift, the
slowest one) and updates every shifted solution with scalar recurrences:

    ζ^s_{j+1} = ζ^s_j ζ^s_{j−1} α_{j−1} / (α_j β_{j−1}(ζ^s_{j−1} − ζ^s_j) + ζ^s_{j−1} α_{j−1}(1 + (s − s₀)α_j))
    α^s_j = α_j ζ^s_{j+1}/ζ^s_j,   β^s_j = β_j (ζ^s_{j+1}/ζ^s_j)²
    x^s += α^s_j p^s,   p^s ← ζ^s_{j+1} r_{j+1} + β^s_j p^s

One operator matvec per iteration for all shifts together; shifted residual norms |ζ^s|·‖r‖ are
free.  A shift whose residual meets its tolerance is frozen.  No preconditioner (it would break
shift invariance).  Every A + s_k I must be SPD.  At the end the true residuals
‖b − (A + s_k I)x_k‖ are recomputed with one block matmat (one matvec per shift, counted).

:func:`choose_ridge` uses it to pick the ridge λ of a kernel/Gauss–Newton fit (docs/theory.md §2, §6.5).
"""
from __future__ import annotations

import math
import time

import numpy as np

from ..errors import InvalidInputError
from . import _xp
from ._linop import make_system
from .result import MultiShiftResult, SolveResult, finish


def _check_shifts(shifts):
    s = np.asarray(shifts, dtype=np.float64).reshape(-1)
    if s.size == 0:
        raise InvalidInputError("shifts is empty.")
    if not np.all(np.isfinite(s)):
        raise InvalidInputError("shifts contain NaN or Inf.")
    return s


def multishift_cg(A, b, shifts, *, rtol=1e-6, atol=0.0, maxiter=None, callback=None, on_fail="raise",
                  backend="auto") -> MultiShiftResult:
    """Solve ``(A + s_k I) x_k = b`` for every ``s_k`` in ``shifts`` (CG-M, see module doc).

    Stops when every shifted recursive residual is ≤ max(rtol‖b‖, atol) or after ``maxiter``
    iterations (default 10 n).  ``callback(X)`` gets the (n, n_shifts) current solutions.
    Returns a :class:`MultiShiftResult` (``results[k]`` a :class:`SolveResult` per shift, in the
    order given); on_fail applies to every shift (raise on the first unconverged one).
    """
    t0 = time.perf_counter()
    s = _check_shifts(shifts)
    S = make_system(A, b, rtol=rtol, atol=atol, maxiter=maxiter, backend=backend, on_fail=on_fail,
                    callback=callback, own_loop_only=True)
    xp, Aop, bb, dt, tol = S.xp, S.A, S.b, S.dtype, S.tolerance
    m = s.size
    s0 = float(s.min())
    ds = s - s0
    X = xp.zeros((bb.shape[0], m), dtype=bb.dtype, device=_xp.device(bb))
    Ps = xp.concat([bb[:, None]] * m, axis=1)
    r = _xp.copy(xp, bb)
    p = _xp.copy(xp, bb)
    rr = _xp.dot(r, r)

    def dev(host):  # a host vector of per-shift scalars on the solve's device
        return _xp.astype(xp, _xp.from_numpy(xp, host, bb), dt)

    zeta = np.ones(m)
    zeta_prev = np.ones(m)
    alpha_prev, beta_prev = 1.0, 0.0
    active = np.ones(m, bool)
    hist = [[math.sqrt(rr)] * m]
    it, breakdown = 0, None
    if math.sqrt(rr) <= tol:
        active[:] = False
    while active.any() and it < S.maxiter:
        q = _xp.astype(xp, Aop.matvec(p), dt)
        if s0 != 0.0:
            q = q + s0 * p
        pq = _xp.dot(p, q)
        if not pq > 0:
            breakdown = f"pᵀ(A + s₀I)p = {pq:.3e} ≤ 0: A + min(shifts)·I is not positive definite"
            break
        alpha = rr / pq
        den = alpha * beta_prev * (zeta_prev - zeta) + zeta_prev * alpha_prev * (1.0 + ds * alpha)
        with np.errstate(divide="ignore", invalid="ignore"):
            zeta_next = np.where(active, zeta * zeta_prev * alpha_prev / den, zeta)
            ratio = np.where(active & (zeta != 0), zeta_next / zeta, 0.0)
        alpha_s = alpha * ratio
        a_d = dev(np.where(active, alpha_s, 0.0))
        X += Ps * a_d[None, :]
        r -= alpha * q
        rr_new = _xp.dot(r, r)
        beta = rr_new / rr
        beta_s = beta * ratio ** 2
        zn_d = dev(np.where(active, zeta_next, 0.0))
        bs_d = dev(np.where(active, beta_s, 1.0))
        Ps = r[:, None] * zn_d[None, :] + Ps * bs_d[None, :]
        p = r + beta * p
        rr = rr_new
        zeta_prev, zeta = zeta, zeta_next
        alpha_prev, beta_prev = alpha, beta
        it += 1
        rn = math.sqrt(max(rr, 0.0))
        res_s = np.abs(zeta) * rn
        hist.append(res_s.tolist())
        if callback is not None:
            callback(X)
        if not math.isfinite(rr):
            breakdown = f"non-finite residual at iteration {it}"
            break
        active &= res_s > tol
    # true residuals, one block matmat
    R = bb[:, None] - _xp.astype(xp, Aop.matmat(X), dt) - X * dev(s)[None, :]
    tn = np.asarray(_xp.to_numpy(_xp.norm(xp, R, axis=0)), dtype=np.float64)
    secs = time.perf_counter() - t0
    H = np.asarray(hist)
    results = []
    for k in range(m):
        info = dict(shift=float(s[k]), seed_shift=s0, shared_matvecs=Aop.n_matvecs)
        if breakdown:
            info["breakdown"] = breakdown
        results.append(SolveResult(x=X[:, k], converged=bool(tn[k] <= tol), iterations=it, matvecs=it + 1,
                                   residual_history=H[:, k].tolist(), true_residual=float(tn[k]), rhs_norm=S.bnorm,
                                   tolerance=tol, seconds=secs, backend=_xp.kind(xp) if not _xp.is_numpy(xp) else ("numpy" if S.backend == "scipy" else S.backend),
                                   method="multishift_cg", info=info))
    out = MultiShiftResult(shifts=s, results=results, iterations=it, matvecs=Aop.n_matvecs, seconds=secs,
                           converged=bool(np.all(tn <= tol)), info=dict(breakdown=breakdown, seed_shift=s0))
    for res in results:
        finish(res, on_fail)
    return out


def choose_ridge(A, b, shifts, *, method="gcv", rtol=1e-6, maxiter=None, probes=10, lanczos_steps=40,
                 holdout_fraction=0.2, val_operator=None, val_target=None, seed=0):
    """Pick the ridge λ from ``shifts`` for the fit x_λ = (A + λI)⁻¹ b (kernel/GGN ridge).

    ``method="gcv"`` (A = kernel matrix K, b = targets y, n = size):
        GCV(λ) = n‖y − K x_λ‖² / tr(I − H_λ)²,   H_λ = K(K + λI)⁻¹.
      Since y − Kx_λ = λx_λ and tr(I − H_λ) = λ·tr((K + λI)⁻¹), GCV(λ) = n‖x_λ‖² / tr((K+λI)⁻¹)².
      x_λ for every λ comes from one :func:`multishift_cg`; tr((K+λI)⁻¹) for every λ from
      stochastic Lanczos quadrature: ``probes`` Rademacher vectors z, ``lanczos_steps`` Lanczos
      steps each, zᵀ(K+λI)⁻¹z ≈ ‖z‖² Σ_i τ_i²/(θ_i + λ) (Ritz values θ_i, first components τ_i).
      Cost: multishift matvecs + probes × lanczos_steps matvecs.
    ``method="heldout"``: with ``val_operator`` (m × n, maps x to validation predictions, e.g. the
      cross-kernel K_vt or J_val) and ``val_target`` (m,): score(λ) = ‖val_operator x_λ − val_target‖²
      / m.  Without them, a random ``holdout_fraction`` of the indices V is held out and A is read
      as a kernel matrix: x_λ = (K_TT + λI)⁻¹ y_T, score(λ) = ‖K_VT x_λ − y_V‖²/|V|.  K_TT and
      K_VT are applied through full matvecs of A on zero-padded vectors (one matvec per iteration).

    Returns a dict: ``ridge`` (the argmin), ``shifts``, ``scores`` (per shift), ``method``,
    ``matvecs`` (all operator matvecs), ``result`` (the MultiShiftResult of the final solve).
    """
    from ._linop import as_operator  # noqa: PLC0415

    s = _check_shifts(shifts)
    if np.any(s <= 0):
        raise InvalidInputError("ridge candidates must be > 0.")
    op = as_operator(A)
    n = op.n
    xp = op.xp
    bb = xp.reshape(_xp.astype(xp, xp.asarray(b, device=op.device), np.float64), (-1,))
    if method == "gcv":
        from .lanczos import _ritz, lanczos_tridiag  # noqa: PLC0415

        ms = multishift_cg(op, bb, s, rtol=rtol, maxiter=maxiter, on_fail="warn")
        mv = ms.matvecs
        rng = np.random.default_rng(seed)
        tr = np.zeros(s.size)
        for _ in range(int(probes)):
            z = rng.choice([-1.0, 1.0], size=n)
            op.n_matvecs = 0
            a, bt, _ = lanczos_tridiag(op, _xp.from_numpy(xp, z, bb), min(lanczos_steps, n), rng=rng)
            mv += op.n_matvecs
            th, S = _ritz(a, bt)
            tau2 = S[0, :] ** 2
            tr += n * (tau2[None, :] / (th[None, :] + s[:, None])).sum(axis=1)
        tr /= probes
        xn2 = np.array([_xp.norm(xp, r.x) ** 2 for r in ms.results])
        scores = n * xn2 / tr ** 2
        return dict(ridge=float(s[np.argmin(scores)]), shifts=s, scores=scores, method="gcv", matvecs=int(mv),
                    trace_estimates=tr, result=ms)
    if method == "heldout":
        if val_operator is not None:
            if val_target is None:
                raise InvalidInputError("val_operator given without val_target.")
            ms = multishift_cg(op, bb, s, rtol=rtol, maxiter=maxiter, on_fail="warn")
            yv = xp.reshape(_xp.astype(xp, xp.asarray(val_target, device=op.device), np.float64), (-1,))
            P = val_operator @ ms.X if not hasattr(val_operator, "matmat") else val_operator.matmat(ms.X)
            scores = np.asarray([_xp.norm(xp, P[:, k] - yv) ** 2 / yv.shape[0] for k in range(s.size)])
            return dict(ridge=float(s[np.argmin(scores)]), shifts=s, scores=scores, method="heldout",
                        matvecs=ms.matvecs, result=ms)
        if not 0 < holdout_fraction < 1:
            raise InvalidInputError("holdout_fraction must be in (0, 1).")
        rng = np.random.default_rng(seed)
        perm = rng.permutation(n)
        nv = max(1, int(round(holdout_fraction * n)))
        V, T = np.sort(perm[:nv]), np.sort(perm[nv:])
        if T.size == 0:
            raise InvalidInputError("holdout leaves no training indices.")
        Vd, Td = xp.asarray(V), xp.asarray(T)

        class _Sub:
            shape = (T.size, T.size)
            dtype = np.dtype(np.float64)

            def matvec(self, x):
                full = xp.zeros(n)
                full[Td] = x
                return op.matvec(full)[Td]

        ms = multishift_cg(_Sub(), bb[Td], s, rtol=rtol, maxiter=maxiter, on_fail="warn")
        full = xp.zeros((n, s.size))
        full[Td, :] = ms.X
        pred = op.matmat(full)[Vd, :]
        scores = np.asarray([_xp.norm(xp, pred[:, k] - bb[Vd]) ** 2 / nv for k in range(s.size)])
        return dict(ridge=float(s[np.argmin(scores)]), shifts=s, scores=scores, method="heldout",
                    matvecs=ms.matvecs + s.size, result=ms, holdout=V)
    raise InvalidInputError(f"method must be 'gcv' or 'heldout'; got {method!r}.")
