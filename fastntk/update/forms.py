"""The four forms of the MSE update (docs/theory.md §3): dual (Fast-NTK), primal (Newton), Woodbury, dense.

Notation: ``J_S`` the Jacobian of the PEFT parameters at ``w̄``; ``f̄_S = f(X_S; w̄)``; ``Y_S`` the targets;
``z_S = Y_S − f̄_S``; ``f_lin(x; w) = f̄(x) + J(x)(w − w̄)``; ``H_S = G_S + λI``; ``K_SS = Θ_SS + λI``.
All forms return ``Δ`` with the unlearned PEFT vector ``w_trained + Δ``:

``"dual"``      ``Δ = P J_fᵀ M V``, ``P = I − J_rᵀ K_rr⁻¹ J_r``, ``M = (K_ff − Θ_fr K_rr⁻¹ Θ_rf)⁻¹`` (Schur complement),
                ``V = −z_f + Θ_fr K_rr⁻¹ z_r``: the difference of the two kernel ridge fits, all inverses by CG.
``"primal"``    a Newton step ``Δ = (G_r + λI)⁻¹ J_fᵀ r_f`` from the anchor (``"fit"``: ``r_f = f_lin(X_f; w*_D) − Y_f``;
                ``"trained"``: at the trained weights; ``"retain"``: ``Δ = −(G_r + λI)⁻¹∇L_r(w_trained)``).
``"woodbury"``  the same Newton step with ``(G_r + λI)⁻¹`` through one factor of ``H = G_D + λI`` and an n_f·C system.
``"dense"``     Golatkar et al.'s dense NTK (materialized ``J``, ``numpy.linalg.solve``); small ``n`` only.

The ridge fit ``w*_S − w̄ = (G_S + λI)⁻¹ J_Sᵀ z_S`` is :func:`ridge_fit`, the only place it is written.
"""
from __future__ import annotations

import math
import time

import torch

from ..operators import GGNLinearOperator, NTKLinearOperator, SchurComplementLinearOperator, SumGGNLinearOperator
from ..solvers import SolveResult
from .dense import DenseFactor, KernelFactor, cholesky64, delta_dense, direct_solve, factor_of, gram64, gram_of_source, \
    jtv64, jv64, solve_primal_direct, woodbury_solve
from ..errors import InvalidInputError
from .solve import check_norm_bound

__all__ = ["fit_rhs", "ridge_fit", "fit_delta_direct", "kernel_solver", "delta_dual", "newton_step", "forget_residual", "form_delta",
           "trapezium_scale", "FIT_D", "FIT_R"]

FIT_D = "H_D (w*_D − w̄) = J_Dᵀ z_D"
FIT_R = "H_r (w*_r − w̄) = J_rᵀ z_r"


def _col(v):
    return v.unsqueeze(1)


