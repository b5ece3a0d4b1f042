"""``unlearn()``: one deletion request, from the options to the result.

1. options (:mod:`fastntk.update.options`) built and validated;
2. the plan, stage 1 (:func:`fastntk.update.plan.plan_variant`): variant from ``trained_with``, refused combinations;
3. the inputs read and checked (:mod:`fastntk.update.inputs`); the plan, stage 2 (:func:`~fastntk.update.plan.plan_sizes`);
4. the route: MSE -- ridge, Jacobians, one form (:mod:`fastntk.update.forms`), scale, further steps
   (:mod:`fastntk.update.steps`); CE -- tilted Newton steps (:mod:`fastntk.update.tilted`);
5. the do-no-harm check (:mod:`fastntk.update.guard`), the result, and only then (``inplace``) the write.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass

import torch

from ..errors import InvalidInputError, NumericalError
from ..operators import make_jacobian
from ..precision import with_strict_precision
from .forms import form_delta, ridge_fit, trapezium_scale
from .backoff import run_backoff
from .guard import check_update, record_forget, retain_sample
from .inputs import check_labels, check_model, check_overlap, check_scalar, linearization_point, num_outputs, targets, xy
from .newton import NewtonOptions
from .objective import NetworkObjective, loss_of
from .options import UnlearnOptions, build_options
from .plan import plan_sizes, plan_variant
from .policy import auto_newton, ce_anchor
from .result import UnlearnResult
from .ridge import match_ridge
from .solve import SolveContext
from .steps import relinearized_steps
from .tilted import tilted_newton

log = logging.getLogger("fastntk")

__all__ = ["unlearn"]


@dataclass
class Inputs:
    """The checked inputs of one request."""

    X_r: torch.Tensor
    y_r: torch.Tensor
    X_f: torch.Tensor
    y_f: torch.Tensor
    w_trained: torch.Tensor
    w_bar: torch.Tensor
    C: int

    @property
    def n_r(self) -> int:
        return int(self.X_r.shape[0])

    @property
    def n_f(self) -> int:
        return int(self.X_f.shape[0])


def _read_inputs(model, peft, retain, forget, opts, plan, w0) -> Inputs:
    check_model(model, peft)
    X_r, y_r = xy(retain, "retain")
    X_f, y_f = xy(forget, "forget")
    if opts.check_overlap:
        check_overlap(X_r, X_f)
    w_trained = peft.vector()
    if w0 is not None:
        peft.check_vector(w0, name="w0")
    w_bar = linearization_point(peft, plan.linearize_at, w0, w_trained)
    C = num_outputs(peft, w_bar, X_f)
    check_labels(y_r, C, "retain")
    check_labels(y_f, C, "forget")
    return Inputs(X_r, y_r, X_f, y_f, w_trained, w_bar, C)


def _check_ridge(ridge, route: str):
    if ridge == "auto" or (route == "ce" and ridge in ("stationarity", "relative", "per-sample")):
        return ridge
    return check_scalar("ridge", ridge, positive=route == "ce", nonneg=True)


def _check_objective(peft, inp: Inputs, trained_with, w0, harm, target_scale, memo=None, check_memo=None) -> NetworkObjective:
    """The do-no-harm check's objective: a fixed retain sample with the training loss; ``memo``: the CE iteration's
    evaluations on all of ``D_r`` (used when the sample is all of it), ``check_memo``: evaluations on the sample (else)."""
    if trained_with == "linearized-mse" and w0 is None:
        raise InvalidInputError("trained_with='linearized-mse' needs w0 (the linearization point) for the do-no-harm check")
    idx = torch.as_tensor(retain_sample(inp.n_r, harm.samples))
    return NetworkObjective(peft, inp.X_r[idx], inp.y_r[idx], loss=loss_of(trained_with), target_scale=target_scale,
                            linearized_at=w0 if trained_with == "linearized-mse" else None,
                            memo=memo if idx.numel() == inp.n_r else check_memo)


def _harm_check(peft, inp: Inputs, trained_with, delta, w0, harm, target_scale, memo=None, check_memo=None):
    """The do-no-harm check (:mod:`fastntk.update.guard`) on a fixed retain sample with the training loss:
    ``(sΔ, w_trained + sΔ, check)``.  ``memo``: the CE iteration's evaluations on all of ``D_r`` (used when the sample is
    all of it; the iteration's last weights are ``w_trained + Δ`` bit for bit)."""
    obj = _check_objective(peft, inp, trained_with, w0, harm, target_scale, memo, check_memo)
    loss, lin = obj.loss, (w0 if trained_with == "linearized-mse" else None)
    d, w_new, chk = check_update(obj, inp.w_trained, delta, harm, chance_loss=math.log(inp.C) if loss == "ce" else None)
    record_forget(peft, inp.X_f, inp.y_f, harm, inp.w_trained, w_new, chk, loss=loss, target_scale=target_scale,
                  linearized_at=lin)
    return d, w_new, chk


