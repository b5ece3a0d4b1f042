"""The variant policy: which update for which model (docs/guide.md).  Lives in the library, not the pipeline.

``trained_with`` says how the model was fine-tuned; every ``"auto"`` option of :func:`fastntk.unlearn`
resolves from it, each choice with its reason (measured in BENCHMARKS.md):

===================  ================  ========  ======  =============================================
trained_with         linearize_at      anchor    kernel  steps
===================  ================  ========  ======  =============================================
``linearized-mse``   ``w0``            ``fit``   MSE     1 (exact: the closed form of the paper)
``mse``              ``trained``       trained   MSE     1 (bench_variants: best mean avg gap)
``ce``               ``trained``       by request CE GN  class: Newton steps to the stopping rule; random: one step
===================  ================  ========  ======  =============================================

For ``ce`` the anchor follows the request (:func:`ce_anchor`): when the forget set takes every training sample
of a class (the class is absent from ``D_r``), retraining never sees that class as a label and pushes its
logit down from its initial value; the plain retain objective ``Σ_{D_r} CE + ½λ‖w − w0‖²`` (anchor ``"retain"``)
models that.  Otherwise the tilted objective (anchor ``"trained"``) keeps whatever early stopping left in the
trained model and removes only the forget set's pull; on random requests the plain objective drifts toward an
optimum no early-stopped training reaches (BENCHMARKS.md, "Cross-entropy models").
"""
from __future__ import annotations

from ..errors import InvalidInputError
from .objective import TRAINED_WITH

__all__ = ["VARIANTS", "resolve_variant", "ce_anchor", "auto_newton", "TILTED_AUTO_STEPS"]

#: Newton steps of the tilted objective (random requests) under ``steps="auto"``.  Its first step is the influence-function
#: update; a second one, which the growth test (stop when the decrement grows) allowed on 4 of 17 random requests (all on
#: the ViT), did not come closer to retraining (mean gap 4.12 pp with one step against 4.21; 10 % and 50 % requests on the
#: small CNN, the ViT and both ResNets: benchmarks/bench_ce.py, ce_onestep_*, ce_half_*) and cost 20–55 % more; the single
#: step is also scored by value alone (no gradient at the new weights).  The plain objective (class requests) keeps its
#: stopping rule.
TILTED_AUTO_STEPS = 1

VARIANTS: dict[str, dict] = {
    "linearized-mse": dict(
        linearize_at="w0", anchor="fit", loss="mse", steps=1,
        why="the model is the linearization at w0 trained with MSE: the closed form Δ = w*_{D_r} − w*_D is exact"),
    "mse": dict(
        linearize_at="trained", anchor="trained", loss="mse", steps=1,
        why="ordinary MSE fine-tuning: Newton step from the trained weights with the kernel there (closest to retraining "
            "on average in benchmarks/bench_variants.py)"),
    "ce": dict(
        linearize_at="trained", anchor="by-request", loss="ce", steps="auto",
        why="cross-entropy fine-tuning: CE Gauss-Newton at the current weights, damped (Levenberg-Marquardt) line-searched "
            "Newton steps on the retain objective until the Newton decrement stops falling (one step on the tilted "
            "objective of a random request; benchmarks/bench_ce.py)"),
}


def resolve_variant(trained_with: str, *, linearize_at: str, anchor: str, loss: str, steps) -> tuple[dict, dict]:
    """Resolve the ``"auto"`` options from ``trained_with``: ``(values, reasons)``; explicit values are kept."""
    if trained_with not in TRAINED_WITH:
        raise InvalidInputError(
            f"trained_with must be one of {sorted(TRAINED_WITH)} (how the model was fine-tuned: 'ce' for cross-entropy, "
            f"'mse' for ordinary MSE fine-tuning, 'linearized-mse' for the linearized model), got {trained_with!r}")
    pol = VARIANTS[trained_with]
    given = dict(linearize_at=linearize_at, anchor=anchor, loss=loss, steps=steps)
    values, reasons = {}, {}
    for k, v in given.items():
        if v == "auto":
            values[k] = pol[k]
            reasons[k] = f"{k}={pol[k]!r}: trained_with={trained_with!r} -> {pol['why']}"
        else:
            values[k] = v
            reasons[k] = f"{k}={v!r} requested"
    if trained_with == "ce" and values["loss"] == "mse":
        reasons["loss"] += " (warning: the MSE kernel on a model trained with cross-entropy; the do-no-harm check scores the CE)"
    return values, reasons


def auto_newton(anchor: str, line_search: bool = True):
    """``(NewtonOptions, why)`` of ``steps="auto"`` on the CE route for ``anchor``: :data:`TILTED_AUTO_STEPS` step(s) on the
    tilted objective (``"trained"``), the decrement stopping rule on the plain one (``"retain"``)."""
    from .newton import NewtonOptions

    if anchor == "trained":
        n = TILTED_AUTO_STEPS
        return (NewtonOptions(max_steps=n, line_search=line_search, stop_on_growth=True),
                f"steps='auto' on the tilted objective: {n} Newton step(s) (the influence-function update; further steps did "
                "not come closer to retraining: TILTED_AUTO_STEPS, benchmarks/bench_ce.py ce_onestep_*, ce_half_*)")
    newton = NewtonOptions(line_search=line_search, stop_on_growth=False)
    return newton, (f"steps='auto': Newton steps until δ²_k ≤ {newton.rel_decrement}·δ²_1 (at most {newton.max_steps})")


def ce_anchor(y_retain, y_forget) -> tuple[str, str]:
    """The CE anchor for a request (module docstring): ``("retain", why)`` when a class of the forget set has no
    retain sample left, else ``("trained", why)``."""
    import torch

    gone = sorted(set(torch.as_tensor(y_forget).unique().tolist()) - set(torch.as_tensor(y_retain).unique().tolist()))
    if gone:
        return "retain", (f"anchor='retain': the request removes every training sample of class(es) {gone}; retraining never "
                          "sees them as labels, so the plain retain objective (ridge towards w0) is the model of retraining")
    return "trained", ("anchor='trained' (tilted): every class of the forget set keeps retain samples; the tilt keeps what "
                       "early stopping left in the model and removes only the forget set's pull")