def fit_rhs(pairs, *, float64: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(J_Sᵀ z_S, z_S)``, ``z_S = Y_S − f̄_S``, over the ``(source, Y_s)`` pairs whose rows make up ``S``."""
    b, zs = 0, []
    for src, Y in pairs:
        z = Y - src.outputs().reshape(-1)
        b = b + (jtv64(src.J, z.double()) if float64 and hasattr(src, "J") else src.jtmat(_col(z))[:, 0])
        zs.append(z)
    return (b.double() if float64 else b), torch.cat(zs)


def _operator(sources, lam):
    return GGNLinearOperator(sources[0], lam) if len(sources) == 1 else SumGGNLinearOperator(*sources, ridge=lam)


def ridge_fit(pairs, lam: float, ctx, name: str, *, factor=None, direct: bool = False, curvature=None) -> torch.Tensor:
    """``w*_S − w̄ = (G_S + λI)⁻¹ J_Sᵀ z_S``: the linearized ridge fit on the union ``S`` of the ``(source, Y)`` pairs.

    Solved through a prepared ``factor`` (:mod:`fastntk.update.dense`), by a direct Cholesky factor when every
    source is cached (``direct``), else by CG on :class:`~fastntk.operators.GGNLinearOperator` (one source) or
    :class:`~fastntk.operators.SumGGNLinearOperator` (two).  The solve is recorded under ``name`` and its norm checked.
    ``curvature``: the sources of ``G_S`` when they are not the pairs' (a sketch of ``D_r``'s curvature,
    :class:`~fastntk.operators.SketchedJacobian`); the right-hand side ``J_Sᵀ z_S`` always comes from the pairs.
    """
    sources = [s for s, _ in pairs] if curvature is None else list(curvature)
    direct = direct and all(hasattr(s, "J") for s in sources)
    b, z = fit_rhs(pairs, float64=factor is not None or direct)
    if factor is None and direct:
        J = sources[0].J if len(sources) == 1 else torch.cat([s.J for s in sources])
        factor = factor_of(J, lam, "G_S + λI")
    if factor is not None:  # the kernel factor's fit form Jᵀ(JJᵀ + λI)⁻¹z needs b = Jᵀz with the factor's own rows
        x = direct_solve(factor, b, ctx.rtol, ctx.solves, name, z=z if curvature is None else None)
    else:
        x = ctx.solve(_operator(sources, lam), b, name, key=("fit", tuple(id(s) for s in sources), lam))
    check_norm_bound(x, b, lam, ctx.solves.get(name), name)
    return x


def fit_delta_direct(src_r, src_f, Y_r, Y_f, lam_r, lam_D, ctx) -> torch.Tensor:
    """``Δ = w*_{D_r} − w*_D`` from two direct ridge fits whose factors share their Gram matrices (cached ``J``).

    Parameter space (``p ≤ n_r·C``): ``G_r`` and ``G_f`` once, ``H_r = G_r + λ_r I``, ``H_D = G_r + G_f + λ_D I``.
    Kernel space: ``K_DD = J_D J_Dᵀ`` once; ``K_rr`` is its leading principal block.
    """
    Jr, Jf = src_r.J, src_f.J
    if Jr.shape[1] <= Jr.shape[0]:
        G_r = gram64(Jr)
        H_D = G_r + gram64(Jf)
        H_D.diagonal().add_(lam_D)
        G_r.diagonal().add_(lam_r)
        f_D, f_r = DenseFactor(H_D, lam_D, what="G_D + λI"), DenseFactor(G_r, lam_r, what="G_r + λI")
    else:
        JD = torch.cat([Jr, Jf])
        K = gram64(JD, side="samples")
        f_D, f_r = KernelFactor(JD, K, lam_D), KernelFactor(Jr, K[: Jr.shape[0], : Jr.shape[0]], lam_r)
    x_D = ridge_fit([(src_r, Y_r), (src_f, Y_f)], lam_D, ctx, FIT_D, factor=f_D)
    x_r = ridge_fit([(src_r, Y_r)], lam_r, ctx, FIT_R, factor=f_r)
    return (x_r - x_D).to(src_r.dtype)


def kernel_solver(src_r, lam: float, ctx, *, direct: bool):
    """``solve(b, name, inner=False) = K_rr⁻¹ b`` with ``K_rr = Θ_rr + λI``: a float64 Cholesky factor (``direct``:
    cached ``J_r``) or CG (inner solves at ``rtol/100``); every solve recorded under its name (inner ones combined)."""
    if not (direct and hasattr(src_r, "J")):
        K_rr, key = NTKLinearOperator(src_r, lam), ("K", id(src_r))
        return lambda b, name, inner=False: ctx.solve(K_rr, b, name, rtol=ctx.rtol * 1e-2 if inner else None, key=key,
                                                      quiet=inner)
    K = gram64(src_r.J, side="samples")
    K.diagonal().add_(lam)
    L = cholesky64(K, f"Θ_rr + λI (λ = {lam})")

    def solve(b, name, inner=False):
        t, bd = time.perf_counter(), b.double()
        x = torch.cholesky_solve(bd.unsqueeze(1), L)[:, 0]
        bn = float(bd.norm())
        ctx.record(name, SolveResult.direct(x, residual_norm=float((K @ x - bd).norm()), rhs_norm=bn, tolerance=ctx.rtol * bn,
                                            seconds=time.perf_counter() - t, method="cholesky, kernel space", backend="torch"),
                   quiet=inner)
        return x.to(b.dtype)

    return solve


def delta_dual(src_r, src_f, Y_r, Y_f, lam, ctx, *, direct: bool = False):
    """The dual form (module docstring): ``(Δ, w_{D_r} − w̄)``; ``K_rr`` solves by :func:`kernel_solver`, ``S m = V`` by CG."""
    z_r = Y_r - src_r.outputs().reshape(-1)
    z_f = Y_f - src_f.outputs().reshape(-1)
    K_solve = kernel_solver(src_r, lam, ctx, direct=direct)
    w_ret = src_r.jtmat(_col(K_solve(z_r, "K_rr z_r")))[:, 0]  # w_{D_r} − w̄
    V = -z_f + src_f.jmat(_col(w_ret))[:, 0]  # f_lin(X_f; w_{D_r}) − Y_f
    S = SchurComplementLinearOperator(src_f, src_r, lambda b: K_solve(b, "inner K_rr", inner=True), lam)
    u = src_f.jtmat(_col(ctx.solve(S, V, "Schur M V")))[:, 0]
    Pu = u - src_r.jtmat(_col(K_solve(src_r.jmat(_col(u))[:, 0], "K_rr J_r u")))[:, 0]
    return Pu, w_ret


def forget_residual(src_f, Y_f, w, w_bar):
    """``f_lin(X_f; w) − Y_f = f̄_f + J_f (w − w̄) − Y_f``."""
    r = src_f.outputs().reshape(-1) - Y_f
    d = w - w_bar
    if float(d.abs().max()) > 0:
        r = r + src_f.jmat(_col(d.to(r.dtype)))[:, 0]
    return r


def newton_step(src_r, g, lam, ctx, *, direct=False, name="H_r Δ = J_fᵀ r_f", key=None, rhs: dict | None = None):
    """``Δ = (G_r + λI)⁻¹ g`` by a direct factor (cached ``J_r``) or CG; the solve's norm is checked.  ``rhs``: a dict
    that keeps ``g`` and ``λ`` (for the half-sketch error estimate of a sketched ``src_r``)."""
    if rhs is not None:
        rhs.update(g=g, lam=lam)
    if direct and hasattr(src_r, "J"):
        delta = solve_primal_direct(src_r, g, lam, ctx, name)
    else:
        delta = ctx.solve(GGNLinearOperator(src_r, lam), g, name, key=key or ("H", id(src_r), lam))
    check_norm_bound(delta, g, lam, ctx.solves.get(name), name)
    return delta


def _primal(plan, ctx, src_r, src_f, Y_r, Y_f, w_trained, w_bar, lam_r, lam_D, curv=None, rhs=None):
    n_r, C, p = src_r.n, src_r.C, src_r.p
    sketched = curv is not None
    curv = src_r if curv is None else curv  # G_r's source: J_r, or the sketch of it
    if plan.anchor == "fit":
        if not sketched and plan.direct and hasattr(src_r, "J") and hasattr(src_f, "J") and \
                (p <= n_r * C or (n_r + src_f.n) * C <= plan.direct_limit):
            return fit_delta_direct(src_r, src_f, Y_r, Y_f, lam_r, lam_D, ctx)
        # the Newton step of the retain objective from w*_D: −∇L_r(w*_D) = J_fᵀ r_f + (λ_D − λ_r)(w*_D − w̄)
        dD = ridge_fit([(src_r, Y_r), (src_f, Y_f)], lam_D, ctx, FIT_D, direct=plan.direct,
                       curvature=[curv, src_f] if sketched else None).to(w_bar.dtype)
        r_f = forget_residual(src_f, Y_f, w_bar + dD, w_bar)  # at w*_D
        g = src_f.jtmat(_col(r_f))[:, 0] + (lam_D - lam_r) * dD
        return newton_step(curv, g, lam_r, ctx, direct=plan.direct, rhs=rhs)
    elif plan.anchor == "trained":
        r_f = forget_residual(src_f, Y_f, w_trained, w_bar)
    else:  # −∇L_r(w) = J_rᵀ(Y_r − f_lin(X_r; w)) − λ(w − w̄)
        d = w_trained - w_bar
        z = Y_r - src_r.outputs().reshape(-1) - src_r.jmat(_col(d))[:, 0]
        return newton_step(curv, src_r.jtmat(_col(z))[:, 0] - lam_r * d, lam_r, ctx, direct=plan.direct, rhs=rhs)
    return newton_step(curv, src_f.jtmat(_col(r_f))[:, 0], lam_r, ctx, direct=plan.direct, rhs=rhs)


def _woodbury(plan, ctx, src_r, src_f, Y_r, Y_f, w_trained, w_bar, lam_D, timings, curv=None, rhs=None):
    t = time.perf_counter()
    Jf = src_f.dense()
    H = gram_of_source(src_r if curv is None else curv) + gram64(Jf)  # J_r is never held whole when streaming (sample chunks)
    H.diagonal().add_(lam_D)
    factor = DenseFactor(H, lam_D, keep_matrix=False)
    del H
    timings["factor"] = time.perf_counter() - t
    if plan.anchor == "fit":
        dD = ridge_fit([(src_r, Y_r), (src_f, Y_f)], lam_D, ctx, FIT_D, factor=factor)
        r_f = src_f.outputs().reshape(-1).double() + jv64(Jf, dD) - Y_f.double()
    else:
        r_f = forget_residual(src_f, Y_f, w_trained, w_bar)
    g = jtv64(Jf, r_f.double())
    if rhs is not None:  # (G_r + λ_D I)⁻¹ g: the Woodbury downdate of H by J_f
        rhs.update(g=g.to(src_r.dtype), lam=lam_D)
    return woodbury_solve(factor, Jf, g, ctx).to(src_r.dtype)


def _sketch_estimate(curv, rhs: dict, timings: dict) -> dict:
    """The half-sketch estimate of the relative error of the last Newton solve with the sketched ``G̃_r``
    (:func:`fastntk.update.tilted.sketch_error`), its seconds in ``timings["error estimate"]``."""
    from .tilted import sketch_error

    t = time.perf_counter()
    est = sketch_error(curv, rhs["g"], float(rhs["lam"])) if "g" in rhs else \
        {"estimated_relative_error": None, "why": "no Newton solve with G̃_r ran"}
    timings["error estimate"] = time.perf_counter() - t
    if est and est.get("rule"):
        est["rule"] += " of the Newton solve with G̃_r"
    return est


def form_delta(plan, ctx, src_r, src_f, Y_r, Y_f, w_trained, w_bar, lam, timings, *, curv_r=None, sketch_info=None):
    """``(Δ, w_{D_r} or None, space)`` of ``plan.form`` (module docstring).  ``curv_r``: the source of ``G_r`` when it
    is not ``src_r`` (the sketch, :class:`~fastntk.operators.SketchedJacobian`: primal and Woodbury forms;
    ``src_r`` then gives the exact right-hand sides and residuals); the half-sketch error estimate goes into
    ``sketch_info``."""
    lam_r, lam_D = plan.ridges(lam, src_r.n, src_f.n)
    if curv_r is not None:
        if plan.form not in ("primal", "woodbury"):
            raise InvalidInputError(f"form={plan.form!r} needs the residual rows of J_r; the sketched curvature serves the "
                                    "primal and Woodbury forms")
        rhs = {}
        if plan.form == "primal":
            delta = _primal(plan, ctx, src_r, src_f, Y_r, Y_f, w_trained, w_bar, lam_r, lam_D, curv=curv_r, rhs=rhs)
        else:
            delta = _woodbury(plan, ctx, src_r, src_f, Y_r, Y_f, w_trained, w_bar, lam_D, timings, curv=curv_r, rhs=rhs)
        if sketch_info is not None:
            sketch_info.update(_sketch_estimate(curv_r, rhs, timings) or {})
        return delta, None, "primal" if plan.form == "primal" else "forget"
    if plan.form == "dual":
        delta, w_ret = delta_dual(src_r, src_f, Y_r, Y_f, lam_r, ctx, direct=plan.direct)
        return delta, w_bar + w_ret, "dual"
    if plan.form == "primal":
        return _primal(plan, ctx, src_r, src_f, Y_r, Y_f, w_trained, w_bar, lam_r, lam_D), None, "primal"
    if plan.form == "woodbury":
        return _woodbury(plan, ctx, src_r, src_f, Y_r, Y_f, w_trained, w_bar, lam_D, timings), None, "forget"
    t = time.perf_counter()
    delta, w_ret = delta_dense(src_r, src_f, Y_r, Y_f, w_bar, lam_r)
    ctx.solves["dense"] = SolveResult.direct(delta, residual_norm=0.0, rhs_norm=0.0, seconds=time.perf_counter() - t,
                                             method="numpy.linalg.solve", backend="numpy",
                                             info={"residual": "not computed (the dense baseline, as published)"})
    return delta, w_ret, "dual"


def trapezium_scale(delta, w_trained, w_ret_abs) -> float:
    """Golatkar et al.'s "trapezium" rescale of Δ.

    With ``e = w_trained − w_{D_r}`` and ``cos = ⟨Δ/‖Δ‖, e/‖e‖⟩``: if ``cos < 0``, ``φ = arccos(cos) − π/2`` and
    ``‖Δ‖* = ‖Δ‖ + 2 sin(φ)‖e‖``; else ``φ = arccos(cos)`` and ``‖Δ‖* = ‖Δ‖ + 2 cos(φ)‖e‖``.  The scale is ``‖Δ‖*/‖Δ‖``.
    """
    e, d = (w_trained - w_ret_abs).double(), delta.double()
    nd, ne = float(d.norm()), float(e.norm())
    if nd == 0 or ne == 0:
        return 1.0
    inner = max(-1.0, min(1.0, float(d @ e) / (nd * ne)))
    if inner < 0:
        return (nd + 2 * math.sin(math.acos(inner) - math.pi / 2) * ne) / nd
    return (nd + 2 * math.cos(math.acos(inner)) * ne) / nd