# ------------------------------------------------------------------------------------------------ the MSE route
def _mse_ridge(plan, opts, peft, inp: Inputs, ridge, w0, timings) -> tuple[float, dict | None]:
    if ridge != "auto":
        return float(ridge), None
    t = time.perf_counter()
    X_D, y_D = torch.cat([inp.X_r, inp.X_f]), torch.cat([inp.y_r, inp.y_f])
    curv, how = None, ""
    if plan.curvature == "sketch":  # J_D at w0 is not built either: the fit's curvature from a sketch of D
        from ..operators import SketchedJacobian
        from .tilted import sketch_size

        jac = opts.jacobian
        k, m, _ = sketch_size(jac, X_D.shape[0], peft.p, peft.dtype)
        curv = SketchedJacobian(peft, X_D, k=k, kind=jac.sketch_kind, loss="mse", m=m, seed=int(jac.sketch_seed) + 7919,
                                w=w0, batch_size=jac.batch_size)
        how = f"; its curvature G̃_D at w0 from a sketch ({curv.reason}), the right-hand side J_Dᵀz exact"
    lam, info = match_ridge(peft, (X_D, y_D), w_trained=inp.w_trained, w0=w0, target_scale=opts.target_scale,
                            memory_budget=opts.jacobian.memory_budget, batch_size=opts.jacobian.batch_size, curvature=curv)
    del curv
    timings["ridge"] = time.perf_counter() - t
    plan.choose("ridge", lam, f"ridge='auto': matched ridge λ = {lam:.4g} (the λ whose linearized MSE fit at w0 best "
                              f"reproduces the trained outputs, match_ridge){how}")
    return lam, info


def _first_update(plan, opts, ctx, peft, inp: Inputs, lam, timings, progress):
    """The first update ``s·Δ`` of ``plan.form``: ``(s·Δ, s, space, strategy, sketch info or None)``; the Jacobians (and
    the sketch of ``G_r`` when ``plan.curvature == "sketch"``) are freed on return."""
    jac, t = opts.jacobian, time.perf_counter()
    sketched = plan.curvature == "sketch"
    src_r, src_f = (make_jacobian(peft, X, w=inp.w_bar, loss="mse", strategy="stream" if sketched and X is inp.X_r else jac.strategy,
                                  memory_budget=jac.memory_budget, batch_size=jac.batch_size, progress=progress)
                    for X in (inp.X_r, inp.X_f))
    curv_r, sketch_info = None, None
    if sketched:  # G̃_r from k rows per sample (fastntk.operators.sketch); src_r streams D_r's exact products
        from ..operators import SketchedJacobian

        k, m = plan.sketch
        curv_r = SketchedJacobian(peft, inp.X_r, k=k, kind=jac.sketch_kind, loss="mse", m=m, seed=int(jac.sketch_seed),
                                  w=inp.w_bar, batch_size=jac.batch_size, engine=src_r.per_sample_engine())
        sketch_info = {"curvature": plan.reasons["curvature_source"], "reason": curv_r.reason,
                       "build_seconds": curv_r.build_seconds}
    else:
        plan.choose("strategy", src_r.strategy, getattr(src_r, "reason", ""))
    timings["jacobian"] = time.perf_counter() - t
    t = time.perf_counter()
    Y_r, Y_f = (targets(y, inp.C, opts.target_scale, peft.dtype, peft.device) for y in (inp.y_r, inp.y_f))
    delta, w_ret, space = form_delta(plan, ctx, src_r, src_f, Y_r, Y_f, inp.w_trained, inp.w_bar, lam, timings,
                                     curv_r=curv_r, sketch_info=sketch_info)
    s = 1.0 if opts.scale is None else opts.scale
    if opts.scale == "trapezium":
        lam_r, _ = plan.ridges(lam, inp.n_r, inp.n_f)
        if w_ret is None:
            w_ret = inp.w_bar + ridge_fit([(src_r, Y_r)], lam_r, ctx, "retain fit (trapezium)", direct=plan.direct,
                                          curvature=None if curv_r is None else [curv_r]).to(peft.dtype)
        s = trapezium_scale(delta, inp.w_trained, w_ret)
        plan.choose("scale", s, f"trapezium rescale = {s:.4g}")
    timings["solve"] = time.perf_counter() - t - timings.get("error estimate", 0.0)
    delta = delta.to(peft.dtype)
    if not torch.isfinite(delta).all():
        raise NumericalError("the update Δ has NaN/Inf entries; the model was not changed. Increase the ridge or check the data")
    return s * delta, float(s), space, ("sketch" if sketched else src_r.strategy), sketch_info


