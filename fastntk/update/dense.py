"""Dense float64 algebra of the unlearning update: Gram matrices, Cholesky factors, direct solves.

Every direct solve is ``(G + λI) x = b`` with ``G = JᵀJ`` (p × p) of a cached ``J`` (m × p, m = n·C rows), by a
float64 Cholesky factor in the smaller of the two spaces:

* :class:`DenseFactor` -- parameter space: ``L Lᵀ = G + λI`` (p × p);
* :class:`KernelFactor` -- kernel space (``m < p``), push-through ``(JᵀJ + λI)⁻¹ b = (b − Jᵀ(JJᵀ + λI)⁻¹ J b)/λ``
  with ``L Lᵀ = JJᵀ + λI`` (m × m).

:func:`factor_of` picks one; :func:`direct_solve` solves, checks the true residual and records a
:class:`fastntk.solvers.SolveResult`.  :func:`woodbury_solve` applies ``(H − J_fᵀJ_f)⁻¹`` through a factor of
``H``; :func:`delta_dense` is Golatkar et al.'s dense NTK baseline (NumPy).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from ..errors import NumericalError
from ..operators.sketch import jtv64, jv64  # the row-chunked float64 products (one definition, beside the sketch's solves)
from ..operators.base import TorchLinearOperator
from .solve import record_direct

__all__ = ["jv64", "jtv64", "gram64", "cholesky64", "gram_of_source", "DenseFactor", "KernelFactor", "factor_of",
           "direct_solve", "solve_primal_direct", "woodbury_solve", "delta_dense"]


def _chunks(n, size):
    return [(a, min(a + size, n)) for a in range(0, n, size)]




def gram64(J, *, side="params", rows=4096):
    """``JᵀJ`` (side="params", p × p) or ``JJᵀ`` (side="samples", nC × nC) in float64, chunked."""
    if side == "params":
        G = torch.zeros(J.shape[1], J.shape[1], dtype=torch.float64, device=J.device)
        for a, b in _chunks(J.shape[0], rows):
            Jc = J[a:b].double()
            G += Jc.T @ Jc
        return G
    K = torch.zeros(J.shape[0], J.shape[0], dtype=torch.float64, device=J.device)
    for a, b in _chunks(J.shape[1], max(1, int(2e8 // max(1, 8 * J.shape[0])))):
        Jc = J[:, a:b].double()
        K += Jc @ Jc.T
    return K


def cholesky64(H: torch.Tensor, what: str) -> torch.Tensor:
    """Cholesky factor of the SPD matrix ``H``, or a :class:`NumericalError` naming it."""
    L, info = torch.linalg.cholesky_ex(H)
    if int(info) != 0:
        raise NumericalError(f"{what} is not positive definite; increase the ridge")
    return L


def gram_of_source(src, rows_bytes: float = 2e8) -> torch.Tensor:
    """``JᵀJ`` (p × p, float64) of a Jacobian source: directly from a cached ``J``, else in sample chunks."""
    if hasattr(src, "J"):
        return gram64(src.J)
    G = torch.zeros(src.p, src.p, dtype=torch.float64, device=src.device)
    chunk = max(1, min(4096, int(rows_bytes // max(1, 8 * src.p * src.C))))
    for a in range(0, src.n, chunk):
        Jc = src.subset(np.arange(a, min(a + chunk, src.n))).dense().double()
        G += Jc.T @ Jc
    return G


class DenseFactor:
    """Cholesky factor of ``H = G + λI`` (p × p, float64); ``H`` itself is kept when asked (residuals, downdates)."""

    space = "parameter"

    def __init__(self, H: torch.Tensor, ridge: float, *, keep_matrix: bool = True, seconds: float = 0.0, what: str = "G_D + λI"):
        self.L = cholesky64(H, what)
        self.H = H if keep_matrix else None
        self.ridge, self.p, self.seconds = ridge, H.shape[0], seconds

    @classmethod
    def from_source(cls, src, ridge: float, *, keep_matrix: bool = True) -> "DenseFactor":
        """Build ``H = JᵀJ + λI`` from a Jacobian source (cached ``J`` or sample chunks) and factor it."""
        t = time.perf_counter()
        G = gram_of_source(src)
        G.diagonal().add_(ridge)
        return cls(G, ridge, keep_matrix=keep_matrix, seconds=time.perf_counter() - t)

    def solve(self, B):
        """``H⁻¹ B`` (float64)."""
        return torch.cholesky_solve(B.double(), self.L)

    def residual(self, x, b) -> float:
        """``‖H x − b‖`` (with ``H = L Lᵀ`` when ``H`` itself was not kept)."""
        Hx = self.H @ x if self.H is not None else self.L @ (self.L.T @ x)
        return float((Hx - b).norm())


class KernelFactor:
    """``(JᵀJ + λI)⁻¹`` by push-through with the Cholesky factor of ``K + λI``, ``K = JJᵀ`` (m × m, float64)."""

    space = "kernel"

    def __init__(self, J: torch.Tensor, K: torch.Tensor, ridge: float, what: str = "Θ + λI"):
        K = K.clone()
        K.diagonal().add_(ridge)
        self.J, self.ridge, self.L = J, float(ridge), cholesky64(K, what)

    def solve(self, B):
        B = B.double()
        return (B - jtv64(self.J, torch.cholesky_solve(jv64(self.J, B), self.L))) / self.ridge

    def fit(self, z):
        """``(JᵀJ + λI)⁻¹ Jᵀ z = Jᵀ (JJᵀ + λI)⁻¹ z`` without the push-through's cancellation (a ridge fit, small λ)."""
        return jtv64(self.J, torch.cholesky_solve(z.double().unsqueeze(1), self.L))[:, 0]

    def residual(self, x, b) -> float:
        return float((jtv64(self.J, jv64(self.J, x)) + self.ridge * x - b).norm())


