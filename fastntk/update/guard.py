"""Do no harm: an update that makes the model worse on its own retain objective is damped or refused.

Before :func:`fastntk.unlearn` returns, the unlearned weights ``w_new = w_old + Δ`` are scored on a fixed
sample of the retain set with the loss the model was trained with (``trained_with``; the linearized
function for linearized fine-tuning): the mean retain loss ``ℓ̄`` and the retain accuracy ``RA``.
The update passes when::

    ℓ̄(w_new) ≤ max(ℓ̄(w_old)·(1 + loss_rel), ℓ̄(w_old) + loss_chance·(ℓ_chance − ℓ̄(w_old))) + loss_abs
    and     RA(w_new) ≥ RA(w_old) − acc_drop − 3σ

with ``σ = √(RA(1 − RA)/m)`` the binomial noise of an accuracy on the ``m`` sampled points (on a small
retain set one flipped sample is already several points of accuracy), and ``ℓ_chance`` the loss of a model that
knows nothing (cross-entropy: ``log C``, the uniform prediction; not used for MSE).

Forgetting legitimately changes the retain loss (retraining does; forgetting a class lowers the confidence of the
whole model, so the retain cross-entropy can rise by a third while the retain accuracy rises): the default allows
the mean retain loss to double, or — for a model fit so tightly that doubling is a small step (resnet10t, class 1 of
benchmarks/trace_ce_ridge.py: mean retain CE 0.147, retraining's 0.173; an update with twice the default ridge reached
0.35 with retain accuracy 2.5 points lower, and halving it left the class unforgotten, results
trace_ce_ridge_r10_guard2x) — to rise half way to chance.
An update that destroys the model (retain accuracy near 0, a retain loss many times larger, or near chance) fails by
orders of magnitude.  A failing
update of a class request (the plain retain objective) whose ridge was chosen automatically is first re-solved with the
ridge halved, up to ``ridge_backoff`` times (:mod:`fastntk.update.backoff`: damping would move back towards the trained
weights and re-learn the forgotten class); the re-solve is also asked for where the retain accuracy fell more than
``backoff_acc_drop`` (+ 3σ) below the original's.  A failing
update is then damped (``w_old + sΔ`` with ``s = ½, ¼, …``, ``max_halvings`` tries); if no damped update passes,
:class:`~fastntk.errors.HarmfulUpdateError` is raised and the model is left unchanged.  Every figure is
recorded in :class:`HarmCheck`.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..errors import HarmfulUpdateError, InvalidInputError
from .objective import NetworkObjective

log = logging.getLogger("fastntk")

__all__ = ["HarmTolerance", "HarmCheck", "check_no_harm", "check_update", "passes_undamped", "retain_sample", "loss_bound",
           "forget_figures", "record_forget"]


@dataclass(frozen=True)
class HarmTolerance:
    """Tolerances of the do-no-harm check (module docstring).  ``enabled=False`` skips it (recorded)."""

    loss_rel: float = 1.0
    loss_chance: float = 0.5
    loss_abs: float = 1e-3
    acc_drop: float = 0.05
    samples: int = 4096
    max_halvings: int = 4
    on_harm: str = "damp"  # "damp" (then raise) | "raise"
    enabled: bool = True
    # the plain retain objective (class requests) with an automatic ridge: before damping, re-solve with the ridge
    # halved up to this many times (fastntk.update.backoff); 0: damp at once
    ridge_backoff: int = 3
    # the re-solve is also asked for where the retain accuracy fell more than this (+ 3σ) below the original's (a stricter
    # test than acc_drop, which damps: a smaller ridge costs the class nothing)
    backoff_acc_drop: float = 0.02

    def __post_init__(self):
        if isinstance(self.loss_chance, bool) or not (isinstance(self.loss_chance, (int, float)) and 0 <= self.loss_chance <= 1):
            raise InvalidInputError(f"HarmTolerance.loss_chance must lie in [0, 1], got {self.loss_chance!r}")
        for k in ("loss_rel", "loss_abs", "acc_drop", "backoff_acc_drop"):
            v = getattr(self, k)
            if not (isinstance(v, (int, float)) and np.isfinite(v) and v >= 0):
                raise InvalidInputError(f"HarmTolerance.{k} must be a finite number >= 0, got {v!r}")
        if int(self.samples) < 1 or int(self.max_halvings) < 0:
            raise InvalidInputError("HarmTolerance.samples must be >= 1 and max_halvings >= 0")
        rb = self.ridge_backoff
        if isinstance(rb, bool) or not isinstance(rb, int) or rb < 0:
            raise InvalidInputError(f"HarmTolerance.ridge_backoff must be an integer >= 0, got {rb!r}")
        if self.on_harm not in ("damp", "raise"):
            raise InvalidInputError(f"HarmTolerance.on_harm must be 'damp' or 'raise', got {self.on_harm!r}")


@dataclass
class HarmCheck:
    """Figures of the do-no-harm check: before/after mean retain loss and accuracy, the damping applied."""

    passed: bool
    scale: float
    loss_before: float
    loss_after: float
    acc_before: float
    acc_after: float
    samples: int
    loss: str
    tries: list = field(default_factory=list)
    skipped: bool = False
    loss_bound: float = float("nan")  # the bound ℓ̄(w_new) had to meet (module docstring)
    chance_loss: float | None = None  # ℓ_chance (cross-entropy: log C), None when not used
    # what the update did to the forgotten samples (a sample of at most HarmTolerance.samples): mean loss and accuracy
    # before and after — a damped update may leave them partly remembered (filled in by the caller, see oneshot)
    forget: dict | None = None

    def summary(self) -> dict:
        return asdict(self)


def retain_sample(n: int, samples: int, seed: int = 0) -> np.ndarray:
    """A fixed sample (sorted indices) of at most ``samples`` of ``n`` retain points."""
    if n <= samples:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, int(samples), replace=False))


def loss_bound(l0: float, tol: HarmTolerance, chance_loss: float | None) -> float:
    """The largest mean retain loss an update may leave (module docstring): doubling (``loss_rel``), or ``loss_chance``
    of the way from ``l0`` to ``chance_loss`` when that is more, plus ``loss_abs``."""
    b = l0 * (1 + tol.loss_rel)
    if chance_loss is not None and np.isfinite(chance_loss) and chance_loss > l0:
        b = max(b, l0 + tol.loss_chance * (chance_loss - l0))
    return b + tol.loss_abs


def check_no_harm(objective: NetworkObjective, w_old: torch.Tensor, delta: torch.Tensor, tol: HarmTolerance, *,
                  w_new: torch.Tensor | None = None, chance_loss: float | None = None) -> tuple[torch.Tensor, HarmCheck]:
    """Score ``w_old + sΔ`` (``s = 1, ½, …``) on ``objective``'s samples; return ``(sΔ, check)`` or raise.

    ``objective`` carries the retain sample and the training loss (no ridge, no tilt are used here: the
    check is on the plain data loss and accuracy).  ``w_new``: the full-size update's weights exactly as computed
    (``w_old + Δ`` up to rounding), scored at ``s = 1`` (so that an ``objective.memo`` entry for them is found); the
    caller returns these weights when ``check.scale == 1``.  ``chance_loss``: the mean loss of a model that knows
    nothing (cross-entropy: ``log C``); ``None``: the bound is the relative one only.
    """
    n = max(objective.n, 1)
    if not tol.enabled:
        return delta, HarmCheck(True, 1.0, float("nan"), float("nan"), float("nan"), float("nan"), objective.n, objective.loss, skipped=True)
    l0, a0 = objective.data_loss(w_old)
    l0 /= n
    bound = loss_bound(l0, tol, chance_loss)
    acc_floor = a0 - tol.acc_drop - 3.0 * float(np.sqrt(a0 * (1.0 - a0) / n))
    tries = []
    s = 1.0
    for k in range(tol.max_halvings + 1 if tol.on_harm == "damp" else 1):
        l1, a1 = objective.data_loss(w_new if (s == 1.0 and w_new is not None) else w_old + s * delta)
        l1 /= n
        ok = bool(np.isfinite(l1) and l1 <= bound and a1 >= acc_floor)
        tries.append({"scale": s, "loss": l1, "acc": a1, "passed": ok})
        if ok:
            chk = HarmCheck(True, s, l0, l1, a0, a1, objective.n, objective.loss, tries, loss_bound=bound, chance_loss=chance_loss)
            if s < 1.0:
                log.warning("fastntk: the update failed the do-no-harm check at full size; damped to %.3g·Δ "
                            "(retain loss %.4g -> %.4g, RA %.3f -> %.3f)", s, l0, l1, a0, a1)
            return s * delta, chk
        s *= 0.5
    chk = HarmCheck(False, 0.0, l0, tries[0]["loss"], a0, tries[0]["acc"], objective.n, objective.loss, tries, loss_bound=bound,
                    chance_loss=chance_loss)
    raise HarmfulUpdateError(
        f"the update makes the model worse than doing nothing on its retain objective ({objective.loss}): mean retain loss "
        f"{l0:.4g} -> {tries[0]['loss']:.4g} (bound {bound:.4g}), retain accuracy {a0:.3f} -> {tries[0]['acc']:.3f} "
        f"(floor {acc_floor:.3f}); {len(tries)} damped tries failed. The model was not changed. Check trained_with "
        "(the loss the model was fine-tuned with) and the ridge, or pass harm=HarmTolerance(enabled=False) to skip the check.",
        check=chk,
    )


def check_update(objective: NetworkObjective, w_old: torch.Tensor, delta: torch.Tensor,
                 tol: HarmTolerance, *, chance_loss: float | None = None) -> tuple[torch.Tensor, torch.Tensor, HarmCheck]:
    """:func:`check_no_harm` of ``Δ``: ``(sΔ, w_old + sΔ, check)``; the weights scored are exactly those returned (at full
    size ``w_old + Δ``, which an ``objective.memo`` entry of the update's own computation matches)."""
    w_new = w_old + delta
    d, chk = check_no_harm(objective, w_old, delta, tol, w_new=w_new, chance_loss=chance_loss)
    return d, (w_new if chk.scale == 1.0 else w_old + d), chk


def passes_undamped(objective: NetworkObjective, w_old: torch.Tensor, delta: torch.Tensor, tol: HarmTolerance, *,
                    w_new: torch.Tensor | None = None, chance_loss: float | None = None) -> tuple[bool, dict]:
    """Whether the full-size update passes the check (no damping tried): ``(passed, {"loss", "acc", "loss_bound",
    "loss_before", "acc_before", "acc_floor"})`` — the test the ridge back-off (:mod:`fastntk.update.backoff`) applies to
    each solve (with its stricter accuracy tolerance)."""
    import dataclasses

    try:
        _, chk = check_no_harm(objective, w_old, delta, dataclasses.replace(tol, max_halvings=0, on_harm="raise"),
                               w_new=w_new, chance_loss=chance_loss)
    except HarmfulUpdateError as e:
        chk = e.check
    a0, n = chk.acc_before, max(objective.n, 1)
    return bool(chk.passed), {"loss": chk.loss_after, "acc": chk.acc_after, "loss_bound": chk.loss_bound,
                              "loss_before": chk.loss_before, "acc_before": a0,
                              "acc_floor": a0 - tol.acc_drop - 3.0 * float(np.sqrt(a0 * (1.0 - a0) / n))}


def forget_figures(objective: NetworkObjective, w_old: torch.Tensor, w_new: torch.Tensor, chk: HarmCheck) -> dict:
    """What the returned update did to the forgotten samples (``objective``: a sample of ``D_f`` with the training loss):
    mean loss and accuracy before and after, stored in ``chk.forget``.  A damped update (``chk.scale < 1``) may leave
    them partly remembered (a whole class: the forgotten class still predicted): that is logged with the figures."""
    n = max(objective.n, 1)
    l0, a0 = objective.data_loss(w_old)
    l1, a1 = objective.data_loss(w_new)
    chk.forget = {"samples": objective.n, "loss_before": l0 / n, "loss_after": l1 / n, "acc_before": a0, "acc_after": a1}
    if chk.scale < 1.0:
        log.warning("fastntk: the update was damped to %.3g·Δ by the do-no-harm check; on the forgotten samples accuracy "
                    "%.3f -> %.3f, mean loss %.4g -> %.4g: their fit may be only partly undone (result.info['harm_check']"
                    "['forget'])", chk.scale, a0, a1, l0 / n, l1 / n)
    return chk.forget


def record_forget(peft, X_f: torch.Tensor, y_f: torch.Tensor, tol: HarmTolerance, w_old: torch.Tensor, w_new: torch.Tensor,
                  chk: HarmCheck, **objective_kw) -> dict | None:
    """:func:`forget_figures` on a fixed sample of at most ``tol.samples`` forgotten samples (``objective_kw``: the
    training loss and its options, as the retain check's objective); nothing when the check was skipped."""
    if chk.skipped:
        return None
    idx = torch.as_tensor(retain_sample(int(X_f.shape[0]), tol.samples))
    return forget_figures(NetworkObjective(peft, X_f[idx], y_f[idx], **objective_kw), w_old, w_new, chk)
