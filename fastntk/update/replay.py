"""Replay the user's fine-tuning recipe on the linearized model: early stopping modelled directly.

Retraining is not the minimizer of any objective: it is the user's recipe (optimizer, learning rate, batch
schedule, epochs, early stopping on a validation split) run on ``D_r`` from ``w0``.  In the linearized
model at ``w0`` (docs/theory.md, "Replayed training")::

    f_lin(x_i; w) = f(x_i; w0) + J_i (w − w0)          J_i ∈ R^{C×p}, cached once for D (and the validation split)

the same recipe costs one small matrix product per minibatch (``b·C·p`` flops, no pass through the network).
Let ``T(S)`` be the weights the recipe reaches on ``S`` in the linearized model.  The update is the
difference of two replays with the same seed (the same batch schedule minus the forgotten samples)::

    Δ = T(D_r) − T(D),      w_new = w_trained + Δ

The part of the trained model the linearization does not explain, ``w_trained − T(D)``, is left in place, as
the ``"fit"`` anchor does for the MSE ridge fit; for linearized MSE fine-tuning trained to convergence the
replay reduces to the closed form.  With the recipe's ``val`` split, each replay stops by the recipe's own
rule (best validation accuracy of the *linearized* model, ``patience`` epochs), so the replay on ``D_r`` may
stop at another epoch than the one on ``D`` -- as retraining does.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import torch

from ..errors import InvalidInputError, NumericalError
from ..train import batch_schedule, peft_loss

log = logging.getLogger("fastntk")

__all__ = ["Recipe", "ReplayResult", "replay", "LinearizedData"]


@dataclass(frozen=True)
class Recipe:
    """The fine-tuning recipe to replay (the keyword arguments of :func:`fastntk.train.finetune_peft`).

    epochs : maximum epochs (the exact number without ``val``); lr, batch_size, seed, optimizer (``"adam"`` |
    ``"sgd"``), momentum, loss (``"ce"`` | ``"mse"``), target_scale, ridge (``½·ridge·‖w − w0‖²``, sum
    convention as in finetune_peft), patience (early stopping, used when a validation split is given).
    """

    epochs: int
    lr: float
    batch_size: int = 128
    seed: int = 0
    optimizer: str = "adam"
    momentum: float = 0.0
    loss: str = "ce"
    target_scale: float = 1.0
    ridge: float = 0.0
    patience: int = 2

    def __post_init__(self):
        if int(self.epochs) < 1 or int(self.batch_size) < 1 or int(self.patience) < 1:
            raise InvalidInputError("Recipe: epochs, batch_size and patience must be >= 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InvalidInputError(f"Recipe: lr must be a positive number, got {self.lr!r}")
        if self.optimizer not in ("adam", "sgd"):
            raise InvalidInputError(f"Recipe: optimizer must be 'adam' or 'sgd' to be replayed, got {self.optimizer!r}")
        if self.loss not in ("ce", "mse"):
            raise InvalidInputError(f"Recipe: loss must be 'ce' or 'mse', got {self.loss!r}")
        if not (self.ridge >= 0):
            raise InvalidInputError("Recipe: ridge must be >= 0")

    @classmethod
    def from_finetune(cls, **kw) -> "Recipe":
        """From :func:`fastntk.train.finetune_peft` keyword arguments (unknown keys such as progress are ignored)."""
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in kw.items() if k in names})


@dataclass
class LinearizedData:
    """``J`` (n, C, p) at ``w0``, ``f(X; w0)`` (n, C) and the labels (n,): the linearized model on a set."""

    J: torch.Tensor
    f0: torch.Tensor
    y: torch.Tensor

    def __post_init__(self):
        if self.J.ndim != 3 or self.f0.shape != self.J.shape[:2] or self.y.shape[0] != self.J.shape[0]:
            raise InvalidInputError(f"LinearizedData: J {tuple(self.J.shape)}, f0 {tuple(self.f0.shape)}, y {tuple(self.y.shape)} do not match")

    @classmethod
    def from_source(cls, src, y: torch.Tensor) -> "LinearizedData":
        """From a cached Jacobian source (plain ``J``, ``loss="mse"``) built at ``w0``."""
        if not hasattr(src, "J") or getattr(src, "loss", "mse") != "mse":
            raise InvalidInputError("the replay needs the cached plain Jacobian at w0 (make_jacobian(..., loss='mse', strategy='cached'))")
        return cls(src.J.view(src.n, src.C, src.p), src.outputs(), y.to(src.device))

    def outputs(self, idx, d: torch.Tensor) -> torch.Tensor:
        return self.f0[idx] + torch.einsum("bcp,p->bc", self.J[idx], d)


@dataclass
class ReplayResult:
    w: torch.Tensor
    epochs_run: int
    best_epoch: int | None
    val_acc: list = field(default_factory=list)
    seconds: float = 0.0


def _accuracy(data: LinearizedData, d: torch.Tensor, chunk: int = 4096) -> float:
    hits = 0
    for a in range(0, data.J.shape[0], chunk):
        idx = slice(a, a + chunk)
        hits += int((data.outputs(idx, d).argmax(-1) == data.y[idx]).sum())
    return hits / max(data.J.shape[0], 1)


def replay(data: LinearizedData, w0: torch.Tensor, recipe: Recipe, *, drop=None, val: LinearizedData | None = None) -> ReplayResult:
    """``T(S)``: the recipe run on the linearized model over ``data`` minus ``drop`` (module docstring).

    Same batch schedule as :func:`fastntk.train.finetune_peft` (``batch_schedule(n, batch_size, epoch, seed, drop)``),
    same objective (minibatch mean loss + ``ridge/(2m)·‖w − w0‖²``), same optimizer and early-stopping rule.
    """
    t0 = time.perf_counter()
    n = data.J.shape[0]
    m = n - (0 if drop is None else len(torch.as_tensor(drop).reshape(-1).unique()))
    d = torch.zeros_like(w0, requires_grad=True)
    opt = (torch.optim.Adam([d], lr=recipe.lr) if recipe.optimizer == "adam"
           else torch.optim.SGD([d], lr=recipe.lr, momentum=recipe.momentum))
    coef = float(recipe.ridge) / (2.0 * max(m, 1))
    best = (-1.0, None, 0)
    accs, epochs = [], 0
    for epoch in range(int(recipe.epochs)):
        for b in batch_schedule(n, recipe.batch_size, epoch, recipe.seed, drop=drop):
            b = b.to(data.J.device)
            opt.zero_grad(set_to_none=True)
            lv = peft_loss(data.outputs(b, d), data.y[b], recipe.loss, recipe.target_scale).mean()
            if coef:
                lv = lv + coef * (d * d).sum()
            lv.backward()
            opt.step()
        epochs = epoch + 1
        if not torch.isfinite(d).all():
            raise NumericalError(f"the replayed fine-tuning diverged at epoch {epoch}; check the recipe's lr")
        if val is not None:
            acc = _accuracy(val, d.detach())
            accs.append(acc)
            if acc > best[0]:
                best = (acc, d.detach().clone(), epoch + 1)
            elif epoch + 1 - best[2] >= int(recipe.patience):
                break
    dd = d.detach() if val is None else best[1]
    return ReplayResult(w=w0 + dd, epochs_run=epochs, best_epoch=best[2] if val is not None else None, val_acc=accs,
                        seconds=time.perf_counter() - t0)
