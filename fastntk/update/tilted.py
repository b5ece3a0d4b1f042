"""The update for models trained with their own loss (cross-entropy, ordinary MSE): tilted Newton steps.

See :mod:`fastntk.update.newton` for the tilted retain objective ``F_r`` and the stopping rule.  This module
builds it from the data and runs it:

1. one gradient pass over ``D_r`` and one over ``D_f`` at the trained weights ``w_t``: ``g_r``, ``g_f``,
   ``g_D = g_r + g_f`` (sum convention);
2. the ridge: given, or ``"auto"`` — the stationarity ridge ``λ* = −⟨g_D, d⟩/‖d‖²``, ``d = w_t − w0``;
3. the tilt ``b = g_D + λ(w_t − w0)`` (so ``∇F_r(w_t) = −g_f``);
4. Gauss-Newton steps on ``F_r`` with the curvature ``G_r(w) + λI`` at the current weights (CE:
   ``Σ J_iᵀ Λ_i J_i``, the loss-weighted Jacobian source; MSE: ``Σ J_iᵀ J_i``), each solve direct
   (float64 Cholesky, cached ``J``, small system) or by CG.

Cost: 2 gradient passes, then per step one Jacobian of ``D_r`` at the current weights, one solve, one
gradient pass and the line search's forward passes.  On the plain retain objective, ``NewtonOptions.warmup`` (off by
default; :func:`warmup_size`) takes the first steps on a uniform subsample of ``D_r`` instead.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass

import torch

from ..errors import InvalidInputError, NumericalError
from ..operators import GGNLinearOperator, make_jacobian
from ..operators.linearization import DEFAULT_MEMORY_BUDGET
from .newton import NewtonOptions, NewtonReport, gauss_newton, stationarity_ridge
from .objective import NetworkObjective
from .dense import jtv64, jv64, solve_primal_direct
from .solve import SolveContext, record_direct

log = logging.getLogger("fastntk")

__all__ = ["JacobianOptions", "TiltedResult", "tilted_newton", "RELATIVE_RIDGE", "FrozenCurvature", "sketch_size", "sketch_error"]

#: the preconditioning sketch (curvature_source="auto" on the relinearized plain retain objective): k rows per sample
#: and m = max(fraction·n_r, min(n_r, floor)) samples — measured in benchmarks/bench_ce.py (ce_sketch_*; the floor,
#: 1024 before, in ce_psketch_*: on 15 class requests of three families with n_r ≈ 1.5–2.3k, n_r/4 samples instead of
#: 1024 took 10.1 instead of 14.4 gradient passes (cheaper on 11 of 15; paired difference 4.3 ± 1.7) at a mean gap of
#: 1.05 instead of 1.23 pp — the update is the same minimizer, the sketch only shapes the steps and where they stop)
PRECONDITIONING_SKETCH_K = 1
PRECONDITIONING_SKETCH_M = (0.25, 256)

#: the gated sketch of the tilted objective (curvature_source="auto" where the exact J̃_r fits memory_budget): k rows per
#: sample on a fraction m of D_r (≈ k·m/C of the exact J̃'s backward passes), kept for the steps when its half-sketch
#: estimate of the first step's relative error is at most GATE_MAX_ERROR, else the exact J̃ is built and used.  Measured in
#: benchmarks/bench_sketch_grid.py (CE random 10 %, small CNN 3 seeds, resnet18 5k): estimates 0.19–0.28 at k = 2, m = n_r/2,
#: the avg gap within 0.15 pp of the exact update's, at 0.5–0.6× its cost
GATED_SKETCH_K, GATED_SKETCH_M, GATE_MAX_ERROR = 2, 0.5, 0.3
#: the gate needs at least this many samples in D_r (smaller: the exact J̃ is cheap anyway)
GATE_MIN_SAMPLES = 256
#: a rejected gated sketch is first grown by more draws (error ∝ 1/√draws: m·(e/GATE_MAX_ERROR)²·GATE_GROW_MARGIN draws
#: in all) when those rows are at most GATE_GROW_MAX of the exact J̃'s C·n_r rows (at most n_r − 1 more draws); its
#: estimate is taken again, and only a grown sketch still above GATE_MAX_ERROR gives way to the exact J̃
GATE_GROW_MARGIN, GATE_GROW_MAX = 1.2, 0.5
#: where the exact J̃ does not fit memory_budget, the gated sketch starts on at most this many draws (growing, by the same
#: rule, up to half of the draws that fit memory_budget — merging holds the old and the new rows — and kept there if its
#: estimate is still above GATE_MAX_ERROR: there is no exact J̃ to fall back to).  Measured (bench_scaling, resnet18 CE
#: random 10 %, k = 2): 8192 draws gave estimates 0.27 at 15k images and 0.40 at 60k
GATE_START_MAX = 8192

#: the subsampled warm-up (NewtonOptions.warmup) takes at least this many samples of D_r (or all of them), and runs only
#: where it takes at most half of D_r (smaller sets: the saving would not pay for the extra full steps)
WARMUP_MIN_SAMPLES = 512

#: ρ of the per-sample ridge rule ``λ = ρ·n_r`` (ridge="per-sample": weight decay ρ towards w0 on the mean retain loss)
PER_SAMPLE_RIDGE = 0.015
#: the rule ridge="auto" follows on the CE route: "per-sample" (measured in benchmarks/bench_ce.py, ce_ps_*: class
#: requests 0.16 / 1.13 / 1.43 pp on a small CNN, 0.81 on a ViT, 1.16 / 1.04 on resnet10t, where the relative rule gave
#: 0.21 / 0.75 / 1.07, 0.81 and 2.34 / 3.47: tr(G_r)/p differs 100× between these models — resnet10t's many BN
#: parameters of small curvature were under-regularized — while early-stopped Adam moves parameters by similar amounts)
AUTO_RIDGE = "per-sample"

#: κ of the relative damping rule ``λ = κ·tr(G_r(w_t))/p`` (ridge="auto"), chosen in benchmarks/bench_ce.py
RELATIVE_RIDGE = 0.1


@dataclass(frozen=True)
class JacobianOptions:
    """How Jacobians are built: ``strategy`` ``"auto" | "cached" | "stream"`` (cache when ``nC·p`` floats fit
    ``memory_budget`` bytes), streamed ``batch_size``, direct solves when cached and the system side
    ``min(p, nC) ≤ direct_limit``."""

    strategy: str = "auto"
    memory_budget: float | None = DEFAULT_MEMORY_BUDGET
    batch_size: int = 128
    direct_limit: int = 4096
    solver: str = "auto"  # "auto" | "direct" | "cg"
    progress: bool = False
    # the curvature of the CE route: "exact" (J̃ of D_r, C rows per sample), "sketch" (SketchedJacobian: sketch_k rows
    # per sample, unbiased, k backward passes per image), "auto" (see curvature_source(): the sketch where only the
    # steps depend on it — the relinearized plain retain objective —, else exact when J̃_r fits memory_budget)
    curvature_source: str = "auto"
    # rows per sample: None = auto (1 for the preconditioning sketch, 2 — two halves for the error estimate — when the
    # sketch replaces an exact J̃ that does not fit)
    sketch_k: int | None = None
    sketch_kind: str = "rademacher"
    # samples of D_r in each sketch: None (auto: PRECONDITIONING_SKETCH_M for the preconditioning sketch, else all n_r
    # or as many as fit memory_budget),
    # a fraction in (0, 1] of n_r, or a count (an int >= 1); drawn with replacement, rows scaled by √(n_r/m) (still
    # unbiased).  Each Newton step draws a fresh sketch (seed + step).
    sketch_m: float | int | None = None
    sketch_seed: int = 0

    def __post_init__(self):
        if self.curvature_source not in ("auto", "exact", "sketch"):
            raise InvalidInputError(f"curvature_source must be 'auto', 'exact' or 'sketch', got {self.curvature_source!r}")
        k = self.sketch_k
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise InvalidInputError(f"sketch_k must be None (auto) or an integer >= 1, got {k!r}")
        from ..operators.sketch import KINDS

        if self.sketch_kind not in KINDS:
            raise InvalidInputError(f"sketch_kind must be one of {KINDS}, got {self.sketch_kind!r}")
        m = self.sketch_m
        if m is not None and (isinstance(m, bool) or not isinstance(m, (int, float))
                              or (isinstance(m, float) and not 0 < m <= 1) or (isinstance(m, int) and m < 1)):
            raise InvalidInputError(f"sketch_m must be None, a fraction in (0, 1] or a count >= 1, got {m!r}")
        if self.strategy not in ("auto", "cached", "stream"):
            raise InvalidInputError(f"strategy must be 'auto', 'cached' or 'stream', got {self.strategy!r}")
        if self.solver not in ("auto", "direct", "cg"):
            raise InvalidInputError(f"solver must be 'auto', 'direct' or 'cg', got {self.solver!r}")
        if int(self.batch_size) < 1 or int(self.direct_limit) < 0:
            raise InvalidInputError("batch_size must be >= 1 and direct_limit >= 0")


def sketch_samples(m, n: int) -> int:
    """The number of samples of a sketch: ``m`` of :class:`JacobianOptions` (None, a fraction or a count) for ``n``."""
    if m is None:
        return n
    if isinstance(m, float):
        return n if m >= 1 else max(2, min(n - n % 2, 2 * int(round(m * n / 2))))  # even: two independent halves
    return min(int(m), n)


def sketch_size(jac: JacobianOptions, n: int, p: int, dtype, *, precondition: bool = False) -> tuple[int, int, str]:
    """``(k, m, note)``: the rows per sample and the samples of a sketch of ``n`` samples (``jac.sketch_k``/``sketch_m``
    when given; else ``k`` = :data:`PRECONDITIONING_SKETCH_K` for the preconditioning sketch, 2 otherwise (two halves
    for the error estimate), and ``m`` = :data:`PRECONDITIONING_SKETCH_M` for the preconditioning sketch, otherwise all
    ``n`` or as many as fit ``jac.memory_budget``); ``note`` says when ``m`` was cut to fit."""
    k = jac.sketch_k if jac.sketch_k is not None else (PRECONDITIONING_SKETCH_K if precondition else 2)
    if jac.sketch_m is not None:
        return k, sketch_samples(jac.sketch_m, n), ""
    if precondition:
        frac, floor = PRECONDITIONING_SKETCH_M
        return k, max(sketch_samples(frac, n), min(n, floor)), ""
    budget = float("inf") if jac.memory_budget is None else float(jac.memory_budget)
    row_bytes = k * p * torch.empty((), dtype=dtype).element_size()
    m = n if budget == float("inf") else max(2, min(n, int(budget // row_bytes)))
    if m < n:
        m -= m % 2
        return k, m, f"; m = {m} of {n} samples so that the sketch ({m}·{k} rows × p) fits memory_budget"
    return k, m, ""


def curvature_source(peft, X, w, loss: str, jac: JacobianOptions, C: int, step: int = 1, *,
                     fixed_point_exact: bool = False):
    """The curvature source of the CE route at ``w`` and why: the exact loss-weighted Jacobian (cached or streamed by
    ``jac.strategy``) or the unbiased sketch (:class:`fastntk.operators.SketchedJacobian`; ``step`` seeds its draws, so
    that relinearized steps use independent sketches).

    ``curvature_source="auto"``: where the iteration's fixed point does not depend on the curvature
    (``fixed_point_exact``: the relinearized plain retain objective, exact gradients — the curvature only shapes the
    steps), the preconditioning sketch (``PRECONDITIONING_SKETCH_K`` rows per sample, ``PRECONDITIONING_SKETCH_M``
    samples): ≈ k·m/(C·n_r) of an exact J̃'s backward passes.  Elsewhere (the tilted objective, whose first step is
    the answer) a gated sketch (k = 2, checked by its half-sketch estimate at step 1 and grown by more draws when the
    estimate is above ``GATE_MAX_ERROR``): where the exact J̃ fits ``memory_budget`` it starts on ``GATED_SKETCH_M·n_r``
    draws and gives way to the exact J̃ when growing fails; where it does not fit, it starts on at most
    ``GATE_START_MAX`` draws and grows at most to half of what fits (:func:`_scale_gate`).  Small ``D_r``, a streamed
    strategy or a given ``sketch_m``: the exact J̃ when it fits, else the sketch (all samples, as many as fit, or
    ``sketch_m``)."""
    from ..operators import SketchedJacobian, jacobian_bytes

    n = int(X.shape[0])
    need = jacobian_bytes(n, C, peft.p, peft.dtype)
    budget = float("inf") if jac.memory_budget is None else float(jac.memory_budget)
    use, precondition, gated = jac.curvature_source, False, False
    m0, cap = _scale_gate(jac, n, peft.p, peft.dtype)  # the gated sketch's start and limit where the exact J̃ does not fit
    if use == "auto" and not fixed_point_exact and need <= budget and jac.strategy != "stream" and \
            C > GATED_SKETCH_K * GATED_SKETCH_M and n >= GATE_MIN_SAMPLES:
        use, gated = "sketch", True
        why = (f"curvature_source='auto': the exact J̃ of D_r fits ({need / 1e6:.0f} MB), but first the gated sketch "
               f"(k = {jac.sketch_k or GATED_SKETCH_K} rows per sample on {GATED_SKETCH_M:g}·n_r samples, about "
               f"{(jac.sketch_k or GATED_SKETCH_K) * GATED_SKETCH_M / C:.2g} of the exact J̃'s backward passes): kept if its "
               f"half-sketch estimate of the first step's error is ≤ {GATE_MAX_ERROR:g}, else the exact J̃")
    elif use == "auto" and not fixed_point_exact and jac.strategy != "stream" and jac.sketch_m is None and \
            C > GATED_SKETCH_K * GATED_SKETCH_M and n >= GATE_MIN_SAMPLES and m0 < cap:
        use, gated = "sketch", True
        why = (f"curvature_source='auto': the exact J̃ of D_r needs {need / 1e6:.0f} MB > memory_budget {budget / 1e6:.0f} MB: "
               f"a gated sketch (k = {jac.sketch_k or GATED_SKETCH_K} rows per sample on {m0} draws), grown by its half-sketch "
               f"estimate of the first step's error until that is ≤ {GATE_MAX_ERROR:g}, at most to {cap} draws (half of what "
               "fits memory_budget)")
    elif use == "auto" and fixed_point_exact:
        use, precondition = "sketch", True
        frac, floor = PRECONDITIONING_SKETCH_M
        why = ("curvature_source='auto': relinearized steps on the plain retain objective (its minimizer does not depend on "
               f"the curvature, which only shapes the steps): the preconditioning sketch, k = {PRECONDITIONING_SKETCH_K}, "
               f"m = max({frac:g}·n_r, min(n_r, {floor})) (benchmarks/bench_ce.py), instead of the exact J̃ (C = {C} rows "
               "per sample)")
    elif use == "auto":
        use = "exact" if (need <= budget or jac.strategy == "stream") else "sketch"
        why = (f"curvature_source='auto': the exact J̃ of D_r needs {need / 1e6:.0f} MB "
               f"{'≤' if use == 'exact' else '>'} memory_budget {budget / 1e6:.0f} MB")
        if use == "sketch":
            why += f": sketched Gauss-Newton instead of C = {C} rows per sample"
    else:
        why = f"curvature_source={use!r} requested"
    if use == "exact":
        src = make_jacobian(peft, X, w=w, loss=loss, strategy=jac.strategy, memory_budget=jac.memory_budget,
                            batch_size=jac.batch_size, progress=jac.progress)
        return src, why
    if gated and need > budget:
        k, m, more = jac.sketch_k or GATED_SKETCH_K, m0, ""
    elif gated:
        k = jac.sketch_k or GATED_SKETCH_K
        m, more = (sketch_samples(jac.sketch_m, n) if jac.sketch_m is not None else sketch_samples(GATED_SKETCH_M, n)), ""
    else:
        k, m, more = sketch_size(jac, n, peft.p, peft.dtype, precondition=precondition)
    why += more
    src = SketchedJacobian(peft, X, k=k, kind=jac.sketch_kind, loss=loss, w=w, batch_size=jac.batch_size,
                           m=m, seed=int(jac.sketch_seed) + int(step) - 1)
    why = f"{why}; {src.reason} (step {step}: each relinearized step draws a fresh sketch)"
    # the growth limit in draws (None: GATE_GROW_MAX of the exact J̃, which fits)
    src.reason, src.gated, src.grow_cap = why, gated, (cap if gated and need > budget else None)
    return src, why


def _scale_gate(jac: JacobianOptions, n: int, p: int, dtype) -> tuple[int, int]:
    """``(start, cap)`` draws of the gated sketch where the exact J̃ does not fit: the cap is half of the draws whose
    ``k`` rows fit ``memory_budget`` (at most ``n``), the start ``min(GATED_SKETCH_M·n, GATE_START_MAX, cap)`` (even)."""
    k = jac.sketch_k or GATED_SKETCH_K
    budget = float("inf") if jac.memory_budget is None else float(jac.memory_budget)
    fit = n if budget == float("inf") else int(budget // (k * p * torch.empty((), dtype=dtype).element_size()))
    cap = max(2, min(n, fit // 2))
    cap -= cap % 2
    start = min(sketch_samples(GATED_SKETCH_M, n), GATE_START_MAX, cap)
    return start - start % 2, cap


def sketch_estimate(src, g: torch.Tensor, lam: float):
    """``(figures, (x, method))``: the half-sketch estimate of the relative error of ``(G̃ + λI)⁻¹ g`` (two independent
    halves of the sketch, :func:`fastntk.operators.half_sketch_error`) and the whole sketch's solve ``x`` it computed on
    the way (float64) with how (``"cholesky"`` or ``"cg"``); ``None`` in place of the pair where there is no estimate.
    ``(None, None)`` for an exact source."""
    if getattr(src, "strategy", "") != "sketch":
        return None, None
    from ..operators import half_sketch_error

    try:
        est = half_sketch_error(src, g, lam)
    except InvalidInputError as e:  # odd k without a subsample: no independent halves
        return {"estimated_relative_error": None, "why": str(e)}, None
    except NumericalError as e:  # a diagnostic: its failure is reported, the update goes on
        return {"estimated_relative_error": None, "why": f"the half-sketch solves failed: {e}"}, None
    return {"estimated_relative_error": float(est.error), "half_error": float(est.half_error),
            "rule": "‖x_a − x_b‖/(2‖x‖) from two independent half-sketches (first step)"}, (est.x, est.method)


def sketch_error(src, g: torch.Tensor, lam: float) -> dict | None:
    """The figures of :func:`sketch_estimate` (``None`` for an exact source)."""
    return sketch_estimate(src, g, lam)[0]


@dataclass
class TiltedResult:
    w: torch.Tensor  # w_trained + delta, bit for bit the last weights evaluated
    delta: torch.Tensor
    ridge: float
    ridge_info: dict
    newton: NewtonReport
    grad_forget_norm: float
    timings: dict
    strategy: str
    solver: str
    sketch: dict | None = None
    curvature: str = ""  # which curvature source ran and why
    memo: dict | None = None  # data loss / accuracy on D_r at every w the iteration evaluated (NetworkObjective.memo)
    line_search: str = ""  # on which samples the step was scored (all of D_r, or the sample of one_step_sample)


def tilted_newton(peft, retain, forget, *, w_trained: torch.Tensor, w0: torch.Tensor | None, loss: str,
                  ridge: float | str, newton: NewtonOptions, jac: JacobianOptions, ctx: SolveContext,
                  target_scale: float = 1.0, batch_size: int = 256, on_step=None, tilt: bool = True,
                  center: str = "w0", curvature=None, start: torch.Tensor | None = None,
                  sample: tuple | None = None) -> TiltedResult:
    """Unlearn ``forget`` from ``w_trained`` by tilted Gauss-Newton steps (module docstring).

    ``curvature``: a frozen curvature (e.g. :class:`FrozenCurvature` of the prepared CE ``Unlearner``) used for every
    step instead of a Jacobian of ``D_r`` at the current weights: ``curvature.trace()`` gives ``tr G_r`` (for the
    relative ridge) and ``curvature.solve(g, lam, ctx, name)`` solves ``(G_r + λI) s = g``.
    ``tilt=False``: the plain retain objective ``Σ_{D_r} ℓ_i + ½λ‖w − c‖²`` (no tilt; converges to its minimizer,
    which early-stopped retraining does not reach: kept as a variant).
    ``start``: (plain objective, a given ridge) start the steps from ``w_trained + start`` instead of ``w_trained`` —
    the warm start of a re-solve with another ridge (:mod:`fastntk.update.backoff`); no gradient pass at ``w_trained``
    (``grad_forget_norm`` is NaN), the stopping rule measured from the first step taken there.
    ``sample``: ``(indices into D_r, memo)`` — where one tilted step is all that runs, score it on these retain samples
    only (:func:`one_step_sample`: no gradient pass over all of ``D_r``); ``memo`` collects the evaluations on them (the
    do-no-harm check's, when they are its sample).
    """
    t0 = time.perf_counter()
    (X_r, y_r), (X_f, y_f) = retain, forget
    if center not in ("w0", "trained"):
        raise InvalidInputError(f"center must be 'w0' or 'trained', got {center!r}")
    center = w_trained.detach().clone() if (w0 is None or center == "trained") else w0.detach()
    if ridge == "stationarity" and w0 is None:
        raise InvalidInputError("ridge='stationarity' needs w0, the PEFT vector before fine-tuning; or pass ridge=")
    memo = {}  # D_r's data loss and accuracy at every w evaluated (the do-no-harm check reuses them)
    if newton.stop_on_growth is None:
        newton = dataclasses.replace(newton, stop_on_growth=tilt)
    fixed_point_exact = not tilt and newton.curvature == "relinearize" and curvature is None
    if start is not None:
        if tilt or isinstance(ridge, str):
            raise InvalidInputError("start= (a warm start) serves the plain retain objective (tilt=False) with a given ridge")
        newton = dataclasses.replace(newton, warmup=None)
    n_warm, warm_why = warmup_size(newton, jac, int(X_r.shape[0]), fixed_point_exact)
    obj_r = NetworkObjective(peft, X_r, y_r, loss=loss, target_scale=target_scale, batch_size=batch_size, memo=memo)
    use_sample, ls_why = one_step_sample(sample, tilt=tilt, newton=newton, ridge=ridge, start=start, warmup=n_warm,
                                         n_r=int(X_r.shape[0]))
    if use_sample:  # the retain data term and the tilt on the sample S (× n_r/|S|): ∇F_S(w_t) = −g_f still
        idx = torch.as_tensor(sample[0])
        obj_r = NetworkObjective(peft, X_r[idx], y_r[idx], loss=loss, target_scale=target_scale, batch_size=batch_size,
                                 memo=sample[1], weight=int(X_r.shape[0]) / int(idx.numel()))
        memo = {}
    head_why = _head_start_wanted(newton, fixed_point_exact, start, n_warm, ridge, tilt)
    if start is not None or head_why is None:  # the steps start elsewhere: no gradient is needed at w_trained
        L_r = g_r = g_f = None
    elif n_warm and ridge != "stationarity":  # the warm-up starts on its subsample: ∇L_r(w_t) is not needed, only L_r(w_t)
        L_r, g_r = obj_r.data_loss(w_trained)[0], None
    else:
        L_r, g_r = obj_r.value_and_grad(w_trained)
    if start is None and head_why is not None:
        g_f = NetworkObjective(peft, X_f, y_f, loss=loss, target_scale=target_scale, batch_size=batch_size).value_and_grad(w_trained)[1]
    t_grad = time.perf_counter() - t0
    steps = _StepSolver(peft, X_r, loss, jac, newton, ctx, curvature, _num_outputs(peft, X_f),
                        fixed_point_exact=fixed_point_exact)
    lam, rinfo = _select_ridge(ridge, None if g_r is None else g_r + g_f, w_trained, center, steps, int(X_r.shape[0]))
    F_r, first = _retain_objective(peft, X_r, y_r, loss, target_scale, batch_size, lam, center, w_trained, L_r, g_r, g_f, tilt,
                                   memo)
    if use_sample:
        F_r = dataclasses.replace(F_r, X=obj_r.X, y=obj_r.y, weight=obj_r.weight, memo=obj_r.memo)  # L_r, g_r: × n_r/|S|
    steps.lam = lam
    head = None
    if head_why is None:
        head, d_head = _head_then_full(F_r, peft, w_trained)
    if n_warm:
        w, delta, rep, winfo = _warm_then_full(F_r, first, steps, newton, jac, ctx, n_warm, warm_why, w_trained, on_step)
    elif head is not None and head["used"]:
        w, delta, rep = gauss_newton(F_r, w_trained, steps, newton, on_step=on_step, d_start=d_head,
                                     reference=(head["head_decrement"], head["decrease"]))
        winfo = None
        rep.warmup = {"used": False, "why": warm_why}
    else:
        w, delta, rep = gauss_newton(F_r, w_trained, steps, newton, first=first, on_step=on_step, d_start=start,
                                     first_by_value=not tilt and start is None)
        winfo = None
        rep.warmup = {"used": False, "why": warm_why}
    rep.head = head if head is not None else {"used": False, "why": head_why}
    info = steps.info
    if winfo is not None:
        for key in ("jacobian", "solve", "error estimate"):
            info[key] = info.get(key, 0.0) + winfo.get(key, 0.0)
    est = info.get("error estimate", 0.0)  # the half-sketch error estimate (sketched curvature only)
    t_head = head["seconds"] if head is not None and "seconds" in head else 0.0
    timings = {"gradients": t_grad, "jacobian": info["jacobian"], "solve": info["solve"], "error estimate": est,
               "objective": time.perf_counter() - t0 - t_grad - info["jacobian"] - info["solve"] - est - t_head}
    if t_head:
        timings["head stage"] = t_head
    return TiltedResult(w=w, delta=delta, ridge=lam, ridge_info=rinfo, newton=rep, grad_forget_norm=float("nan") if g_f is None else float(g_f.norm()),
                        timings=timings,
                        strategy=info["strategy"] or "", solver=info["solver"] or "",
                        sketch=None if info.get("sketch") is None else dict(info["sketch"], curvature=info.get("curvature")),
                        curvature=info.get("curvature") or "a given frozen curvature (prepared state)", memo=memo,
                        line_search=ls_why)


def _head_start_wanted(newton: NewtonOptions, fixed_point_exact: bool, start, n_warm: int, ridge, tilt: bool) -> str | None:
    """``None`` when the head stage (``NewtonOptions.head_start``) is to be tried, else why not."""
    if not newton.head_start:
        return "head_start=False (the default: NewtonOptions)"
    if tilt or not fixed_point_exact:
        return ("no head stage: only the plain relinearized retain objective, whose minimizer does not depend on where the "
                "steps start, takes one (the tilted objective's first step is the answer)")
    if start is not None:
        return "no head stage: a warm start (a re-solve of the ridge back-off) starts from its own weights"
    if n_warm:
        return "no head stage: the subsampled warm-up runs instead"
    if ridge == "stationarity":
        return "no head stage: the stationarity ridge needs the gradient at the trained weights"
    return None


def _head_then_full(F_r, peft, w_trained):
    """The head stage on ``F_r`` from ``w_trained``: ``(info, displacement or None)``."""
    from .headstart import head_block, head_stage

    block, why = head_block(peft)
    if block is None:
        log.info("fastntk: %s", why)
        return {"used": False, "why": why}, None
    w1, info = head_stage(F_r, w_trained, block)
    if w1 is None:
        log.info("fastntk: %s", info["why"])
        return info, None
    return info, w1 - w_trained


#: what a one-step tilted request scored on the retain sample records (one_step_sample)
ONE_STEP_SAMPLE_WHY = ("the step's line search on the do-no-harm check's retain sample S ({m} of {n_r}), the tilted objective's "
                       "data term and tilt taken on S × n_r/|S| (an unbiased estimate of the change of F_r; ∇F_S(w_t) = −g_f "
                       "as on all of D_r, so the step is the same): no gradient pass over all of D_r, and the check "
                       "re-scores nothing")


def one_step_sample(sample, *, tilt: bool, newton: NewtonOptions, ridge, start, warmup: int, n_r: int) -> tuple[bool, str]:
    """Whether a tilted request scores its step on the retain sample ``sample = (indices, memo)`` instead of all of
    ``D_r``, and why.  Only one step needs nothing else of ``D_r``: its direction ``(G_r + λI)⁻¹ g_f`` uses the
    curvature (its own samples) and ``g_f``; the line search needs ``F_r(w_t + t·s) − F_r(w_t)``, whose data term and tilt
    ``Σ_S [ℓ_i(w_t + t·s) − ℓ_i(w_t) − t·∇ℓ_i(w_t)·s]·n_r/|S|`` a uniform sample estimates without bias.  A second step
    would need ``∇F_r`` at the new weights, hence all of ``D_r``; the stationarity ridge needs ``∇L_D``."""
    if sample is None:
        return False, "the step scored on all of D_r"
    m = int(len(sample[0]))
    if m >= n_r:
        return False, f"the step scored on all of D_r (the do-no-harm sample is all of it, {n_r} samples)"
    if not tilt or newton.max_steps != 1 or start is not None or warmup or ridge == "stationarity":
        return False, ("the step scored on all of D_r: " + ("the plain retain objective" if not tilt else
                       "more than one Newton step (each needs ∇F_r on all of D_r)" if newton.max_steps != 1 else
                       "the stationarity ridge needs ∇L_D" if ridge == "stationarity" else "a warm start or warm-up"))
    return True, ONE_STEP_SAMPLE_WHY.format(m=m, n_r=n_r)


def warmup_size(newton: NewtonOptions, jac: JacobianOptions, n_r: int, fixed_point_exact: bool) -> tuple[int, str]:
    """``(|S|, why)`` of the subsampled warm-up (``NewtonOptions.warmup``), ``|S| = 0`` when it does not run."""
    frac = newton.warmup
    if not frac:
        return 0, "warmup=None: every step on all of D_r"
    if not fixed_point_exact:
        return 0, ("no warm-up: only the plain relinearized retain objective, whose minimizer does not depend on where the "
                   "steps start, takes one (the tilted objective's first step is the answer)")
    if newton.rel_decrement <= 0:
        return 0, "no warm-up: a fixed number of steps was requested"
    if jac.curvature_source == "exact":
        return 0, "no warm-up: curvature_source='exact' (an exact J̃ of D_r per step dominates the cost)"
    m = max(int(math.ceil(frac * n_r)), min(n_r, WARMUP_MIN_SAMPLES))
    if 2 * m > n_r:
        return 0, (f"no warm-up: its subsample (max({frac:g}·n_r, min(n_r, {WARMUP_MIN_SAMPLES})) = {m} samples) would be more "
                   f"than half of D_r (n_r = {n_r})")
    return m, (f"warm-up on {m} of {n_r} retain samples (max({frac:g}·n_r, {WARMUP_MIN_SAMPLES}), uniform, loss × n_r/{m}) "
               "until the stopping rule, then steps on all of D_r")


def _warm_then_full(F_r, first, steps, newton, jac, ctx, m, why, w_trained, on_step):
    """The subsampled warm-up then the full steps (``NewtonOptions.warmup``) on the plain retain objective ``F_r``:
    ``(w, Δ, report, solver info)``."""
    n_r = F_r.n
    gen = torch.Generator().manual_seed(int(jac.sketch_seed) + 104729)
    idx = torch.randperm(n_r, generator=gen)[:m].sort().values
    # the same objective (loss, ridge, centre) on the subsample, its data term × n_r/m; its own memo (other samples)
    F_S = dataclasses.replace(F_r, X=F_r.X[idx], y=F_r.y[idx], weight=n_r / m, memo=None)
    # its curvature: the same unbiased sketch of G_r, on m samples (it only preconditions the warm-up's steps)
    jac_w = jac if jac.sketch_m is not None else dataclasses.replace(jac, sketch_m=m)
    warm = _StepSolver(steps.peft, steps.X_r, steps.loss, jac_w, newton, ctx, None, steps.C, fixed_point_exact=True)
    warm.lam = steps.lam
    log.info("fastntk: %s", why)
    _, d1, rep1 = gauss_newton(F_S, w_trained, warm, newton, on_step=on_step)
    ref = (rep1.dec0, rep1.drop0) if (rep1.steps > 0 and rep1.dec0 is not None) else None
    steps.step_offset = rep1.steps
    first2 = first if rep1.steps == 0 else None
    on2 = None if on_step is None else (lambda k, w_: on_step(rep1.steps + k, w_))
    w, d, rep2 = gauss_newton(F_r, w_trained, steps, newton, first=first2, on_step=on2,
                              d_start=d1 if rep1.steps else None, reference=ref)
    rep = NewtonReport(steps=rep1.steps + rep2.steps,
                       stop_reason=f"{rep2.stop_reason} (on all of D_r, after {rep1.steps} warm-up step(s) on {m} samples: "
                                   f"{rep1.stop_reason})",
                       history=[dict(h, phase=f"warm-up ({m} of {n_r})") for h in rep1.history] +
                               [dict(h, phase="all of D_r") for h in rep2.history],
                       dec0=rep2.dec0, drop0=rep2.drop0,
                       warmup={"used": True, "why": why, "samples": m, "n_retain": n_r, "steps": rep1.steps,
                               "full_steps": rep2.steps, "stop_reason": rep1.stop_reason})
    winfo = {k: warm.info.get(k, 0.0) for k in ("jacobian", "solve", "error estimate")}
    return w, d, rep, winfo


def _select_ridge(ridge, g_D: torch.Tensor, w_trained: torch.Tensor, center: torch.Tensor, steps: "_StepSolver", n_r: int):
    """``(λ, how)``: given, the stationarity ridge, the relative rule ``κ·tr(G_r(w_t))/p`` (from the first curvature)
    or the per-sample rule ``ρ·n_r``; ``"auto"`` follows :data:`AUTO_RIDGE`."""
    rule = AUTO_RIDGE if ridge == "auto" else ridge
    if rule == "per-sample":
        lam = PER_SAMPLE_RIDGE * n_r
        rinfo = {"ridge": lam, "rule": f"per-sample: λ = ρ·n_r, ρ = {PER_SAMPLE_RIDGE:g} (weight decay ρ towards w0 on the mean "
                 f"retain loss; benchmarks/bench_ce.py){' (ridge=auto)' if ridge == 'auto' else ''}", "rho": PER_SAMPLE_RIDGE}
        return lam, rinfo
    if ridge == "stationarity":
        lam, rinfo = stationarity_ridge(g_D, w_trained - center)
        log.info("fastntk: stationarity ridge λ = %.4g (relative residual %.3f)", lam, rinfo["relative_residual"])
    elif rule == "relative":
        tr = steps.trace(w_trained)
        lam = RELATIVE_RIDGE * tr / w_trained.numel()
        rinfo = {"ridge": lam, "rule": f"relative: λ = κ·tr(G_r(w_t))/p, κ = {RELATIVE_RIDGE:g} (benchmarks/bench_ce.py)",
                 "trace_over_p": tr / w_trained.numel(), "kappa": RELATIVE_RIDGE,
                 "trace_source": "exact" if steps.curvature is not None or getattr(steps.src, "strategy", "") != "sketch"
                 else f"estimated from the first sketch (unbiased; {steps.src.reason.split('; ', 1)[-1]})"}
        if not lam > 0:
            raise InvalidInputError("the Gauss-Newton of the retain set is zero at the trained weights (tr G_r = 0); pass ridge=")
    else:
        lam, rinfo = float(ridge), {"ridge": float(ridge), "rule": "given"}
    if not lam > 0:
        raise InvalidInputError(f"the Gauss-Newton steps need ridge > 0, got {lam}")
    return lam, rinfo


def _retain_objective(peft, X_r, y_r, loss, target_scale, batch_size, lam, center, w_trained, L_r, g_r, g_f, tilt, memo=None):
    """``(F_r, (F_r(w_t), ∇F_r(w_t)))``: the tilted (``b = g_D + λ(w_t − c)``, ``∇F_r(w_t) = −g_f``) or plain objective."""
    d = w_trained - center
    if g_r is None:  # the warm-up (or a warm start) computes its own first gradient
        return NetworkObjective(peft, X_r, y_r, loss=loss, target_scale=target_scale, ridge=lam, center=center,
                                batch_size=batch_size, memo=memo), None
    F0 = L_r + 0.5 * lam * float(d @ d)  # the tilt term is 0 at its reference w_t
    if tilt:
        F_r = NetworkObjective(peft, X_r, y_r, loss=loss, target_scale=target_scale, ridge=lam, center=center,
                               tilt=g_r + g_f + lam * d, tilt_ref=w_trained.detach().clone(), batch_size=batch_size, memo=memo)
        return F_r, (F0, -g_f)
    F_r = NetworkObjective(peft, X_r, y_r, loss=loss, target_scale=target_scale, ridge=lam, center=center, batch_size=batch_size,
                           memo=memo)
    return F_r, (F0, g_r + lam * d)


class _StepSolver:
    """``(G_r(w) + λI) s = g`` for Newton step ``k``: the curvature source at ``w`` (rebuilt per step, kept when
    ``curvature='frozen'``, or a given frozen curvature), solved directly (cached ``J``, small system) or by CG; the
    bookkeeping (what ran, seconds, the half-sketch estimate of the first step) in ``info``."""

    def __init__(self, peft, X_r, loss, jac, newton, ctx, curvature, C, fixed_point_exact=False):
        self.peft, self.X_r, self.loss, self.jac, self.newton, self.ctx, self.curvature, self.C = (
            peft, X_r, loss, jac, newton, ctx, curvature, C)
        self.fixed_point_exact = fixed_point_exact
        self.step_offset = 0  # added to the step number that seeds each sketch (after a warm-up: fresh draws)
        self.prev = None  # the last relinearized step's curvature source (for the growth probe)
        self.lam = None
        self.src = None  # the current curvature source (kept across steps when frozen)
        self.factor = None
        self.gate = None  # the gated sketch's verdict at step 1 (None: no gate; else a dict with "accepted")
        self.first_x = None  # (source, x, method): the half-sketch estimate's whole-sketch solve of step 1, reused as the step
        self.last_precond = None  # the preconditioner of the last CG solve (preconditioner='auto'), None: plain CG
        self.info = {"strategy": None, "solver": None, "jacobian": 0.0, "solve": 0.0}

    def _source(self, w, step: int = 1):
        self.prev = None  # the probe's curvature is not needed once a new one is built (never two alive at once)
        t = time.perf_counter()
        jac = self.jac if not (self.gate and not self.gate["accepted"]) else dataclasses.replace(self.jac, curvature_source="exact")
        self.src, self.info["curvature"] = curvature_source(self.peft, self.X_r, w, self.loss, jac, self.C,
                                                            step + self.step_offset, fixed_point_exact=self.fixed_point_exact)
        if jac is not self.jac:
            self.info["curvature"] = f"{self.gate['why']}: the exact J̃ of D_r (step {step})"
        self.info["jacobian"] += time.perf_counter() - t
        return self.src

    def _gate(self, src, g, w):
        """Step 1 of a gated sketch: its half-sketch estimate decides between the sketch and the exact ``J̃``; returns
        the source for the step and the estimate to report (``None`` when the sketch was rejected)."""
        est = self._estimate(src, g)
        e = None if est is None else est.get("estimated_relative_error")
        ok = e is not None and e <= GATE_MAX_ERROR
        why = (f"gated sketch accepted: estimated error {e:.3g} ≤ {GATE_MAX_ERROR:g}" if ok else
               "gated sketch rejected: " + (f"estimated error {e:.3g} > {GATE_MAX_ERROR:g}" if e is not None
                                            else f"no estimate ({(est or {}).get('why', 'no halves')})"))
        grown = None if ok or e is None else self._grow(src, g, w, e)
        if grown is not None:
            src, est, ok, why = grown
            e = None if est is None else est.get("estimated_relative_error")
        if not ok and getattr(src, "grow_cap", None) is not None:  # the exact J̃ does not fit: the largest sketch stays
            ok, why = True, f"{why}; kept: the exact J̃ does not fit memory_budget and the sketch may not grow further"
            if est is None:
                est = {"estimated_relative_error": None}
            self.info["curvature"] = src.reason = f"{src.reason}; {why}"
        self.gate = {"accepted": ok, "estimate": e, "why": why}
        log.info("fastntk: %s", why)
        if ok:
            return src, dict(est, gate=why)
        self.first_x = None
        return self._source(w, 1), None

    def _grow(self, src, g, w, e: float):
        """A rejected gated sketch grown by more draws (:data:`GATE_GROW_MARGIN`, :data:`GATE_GROW_MAX`):
        ``(sketch, estimate, accepted, why)``, or ``None`` when the predicted size is not worth it (the exact J̃ then)."""
        from ..operators import SketchedJacobian

        if self.jac.sketch_m is not None:  # a size the caller fixed is not grown (kept, or replaced by the exact J̃)
            return None
        m, n_r, cap = int(src.n), int(src.n_total), getattr(src, "grow_cap", None)
        need = int(math.ceil(m * (e / GATE_MAX_ERROR) ** 2 * GATE_GROW_MARGIN))
        if cap is not None:  # the exact J̃ does not fit: grow as far as memory allows
            need = min(need, int(cap))
        add = need - m + (need - m) % 2  # even: the halves split the draws
        # one draw of more sketch takes at most n_r − 1 draws (n_r would be a sketch of all samples, not a subsample)
        add = min(add, (n_r - 1) - (n_r - 1) % 2)
        if add <= 0 or m >= n_r or (cap is None and src.k * (m + add) > GATE_GROW_MAX * self.C * n_r):
            return None
        t = time.perf_counter()
        more = SketchedJacobian(self.peft, self.X_r, k=src.k, kind=src.kind, loss=self.loss, w=w, m=add,
                                batch_size=self.jac.batch_size, seed=int(self.jac.sketch_seed) + 7919, engine=src.engine)
        big = src.merged(more)
        del more
        self.info["jacobian"] += time.perf_counter() - t
        est = self._estimate(big, g)
        e2 = None if est is None else est.get("estimated_relative_error")
        ok = e2 is not None and e2 <= GATE_MAX_ERROR
        why = (f"gated sketch grown: estimated error {e:.3g} > {GATE_MAX_ERROR:g} on {m} draws, so {add} more (error ∝ "
               f"1/√draws: {m + add} in all, {src.k * (m + add)} rows against the exact J̃'s {self.C * n_r}); estimated error "
               + (f"{e2:.3g} ≤ {GATE_MAX_ERROR:g}: kept" if ok else
                  (f"{e2:.3g}" if e2 is not None else "unavailable") + f", still > {GATE_MAX_ERROR:g}: rejected"))
        big.reason, big.gated, big.grow_cap = f"{src.reason}; {why} ({big.reason})", True, cap
        if ok:
            self.info["curvature"] = big.reason
        return big, est, ok, why

    def _estimate(self, src, g):
        """The half-sketch estimate of step 1 (its seconds in ``info["error estimate"]``); its whole-sketch solve is kept
        in ``first_x`` for the step itself."""
        t_e = time.perf_counter()
        est, x = sketch_estimate(src, g, self.lam)
        self.first_x = None if x is None else (src, *x)
        self.info["error estimate"] = self.info.get("error estimate", 0.0) + time.perf_counter() - t_e
        return est

    def _reuse_first(self, src, g, mu: float, name: str):
        """Step 1's solve from the half-sketch estimate (same sketch, right-hand side and ``λ``; no LM damping yet; a
        solver the caller forced is respected), when its true residual meets the solve tolerance: ``(x, how)``, recorded
        like a direct solve; else ``None``."""
        first, self.first_x = self.first_x, None
        if first is None or first[0] is not src or float(mu) != 0.0:
            return None
        method = first[2]
        if (self.jac.solver == "cg" and not method.startswith("cg")) or (self.jac.solver == "direct" and method != "cholesky"):
            return None
        t = time.perf_counter()
        x = first[1].double()
        gd = g.double()
        res, bn = float((jtv64(src.J, jv64(src.J, x)) + self.lam * x - gd).norm()), float(gd.norm())
        if not res <= max(self.ctx.rtol * bn, 1e3 * torch.finfo(torch.float64).eps * bn):
            return None
        how = ("direct Cholesky" if method == "cholesky" else "conjugate gradients (matrix-free"
               + (", Nyström-preconditioned)" if "Nyström" in method else ")")) + (
            " of the whole sketch, the solve the half-sketch error estimate made (step 1 needs none of its own)")
        record_direct(self.ctx.solves, name, x, residual=res, rhs_norm=bn, tolerance=self.ctx.rtol * bn, t0=t,
                      method=how, matvecs=2)
        return x.to(g.dtype), how

    def _direct(self, src) -> bool:
        """Solve ``(G + λI) s = g`` of ``src`` by a direct Cholesky (cached J and ``solver='direct'``, or ``'auto'`` with
        ``min(p, nC) ≤ direct_limit`` and a float64 Gram of at most ``DIRECT_GRAM_FLOPS``) rather than by CG."""
        from ..operators.sketch import dense_is_cheap

        jac = self.jac
        return jac.solver == "direct" or (jac.solver == "auto" and hasattr(src, "J") and
                                          dense_is_cheap(src.nC, src.p, int(jac.direct_limit)))

    def _solve_primal(self, src, g, lam: float, name: str):
        if self._direct(src):
            return solve_primal_direct(src, g, lam, self.ctx, name)
        self.last_precond = self._auto_precond(src, lam)
        return self.ctx.solve(GGNLinearOperator(src, lam), g, name, M=self.last_precond)

    def _auto_precond(self, src, lam: float):
        """``preconditioner="auto"``: the Nyström preconditioner (rank ``NYSTROM_RANK``) of a curvature source whose rows
        are in memory — built once per source by one GEMM over its rows (kept on the source, re-shifted for another
        ``λ + μ``) — or ``None`` (another preconditioner asked for, a streamed source, a host or CuPy backend, a failed
        build: plain CG)."""
        if self.ctx.preconditioner != "auto" or not hasattr(src, "J") or self.ctx.backend not in ("auto", "torch"):
            return None
        P = getattr(src, "_nystrom_pc", None)
        if P is None and not hasattr(src, "_nystrom_pc"):
            from ..operators.sketch import nystrom_for

            P = nystrom_for(GGNLinearOperator(src, 0.0), lam)
            try:
                src._nystrom_pc = P  # lives (and dies) with its source
            except AttributeError:  # a source that takes no attributes: built again on its next solve
                pass
        if P is None:
            return None
        return P if float(P.ridge) == float(lam) else P.with_ridge(lam)

    def probe(self, g, mu: float = 0.0, k: int = 0):
        """``(G_prev + λI + μI)⁻¹ g`` with the last step's curvature (relinearized route; ``None`` when there is none or
        the curvature is frozen, where the step itself costs no Jacobian): the cheap growth test of ``gauss_newton``."""
        if self.curvature is not None or self.newton.curvature == "frozen" or self.prev is None:
            return None
        t = time.perf_counter()
        x = self._solve_primal(self.prev, g, self.lam + float(mu), f"step {k}: growth probe (step {k - 1}'s curvature)")
        self.info["solve"] += time.perf_counter() - t
        return x

    def trace(self, w) -> float:
        """``tr G_r`` at ``w`` (the given frozen curvature's, or that of the first source, built here and kept)."""
        if self.curvature is not None:
            return self.curvature.trace()
        return float(self._source(w).diag_ggn().double().sum())

    def __call__(self, w, g, k, mu: float = 0.0):
        info, jac = self.info, self.jac
        lam = self.lam + float(mu)  # μ: the Levenberg-Marquardt damping of NewtonOptions(damping="lm")
        t = time.perf_counter()
        if self.curvature is not None:
            info["strategy"], info["solver"] = self.curvature.strategy, self.curvature.method
            x = self.curvature.solve(g, lam, self.ctx, f"step {k}: (G_r(w_t) + λI) s = −∇F_r(w) (frozen curvature)")
            info["solve"] += time.perf_counter() - t
            return x
        src = self.src if (self.src is not None and (k == 1 or self.newton.curvature == "frozen")) else self._source(w, k)
        if k == 1 and "sketch" not in info and getattr(src, "gated", False):
            src, info["sketch"] = self._gate(src, g, w)
            self.src = src  # the source the gate settled on (grown, or exact): a frozen curvature keeps this one
        elif k == 1 and "sketch" not in info and self.fixed_point_exact and getattr(src, "strategy", "") == "sketch":
            info["sketch"] = {"estimated_relative_error": None,
                              "why": "not estimated: the sketch only preconditions steps whose fixed point uses exact gradients "
                                     "(the plain retain objective), so its error is not the update's"}
        elif k == 1 and "sketch" not in info:
            info["sketch"] = self._estimate(src, g)
        info["strategy"] = f"{src.strategy} ({getattr(src, 'reason', '')})"
        t = time.perf_counter()
        cached = hasattr(src, "J")
        if jac.solver == "direct" and not cached:
            raise InvalidInputError("solver='direct' needs the cached Jacobian (strategy='cached' or a larger memory_budget)")
        name = f"step {k}: (G_r(w) + λI) s = −∇F_r(w)"
        reused = self._reuse_first(src, g, mu, name) if k == 1 else None
        x = None if reused is None else reused[0]
        direct_ok = jac.solver == "direct" or (jac.solver == "auto" and cached)
        if reused is not None:
            info["solver"] = reused[1]
        elif self.newton.curvature == "frozen" and direct_ok and (jac.solver == "direct" or src.p <= int(jac.direct_limit)):
            if self.factor is None:  # G_r(w_t) and its Cholesky factor, once for every step
                self.factor = FrozenCurvature.from_source(src)
            info["solver"] = f"direct Cholesky of G_r(w_t) + λI (p = {src.p}), factored once (curvature='frozen')"
            x = self.factor.solve(g, lam, self.ctx, name + " (frozen curvature)")
        else:
            if self._direct(src):
                info["solver"] = f"direct Cholesky (cached J, min(p, n_r·C) = {min(src.p, src.nC)} ≤ {jac.direct_limit})" \
                    if jac.solver == "auto" else "direct Cholesky (solver='direct' requested)"
            else:
                big = hasattr(src, "J") and jac.solver == "auto" and min(src.p, src.nC) <= int(jac.direct_limit)
                info["solver"] = "conjugate gradients (matrix-free)" + (" (solver='cg' requested)" if jac.solver == "cg" else "") + (
                    f" (min(p, rows) = {min(src.p, src.nC)} ≤ {jac.direct_limit}, but its float64 Gram would cost more than "
                    "DIRECT_GRAM_FLOPS)" if big else "")
            x = self._solve_primal(src, g, lam, name)
            if self.last_precond is not None:  # this step's CG ran preconditioned
                info["solver"] += f", Nyström-preconditioned (rank {self.last_precond.rank}, from the cached rows; preconditioner='auto')"
        if self.newton.curvature != "frozen":
            self.prev, self.src = src, None  # relinearized: the next step builds its own
        info["solve"] += time.perf_counter() - t
        return x


def _num_outputs(peft, X) -> int:
    with torch.no_grad():
        return int(peft.functional()(peft.vector(), X[:1].to(peft.device, peft.dtype)).shape[1])


class FrozenCurvature:
    """``G_r = G_D − G_F`` at the prepared weights, from a cached loss-weighted ``J̃_D`` (n·C × p) and its float64
    Gram ``G_D`` (p × p): the prepared CE ``Unlearner``'s curvature.  ``rows_forgotten`` are the rows of ``J̃_D`` of
    every sample forgotten so far (``G_F = J̃_Fᵀ J̃_F``); each solve factors ``G_D − G_F + λI`` (p × p, Cholesky)."""

    strategy = "cached (prepared J̃_D at the trained weights)"
    method = "direct Cholesky of the downdated G_D − G_F + λI (frozen at the prepared weights)"

    def __init__(self, G_D: torch.Tensor, trace_D: float, J_F: torch.Tensor):
        from .dense import gram64

        self.G_D, self.trace_D = G_D, float(trace_D)
        self.J_F = J_F
        self.G_F = gram64(J_F) if J_F.shape[0] else torch.zeros_like(G_D)
        self._factor = {}

    @classmethod
    def from_source(cls, src) -> "FrozenCurvature":
        """From a cached (loss-weighted) Jacobian source of the retain set: ``G_r = J̃_rᵀ J̃_r``, nothing forgotten."""
        from .dense import gram64

        G = gram64(src.J)
        return cls(G, float(G.diagonal().sum()), src.J[:0])

    def trace(self) -> float:
        return self.trace_D - float(self.G_F.diagonal().sum())

    def solve(self, g: torch.Tensor, lam: float, ctx: SolveContext, name: str) -> torch.Tensor:
        from .dense import cholesky64
        from .solve import record_direct

        t = time.perf_counter()
        if lam not in self._factor:
            H = self.G_D - self.G_F
            H.diagonal().add_(lam)
            self._factor = {lam: (H, cholesky64(H, f"G_r + λI (λ = {lam:.4g}, prepared)"))}  # the latest shift only
        H, L = self._factor[lam]
        gd = g.double()
        x = torch.cholesky_solve(gd.unsqueeze(1), L)[:, 0]
        res = float((H @ x - gd).norm())
        record_direct(ctx.solves, name, x, residual=res, rhs_norm=float(gd.norm()),
                      tolerance=max(ctx.rtol * float(gd.norm()), 1e-12), t0=t, method="cholesky (prepared, downdated)")
        return x.to(g.dtype)
