"""``NTKLinearOperator``: the dual operator ``Θ + λI = J Jᵀ + λI`` (nC × nC); docs/theory.md §1, §2."""
from __future__ import annotations

import torch

from ._eta import timed_product
from .base import TorchLinearOperator

__all__ = ["NTKLinearOperator"]


class NTKLinearOperator(TorchLinearOperator):
    """``U ↦ J (Jᵀ U) + λ U`` -- the (loss-weighted, for CE) NTK, never materialized.

    Streaming cost per product: a full VJP pass (accumulating ``JᵀU``, all
    columns of ``U`` sharing each forward), then a JVP pass.  Symmetric PSD
    (positive definite for ``λ > 0``).  ``diagonal()`` gives ``diag(Θ) + λ`` from
    per-sample Jacobian norms (Jacobi preconditioner).
    """

    symmetric = True

    def __init__(self, source, ridge: float = 0.0):
        super().__init__((source.nC, source.nC), source.dtype, source.device)
        self.source = source
        self.ridge = float(ridge)

    def _matmat(self, U: torch.Tensor) -> torch.Tensor:
        return timed_product(self, U, self._product)  # the first product logs a CG ETA (fastntk.operators._eta)

    def _product(self, U: torch.Tensor) -> torch.Tensor:
        out = self.source.jmat(self.source.jtmat(U))
        if self.ridge:
            out = out + self.ridge * U
        return out

    def diagonal(self) -> torch.Tensor:
        return self.source.diag_ntk() + self.ridge