def _run_mse(plan, opts, peft, inp: Inputs, ridge, w0, progress) -> tuple[torch.Tensor, float, dict]:
    """``(Δ, scale, out)``."""
    timings = {}
    lam, ridge_info = _mse_ridge(plan, opts, peft, inp, ridge, w0, timings)
    lam_r, _ = plan.ridges(lam, inp.n_r, inp.n_f)
    ctx = SolveContext.from_options(opts.solve, rtol=plan.rtol, progress=progress)
    step, s, space, strategy, sketch_info = _first_update(plan, opts, ctx, peft, inp, lam, timings, progress)
    w_new = inp.w_trained + step
    if not torch.isfinite(w_new).all():
        raise NumericalError("the unlearned parameters overflow; the model was not changed")
    info = {"ridge": lam, "ridge_effective": lam_r, "steps": plan.steps, "ridge_selection": ridge_info, "sketch": sketch_info}
    w_new = relinearized_steps(plan, opts, ctx, peft, (inp.X_r, inp.y_r), w_new, inp.w_bar, lam_r, inp.C, timings, info, progress)
    out = dict(form=plan.form, strategy=strategy, space=space, loss="mse", timings=timings, solves=ctx.solves, info=info)
    return w_new - inp.w_trained, s, out


# ------------------------------------------------------------------------------------------------ the CE route
def _newton_options(plan, opts) -> NewtonOptions:
    """Exactly ``steps`` Newton steps when given; else the stopping rule (the growth test guards the tilted objective)."""
    if opts.newton is not None:
        newton = opts.newton
        plan.choose("steps", "newton", f"newton={newton} given")
    elif plan.steps == "auto":
        newton, why = auto_newton(plan.anchor, opts.line_search)
        plan.choose("steps", "auto", why)
    else:
        newton = NewtonOptions(max_steps=int(plan.steps), rel_decrement=0.0, line_search=opts.line_search, stop_on_growth=False)
        plan.choose("steps", plan.steps, f"steps={plan.steps} requested: exactly {plan.steps} Newton steps unless the line "
                                         "search stops")
    return newton


