"""The network's own objective on a data set: value, gradient, accuracy (docs/theory.md, "Objectives").

For a set ``S`` of ``n`` samples, the PEFT vector ``w`` (p,), the training loss ``ℓ`` of the model
(``"ce"``: cross-entropy of the softmax; ``"mse"``: ``½‖f − s·onehot(y)‖²``) and the function ``f``
(the network, or its linearization ``f_lin(x; w) = f(x; w̄) + J(x)(w − w̄)`` when the model was trained
linearized)::

    F(w) = a·Σ_{i∈S} ℓ(f(x_i; w), y_i) + ½λ‖w − c‖² − bᵀ(w − w_ref)

``a`` (``weight``, default 1) scales the data term: ``a = n_r/|S|`` makes a uniform subsample ``S`` of ``D_r`` an
unbiased estimate of the whole set's loss (the subsampled warm-up of :mod:`fastntk.update.tilted`).
``λ`` (ridge, sum convention) and its centre ``c``; ``b`` (p,) an optional *tilt*: the linear term that
makes a given point ``w_ref`` stationary for the full-data objective (see :mod:`fastntk.update.newton`).
Every pass is one batched forward (value) or forward + backward (gradient) over ``S``.

``memo``: a dict shared by objectives on the *same* samples, loss and function; every pass records the data loss and
accuracy at its ``w`` (keyed by the exact bytes of ``w``), and :meth:`NetworkObjective.data_loss` answers from it, so
that the do-no-harm check re-scores nothing the Newton iteration already evaluated.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from ..errors import InvalidInputError
from ..train import linearized_function, peft_loss

__all__ = ["TRAINED_WITH", "NetworkObjective", "loss_of"]

#: how a model was trained -> the loss ``ℓ`` of its objective
TRAINED_WITH = {"ce": "ce", "mse": "mse", "linearized-mse": "mse"}


def loss_of(trained_with: str) -> str:
    """The per-sample loss ``ℓ`` of a model trained with ``trained_with`` (``"ce"``, ``"mse"``, ``"linearized-mse"``)."""
    if trained_with not in TRAINED_WITH:
        raise InvalidInputError(f"trained_with must be one of {sorted(TRAINED_WITH)}, got {trained_with!r}")
    return TRAINED_WITH[trained_with]


@dataclass
class NetworkObjective:
    """``F(w)`` of the module docstring on the samples ``(X, y)``.

    peft : the PEFT set (``peft.functional()(w, x)`` gives the logits).
    loss : ``"ce"`` or ``"mse"`` (``target_scale`` scales the MSE one-hot targets).
    ridge, center : ``λ`` and ``c`` (``center`` required when ``ridge > 0``).
    tilt, tilt_ref : ``b`` and ``w_ref`` (both or neither).
    linearized_at : ``w̄`` when the model is the linearization at ``w̄`` (trained with ``linearized-mse``).
    memo : ``None`` or a dict shared with objectives on the same samples, loss and function (module docstring).
    weight : ``a``, the scale of the data term (``data_loss`` stays unscaled).
    """

    peft: object
    X: torch.Tensor
    y: torch.Tensor
    loss: str = "ce"
    target_scale: float = 1.0
    ridge: float = 0.0
    center: torch.Tensor | None = None
    tilt: torch.Tensor | None = None
    tilt_ref: torch.Tensor | None = None
    linearized_at: torch.Tensor | None = None
    batch_size: int = 256
    memo: dict | None = None
    weight: float = 1.0

    def __post_init__(self):
        if not (self.weight > 0):
            raise InvalidInputError(f"weight must be > 0, got {self.weight!r}")
        if self.loss not in ("ce", "mse"):
            raise InvalidInputError(f"loss must be 'ce' or 'mse', got {self.loss!r}")
        if self.ridge > 0 and self.center is None:
            raise InvalidInputError("a ridge needs its centre")
        if (self.tilt is None) != (self.tilt_ref is None):
            raise InvalidInputError("tilt and tilt_ref go together")
        f = self.peft.functional()
        self._f = f if self.linearized_at is None else linearized_function(f, self.linearized_at.detach())

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    def with_tilt(self, tilt: torch.Tensor, ref: torch.Tensor) -> "NetworkObjective":
        """The same objective with the linear term ``−bᵀ(w − w_ref)``."""
        return NetworkObjective(self.peft, self.X, self.y, self.loss, self.target_scale, self.ridge, self.center, tilt, ref,
                                self.linearized_at, self.batch_size, self.memo, self.weight)

    def _batches(self):
        dev, dt = self.peft.device, self.peft.dtype
        for s in range(0, self.n, self.batch_size):
            yield self.X[s : s + self.batch_size].to(dev, dt), self.y[s : s + self.batch_size].to(dev)

    def _extra(self, w: torch.Tensor) -> float:
        v = 0.0
        if self.ridge > 0:
            d = w - self.center
            v += 0.5 * self.ridge * float(d @ d)
        if self.tilt is not None:
            v -= float(self.tilt @ (w - self.tilt_ref))
        return v

    @staticmethod
    def _key(w: torch.Tensor) -> tuple:
        b = w.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
        return str(w.dtype), tuple(w.shape), hashlib.blake2b(b, digest_size=20).digest()

    def _remember(self, w: torch.Tensor, total: float, hits: int) -> None:
        if self.memo is not None:
            self.memo[self._key(w)] = (total, hits / max(self.n, 1))

    @torch.no_grad()
    def data_loss(self, w: torch.Tensor) -> tuple[float, float]:
        """``(Σ_i ℓ_i, accuracy)`` at ``w`` (no ridge, no tilt): one forward pass, or none when ``memo`` has ``w``."""
        if self.memo is not None and (hit := self.memo.get(self._key(w))) is not None:
            return hit
        total, hits = 0.0, 0
        for xb, yb in self._batches():
            out = self._f(w, xb)
            total += float(peft_loss(out, yb, self.loss, self.target_scale).sum())
            hits += int((out.argmax(-1) == yb).sum())
        self._remember(w, total, hits)
        return total, hits / max(self.n, 1)

    def value(self, w: torch.Tensor) -> float:
        """``F(w)``: one forward pass."""
        return self.weight * self.data_loss(w)[0] + self._extra(w)

    def value_and_grad(self, w: torch.Tensor) -> tuple[float, torch.Tensor]:
        """``(F(w), ∇F(w))``: one forward + backward pass."""
        total, hits = 0.0, 0
        grad = torch.zeros_like(w)
        for xb, yb in self._batches():
            wv = w.detach().clone().requires_grad_(True)
            out = self._f(wv, xb)
            lv = peft_loss(out, yb, self.loss, self.target_scale).sum()
            (g,) = torch.autograd.grad(lv, wv)
            grad += g
            total += float(lv.detach())
            hits += int((out.detach().argmax(-1) == yb).sum())
        self._remember(w, total, hits)
        if self.weight != 1.0:
            grad *= self.weight
        if self.ridge > 0:
            grad += self.ridge * (w - self.center)
        if self.tilt is not None:
            grad -= self.tilt
        return self.weight * total + self._extra(w), grad
