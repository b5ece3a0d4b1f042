"""Relinearized Gauss-Newton steps on the network's retain objective, and the stationarity ridge.

**The tilted retain objective** (docs/theory.md, "Cross-entropy models").  A fine-tuned model ``w_t``
is in general *not* a minimizer of any plain objective: training stopped early.  With ``ℓ`` the loss it
was trained with, ``c`` the ridge centre (``w0``) and ``g_D = ∇Σ_{i∈D} ℓ_i(w_t)``, the tilt
``b = g_D + λ(w_t − c)`` makes ``w_t`` stationary for the full-data objective
``F_D(w) = Σ_D ℓ_i(w) + ½λ‖w − c‖² − bᵀ(w − w_t)``.  Forgetting removes ``D_f``'s terms::

    F_r(w) = Σ_{D_r} ℓ_i(w) + ½λ‖w − c‖² − bᵀ(w − w_t),      ∇F_r(w_t) = −g_f = −∇Σ_{D_f} ℓ_i(w_t)

so the first Newton step from ``w_t`` is the influence-function update ``Δ₁ = (G_r + λI)⁻¹ g_f`` and every
unfinished direction of training (the part of ``g_D`` that early stopping left) stays where it was, as it
does in retraining.  For MSE with a linear model trained to convergence, ``b = 0`` and one step is exact.

**Steps**: ``w ← w + t·s``, ``(G_r(w) + λI) s = −∇F_r(w)`` with the Gauss-Newton ``G_r(w)`` at the
current weights (``Σ J_iᵀ Λ_i J_i`` for CE), ``t`` by Armijo backtracking on ``F_r`` of the network
(the objective never increases).  **Stopping rule**: the Newton decrement ``δ² = −∇F_rᵀ s`` (twice the
decrease the quadratic model predicts) falls below ``rel_decrement·δ₁²``; or it *grows* from one step to the
next (the Gauss-Newton model no longer describes the objective: on the tilted objective of a CE model this
happens after the first step, where the linear tilt outgrows the saturating loss); or ``max_steps``; or the
line search finds no decrease.  The report says which.

**Stationarity ridge** (``ridge="auto"`` for models trained with CE): the ``λ`` that makes ``w_t`` closest to
stationary for ``Σ_D ℓ_i + ½λ‖w − w0‖²``: ``λ* = argmin_λ ‖g_D + λ d‖ = −⟨g_D, d⟩ / ‖d‖²`` with
``d = w_t − w0`` — one gradient pass.  For gradient descent with step ``η`` stopped after ``T`` steps on a
quadratic, each curvature direction contributes ``σ(1 − ησ)^T / (1 − (1 − ησ)^T) ≤ 1/(ηT)``: ``λ*`` is the
effective ridge of early stopping, weighted by how far training moved.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from ..errors import InvalidInputError, NumericalError
from .objective import NetworkObjective

log = logging.getLogger("fastntk")

__all__ = ["NewtonOptions", "NewtonReport", "converged", "gauss_newton", "stationarity_ridge", "armijo"]


@dataclass(frozen=True)
class NewtonOptions:
    """Relinearized Gauss-Newton steps (module docstring).

    max_steps : at most this many Newton steps (each: one Jacobian of D_r at the current weights + one solve); 16: on
        resnet10t a whole class needed 12 relinearized steps to come within 1.5 pp of the noise floor (bench_ce).
    rel_decrement : stop once ``δ_k² ≤ rel_decrement·δ_1²`` (with LM damping also the step's decrease ``≤ rel_decrement×``
        the first step's, on a step with ``ρ ≥ ¼``).  0.2 (was 0.05), measured in benchmarks/trace_ce_steps.py on ten class
        requests (CNN, ViT, resnet10t, resnet18) run to 16 steps and scored after each: the class is forgotten (UA 100 %)
        at every stopping point; the later steps refit D_r towards the ridge minimizer and brought the model no closer to
        retraining on average (mean avg gap 0.85 pp at 0.2, 0.86 at 0.05) while taking 7.3 instead of 4.8 steps — though
        on resnet18, which the choice was checked on afterwards, 0.2 gave 0.45 / 1.32 pp where 0.05 gave 0.41 / 1.02.
    line_search : Armijo backtracking (``c1``, halving ``max_backtracks`` times); off: full steps.
    stop_on_growth : stop when the decrement grows from one step to the next (module docstring); ``None``: on the
        tilted objective only (where it is the symptom of the saturating loss), not on the plain one.
    curvature : ``"relinearize"`` (default: a new Jacobian of D_r at the current weights every step, one Jacobian
        build per step) or ``"frozen"`` (the Gauss-Newton of the first step, at the trained weights, for every step:
        one Jacobian of D_r in all; each step costs a gradient pass and the line search).  Measured in
        benchmarks/bench_ce.py (class forgetting): relinearized 0.52 / 0.56 / 0.92 pp on three classes of a small
        CNN and 0.40 pp on a ViT, frozen 1.52 / 0.45 / 0.67 and 3.96 pp; the prepared CE Unlearner is frozen.
    extrapolate : after the full step is accepted, try ``t = 2, 4, …`` (at most this many doublings, one forward pass
        each) while the objective keeps falling; keep the best.  Meant for objectives where the Gauss-Newton step
        undershoots (Newton on a saturating ``Σ e^z`` moves ``z`` by about one unit per step); off by default: on the
        CE-fine-tuned CNNs of benchmarks/bench_ce.py the step overshoots instead (the line search halves it), and
        ``t = 2`` was never accepted.
    damping : ``"none"`` or ``"lm"`` (Levenberg-Marquardt): the step solves ``(G + λI + μI) s = −∇F`` with ``μ``
        adapted from the ratio ``ρ`` of the actual to the predicted decrease of the last step (``ρ < 1/4``:
        ``μ ← max(4μ, λ)``; ``ρ > 3/4``: ``μ ← μ/4``, 0 below ``λ/64``).  The fixed point is unchanged (``μ`` only shapes
        the steps); it matters where the Gauss-Newton model overstates the decrease (a ReLU network's curvature
        term that G leaves out) and the line search would shrink every step.
    warmup : the plain relinearized retain objective only (``anchor="retain"``, whose minimizer the iteration seeks):
        first take the steps on a fixed uniform subsample ``S`` of ``D_r`` (``max(warmup·n_r, min(n_r,
        WARMUP_MIN_SAMPLES))`` samples, its loss scaled by ``n_r/|S|``), to the same stopping rule, then continue on all
        of ``D_r`` from there, stopping by the rule measured against the warm-up's first decrement (the full objective's
        minimizer is the fixed point either way; the subsample only makes the far-away steps cheaper).  Skipped (with the
        reason in the report) when ``|S| > n_r/2``, for an exact-curvature request, or for a fixed number of steps.
        ``None`` or 0 (the default): off.  Measured (benchmarks/bench_ce.py, ``ce_warmup_*``): one class of a small CNN at
        10k images, warm-up on a quarter: 0.55 / 0.32× retraining instead of 0.67 / 0.44×, but an avg gap of 2.47 / 2.16
        pp instead of 1.04 / 1.14 (RA 2–3 pp lower: the warm-up overfits its subsample, and the full steps stop, by the
        same rule, before undoing it); a ViT: 0.52 vs 0.94 pp on one class, 4.08 vs 3.70 and more steps on another.  Not
        worth its quality cost at these sizes; kept for very large ``D_r``, where a full step is the expensive part.
    head_start : the plain relinearized retain objective only: first minimize it over the linear classifier head on the
        fixed features of ``D_r`` (one forward pass; :mod:`fastntk.update.headstart`), then take the steps on every
        PEFT parameter from there (same objective and minimizer; the stopping rule measured against the head block's
        decrement at ``w_t``); where the head is in the PEFT set and its output is the model's (else skipped, with the
        reason).  Off by default: measured on eight class requests (benchmarks/bench_ce.py, ``ce_headstart_*``: small
        CNN, ViT, resnet10t) it saved a Newton step on six (one fewer gradient pass over ``D_r`` before the steps), but
        the mean avg gap rose from 0.71 to 1.08 pp — the head fit to its block minimizer on the trained features, the
        rest stopped early by the same rule, is a point early-stopped retraining does not reach.
    """

    max_steps: int = 16
    rel_decrement: float = 0.2
    line_search: bool = True
    c1: float = 1e-4
    max_backtracks: int = 12
    stop_on_growth: bool | None = None
    curvature: str = "relinearize"
    extrapolate: int = 0
    damping: str = "lm"
    warmup: float | None = None
    head_start: bool = False

    def __post_init__(self):
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise InvalidInputError(f"max_steps must be an integer >= 1, got {self.max_steps!r}")
        if not (0 <= self.rel_decrement < 1):
            raise InvalidInputError(f"rel_decrement must lie in [0, 1), got {self.rel_decrement!r}")
        if self.damping not in ("none", "lm"):
            raise InvalidInputError(f"damping must be 'none' or 'lm', got {self.damping!r}")
        if self.curvature not in ("frozen", "relinearize"):
            raise InvalidInputError(f"curvature must be 'frozen' or 'relinearize', got {self.curvature!r}")
        if isinstance(self.extrapolate, bool) or not isinstance(self.extrapolate, int) or self.extrapolate < 0:
            raise InvalidInputError(f"extrapolate must be an integer >= 0, got {self.extrapolate!r}")
        w = self.warmup
        if w is not None and (isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < 1):
            raise InvalidInputError(f"warmup must be None or a fraction in [0, 1), got {w!r}")
        if not isinstance(self.head_start, bool):
            raise InvalidInputError(f"head_start must be True or False, got {self.head_start!r}")
        if not (0 < self.c1 < 0.5) or int(self.max_backtracks) < 1:
            raise InvalidInputError("c1 must lie in (0, 0.5) and max_backtracks be >= 1")


@dataclass
class NewtonReport:
    """What the Newton iteration did: steps taken, why it stopped, per-step figures."""

    steps: int = 0
    stop_reason: str = ""
    history: list = field(default_factory=list)
    dec0: float | None = None  # the first step's Newton decrement δ₁² (the stopping rule's reference)
    drop0: float | None = None  # the first step's decrease of the objective
    warmup: dict | None = None  # the subsampled warm-up (NewtonOptions.warmup): what ran and why
    head: dict | None = None  # the head stage (NewtonOptions.head_start): what ran and why

    def summary(self) -> dict:
        return asdict(self)


def armijo(objective: NetworkObjective, w: torch.Tensor, step: torch.Tensor, F0: float, slope: float,
           opts: NewtonOptions, *, grad_first: bool = False, grad_retry: bool = False,
           point: Callable | None = None) -> tuple[float, float, int, torch.Tensor | None]:
    """Largest ``t = 2^-j`` with ``F(w + t·step) ≤ F0 + c1·t·slope``: ``(t, F(w + t·step), tries, ∇F or None)``;
    ``t = 0`` if none.  ``grad_first``: the full step ``t = 1`` is scored with one forward + backward pass, so that
    when it is accepted (the common case) the next Newton step reuses its gradient instead of another pass.
    ``grad_retry``: so are the trials after a rejected full step (on the class requests of benchmarks/bench_ce.py a
    halved step was accepted at its first halving on 24 of 27 damped steps; scoring it by value alone cost a second
    forward pass at the accepted weights).  Which trials carry a gradient changes the cost, never the step.
    ``point(t)``: the trial weights for ``t`` (default ``w + t·step``; :func:`gauss_newton` forms them from its
    displacement so that the weights it returns are bit for bit those it evaluated)."""
    point = point or (lambda t_: w + t_ * step)
    t = 1.0
    for j in range(1, int(opts.max_backtracks) + 1):
        g = None
        if (j == 1 and grad_first) or (j > 1 and grad_retry):
            Ft, g = objective.value_and_grad(point(t))
        else:
            Ft = objective.value(point(t))
        if math.isfinite(Ft) and Ft <= F0 + opts.c1 * t * slope:
            if j == 1 and opts.extrapolate:
                t, Ft, g, tries = _extrapolate(objective, point, F0, slope, opts, Ft, g)
                return t, Ft, j + tries, g
            return t, Ft, j, g
        t *= 0.5
    return 0.0, F0, int(opts.max_backtracks), None


def _extrapolate(objective, point, F0, slope, opts, F1, g1):
    """From an accepted full step, ``t = 2, 4, …`` (``opts.extrapolate`` doublings at most) while ``F`` keeps falling and
    the Armijo condition holds: ``(t, F, ∇F or None, forward passes)``; the gradient is kept only if ``t = 1`` stays."""
    best_t, best_F, tries, t = 1.0, F1, 0, 1.0
    for _ in range(int(opts.extrapolate)):
        t *= 2.0
        Ft = objective.value(point(t))
        tries += 1
        if not (math.isfinite(Ft) and Ft < best_F and Ft <= F0 + opts.c1 * t * slope):
            break
        best_t, best_F = t, Ft
    return best_t, best_F, (g1 if best_t == 1.0 else None), tries


def converged(dec: float, dec0: float, drop: float, drop0: float, rho: float | None, rel: float) -> bool:
    """The decrement stop of :func:`gauss_newton` (after the first step): ``δ² ≤ rel·δ₁²`` and, with LM damping (``rho``
    given), the step's decrease ``≤ rel×`` the first step's on a step the quadratic model predicted (``ρ ≥ ¼``)."""
    return dec <= rel * dec0 and (rho is None or (drop <= rel * drop0 and rho >= 0.25))


def gauss_newton(objective: NetworkObjective, w_start: torch.Tensor, solve: Callable, opts: NewtonOptions, *,
                 first: tuple[float, torch.Tensor] | None = None,
                 on_step: Callable | None = None, d_start: torch.Tensor | None = None,
                 reference: tuple[float, float] | None = None,
                 first_by_value: bool = False) -> tuple[torch.Tensor, torch.Tensor, NewtonReport]:
    """Minimize ``objective`` from ``w_start`` by relinearized Gauss-Newton steps (module docstring).

    solve : ``solve(w, g, k) -> s`` with ``(G(w) + λI) s = g`` (the curvature at ``w``; ``k`` the step number,
        for the solve's name); with ``opts.damping == "lm"``, ``solve(w, g, k, mu)`` solves ``(G(w) + λI + μI) s = g``.  first : ``(F, ∇F)`` at ``w_start`` if already known.
    on_step : ``on_step(k, w)`` after each accepted step (progress, or to study the iterates).
    d_start : start from ``w_start + d_start`` (the displacement of an earlier iteration, e.g. the subsampled warm-up;
        the iterates stay ``w_start + Δ_k``).  reference : ``(δ₁², drop₁)`` of that earlier iteration's first step: the
        stopping rule compares against them (and may stop after this iteration's first step) instead of its own.
    first_by_value : score the first step's full length by value alone (its gradient pass only on a trial after it):
        where that step is expected to be cut — the plain retain objective from the trained weights, whose first full
        step was rejected on all 12 class requests of benchmarks/bench_ce.py (``ce_default``).  Cost only; the same steps.
    Returns ``(w, Δ, report)`` with ``w = w_start + Δ`` exactly as evaluated (the iterates are ``w_start + Δ_k``, the
    displacement accumulated, so that ``w_start + Δ`` reproduces the last evaluated weights bit for bit).
    """
    rep = NewtonReport()
    origin = w_start.detach().clone()
    d = torch.zeros_like(origin) if d_start is None else d_start.detach().clone()
    w = origin if d_start is None else origin + d
    F, g = objective.value_and_grad(w) if first is None else first
    dec0, drop0 = (None, None) if reference is None else (float(reference[0]), reference[1])
    dec_prev = None
    lm, mu, lam, t_prev = opts.damping == "lm", 0.0, getattr(solve, "lam", None), (0.5 if first_by_value else 1.0)
    probe = getattr(solve, "probe", None)
    for k in range(1, opts.max_steps + 1):
        if opts.stop_on_growth and dec_prev is not None and probe is not None:
            # the growth test first with the last step's curvature (no new Jacobian); it jumps 10–300× where it fires
            x = probe(g, mu, k)
            dec_probe = None if x is None else float(g @ x)
            if dec_probe is not None and dec_probe > dec_prev:
                rep.history.append({"step": k, "objective_before": F, "decrement": dec_probe, "rejected": "the decrement grew",
                                    "curvature": f"step {k - 1}'s (probe)"})
                rep.stop_reason = (f"step {k}: the Newton decrement grew (δ² {dec_prev:.3g} -> {dec_probe:.3g}, with step {k - 1}'s "
                                   "curvature): the Gauss-Newton model no longer describes the objective; stopped after "
                                   f"{k - 1} step(s)")
                break
        s = -(solve(w, g, k, mu) if lm else solve(w, g, k))
        if not torch.isfinite(s).all():
            raise NumericalError(f"Newton step {k} is not finite; increase the ridge")
        dec = float(-(g @ s))  # δ² = ∇Fᵀ (G + λI)⁻¹ ∇F ≥ 0
        if dec <= 0:
            rep.history.append({"step": k, "objective_before": F, "decrement": dec, "rejected": "not a descent direction"})
            rep.stop_reason = f"step {k}: the Newton direction is not a descent direction (δ² = {dec:.3g}); stopped"
            break
        if opts.stop_on_growth and dec_prev is not None and dec > dec_prev:
            rep.history.append({"step": k, "objective_before": F, "decrement": dec, "rejected": "the decrement grew"})
            rep.stop_reason = (f"step {k}: the Newton decrement grew (δ² {dec_prev:.3g} -> {dec:.3g}): the Gauss-Newton model no "
                               f"longer describes the objective; stopped after {k - 1} step(s)")
            break
        dec0 = dec if dec0 is None else dec0
        dec_prev = dec
        last = k == opts.max_steps
        # the decrement already meets the stopping rule: this step is probably the last, its gradient not needed
        likely_last = last or (opts.rel_decrement > 0 and (k > 1 or reference is not None) and dec <= opts.rel_decrement * dec0)
        if opts.line_search:
            # score the full step with its gradient (reused when accepted) unless the last full step was rejected or
            # this step is probably the last
            t, F_new, tries, g_new = armijo(objective, w, s, F, -dec, opts, grad_first=not likely_last and t_prev == 1.0,
                                            grad_retry=not likely_last, point=lambda t_, d=d, s=s: origin + (d + t_ * s))
            t_prev = t
        elif last:
            t, F_new, tries, g_new = 1.0, objective.value(origin + (d + s)), 1, None
        else:
            (F_new, g_new), t, tries = objective.value_and_grad(origin + (d + s)), 1.0, 1
        rep.history.append({"step": k, "objective_before": F, "objective_after": F_new, "decrement": dec, "t": t,
                            "backtracks": tries, "step_norm": float(s.norm()) * t})
        if lm:
            # the undamped model's predicted decrease of t·s: t·δ² − ½t²·sᵀ(G + λI)s, sᵀ(G + λI)s = δ² − μ‖s‖²
            pred = t * dec - 0.5 * t * t * (dec - mu * float(s @ s))
            rho = (F - F_new) / pred if pred > 0 else 0.0
            base = float(lam) if lam else 1.0
            # the full step was rejected (t < 1) or the model overstated the decrease: more damping; a good full step: less
            mu = max(4 * mu, base) if (t < 1 or rho < 0.25) else (mu / 4 if rho > 0.75 else mu)
            mu = 0.0 if mu < base / 64 else mu
            rep.history[-1].update(rho=rho, mu_next=mu)
        if t == 0.0:
            rep.stop_reason = f"step {k}: the line search found no decrease of the objective; stopped at step {k - 1}"
            break
        d = d + t * s
        w = origin + d
        rep.steps = k
        if on_step is not None:
            on_step(k, w)
        log.info("fastntk: Newton step %d: objective %.6g -> %.6g (t = %.3g, δ² = %.3g)", k, F, F_new, t, dec)
        if k == opts.max_steps:
            rep.stop_reason = f"max_steps = {opts.max_steps} reached (δ²/δ₁² = {dec / dec0:.3g})"
            break
        drop0 = (F - F_new) if drop0 is None else drop0
        # with LM damping a large μ shrinks δ² by itself: the step's actual decrease must have fallen too, on a step the
        # quadratic model predicted (ρ ≥ 1/4; a small decrease on a badly predicted step is not convergence)
        if (k > 1 or reference is not None) and converged(dec, dec0, F - F_new, drop0, rho if lm else None, opts.rel_decrement):
            rep.stop_reason = (f"Newton decrement δ² fell to {dec / dec0:.3g}·δ₁² ≤ {opts.rel_decrement} after {k} steps"
                               + (f" (and the step's decrease to {(F - F_new) / drop0:.3g} of the first)" if lm else ""))
            break
        F, g = (F_new, g_new) if g_new is not None else objective.value_and_grad(w)
    if not rep.stop_reason:
        rep.stop_reason = "no step taken"
    rep.dec0, rep.drop0 = dec0, drop0
    return w, d, rep


def stationarity_ridge(g_D: torch.Tensor, d: torch.Tensor) -> tuple[float, dict]:
    """``λ* = −⟨g_D, d⟩/‖d‖²`` (module docstring) and its diagnostics.

    Raises :class:`InvalidInputError` when ``d = 0`` (the model never moved from ``w0``) or ``λ* ≤ 0`` (the
    trained weights are not on a descent path from ``w0``: no ridge explains them; pass ``ridge=`` explicitly).
    """
    dd = float(d.double() @ d.double())
    if dd == 0.0:
        raise InvalidInputError("the trained PEFT weights equal w0: there is no fine-tuning to estimate a ridge from; pass ridge=")
    lam = -float(g_D.double() @ d.double()) / dd
    if not (lam > 0 and math.isfinite(lam)):
        raise InvalidInputError(
            f"the stationarity ridge is {lam:.3g} ≤ 0: the gradient at the trained weights points away from w0, so no ridge "
            "makes them stationary; pass ridge= explicitly")
    resid = float((g_D + lam * d).norm()) / max(float(g_D.norm()), 1e-300)
    return lam, {"ridge": lam, "rule": "stationarity: argmin_λ ‖∇L_D(w_t) + λ(w_t − w0)‖", "relative_residual": resid,
                 "grad_norm": float(g_D.norm()), "displacement_norm": math.sqrt(dd)}
