"""The result of one unlearning request: ``Δ``, the weights, what ran and why (``plan``), solves, timings."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .solve import solve_summary

__all__ = ["UnlearnResult", "SolveSummary"]


class SolveSummary(dict):
    """:meth:`fastntk.solvers.SolveResult.summary` of one solve; its keys also read as attributes (``s.iterations``)."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


@dataclass
class UnlearnResult:
    """Outcome of one unlearning request.

    delta : ``Δ`` (p,), in the PEFT dtype: the applied update, ``w_new = w_old + Δ`` (scale, later steps and the
        do-no-harm damping included).
    w_new / w_old : the unlearned PEFT vector and the one before unlearning.
    form / strategy / space / loss : what ran.
    plan : choice -> ``{"value", "reason"}``: every option the plan resolved (:mod:`fastntk.update.plan`), with
        what ran; ``reasons`` (choice -> reason) is the same, flattened.
    solves : name -> summary of its :class:`fastntk.solvers.SolveResult` (the same keys for direct and iterative
        solves); ``records`` : name -> the :class:`~fastntk.solvers.SolveResult` itself.
    timings : phase -> seconds.  scale : the factor applied to the first step's Δ.
    """

    delta: torch.Tensor
    w_new: torch.Tensor
    w_old: torch.Tensor
    form: str
    strategy: str
    space: str
    loss: str
    scale: float
    reasons: dict = field(default_factory=dict)
    solves: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    plan: dict = field(default_factory=dict)
    records: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if any(hasattr(v, "summary") for v in self.solves.values()):
            self.records = dict(self.solves)
            self.solves = {k: SolveSummary(solve_summary(v)) for k, v in self.solves.items()}
        for k, choice in self.plan.items():
            self.reasons.setdefault(k, choice["reason"])

    @property
    def matvecs(self) -> int:
        return int(sum(int(s.get("matvecs", 0)) for s in self.solves.values()))

    @property
    def seconds(self) -> float:
        return float(self.timings.get("total", sum(self.timings.values())))

    def summary(self) -> dict:
        return {
            "form": self.form,
            "strategy": self.strategy,
            "space": self.space,
            "loss": self.loss,
            "scale": self.scale,
            "delta_norm": float(self.delta.norm()),
            "matvecs": self.matvecs,
            "timings": dict(self.timings),
            "reasons": dict(self.reasons),
            "plan": {k: dict(v) for k, v in self.plan.items()},
            "solves": dict(self.solves),
        }
