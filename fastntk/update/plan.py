"""The plan of one :func:`fastntk.unlearn` call: every ``"auto"`` resolved once, each choice with its reason.

Two stages, both before any Jacobian is built:

1. :func:`plan_variant` -- from ``trained_with`` and the options alone: the variant (:func:`fastntk.update.policy.
   resolve_variant`: linearization point, anchor, kernel, steps) and the refused combinations (a CE model with an
   MSE form, ``anchor != "fit"`` with the dual/dense forms, Woodbury with ``anchor="retain"``, ...).
2. :func:`plan_sizes` -- once the data sizes ``n_r, n_f, C, p`` and the dtype are known: the Jacobian strategy,
   direct or iterative solves, the form, the float32 CG tolerance floor and the ridge rule.

``plan.choices`` (``result.plan``) maps each choice to ``{"value", "reason"}``; what ran updates it (e.g. the
strategy :func:`fastntk.operators.make_jacobian` reports), so the result says what ran.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import torch

from ..errors import BackendUnavailableError, InvalidInputError, NoDiagonalError
from .policy import resolve_variant

log = logging.getLogger("fastntk")

__all__ = ["Plan", "plan_variant", "plan_sizes", "rtol_floor", "choose_form", "FLOAT32_RTOL"]

#: the smallest CG tolerance float32 matvecs can certify
FLOAT32_RTOL = 1e-4
LOW_PRECISION = (torch.float32, torch.float16, torch.bfloat16)


@dataclass
class Plan:
    """The resolved options of one request (module docstring)."""

    trained_with: str
    linearize_at: str
    anchor: str
    loss: str
    steps: int | str
    form: str
    ridge_convention: str
    direct: bool = False
    direct_limit: int = 4096
    rtol: float = 1e-8
    curvature: str = "exact"  # the MSE route's curvature of D_r: "exact" (J_r) or "sketch" (k rows per sample)
    sketch: tuple | None = None  # (k, m) of the MSE route's sketch
    choices: dict = field(default_factory=dict)

    @property
    def route(self) -> str:
        """``"ce"``: tilted Newton steps (:mod:`fastntk.update.tilted`); ``"mse"``: the forms of :mod:`fastntk.update.forms`."""
        return "ce" if self.loss == "ce" else "mse"

    def choose(self, name: str, value, reason: str):
        self.choices[name] = {"value": value, "reason": reason}
        return value

    @property
    def reasons(self) -> dict:
        return {k: v["reason"] for k, v in self.choices.items()}

    def ridges(self, lam: float, n_r: int, n_f: int) -> tuple[float, float]:
        """``(λ_r, λ_D)``: the ridges of the retain fit and the full-data fit (``"mean"``: ``n_r·λ`` and ``n·λ``)."""
        if self.ridge_convention == "mean":
            return lam * n_r, lam * (n_r + n_f)
        return lam, lam


def rtol_floor(rtol: float, dtype, *, iterative: bool = True) -> tuple[float, str | None]:
    """The CG tolerance: ``rtol``, raised to :data:`FLOAT32_RTOL` for float32 operators (``(rtol, reason or None)``)."""
    if iterative and dtype == torch.float32 and rtol < FLOAT32_RTOL:
        log.info("fastntk: float32 operators: CG rtol raised from %g to %g", rtol, FLOAT32_RTOL)
        return FLOAT32_RTOL, (f"float32 operators: CG rtol raised from {rtol:g} to {FLOAT32_RTOL:g} (float32 matvecs "
                              "cannot certify less)")
    return rtol, None


def _refuse_ce(opts, v: dict) -> None:
    if opts.form not in ("auto", "primal"):
        raise InvalidInputError(f"loss='ce' is a Newton iteration in parameter space; form={opts.form!r} is an MSE form (use form='auto')")
    if v["linearize_at"] != "trained":
        raise InvalidInputError("loss='ce' relinearizes at the current weights (linearize_at='trained' or 'auto'); "
                                "linearize_at='w0' has no CE counterpart here")
    if v["anchor"] not in ("trained", "retain", "by-request"):
        raise InvalidInputError(f"loss='ce' takes anchor='trained' (tilted: keeps what early stopping left) or 'retain' "
                                f"(plain retain objective), got {v['anchor']!r}")
    if opts.ridge_convention != "sum" or opts.scale is not None:
        raise InvalidInputError("loss='ce' supports ridge_convention='sum' and scale=None only")


def _refuse_mse(opts, v: dict) -> None:
    form, anchor, solver = opts.form, v["anchor"], opts.solve.solver
    if anchor == "by-request":
        raise InvalidInputError("anchor='by-request' is the CE policy; the MSE forms take 'fit', 'trained' or 'retain'")
    if anchor != "fit" and form in ("dual", "dense"):
        raise InvalidInputError(f"form={form!r} computes w*_{{D_r}} − w*_D (anchor='fit'); use form='primal' for anchor={anchor!r}")
    if anchor == "retain" and form == "woodbury":
        raise InvalidInputError("anchor='retain' is available with form='primal' (the Woodbury form needs the forget residual)")
    if opts.ridge_convention == "mean" and form in ("dual", "woodbury", "dense"):
        raise InvalidInputError(f"ridge_convention='mean' (retain fit with n_r·λ, full fit with n·λ) is computed by the primal "
                                f"form only; form={form!r} uses one ridge for both fits (use form='primal' or 'auto')")
    if solver == "direct" and form in ("dual", "dense"):
        raise InvalidInputError(f"form={form!r} is solved by {'CG' if form == 'dual' else 'numpy.linalg.solve'}; "
                                "solver='direct' needs form='primal', 'woodbury' or 'auto'")
    if solver == "cg" and form == "woodbury":
        raise InvalidInputError("form='woodbury' factors H = G_D + λI (Cholesky); solver='cg' needs form='primal', 'dual' or 'auto'")
    if opts.newton is not None:
        raise InvalidInputError("newton= configures the CE Newton iteration; the MSE route takes steps=")


def plan_variant(opts, trained_with: str) -> Plan:
    """Stage 1 (module docstring): the variant and the refusals that need no data."""
    values, reasons = resolve_variant(trained_with, linearize_at=opts.linearize_at, anchor=opts.anchor, loss=opts.loss,
                                      steps=opts.steps)
    (_refuse_ce if values["loss"] == "ce" else _refuse_mse)(opts, values)
    plan = Plan(trained_with=trained_with, form=opts.form, ridge_convention=opts.ridge_convention, rtol=opts.solve.rtol,
                **values)
    for k in ("linearize_at", "anchor", "loss", "steps"):
        plan.choose(k, values[k], reasons[k])
    if plan.route == "mse" and plan.steps == "auto":
        plan.steps = plan.choose("steps", 1, "steps='auto' for an MSE kernel: one update (the closed form)")
    return plan


def choose_form(form, n_r, n_f, C, p, have_factor, direct=False, low_precision=False) -> tuple[str, str]:
    """The MSE form for the sizes (``form="auto"``), with its reason."""
    if form != "auto":
        return form, f"form={form!r} requested"
    if have_factor:
        return "woodbury", "a prepared factor of H = G_D + λI exists: only the n_fC forget-space system is solved"
    if direct and n_f * C <= p <= n_r * C:
        return "woodbury", (f"J is cached and n_f·C = {n_f * C} ≤ p = {p}: one factor of H = G_D + λI and an n_f·C "
                            "forget-space system (cheaper than the two p × p factors of the primal form)")
    if direct:
        return "primal", (f"J is cached and min(p, n_r·C) = {min(p, n_r * C)} is small: Newton step with a direct "
                          f"Cholesky solve in the {'parameter' if p <= n_r * C else 'kernel'} space")
    if p <= n_r * C:
        return "primal", f"p = {p} ≤ n_r·C = {n_r * C}: the parameter space is the smaller one"
    if low_precision:
        return "primal", (f"n_r·C = {n_r * C} < p = {p}, but the dual form's nested inner solves need a tolerance 100× below "
                          "the outer one, which float32 CG cannot certify: Newton step in parameter space")
    return "dual", f"n_r·C = {n_r * C} < p = {p}: the kernel space is the smaller one"


def _check_backend(opts, peft) -> None:
    if opts.solve.backend == "cupy" and (not torch.cuda.is_available() or peft.device.type != "cuda"):
        raise BackendUnavailableError("backend='cupy' needs the model on a CUDA GPU and CuPy (pip install 'fastntk[gpu]'); "
                                      "use backend='auto' or 'scipy' on CPU")


def _plan_strategy(plan, opts, peft, n_r, C, p) -> bool:
    from ..operators import jacobian_bytes

    jac = opts.jacobian
    need = jacobian_bytes(n_r, C, p, peft.dtype)
    cache = jac.strategy == "cached" or (jac.strategy == "auto" and (jac.memory_budget is None or need <= float(jac.memory_budget)))
    why = (f"strategy={jac.strategy!r} requested" if jac.strategy != "auto" else
           f"strategy='auto': J_r needs {need:.3g} bytes, {'within' if cache else 'above'} memory_budget = {jac.memory_budget}")
    plan.choose("strategy", "cached" if cache else "stream", why)
    return cache


def _plan_curvature(plan, opts, peft, n_r, C, p, cache) -> bool:
    """The MSE route's curvature of ``D_r``: the exact ``J_r`` (cached or streamed by the strategy) or the unbiased
    sketch (:class:`~fastntk.operators.SketchedJacobian`, ``k`` rows per sample) -- ``"auto"``: the sketch when the
    exact ``J_r`` does not fit ``memory_budget`` (and the strategy was not forced), as on the CE route."""
    from .tilted import sketch_size

    jac = opts.jacobian
    use = jac.curvature_source
    if use == "auto":
        use = "sketch" if (not cache and jac.strategy == "auto") else "exact"
        why = ("curvature_source='auto': " + ("the exact J_r does not fit memory_budget: sketched Gauss-Newton G̃_r instead "
                                             f"of C = {C} rows per sample (right-hand sides and residuals stay exact)"
                                             if use == "sketch" else
                                             "the exact J_r " + ("fits memory_budget" if cache else "streamed (strategy='stream' requested)")))
    else:
        why = f"curvature_source={use!r} requested"
    if use == "sketch":
        if opts.form in ("dual", "dense"):
            raise InvalidInputError(f"form={opts.form!r} works with the kernel Θ_rr = J_r J_rᵀ of the residual rows; the sketched "
                                    "curvature G̃_r serves the forms in parameter space: form='primal', 'woodbury' or 'auto'")
        k, m, more = sketch_size(jac, n_r, p, peft.dtype)
        plan.sketch = (k, m)
        why += (f"; kind={jac.sketch_kind!r}, k = {k} rows per sample, m = {m} of n_r = {n_r} samples{more}; D_r's "
                "right-hand sides and residuals by streamed VJP/JVP passes")
        plan.choose("strategy", "stream", "sketched curvature: J_r is never built; D_r's exact products (right-hand sides, "
                                          "residuals) by streamed VJP/JVP passes, the curvature from the sketch's rows")
    plan.curvature = plan.choose("curvature_source", use, why)
    return use == "sketch"


def _plan_solver(plan, opts, cache, n_r, C, p, sketch=False) -> None:
    s = opts.solve
    if sketch:  # the sketch's rows are stored: direct in the smaller of p and the m·k rows
        rows = plan.sketch[0] * plan.sketch[1]
        plan.direct_limit = s.direct_limit
        from ..operators.sketch import dense_is_cheap

        plan.direct = s.solver == "direct" or (s.solver == "auto" and dense_is_cheap(rows, p, s.direct_limit))
        why = (f"direct Cholesky of G̃_r + λI (the sketch's rows stored, min(p, m·k) = {min(p, rows)} ≤ {s.direct_limit}, "
               "its float64 Gram cheap)" if s.solver == "auto" else "direct Cholesky (solver='direct' requested)") if plan.direct else \
            "conjugate gradients on G̃_r + λI" + (" (solver='cg' requested)" if s.solver == "cg" else
                                                 " (the float64 Gram of the sketch's rows would cost more than DIRECT_GRAM_FLOPS)"
                                                 if min(p, rows) <= s.direct_limit else "")
        plan.choose("solver", "direct" if plan.direct else "cg", why)
        return
    if s.solver == "direct" and not cache:
        raise InvalidInputError("solver='direct' needs the cached Jacobian: use strategy='cached' (or 'auto' with a larger memory_budget)")
    plan.direct_limit = s.direct_limit
    plan.direct = s.solver == "direct" or (s.solver == "auto" and cache and min(p, n_r * C) <= s.direct_limit)
    why = ("direct Cholesky (cached J, min(p, n_r·C) = %d ≤ %d)" % (min(p, n_r * C), s.direct_limit) if s.solver == "auto"
           else "direct Cholesky (solver='direct' requested)") if plan.direct else \
        "conjugate gradients (matrix-free)" + (" (solver='cg' requested)" if s.solver == "cg" else "")
    plan.choose("solver", "direct" if plan.direct else "cg", why)


def _plan_form(plan, opts, n_r, n_f, C, p, dtype) -> None:
    if plan.curvature == "sketch":
        form = opts.form if opts.form != "auto" else "primal"
        why = (f"form={form!r} requested" if opts.form != "auto" else
               "sketched curvature: the Newton step in parameter space, (G̃_r + λI)⁻¹ of the sketch's rows (primal)")
        plan.form = plan.choose("form", form, why)
        if form == "woodbury":
            plan.choose("solver", "direct", "Cholesky factor of G̃_r + G_f + λI (p × p) and a dense forget-space solve (n_f·C)")
        return
    form, why = choose_form(opts.form, n_r, n_f, C, p, have_factor=False, direct=plan.direct, low_precision=dtype in LOW_PRECISION)
    if opts.form == "auto" and form != "primal" and (plan.anchor != "fit" or plan.ridge_convention == "mean"):
        form, why = "primal", (f"anchor={plan.anchor!r} is defined as a Newton step in parameter space" if plan.anchor != "fit"
                               else "ridge_convention='mean' (retain fit n_r·λ, full fit n·λ) is computed by the primal form")
    plan.form = plan.choose("form", form, why)
    if form == "dual" and plan.direct:
        plan.choose("solver", "direct", f"K_rr = Θ_rr + λI by Cholesky (cached J_r, n_r·C = {n_r * C} ≤ {plan.direct_limit}); "
                                        "the Schur system S m = V (n_f·C) by CG")
    elif form == "dual":
        plan.choose("solver", "cg", "conjugate gradients: K_rr solves (inner ones at rtol/100) and the Schur system S m = V")
    elif form == "woodbury":
        plan.choose("solver", "direct", "Cholesky factor of H = G_D + λI (p × p) and a dense forget-space solve (n_f·C)")
    elif form == "dense":
        plan.choose("solver", "dense", "numpy.linalg.solve of the dual closed form (materialized J)")
    if form == "dual" and opts.solve.preconditioner == "jacobi":
        raise NoDiagonalError("preconditioner='jacobi' needs the diagonal of every operator, and the dual form's Schur "
                              "complement K_ff − Θ_fr K_rr⁻¹ Θ_rf has no cheap one; use preconditioner='nystrom' or 'none', "
                              "or form='primal'")


def _plan_ridge(plan, ridge, w0, n_r, n_f, C, p) -> None:
    if ridge == "auto":
        if w0 is None:
            raise InvalidInputError("ridge='auto' for an MSE model is the matched ridge at w0 (match_ridge): pass w0, or ridge=")
        plan.choose("ridge", "auto", "ridge='auto': the matched ridge (match_ridge), chosen before the Jacobians")
        return
    lam_r, _ = plan.ridges(ridge, n_r, n_f)
    rows = plan.sketch[0] * plan.sketch[1] if plan.curvature == "sketch" else n_r * C
    singular = (plan.form == "dual" and n_r * C > p) or (plan.form in ("primal", "woodbury") and p > rows)
    if lam_r <= 0 and (singular or plan.form == "woodbury"):
        raise InvalidInputError(f"ridge must be > 0: with n_r·C = {n_r * C} and p = {p} the form {plan.form!r} solves a singular "
                                "system (H = G + λI must be positive definite)")
    if lam_r <= 0 and plan.form in ("dual", "primal"):
        warnings.warn("ridge = 0: the fit is unregularized; the solve may be ill-conditioned", stacklevel=3)
    plan.choose("ridge", ridge, f"ridge={ridge:g} given ({plan.ridge_convention} convention)")


def plan_sizes(plan: Plan, opts, peft, *, ridge, w0, n_r: int, n_f: int, C: int) -> Plan:
    """Stage 2 (module docstring): the choices that depend on the sizes and the dtype."""
    p, dtype = peft.p, peft.dtype
    _check_backend(opts, peft)
    if plan.route == "ce":
        return _plan_ce(plan, opts, peft, ridge)
    cache = _plan_strategy(plan, opts, peft, n_r, C, p)
    sketch = _plan_curvature(plan, opts, peft, n_r, C, p, cache)
    _plan_solver(plan, opts, cache, n_r, C, p, sketch)
    _plan_form(plan, opts, n_r, n_f, C, p, dtype)
    _plan_ridge(plan, ridge, w0, n_r, n_f, C, p)
    plan.rtol, why = rtol_floor(opts.solve.rtol, dtype, iterative=not plan.direct or plan.form == "dual")
    plan.choose("rtol", plan.rtol, why or f"rtol={opts.solve.rtol:g}")
    log.info("fastntk: unlearn n_r=%d n_f=%d C=%d p=%d form=%s (%s)", n_r, n_f, C, p, plan.form, plan.reasons["form"])
    return plan


def _plan_ce(plan, opts, peft, ridge) -> Plan:
    from .tilted import AUTO_RIDGE, PER_SAMPLE_RIDGE, RELATIVE_RIDGE

    plan.form = plan.choose("form", "primal", "loss='ce': Newton iteration in parameter space (primal)")
    rules = {"relative": f"relative damping λ = κ·tr(G_r(w_t))/p, κ = {RELATIVE_RIDGE:g}",
             "per-sample": f"per-sample λ = ρ·n_r, ρ = {PER_SAMPLE_RIDGE:g}"}
    if ridge == "auto":
        plan.choose("ridge", "auto", f"ridge='auto': {rules[AUTO_RIDGE]}")
    elif ridge in rules:
        plan.choose("ridge", ridge, f"ridge={ridge!r}: {rules[ridge]}")
    elif ridge == "stationarity":
        plan.choose("ridge", ridge, "ridge='stationarity': argmin_λ ‖∇L_D(w_t) + λ(w_t − w0)‖")
    else:
        plan.choose("ridge", ridge, f"ridge={ridge:g} given")
    plan.choose("strategy", opts.jacobian.strategy, "per Newton step: make_jacobian caches J̃_r when it fits memory_budget")
    plan.choose("solver", opts.solve.solver, "per Newton step: direct Cholesky when J̃_r is cached and small, else CG")
    plan.rtol, why = rtol_floor(opts.solve.rtol, peft.dtype)
    plan.choose("rtol", plan.rtol, why or f"rtol={opts.solve.rtol:g}")
    return plan
