"""``JacobianLinearOperator``: ``J`` (p -> nC) and its adjoint ``Jᵀ`` (nC -> p)."""
from __future__ import annotations

import torch

from .base import TorchLinearOperator

__all__ = ["JacobianLinearOperator"]


class JacobianLinearOperator(TorchLinearOperator):
    """``J = J_S ∈ R^{nC×p}`` of a Jacobian source (streamed or cached).

    ``J @ V`` is a forward-mode pass (JVP, tangents vmapped), ``J.T @ U`` a
    reverse pass (VJP, cotangents vmapped).  Rows are sample-major.
    """

    def __init__(self, source):
        super().__init__((source.nC, source.p), source.dtype, source.device)
        self.source = source

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.source.jmat(V)

    def _rmatmat(self, U: torch.Tensor) -> torch.Tensor:
        return self.source.jtmat(U)
