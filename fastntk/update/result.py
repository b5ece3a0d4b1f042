"""The result of one unlearning request: ``Δ``, the weights, what ran and why (``reasons``), solves, timings."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .solve import solve_summary as _solve_summary

__all__ = ["UnlearnResult"]


@dataclass
class UnlearnResult:
    """Outcome of one unlearning request.

    delta : ``Δ`` (p,), in the PEFT dtype.
    w_new : the unlearned PEFT vector ``w_trained + scale·Δ``.
    w_old : the PEFT vector before unlearning.
    form / strategy / space : what was used; ``reasons`` says why (auto choices).
    solves : name -> :class:`fastntk.solvers.SolveResult` (or a dict for direct solves).
    timings : phase -> seconds.
    scale : the factor applied to Δ.
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

    @property
    def matvecs(self) -> int:
        return int(sum(getattr(s, "matvecs", 0) for s in self.solves.values()))

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
            "solves": {k: _solve_summary(v) for k, v in self.solves.items()},
        }