def _run_ce(plan, opts, peft, inp: Inputs, ridge, w0, progress) -> tuple[torch.Tensor, float, dict]:
    """``(Δ, 1, out)``; ``out["memo"]``: the iteration's evaluations on ``D_r`` (for the do-no-harm check)."""
    if plan.anchor == "by-request":
        plan.anchor = plan.choose("anchor", *ce_anchor(inp.y_r, inp.y_f))
    newton = _newton_options(plan, opts)
    ctx = SolveContext.from_options(opts.solve, rtol=plan.rtol, progress=progress)
    log.info("fastntk: unlearn (CE) n_r=%d n_f=%d C=%d p=%d anchor=%s", inp.n_r, inp.n_f, inp.C, peft.p, plan.anchor)
    jac = dataclasses.replace(opts.jacobian, progress=progress)
    check_memo = {}  # the check's evaluations on its retain sample (when it is not all of D_r), reused by _harm_check
    sample = (retain_sample(inp.n_r, opts.harm.samples), check_memo)

    def run(lam, start=None):
        return tilted_newton(peft, (inp.X_r, inp.y_r), (inp.X_f, inp.y_f), w_trained=inp.w_trained, w0=w0, loss="ce",
                             ridge=lam, newton=newton, jac=jac, ctx=ctx, tilt=plan.anchor == "trained", start=start,
                             sample=sample)

    r0 = run(ridge)
    plan.choose("line_search_sample", "all" if r0.line_search.startswith("the step scored on all") else
                int(sample[0].size), r0.line_search)
    r, backoff, t_back = _backoff(plan, opts, peft, inp, w0, ridge, r0, run, check_memo)
    plan.choose("ridge", r.ridge, r0.ridge_info["rule"] + f": λ = {r0.ridge:.4g}" +
                (f"; {backoff['why']}" if backoff is not None and backoff["used"] else ""))
    plan.choose("strategy", r.strategy.split(" ")[0], r.strategy)
    plan.choose("solver", "direct" if r.solver.startswith("direct") else "cg", r.solver)
    plan.choose("stop", r.newton.steps, f"{r.newton.steps} Newton step(s): {r.newton.stop_reason}")
    if not torch.isfinite(r.delta).all():
        raise NumericalError("the update Δ has NaN/Inf entries; the model was not changed. Increase the ridge")
    plan.choose("curvature_source", "sketch" if r.sketch is not None else "exact", r.curvature)
    info = {"ridge": r.ridge, "ridge_effective": r.ridge, "steps": r.newton.steps if r is r0 else backoff["steps"],
            "newton": r.newton.summary(), "ridge_selection": r0.ridge_info, "grad_forget_norm": r0.grad_forget_norm,
            "sketch": r0.sketch, "ridge_backoff": backoff}
    timings = dict(r0.timings, **({"ridge backoff": t_back} if t_back else {}))
    out = dict(form="primal", strategy=r.strategy.split(" ")[0], space="primal", loss="ce", timings=timings,
               solves=ctx.solves, info=info, memo=r.memo, check_memo=check_memo)
    return r.delta, 1.0, out


def _backoff(plan, opts, peft, inp: Inputs, w0, ridge, r, run, check_memo):
    """The ridge back-off (:mod:`fastntk.update.backoff`) of a class request whose ridge was the library's choice:
    ``(result, record, seconds of the re-solves and their checks)``; ``check_memo``: the check objective's evaluations on
    its retain sample."""
    res, rec, sec = run_backoff(r, run, lambda res: _check_objective(peft, inp, "ce", w0, opts.harm, 1.0, res.memo, check_memo),
                                w_old=inp.w_trained, harm=opts.harm, anchor=plan.anchor, ridge=ridge, C=inp.C)
    if rec["used"]:
        plan.choose("ridge_backoff", len(rec["tries"]) - 1, rec["why"])
    return res, rec, sec


# ------------------------------------------------------------------------------------------------ the entry point
def _record_solver_plan(plan, opts) -> None:
    s = opts.solve
    iterative = plan.choices.get("solver", {}).get("value") in ("cg", "auto")
    plan.choose("backend", s.backend, "backend='auto': CG on the operators' torch tensors, on their device (no host copy)"
                if s.backend == "auto" else f"backend={s.backend!r} requested")
    why = f"preconditioner={s.preconditioner!r}"
    if s.preconditioner == "auto":
        why = ("preconditioner='auto': Nyström (rank NYSTROM_RANK = 64, built by one GEMM over the rows) for the "
               "cross-entropy route's CG solves on a curvature held in memory (measured: a rejected sketch's exact J̃ on "
               "regnetx_002, step solve 15.9 → 9.1 s, ce_nystrom_general); none elsewhere (at moderate ridges no "
               "preconditioner saved more than 12 %, bench_solvers_real, and a streamed operator's build costs r passes)")
    plan.choose("preconditioner", s.preconditioner, why +
                ("" if iterative or s.preconditioner in (None, "none", "auto") else " (used only by iterative solves)"))