def factor_of(J: torch.Tensor, lam: float, what: str):
    """The factor of ``JᵀJ + λI`` in the smaller space (kernel space needs ``λ > 0``)."""
    m, p = J.shape
    if p <= m or lam <= 0:
        H = gram64(J)
        H.diagonal().add_(lam)
        return DenseFactor(H, lam, what=f"{what} (λ = {lam})")
    return KernelFactor(J, gram64(J, side="samples"), lam, what=f"{what} (λ = {lam})")


def direct_solve(factor, g, rtol: float, solves: dict, name: str, *, method: str = "cholesky", check: bool = True, z=None):
    """``x = factor⁻¹ g`` (float64), its true residual recorded under ``name`` and (``check``) required to be within
    ``max(rtol·‖g‖, 1e3·eps·‖g‖)`` (else :class:`NumericalError`).  ``z`` with ``g = Jᵀz`` and a kernel factor: the fit
    form ``Jᵀ(JJᵀ + λI)⁻¹z`` (:meth:`KernelFactor.fit`)."""
    t = time.perf_counter()
    gd = g.double()
    x = factor.fit(z) if z is not None and hasattr(factor, "fit") else factor.solve(gd.unsqueeze(1))[:, 0]
    res, bn = factor.residual(x, gd), float(gd.norm())
    tol = rtol * bn
    record_direct(solves, name, x, residual=res, rhs_norm=bn, tolerance=tol, t0=t, method=f"{method}, {factor.space} space",
                  matvecs=2)
    if check and not res <= max(tol, 1e3 * torch.finfo(torch.float64).eps * bn):
        raise NumericalError(f"direct solve {name!r}: residual {res:.3e} above tolerance {tol:.3e} (ill-conditioned); increase the ridge")
    return x


def solve_primal_direct(src, g, lam, ctx, name):
    """``(JᵀJ + λI)⁻¹ g`` from a cached ``J`` (:func:`factor_of`, :func:`direct_solve`), in ``g``'s dtype."""
    return direct_solve(factor_of(src.J, lam, "G_r + λI"), g, ctx.rtol, ctx.solves, name).to(g.dtype)


class _Capacitance(TorchLinearOperator):
    """``I − J_f H⁻¹ J_fᵀ`` (n_fC × n_fC) from ``HJt = H⁻¹J_fᵀ``."""

    symmetric = True

    def __init__(self, Jf, HJt):
        super().__init__((Jf.shape[0], Jf.shape[0]), torch.float64, Jf.device)
        self.Jf, self.HJt = Jf, HJt

    def _matmat(self, U):
        return U - self.Jf @ (self.HJt @ U)

    def diagonal(self) -> torch.Tensor:
        return 1.0 - (self.Jf * self.HJt.T).sum(1)


def woodbury_solve(factor: DenseFactor, Jf: torch.Tensor, g: torch.Tensor, ctx, *, dense_limit: int = 6000):
    """``(H − J_fᵀJ_f)⁻¹ g = H⁻¹g + H⁻¹J_fᵀ(I − J_f H⁻¹ J_fᵀ)⁻¹J_f H⁻¹g`` (float64).

    ``Jf`` is the (materialized) forget Jacobian (n_fC × p); only an n_fC system is solved: directly when
    ``n_fC ≤ dense_limit``, else by CG (recorded as ``"capacitance"``).
    """
    Jf, g = Jf.double(), g.double()
    a = factor.solve(g.unsqueeze(1))[:, 0]  # H⁻¹ g
    b = Jf @ a
    HJt = factor.solve(Jf.T)  # H⁻¹ J_fᵀ (p × n_fC)
    m = Jf.shape[0]
    if m <= dense_limit:
        t = time.perf_counter()
        Cap = torch.eye(m, dtype=torch.float64, device=Jf.device) - Jf @ HJt
        c = torch.linalg.solve(Cap, b)
        record_direct(ctx.solves, "capacitance", c, residual=float((Cap @ c - b).norm()), rhs_norm=float(b.norm()),
                      tolerance=None, t0=t, method="dense solve")
    else:
        c = ctx.solve(_Capacitance(Jf, HJt), b, "capacitance")
    return a + HJt @ c


def delta_dense(src_r, src_f, Y_r, Y_f, w_bar, lam):
    """Golatkar et al.'s dense NTK: materialize ``J`` and apply the dual closed form with ``numpy.linalg.solve``."""
    Jr = src_r.dense().double().cpu().numpy()
    Jf = src_f.dense().double().cpu().numpy()
    z_r = (Y_r.double().cpu() - src_r.outputs().reshape(-1).double().cpu()).numpy()
    z_f = (Y_f.double().cpu() - src_f.outputs().reshape(-1).double().cpu()).numpy()
    K_rr = Jr @ Jr.T + lam * np.eye(Jr.shape[0])
    K_ff = Jf @ Jf.T + lam * np.eye(Jf.shape[0])
    T_fr = Jf @ Jr.T
    Kinv_zr = np.linalg.solve(K_rr, z_r)
    Kinv_Trf = np.linalg.solve(K_rr, T_fr.T)
    V = -z_f + T_fr @ Kinv_zr
    m = np.linalg.solve(K_ff - T_fr @ Kinv_Trf, V)
    u = Jf.T @ m
    Pu = u - Jr.T @ np.linalg.solve(K_rr, Jr @ u)
    w_ret = w_bar + torch.as_tensor(Jr.T @ Kinv_zr, dtype=w_bar.dtype, device=w_bar.device)
    return torch.as_tensor(Pu, dtype=w_bar.dtype, device=w_bar.device), w_ret
