"""``SchurComplementLinearOperator``: ``S = K_ff − Θ_fr K_rr⁻¹ Θ_rf`` (n_f C × n_f C).

With the NTK blocks ``Θ_ab = J_a J_bᵀ`` and ``K_aa = Θ_aa + λI`` of the retain set ``r`` and the forget
set ``f``, ``S`` is the Schur complement of ``K_rr`` in the NTK of ``D = D_r ∪ D_f`` (plus ``λI``).
``unlearn``'s dual form (the paper's closed form ``Δ = P J_fᵀ M V``, docs/theory.md §3.1) solves
``S m = V``.  Applied matrix-free, with ``P = I − J_rᵀ K_rr⁻¹ J_r`` (the projector onto the part
of parameter space the retain kernel does not fix):

    S u = J_f (g − J_rᵀ K_rr⁻¹ J_r g) + λ u,   g = J_fᵀ u,

so every product runs one inner solve with ``K_rr`` per column (``inner_solve``).  The inner solves
must be accurate (their error enters ``S`` directly): use an ``rtol`` well below the outer one.

``diagonal()`` is not cheap (it needs ``diag(Θ_fr K_rr⁻¹ Θ_rf)``): it raises
:class:`fastntk.errors.NoDiagonalError` before any work.  :meth:`kff_diagonal` gives
``diag(K_ff) ≥ diag(S)`` (cheap), a valid SPD Jacobi preconditioner for ``S``.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from ..errors import InvalidInputError, NoDiagonalError
from .base import TorchLinearOperator
from .sum import check_sources

__all__ = ["SchurComplementLinearOperator"]


class SchurComplementLinearOperator(TorchLinearOperator):
    """``U ↦ J_f (I − J_rᵀ K_rr⁻¹ J_r) J_fᵀ U + λ U`` (symmetric PSD; PD for ``λ > 0``).

    Parameters
    ----------
    src_f, src_r : Jacobian sources of the forget and the retain set (same ``p``, dtype, device).
    inner_solve : ``K_rr⁻¹ b``.  Called with a tensor of shape (n_r C,) per column, or, with
        ``block=True``, once per product with the whole block (n_r C, k).
    ridge : ``λ ≥ 0`` of ``K_ff = Θ_ff + λI``.
    block : see ``inner_solve``.

    Use :meth:`with_cg` for the inner solve by :func:`fastntk.solvers.cg` on torch tensors;
    its solve records are collected in ``inner_results`` (:meth:`inner_summary` adds them up).
    """

    symmetric = True
    has_diagonal = False  # see diagonal()

    def __init__(self, src_f, src_r, inner_solve: Callable[[torch.Tensor], torch.Tensor], ridge: float = 0.0, *,
                 block: bool = False):
        check_sources(src_f, src_r)
        if not callable(inner_solve):
            raise InvalidInputError(f"inner_solve must be callable (b ↦ K_rr⁻¹ b), got {type(inner_solve).__name__}")
        ridge = float(ridge)
        if not math.isfinite(ridge) or ridge < 0:
            raise InvalidInputError(f"ridge must be finite and >= 0, got {ridge}")
        super().__init__((src_f.nC, src_f.nC), src_f.dtype, src_f.device)
        self.src_f, self.src_r, self.inner_solve, self.ridge, self.block = src_f, src_r, inner_solve, ridge, bool(block)
        self.inner_results: list = []

    @classmethod
    def with_cg(cls, src_f, src_r, ridge: float, *, ridge_r: Optional[float] = None, rtol: float = 1e-10,
                maxiter: Optional[int] = None, M=None, on_fail: str = "raise") -> "SchurComplementLinearOperator":
        """The inner solve ``K_rr = Θ_rr + λ_r I`` (``λ_r = ridge_r``, default ``ridge``) by
        :func:`fastntk.solvers.cg` on torch tensors (no host copy); ``M`` an optional preconditioner
        for ``K_rr``.  Every inner :class:`~fastntk.solvers.SolveResult` lands in ``inner_results``."""
        from ..solvers import cg  # noqa: PLC0415
        from .ntk import NTKLinearOperator  # noqa: PLC0415

        K_rr = NTKLinearOperator(src_r, ridge if ridge_r is None else ridge_r)
        results: list = []

        def solve(b):
            res = cg(K_rr, b, rtol=rtol, maxiter=maxiter, M=M, on_fail=on_fail)
            results.append(res)
            return res.x

        op = cls(src_f, src_r, solve, ridge)
        op.inner_results = results
        op.K_rr = K_rr
        return op

    def inner_summary(self):
        """One :class:`~fastntk.solvers.SolveResult` for all inner solves so far (``None`` if none)."""
        from ..solvers import SolveResult  # noqa: PLC0415

        return SolveResult.combine(self.inner_results, method="inner K_rr") if self.inner_results else None

    def _apply_P(self, G: torch.Tensor) -> torch.Tensor:
        """``(I − J_rᵀ K_rr⁻¹ J_r) G`` for G of shape (p, k)."""
        R = self.src_r.jmat(G)  # (n_r C, k)
        if self.block:
            Y = self.inner_solve(R)
        else:
            Y = torch.stack([self.inner_solve(R[:, j]) for j in range(R.shape[1])], dim=1)
        return G - self.src_r.jtmat(Y.to(G.dtype))

    def _matmat(self, U: torch.Tensor) -> torch.Tensor:
        out = self.src_f.jmat(self._apply_P(self.src_f.jtmat(U)))
        if self.ridge:
            out = out + self.ridge * U
        return out

    def diagonal(self) -> torch.Tensor:
        raise NoDiagonalError("SchurComplementLinearOperator has no cheap diagonal (it needs diag(Θ_fr K_rr⁻¹ Θ_rf)); "
                              "use JacobiPreconditioner(S.kff_diagonal()) (diag K_ff ≥ diag S), "
                              "preconditioner='nystrom' or 'none'")

    def kff_diagonal(self) -> torch.Tensor:
        """``diag(K_ff) = diag(Θ_ff) + λ`` (n_f C,): an upper bound of ``diag(S)``, cheap (one diagonal pass)."""
        return self.src_f.diag_ntk() + self.ridge
