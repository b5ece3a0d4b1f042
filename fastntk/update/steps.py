"""Relinearized Gauss-Newton steps after the first MSE update (``unlearn(..., steps=k)``, ``k > 1``).

Each step relinearizes the *network* at the current weights ``w`` and takes a Gauss-Newton step on its retain
objective ``L_r(w) = Σ_{D_r} ½‖f(x; w) − Y‖² + ½λ‖w − w̄‖²``::

    w ← w + t·s,   (G_r(w) + λI) s = −∇L_r(w) = J_r(w)ᵀ(Y_r − f(X_r; w)) − λ(w − w̄)

with ``t`` by Armijo backtracking on ``L_r`` (:func:`fastntk.update.newton.armijo`; off: ``t = 1``).  It corrects
the linearization error of the first step when fine-tuning was not linearized; each step costs one Jacobian of
``D_r`` and one solve.
"""
from __future__ import annotations

import time

import torch

from ..errors import NumericalError
from ..operators import make_jacobian
from .forms import newton_step
from .inputs import targets
from .newton import NewtonOptions, armijo
from .objective import NetworkObjective

__all__ = ["relinearized_steps"]


def _step(k, plan, opts, ctx, peft, X_r, Y_r, objective, w, w_bar, lam, progress):
    jac = opts.jacobian
    t = time.perf_counter()
    src = make_jacobian(peft, X_r, w=w, loss="mse", strategy=jac.strategy, memory_budget=jac.memory_budget,
                        batch_size=jac.batch_size, progress=progress)
    t_jac = time.perf_counter() - t
    z = Y_r - src.outputs().reshape(-1)
    g = src.jtmat(z.unsqueeze(1))[:, 0] - lam * (w - w_bar)  # −∇L_r(w), J at w
    s = newton_step(src, g, lam, ctx, direct=plan.direct, name=f"step {k}: H_r(w) Δ = −∇L_r(w)", key=("step", k))
    L0 = 0.5 * float(z @ z) + 0.5 * lam * float((w - w_bar) @ (w - w_bar))
    t_step, L1, tries, _ = armijo(objective, w, s, L0, -float(g @ s), NewtonOptions()) if opts.line_search else (1.0, None, 0, None)
    return t_step * s, {"step": k, "t": t_step, "objective_before": L0, "objective_after": L1, "backtracks": tries}, t_jac


def relinearized_steps(plan, opts, ctx, peft, retain, w, w_bar, lam_r: float, C: int, timings: dict, info: dict,
                       progress=False) -> torch.Tensor:
    """Steps ``2 … plan.steps`` from ``w`` (module docstring); returns the final weights."""
    X_r, y_r = retain
    if plan.steps <= 1:
        return w
    Y_r = targets(y_r, C, opts.target_scale, peft.dtype, peft.device)
    objective = NetworkObjective(peft, X_r, y_r, loss="mse", target_scale=opts.target_scale, ridge=lam_r, center=w_bar,
                                 batch_size=opts.jacobian.batch_size)
    history = info.setdefault("line_search", [])
    for k in range(2, plan.steps + 1):
        t = time.perf_counter()
        dk, rec, t_jac = _step(k, plan, opts, ctx, peft, X_r, Y_r, objective, w, w_bar, lam_r, progress)
        timings["jacobian"] += t_jac
        timings["solve"] += time.perf_counter() - t - t_jac
        history.append(rec)
        if not torch.isfinite(dk).all():
            raise NumericalError(f"linearization step {k} produced NaN/Inf; the model was not changed")
        w = w + dk.to(w.dtype)
    plan.choose("steps", plan.steps, f"{plan.steps - 1} Gauss-Newton step(s) on the retain objective after the first update, "
                                     "relinearized each time")
    return w
