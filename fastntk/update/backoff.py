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

Only where ``λ`` was the library's choice: a ridge the caller gave is theirs, and its update is damped as before.  Every
try (ridge, steps, retain loss and accuracy against the bound) is recorded in ``result.info["ridge_backoff"]`` and logged.
"""
from __future__ import annotations

import logging
from typing import Callable

log = logging.getLogger("fastntk")

__all__ = ["BACKOFF_FACTOR", "backoff_applies", "ridge_backoff"]

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


def ridge_backoff(result, resolve: Callable, passes: Callable, *, tries: int) -> tuple[object, dict]:
    """``(result, record)``: ``result`` (a :class:`~fastntk.update.tilted.TiltedResult`) if its update passes, else the
    first re-solve ``resolve(λ·BACKOFF_FACTOR^k, previous result)`` that passes, or the last of ``tries``.

    passes : ``passes(result) -> (bool, figures)`` — the do-no-harm check of the full-size update, no damping
    (:func:`fastntk.update.guard.passes_undamped`).
    """
    ok, fig = passes(result)
    record = {"used": False, "tries": [dict(fig, ridge=result.ridge, steps=result.newton.steps, passed=ok)],
              "factor": BACKOFF_FACTOR, "max_tries": int(tries)}
    if ok:
        record["why"] = "the update passed the do-no-harm check with the ridge chosen"
        return result, record
    if tries <= 0:
        record["why"] = "the update failed the do-no-harm check; ridge_backoff = 0: no re-solve (damped instead)"
        return result, record
    record["used"] = True
    lam0 = result.ridge
    for k in range(1, tries + 1):
        lam = result.ridge * BACKOFF_FACTOR
        log.warning("fastntk: the update failed the do-no-harm check at ridge λ = %.4g (retain loss %.4g > bound %.4g, or "
                    "retain accuracy %.3f too low): re-solving with λ = %.4g from the last iterate (instead of damping it, "
                    "which would re-learn the forgotten samples)", result.ridge, fig["loss"], fig["loss_bound"], fig["acc"], lam)
        result = resolve(lam, result, k)
        ok, fig = passes(result)
        record["tries"].append(dict(fig, ridge=result.ridge, steps=result.newton.steps, passed=ok))
        if ok:
            break
    record["why"] = (f"the update at the chosen ridge λ = {lam0:.4g} failed the do-no-harm check: re-solved with λ = "
                     f"{result.ridge:.4g} ({len(record['tries']) - 1} halving(s)), which "
                     + ("passes" if ok else "still fails (the usual damping applies to it)"))
    return result, record
