"""``GGNLinearOperator``: the primal Gauss-Newton ``G + λI = Jᵀ J + λI`` (p × p); docs/theory.md §1, §2, §5."""
from __future__ import annotations

import torch

from ._eta import timed_product
from .base import TorchLinearOperator

__all__ = ["GGNLinearOperator"]


class GGNLinearOperator(TorchLinearOperator):
    """``V ↦ Jᵀ (J V) + λ V`` -- the Gauss-Newton of the MSE loss (``loss="mse"``)
    or of cross-entropy, ``Σ_i J_iᵀ Λ_i J_i`` (``loss="ce"``).

    Streaming cost per product: per batch one forward pass shared by the JVP
    and the VJP and by all ``k`` columns (``vjp`` of a vmapped ``jvp``).
    ``diagonal()`` gives ``diag(G) + λ``.
    """

    symmetric = True

    def __init__(self, source, ridge: float = 0.0):
        super().__init__((source.p, source.p), source.dtype, source.device)
        self.source = source
        self.ridge = float(ridge)

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return timed_product(self, V, self._product)  # the first product logs a CG ETA (fastntk.operators._eta)

    def _product(self, V: torch.Tensor) -> torch.Tensor:
        out = self.source.gmat(V)
        if self.ridge:
            out = out + self.ridge * V
        return out

    def diagonal(self) -> torch.Tensor:
        return self.source.diag_ggn() + self.ridge
