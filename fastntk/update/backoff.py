"""A smaller ridge instead of a damped update, for class requests (the plain retain objective).

A class request minimizes ``Σ_{D_r} ℓ_i + ½λ‖w − w0‖²``: the ridge towards the weights before fine-tuning stands for
retraining's early stopping, with ``λ`` chosen automatically (``ridge="auto"``: ``ρ·n_r``).  When the minimizer fails the
do-no-harm check (:mod:`fastntk.update.guard`), the ridge pulled the model further back towards ``w0`` than a retraining
by the user's recipe would go: the model was fit more tightly than the rule assumes.  Damping the update
(``w_t + sΔ``) then moves back towards the *trained* weights — which still know the forgotten class, so a damped class
update leaves the class partly remembered (resnet10t, ridge × 4: forgotten-class accuracy back to 28–43 %,
``trace_ce_ridge_r10_guard2x``).  A smaller ridge keeps the forgotten labels out of the objective and fits ``D_r``
more tightly.  So, before any damping, the iteration is re-run with ``λ ← λ/2`` from the last iterate (a warm start,
:func:`fastntk.update.tilted.tilted_newton` ``start=``), up to ``HarmTolerance.ridge_backoff`` times, until the
full-size update passes; only then does the usual damping (or refusal) apply to the last re-solve.

The back-off asks for more than the check: the retain accuracy within ``backoff_acc_drop`` (2 points, + 3σ of the
sampled accuracy) of the original's, where damping starts at ``acc_drop`` (5 points).  A lower retain accuracy than the
original's after forgetting a class is the mark of a ridge too strong for the model (resnet18, class 1 of
``trace_ce_ridge_r18``: retain accuracy 4.6 points down at the default ridge, 1.69 pp from retraining; at half the
ridge 0.64 pp, at a quarter 0.41 pp), and re-solving with a smaller ridge costs the forgotten class nothing.

Only where ``λ`` was the library's choice: a ridge the caller gave is theirs, and its update is damped as before.  Every
try (ridge, steps, retain loss and accuracy against the bound) is recorded in ``result.info["ridge_backoff"]`` and logged.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Callable

log = logging.getLogger("fastntk")

__all__ = ["BACKOFF_FACTOR", "backoff_applies", "backoff_tolerance", "ridge_backoff", "run_backoff"]

#: each re-solve multiplies the ridge by this factor
BACKOFF_FACTOR = 0.5


def backoff_applies(anchor: str, ridge, harm) -> tuple[bool, str]:
    """Whether a request may re-solve with a smaller ridge (module docstring), and why not."""
    if anchor != "retain":
        return False, "not a class request (the tilted objective: damping only)"
    if not isinstance(ridge, str):
        return False, "ridge given by the caller: its update is damped, not re-solved"
    if not harm.enabled:
        return False, "the do-no-harm check is disabled"
    return True, ""


def backoff_tolerance(harm):
    """The test each solve must pass to stop the back-off: the do-no-harm check with the retain-accuracy drop at most
    ``harm.backoff_acc_drop`` (2 points, + 3σ) instead of ``acc_drop`` (module docstring)."""
    import dataclasses

    return dataclasses.replace(harm, acc_drop=min(harm.acc_drop, harm.backoff_acc_drop))


def ridge_backoff(result, resolve: Callable, passes: Callable, *, tries: int) -> tuple[object, dict]:
    """``(result, record)``: ``result`` (a :class:`~fastntk.update.tilted.TiltedResult`) if its update passes, else the
    first re-solve ``resolve(λ·BACKOFF_FACTOR^k, previous result)`` that passes, or the last of ``tries``.

    passes : ``passes(result) -> (bool, figures)`` — the do-no-harm check of the full-size update, no damping
    (:func:`fastntk.update.guard.passes_undamped` with :func:`backoff_tolerance`).
    """
    ok, fig = passes(result)
    record = {"used": False, "tries": [dict(fig, ridge=result.ridge, steps=result.newton.steps, passed=ok)],
              "factor": BACKOFF_FACTOR, "max_tries": int(tries), "steps": result.newton.steps}
    if ok:
        record["why"] = ("the update passed the back-off's test (the do-no-harm check, retain accuracy within "
                         "backoff_acc_drop) with the ridge chosen")
        return result, record
    if tries <= 0:
        record["why"] = ("the update failed the back-off's test; ridge_backoff = 0: no re-solve (the do-no-harm check "
                         "decides)")
        return result, record
    record["used"] = True
    lam0 = result.ridge
    for k in range(1, tries + 1):
        lam = result.ridge * BACKOFF_FACTOR
        log.warning("fastntk: the update at ridge λ = %.4g fails the ridge back-off's test (retain loss %.4g, bound %.4g; "
                    "retain accuracy %.3f, floor %.3f): re-solving with λ = %.4g from the last iterate (a damped update would "
                    "re-learn the forgotten samples)", result.ridge, fig["loss"], fig["loss_bound"], fig["acc"],
                    fig["acc_floor"], lam)
        result = resolve(lam, result, k)
        ok, fig = passes(result)
        record["tries"].append(dict(fig, ridge=result.ridge, steps=result.newton.steps, passed=ok))
        record["steps"] += result.newton.steps
        if ok:
            break
    record["why"] = (f"the update at the chosen ridge λ = {lam0:.4g} failed the back-off's test (the do-no-harm check with the "
                     f"retain accuracy within backoff_acc_drop of the original's): re-solved with λ = "
                     f"{result.ridge:.4g} ({len(record['tries']) - 1} halving(s)), which "
                     + ("passes" if ok else "still fails (the usual damping applies to it)"))
    return result, record


def run_backoff(result, run: Callable, check_objective: Callable, *, w_old, harm, anchor: str, ridge, C: int):
    """The back-off of one request, as ``unlearn`` and the prepared CE ``Unlearner`` run it: ``(result, record,
    seconds)``.  ``run(λ, start=Δ)`` re-solves from ``w_old + Δ``; ``check_objective(result)`` is the do-no-harm check's
    retain objective for that result (its memo); ``C`` the classes (the check's chance loss ``log C``).  Where it does not
    apply (:func:`backoff_applies`) the result is returned as it is, with the reason."""
    applies, why = backoff_applies(anchor, ridge, harm)
    if not applies:
        return result, {"used": False, "why": why}, 0.0
    from .guard import passes_undamped

    t, tol = time.perf_counter(), backoff_tolerance(harm)
    res, rec = ridge_backoff(result, lambda lam, prev, k: run(lam, start=prev.delta),
                             lambda r: passes_undamped(check_objective(r), w_old, r.delta, tol, w_new=r.w,
                                                       chance_loss=math.log(C)),
                             tries=harm.ridge_backoff)
    return res, rec, (time.perf_counter() - t) if rec["used"] else 0.0