@with_strict_precision
def unlearn(model: torch.nn.Module, peft, retain, forget, *, trained_with: str, ridge: float | str = "auto",
            w0: torch.Tensor | None = None, options: UnlearnOptions | None = None, inplace: bool = False,
            progress: bool = False, **option_fields) -> UnlearnResult:
    """Remove the influence of ``forget`` from the PEFT parameters of ``model`` (docs/guide.md, docs/theory.md).

    model, peft : the trained model (eval mode) and its PEFT set (``peft.model is model``).
    retain, forget : ``(X, y)`` (or objects with ``.X``/``.y``, or Datasets of pairs): ``D_r`` and ``D_f``.
    trained_with : ``"ce"`` (cross-entropy), ``"mse"`` (ordinary MSE fine-tuning) or ``"linearized-mse"`` (the
        linearized model, where the update is exact).  Every ``"auto"`` resolves from it (:mod:`fastntk.update.policy`)
        and the do-no-harm check scores the update with this loss.  Required.
    ridge : ``λ`` (``½λ‖w − w̄‖²``), or ``"auto"`` (CE: the per-sample rule ``0.015·n_r``, also ``"relative"`` and ``"stationarity"``; MSE: :func:`match_ridge`, needs ``w0``);
        CE also takes ``"stationarity"``.
    w0 : PEFT vector before fine-tuning (the linearization point of ``linearize_at="w0"``, the ridge centre).
    options : :class:`~fastntk.update.options.UnlearnOptions`; ``**option_fields`` are its field names or those of
        its nested options (``form="primal", rtol=1e-12, strategy="cached", harm=HarmTolerance(...)``), applied on top.
    inplace : write ``w_new`` into the model, only after everything succeeded (the do-no-harm check included).
    progress : progress bars.  allow_tf32 : added by :func:`fastntk.precision.with_strict_precision` (default False).

    Returns an :class:`~fastntk.update.result.UnlearnResult`; ``result.plan`` says what ran and why.
    """
    t_all = time.perf_counter()
    opts = build_options(options, **option_fields)
    plan = plan_variant(opts, trained_with)
    ridge = _check_ridge(ridge, plan.route)
    inp = _read_inputs(model, peft, retain, forget, opts, plan, w0)
    plan_sizes(plan, opts, peft, ridge=ridge, w0=w0, n_r=inp.n_r, n_f=inp.n_f, C=inp.C)
    _record_solver_plan(plan, opts)
    delta, s, out = (_run_ce if plan.route == "ce" else _run_mse)(plan, opts, peft, inp, ridge, w0, progress)
    t = time.perf_counter()
    delta, w_new, chk = _harm_check(peft, inp, trained_with, delta, w0, opts.harm,
                                    opts.target_scale if plan.route == "mse" else 1.0, out.pop("memo", None),
                                    out.pop("check_memo", None))
    timings = dict(out.pop("timings"), **{"harm check": time.perf_counter() - t, "total": time.perf_counter() - t_all})
    info = {"n_retain": inp.n_r, "n_forget": inp.n_f, "C": inp.C, "p": peft.p, "linearize_at": plan.linearize_at,
            "anchor": plan.anchor, "trained_with": trained_with, "harm_check": chk.summary(), **out.pop("info")}
    res = UnlearnResult(delta=delta, w_new=w_new, w_old=inp.w_trained, scale=s * chk.scale, timings=timings,
                        info=info, plan=plan.choices, reasons=plan.reasons, **out)
    if inplace:
        peft.write(res.w_new)
    log.info("fastntk: unlearned (form=%s, strategy=%s, |Δ|=%.3e, %d matvecs, %.2fs)", res.form, res.strategy,
             float(delta.norm()), res.matvecs, timings["total"])
    return res
