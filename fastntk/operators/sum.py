"""``SumGGNLinearOperator``: ``G_r + G_f + λI`` (p × p) from two Jacobian sources.

The Gauss-Newton of the whole training set ``D = D_r ∪ D_f`` without forming a source for ``D``:
``G_D = J_Dᵀ J_D = J_rᵀ J_r + J_fᵀ J_f`` (rows of ``J_D`` are the rows of ``J_r`` and ``J_f``), so

    (G_r + G_f + λI) v = J_rᵀ(J_r v) + J_fᵀ(J_f v) + λ v.

``unlearn`` uses it for the ridge fit on ``D`` (``w*_D − w̄ = (G_D + λI)⁻¹ J_Dᵀ z_D``, docs/theory.md §2, §4).
``diagonal()`` is the sum of the sources' Gauss-Newton diagonals plus ``λ`` (one diagonal pass each),
so Jacobi preconditioning works on this route; a source without ``diag_ggn`` makes ``diagonal()`` raise
:class:`fastntk.errors.NoDiagonalError` before any pass.
"""
from __future__ import annotations

import math

import torch

from ..errors import DeviceError, DTypeError, InvalidInputError, NoDiagonalError, ShapeError
from ._eta import timed_product
from .base import TorchLinearOperator

__all__ = ["SumGGNLinearOperator", "check_sources"]


def check_sources(*sources, same_p: bool = True) -> None:
    """Jacobian sources that are combined must agree on ``p``, dtype and device (typed errors)."""
    first = sources[0]
    for s in sources[1:]:
        if same_p and s.p != first.p:
            raise ShapeError(f"Jacobian sources have different parameter counts p = {first.p} and {s.p}; "
                             f"build them from the same PEFT set")
        if s.dtype != first.dtype:
            raise DTypeError(f"Jacobian sources work in {first.dtype} and {s.dtype}; build them in one dtype")
        if s.device != first.device:
            raise DeviceError(f"Jacobian sources live on {first.device} and {s.device}; build them on one device")


class SumGGNLinearOperator(TorchLinearOperator):
    """``V ↦ G_r V + G_f V + λ V`` with ``G_S = J_Sᵀ J_S`` (``Σ_i J_iᵀ Λ_i J_i`` for ``loss="ce"``).

    Parameters
    ----------
    src_r, src_f : Jacobian sources (streamed or cached) of the two data sets, same PEFT set
        (same ``p``, dtype, device).
    ridge : ``λ ≥ 0``.

    Cost per product: one ``gmat`` of each source (streamed: a forward pass per batch shared by
    the JVP, the VJP and all columns).  Symmetric PSD, positive definite for ``λ > 0``.
    """

    symmetric = True

    def __init__(self, src_r, src_f, ridge: float = 0.0):
        check_sources(src_r, src_f)
        ridge = float(ridge)
        if not math.isfinite(ridge) or ridge < 0:
            raise InvalidInputError(f"ridge must be finite and >= 0, got {ridge}")
        super().__init__((src_r.p, src_r.p), src_r.dtype, src_r.device)
        self.src_r, self.src_f, self.ridge = src_r, src_f, ridge
        self.sources = (src_r, src_f)

    @property
    def has_diagonal(self) -> bool:
        """Whether :meth:`diagonal` is available (every source has ``diag_ggn``)."""
        return all(callable(getattr(s, "diag_ggn", None)) for s in self.sources)

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return timed_product(self, V, self._product)  # the first product logs a CG ETA (fastntk.operators._eta)

    def _product(self, V: torch.Tensor) -> torch.Tensor:
        out = self.src_r.gmat(V) + self.src_f.gmat(V)
        if self.ridge:
            out = out + self.ridge * V
        return out

    def diagonal(self) -> torch.Tensor:
        """``diag(G_r) + diag(G_f) + λ`` (p,)."""
        if not self.has_diagonal:
            missing = [type(s).__name__ for s in self.sources if not callable(getattr(s, "diag_ggn", None))]
            raise NoDiagonalError(f"SumGGNLinearOperator: source(s) {', '.join(missing)} have no diag_ggn(); "
                                  f"use preconditioner='nystrom' or 'none'")
        return self.src_r.diag_ggn() + self.src_f.diag_ggn() + self.ridge
