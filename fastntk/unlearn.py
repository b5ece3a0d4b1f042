"""The unlearning update of MATH.md: dual (Fast-NTK), primal (Newton), Woodbury, dense.

Notation (MATH.md): ``D = D_r ∪ D_f``; ``J_S`` the Jacobian of the PEFT
parameters at the linearization point ``w̄``; ``f̄_S = f(X_S; w̄)``; ``Y_S`` the
targets (``target_scale · one_hot``); ``z_S = Y_S − f̄_S``;
``f_lin(x; w) = f̄(x) + J(x)(w − w̄)``; ``H_S = G_S + λI``; ``K_SS = Θ_SS + λI``.

Forms (all return ``Δ`` with the unlearned PEFT vector ``w_trained + Δ``):

``"dual"`` -- Fast-NTK / Golatkar et al. closed form, kernel space::

    Δ = P J_fᵀ M V,   P = I − J_rᵀ K_rr⁻¹ J_r,
    M = (K_ff − Θ_fr K_rr⁻¹ Θ_rf)⁻¹,   V = −z_f + Θ_fr K_rr⁻¹ z_r

  i.e. ``Δ = w_{D_r} − w_D`` between the two ridge fits of the linearized
  model from ``w̄``.  All inverses are applied by CG; ``M`` is an operator whose
  matvec needs an inner ``K_rr`` solve.

``"primal"`` -- one Newton step of the retain loss from the trained weights::

    Δ = (G_r + λI)⁻¹ J_fᵀ (f_lin(X_f; w_trained) − Y_f)

``"woodbury"`` -- the same Newton step, with ``(G_r + λI)⁻¹`` applied through
``H = G_D + λI`` (prepared once) and a forget-space system::

    H_r⁻¹ = H⁻¹ + H⁻¹ J_fᵀ (I − J_f H⁻¹ J_fᵀ)⁻¹ J_f H⁻¹

``"dense"`` -- Golatkar et al.'s dense NTK baseline (materialized ``J``, explicit
``numpy.linalg.solve`` of the dual closed form); small ``n`` only.

All forms give the same ``Δ`` when the trained weights are the linearized ridge
fit on ``D`` (the truth test of MATH.md: ``w_trained + Δ`` equals the fit on
``D_r``).  When they are not (ordinary fine-tuning), ``dual`` measures the
difference of the two kernel fits while ``primal``/``woodbury`` take a Newton
step from where the model actually is.
"""
from __future__ import annotations

import logging
import math
import time
import warnings
from typing import Callable

import numpy as np
import torch

from .errors import (
    DataError,
    ForgetSetError,
    InvalidInputError,
    ModelStateError,
    NumericalError,
    PeftError,
)
from .operators import GGNLinearOperator, NTKLinearOperator, make_jacobian
from .operators.base import TorchLinearOperator
from .precision import with_strict_precision
from .update.guard import HarmTolerance, check_no_harm, retain_sample
from .update.newton import NewtonOptions
from .update.objective import NetworkObjective, loss_of
from .update.policy import ce_anchor, resolve_variant
from .update.tilted import JacobianOptions, tilted_newton
from .update.prepared_ce import CEUnlearner, check_request
from .update.result import UnlearnResult
from .update.solve import SolveContext as _SolveCtx
from .update.solve import check_norm_bound as _check_norm_bound
from .update.solve import cholesky64 as _cholesky
from .update.solve import gram64
from .update.solve import jtv64 as _jtv64
from .update.solve import jv64 as _jv64
from .update.solve import solve_primal_direct as _solve_primal_direct

log = logging.getLogger("fastntk")

__all__ = ["unlearn", "Unlearner", "UnlearnResult", "unlearning", "match_ridge", "FORMS"]

FORMS = ("auto", "dual", "primal", "woodbury", "dense")
SCALES = (None, "trapezium")


# ======================================================================================
# input handling
# ======================================================================================
def _xy(data, name: str):
    """``(X, y)`` from a tuple, an object with ``.X``/``.y``, or a Dataset of pairs."""
    if isinstance(data, tuple) and len(data) == 2:
        X, y = data
    elif hasattr(data, "X") and hasattr(data, "y"):
        X, y = data.X, data.y
    elif isinstance(data, torch.utils.data.Dataset):
        try:
            items = [data[i] for i in range(len(data))]
        except Exception as e:
            raise DataError(f"cannot read the {name} set: {e}") from None
        if not items:
            raise DataError(f"the {name} set is empty")
        X = torch.stack([torch.as_tensor(it[0]) for it in items])
        y = torch.as_tensor([int(it[1]) for it in items])
    else:
        raise DataError(f"the {name} set must be (X, y), an object with .X and .y, or a Dataset of (x, y); got {type(data).__name__}")
    if not isinstance(X, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise DataError(f"the {name} set must hold torch tensors")
    if X.shape[0] != y.shape[0]:
        raise DataError(f"the {name} set has {X.shape[0]} inputs but {y.shape[0]} labels")
    if X.shape[0] == 0:
        raise ForgetSetError(f"the {name} set is empty; unlearning needs at least one {name} sample")
    if y.dtype.is_floating_point or y.ndim != 1:
        raise DataError(f"{name} labels must be a 1-D integer tensor of class indices, got {y.dtype} {tuple(y.shape)}")
    if not torch.isfinite(X).all():
        raise DataError(f"the {name} inputs contain NaN/Inf; clean the data before unlearning")
    return X, y


def _row_keys(X: torch.Tensor, chunk: int = 4096) -> list[bytes]:
    """A 16-byte digest of every input's exact bytes (chunked: no full copy of ``X``)."""
    import hashlib

    keys: list[bytes] = []
    for a in range(0, X.shape[0], chunk):
        block = X[a : a + chunk].detach().cpu().contiguous().reshape(min(chunk, X.shape[0] - a), -1).numpy()
        keys += [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in block]
    return keys


def _check_overlap(X_r: torch.Tensor, X_f: torch.Tensor) -> None:
    """Forget samples must be distinct and absent from the retain set (compared by exact input bytes)."""
    kf = _row_keys(X_f)
    if len(set(kf)) != len(kf):
        raise ForgetSetError("the forget set contains the same input twice; pass each sample once "
                             "(if the data holds genuine duplicate inputs, pass check_overlap=False)")
    kr = set(_row_keys(X_r))
    both = [i for i, k in enumerate(kf) if k in kr]
    if both:
        raise ForgetSetError(f"{len(both)} forget sample(s) also appear in the retain set (e.g. forget index {both[0]}); "
                             "retain and forget must be disjoint (if the data holds genuine duplicate inputs, pass check_overlap=False)")


def _check_labels(y: torch.Tensor, C: int, name: str):
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= C):
        raise DataError(f"{name} labels must lie in [0, {C}) (the model has {C} outputs); got range [{int(y.min())}, {int(y.max())}]")


def _check_model(model, peft):
    from torch.nn.modules.batchnorm import _BatchNorm

    if peft.model is not model:
        raise PeftError("the PEFT set wraps another model; build it with the model you pass (for prompts pass peft.model)")
    bad = [n for n, m in model.named_modules() if isinstance(m, _BatchNorm) and m.training]
    if bad:
        raise ModelStateError(
            f"BatchNorm layers are in train mode ({bad[0]!r}…): NTK unlearning linearizes the model in eval mode; "
            "call model.eval() first"
        )
    for n, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise NumericalError(f"model tensor {n!r} contains NaN/Inf; unlearning a broken model is refused")


def _check_scalar(name, value, *, positive=False, nonneg=False):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise InvalidInputError(f"{name} must be finite, got {value!r}")
    if positive and v <= 0:
        raise InvalidInputError(f"{name} must be > 0, got {value!r}")
    if nonneg and v < 0:
        raise InvalidInputError(f"{name} must be >= 0, got {value!r}")
    return v


def _targets(y: torch.Tensor, C: int, scale: float, dtype, device):
    return (torch.nn.functional.one_hot(y.to(device), C).to(dtype) * scale).reshape(-1)


# ======================================================================================
# solves
# ======================================================================================




class _SchurOperator(TorchLinearOperator):
    """``S = K_ff − Θ_fr K_rr⁻¹ Θ_rf`` (n_fC × n_fC); each matvec runs an inner ``K_rr`` solve.

    Equivalently ``S = J_f P J_fᵀ + λI`` with ``P = I − J_rᵀ K_rr⁻¹ J_r``.
    """

    symmetric = True

    def __init__(self, src_f, src_r, K_rr, ridge_f, ctx, inner_rtol):
        super().__init__((src_f.nC, src_f.nC), src_f.dtype, src_f.device)
        self.src_f, self.src_r, self.K_rr, self.ridge, self.ctx, self.inner_rtol = src_f, src_r, K_rr, ridge_f, ctx, inner_rtol

    def _matmat(self, U):
        cols = []
        for j in range(U.shape[1]):
            u = U[:, j : j + 1]
            g = self.src_f.jtmat(u)  # J_fᵀ u (p,1)
            Pg = g - self.src_r.jtmat(self.ctx.solve(self.K_rr, self.src_r.jmat(g)[:, 0], "inner K_rr", rtol=self.inner_rtol, quiet=True).unsqueeze(1))
            cols.append(self.src_f.jmat(Pg) + self.ridge * u)
        return torch.cat(cols, dim=1)


# ======================================================================================
# the forms
# ======================================================================================
def _fit_displacement_primal(src, z, ridge, ctx, name):
    """``w_S − w̄ = (G_S + λI)⁻¹ J_Sᵀ z_S`` (primal ridge fit)."""
    H = GGNLinearOperator(src, ridge)
    return ctx.solve(H, src.jtmat(z.unsqueeze(1))[:, 0], name, key=("H", id(src), ridge))


def _delta_dual(src_r, src_f, z_r, z_f, ridge_r, ctx):
    K_rr = NTKLinearOperator(src_r, ridge_r)
    a_r = ctx.solve(K_rr, z_r, "K_rr z_r", key=("K", id(src_r)))
    w_ret = src_r.jtmat(a_r.unsqueeze(1))[:, 0]  # w_{D_r} − w̄
    V = -z_f + src_f.jmat(w_ret.unsqueeze(1))[:, 0]  # f_lin(X_f; w_{D_r}) − Y_f
    S = _SchurOperator(src_f, src_r, K_rr, ridge_r, ctx, inner_rtol=ctx.rtol * 1e-2)
    m = ctx.solve(S, V, "Schur M V")
    u = src_f.jtmat(m.unsqueeze(1))[:, 0]
    Pu = u - src_r.jtmat(ctx.solve(K_rr, src_r.jmat(u.unsqueeze(1))[:, 0], "K_rr J_r u", key=("K", id(src_r))).unsqueeze(1))[:, 0]
    return Pu, w_ret


def _forget_residual(src_f, y_f_targets, w_trained, w_bar):
    """``f_lin(X_f; w_trained) − Y_f = f̄_f + J_f (w_trained − w̄) − Y_f``."""
    r = src_f.outputs().reshape(-1) - y_f_targets
    d = w_trained - w_bar
    if float(d.abs().max()) > 0:
        r = r + src_f.jmat(d.unsqueeze(1))[:, 0]
    return r


def _delta_primal(src_r, src_f, r_f, ridge_r, ctx, *, direct=False, g_extra=None, name="H_r Δ = J_fᵀ r_f", key=None):
    """``Δ = (G_r + λI)⁻¹ (J_fᵀ r_f [+ g_extra])`` by CG or by a direct factorization (``src_f=None``: ``g_extra`` only)."""
    g = src_f.jtmat(r_f.unsqueeze(1))[:, 0] if src_f is not None else torch.zeros_like(g_extra)
    if g_extra is not None:
        g = g + g_extra
    if direct:
        delta = _solve_primal_direct(src_r, g, ridge_r, ctx, name)
    else:
        H_r = GGNLinearOperator(src_r, ridge_r)
        delta = ctx.solve(H_r, g, name, key=key or ("H", id(src_r), ridge_r))
    _check_norm_bound(delta, g, ridge_r, ctx.solves.get(name), name)
    return delta
















class _SumGGN(TorchLinearOperator):
    """``G_r + G_f + λI = G_D + λI`` from two Jacobian sources."""

    symmetric = True

    def __init__(self, src_r, src_f, ridge):
        super().__init__((src_r.p, src_r.p), src_r.dtype, src_r.device)
        self.src_r, self.src_f, self.ridge = src_r, src_f, float(ridge)

    def _matmat(self, V):
        return self.src_r.gmat(V) + self.src_f.gmat(V) + self.ridge * V


def _fit_full(src_r, src_f, Y_r, Y_f, lam, ctx, direct):
    """``w*_D − w̄ = (G_D + λI)⁻¹ (J_rᵀ z_r + J_fᵀ z_f)``: the linearized ridge fit on ``D = D_r ∪ D_f``."""
    from .operators import CachedJacobian

    z_r = Y_r - src_r.outputs().reshape(-1)
    z_f = Y_f - src_f.outputs().reshape(-1)
    b = src_r.jtmat(z_r.unsqueeze(1))[:, 0] + src_f.jtmat(z_f.unsqueeze(1))[:, 0]
    name = "H_D (w*_D − w̄) = J_Dᵀ z_D"
    if direct and hasattr(src_r, "J") and hasattr(src_f, "J"):
        both = CachedJacobian(torch.cat([src_r.J, src_f.J]), torch.cat([src_r.outputs(), src_f.outputs()]), loss=src_r.loss)
        x = _solve_primal_direct(both, b, lam, ctx, name)
    else:
        x = ctx.solve(_SumGGN(src_r, src_f, lam), b, name)
    _check_norm_bound(x, b, lam, ctx.solves.get(name), name)
    return x


def _delta_fit_direct(src_r, src_f, Y_r, Y_f, lam_r, lam_D, ctx):
    """``Δ = w*_{D_r} − w*_D`` from two ridge fits that share their Gram matrices (cached ``J``, float64).

    Parameter space (``p ≤ n_r·C``): ``G_r = J_rᵀJ_r`` and ``G_f`` once; ``H_r = G_r + λI``, ``H_D = G_r + G_f + λI``.
    Kernel space: ``K_DD = J_D J_Dᵀ`` once; ``K_rr`` is its leading principal block.
    """
    t = time.perf_counter()
    Jr, Jf = src_r.J, src_f.J
    z_r = (Y_r - src_r.outputs().reshape(-1)).double()
    z_f = (Y_f - src_f.outputs().reshape(-1)).double()
    m_r, p = Jr.shape
    b_r = _jtv64(Jr, z_r)
    b_D = b_r + _jtv64(Jf, z_f)
    if p <= m_r:
        G_r = gram64(Jr)
        H_D = G_r + gram64(Jf)
        H_D.diagonal().add_(lam_D)
        G_r.diagonal().add_(lam_r)
        out = {}
        for key, H, b in (("D", H_D, b_D), ("r", G_r, b_r)):
            x = torch.cholesky_solve(b.unsqueeze(1), _cholesky(H, "G + λI"))[:, 0]
            out[key] = (x, float((H @ x - b).norm()), float(b.norm()))
        space = f"parameter (p = {p})"
    else:
        JD = torch.cat([Jr, Jf])
        K = gram64(JD, side="samples")
        zD = torch.cat([z_r, z_f])
        out = {}
        for key, Ks, zs, Js, lam, b in (("D", K, zD, JD, lam_D, b_D), ("r", K[:m_r, :m_r], z_r, Jr, lam_r, b_r)):
            Ks = Ks.clone()
            Ks.diagonal().add_(lam)
            a = torch.cholesky_solve(zs.unsqueeze(1), _cholesky(Ks, "Θ + λI"))[:, 0]
            x = _jtv64(Js, a)  # w* − w̄ = Jᵀ (Θ + λI)⁻¹ z
            res = float((_jtv64(Js, _jv64(Js, x)) + lam * x - b).norm())
            out[key] = (x, res, float(b.norm()))
        space = f"kernel (n_D·C = {JD.shape[0]})"
    for key, name, lam in (("D", "H_D (w*_D − w̄) = J_Dᵀ z_D", lam_D), ("r", "H_r (w*_r − w̄) = J_rᵀ z_r", lam_r)):
        x, res, bn = out[key]
        tol = ctx.rtol * bn
        ctx.solves[name] = {"method": f"cholesky, {space} space, shared Gram", "backend": "torch", "iterations": 0, "matvecs": 2,
                            "true_residual": res, "tolerance": tol, "converged": res <= tol, "seconds": time.perf_counter() - t}
        if not res <= max(tol, 1e3 * torch.finfo(torch.float64).eps * bn):
            raise NumericalError(f"direct solve {name!r}: residual {res:.3e} above tolerance {tol:.3e}; increase the ridge")
    return (out["r"][0] - out["D"][0]).to(src_r.dtype)


def _gram_of_source(src, rows_bytes: float = 2e8) -> torch.Tensor:
    """``JᵀJ`` (p × p, float64) of a Jacobian source: directly from a cached ``J``, else in sample chunks."""
    if hasattr(src, "J"):
        return gram64(src.J)
    G = torch.zeros(src.p, src.p, dtype=torch.float64, device=src.device)
    chunk = max(1, min(4096, int(rows_bytes // max(1, 8 * src.p * src.C))))
    for a in range(0, src.n, chunk):
        Jc = src.subset(np.arange(a, min(a + chunk, src.n))).dense().double()
        G += Jc.T @ Jc
    return G


class _DenseFactor:
    """Cholesky factor of ``H = G_D + λI`` (p × p, float64); ``H`` itself is kept when asked (downdates)."""

    def __init__(self, H: torch.Tensor, ridge: float, *, keep_matrix: bool = True, seconds: float = 0.0):
        self.L = _cholesky(H, "G_D + λI")
        self.H = H if keep_matrix else None
        self.ridge = ridge
        self.p = H.shape[0]
        self.seconds = seconds

    @classmethod
    def from_source(cls, src, ridge: float, *, keep_matrix: bool = True) -> "_DenseFactor":
        """Build ``H = JᵀJ + λI`` from a Jacobian source (cached ``J`` or sample chunks) and factor it."""
        t = time.perf_counter()
        G = _gram_of_source(src)
        G.diagonal().add_(ridge)
        fac = cls(G, ridge, keep_matrix=keep_matrix)
        fac.seconds = time.perf_counter() - t
        return fac

    def solve(self, B):
        """``H⁻¹ B`` (float64)."""
        return torch.cholesky_solve(B.double(), self.L)


def _delta_woodbury(factor: _DenseFactor, Jf: torch.Tensor, g: torch.Tensor, ctx, *, dense_limit: int = 6000):
    """``Δ = H_r⁻¹ g`` (usually ``g = J_fᵀ r_f``) with ``H_r⁻¹ = H⁻¹ + H⁻¹J_fᵀ(I − J_f H⁻¹ J_fᵀ)⁻¹J_f H⁻¹``.

    ``Jf`` is the (materialized) forget Jacobian (n_fC × p); only an n_fC system
    is solved: directly when ``n_fC ≤ dense_limit``, else by CG.
    """
    Jf = Jf.double()
    g = g.double()
    a = factor.solve(g.unsqueeze(1))[:, 0]  # H⁻¹ g
    b = Jf @ a
    HJt = factor.solve(Jf.T)  # H⁻¹ J_fᵀ (p × n_fC)
    m = Jf.shape[0]
    if m <= dense_limit:
        Cap = torch.eye(m, dtype=torch.float64, device=Jf.device) - Jf @ HJt
        t = time.perf_counter()
        c = torch.linalg.solve(Cap, b)
        ctx.solves["capacitance"] = {"method": "dense solve", "iterations": 0, "matvecs": 0, "size": m,
                                     "true_residual": float((Cap @ c - b).norm()), "converged": True, "seconds": time.perf_counter() - t}
    else:
        class _Cap(TorchLinearOperator):
            symmetric = True

            def _matmat(self, U):
                return U - Jf @ (HJt @ U)

        c = ctx.solve(_Cap((m, m), torch.float64, Jf.device), b, "capacitance")
    return a + HJt @ c


def _trapezium_scale(delta, w_trained, w_ret_abs):
    """Golatkar et al.'s "trapezium" rescale of Δ.

    With ``e = w_trained − w_{D_r}`` (the gap between the trained weights and the
    linearized retain fit) and ``cos = ⟨Δ/‖Δ‖, e/‖e‖⟩``: if ``cos < 0``,
    ``φ = arccos(cos) − π/2`` and ``‖Δ‖* = ‖Δ‖ + 2 sin(φ)‖e‖``; else ``φ = arccos(cos)``
    and ``‖Δ‖* = ‖Δ‖ + 2 cos(φ)‖e‖``.  The scale is ``‖Δ‖* / ‖Δ‖``.
    """
    e = (w_trained - w_ret_abs).double()
    d = delta.double()
    nd, ne = float(d.norm()), float(e.norm())
    if nd == 0 or ne == 0:
        return 1.0
    inner = float(d @ e) / (nd * ne)
    inner = max(-1.0, min(1.0, inner))
    if inner < 0:
        ang = math.acos(inner) - math.pi / 2
        pred = nd + 2 * math.sin(ang) * ne
    else:
        ang = math.acos(inner)
        pred = nd + 2 * math.cos(ang) * ne
    return pred / nd


# ======================================================================================
# the public function
# ======================================================================================
def _choose_form(form, n_r, n_f, C, p, have_factor, direct=False, low_precision=False):
    if form != "auto":
        return form, f"form={form!r} requested"
    if have_factor:
        return "woodbury", "a prepared factor of H = G_D + λI exists: only the n_fC forget-space system is solved"
    if direct and n_f * C <= p <= n_r * C:
        return "woodbury", (f"J is cached and n_f·C = {n_f * C} ≤ p = {p}: one factor of H = G_D + λI and an n_f·C "
                            "forget-space system (cheaper than the two p × p factors of the primal form)")
    if direct:
        return "primal", (f"J is cached and min(p, n_r·C) = {min(p, n_r * C)} is small: Newton step with a direct "
                          f"Cholesky solve in the {'parameter' if p <= n_r * C else 'kernel'} space")
    if p <= n_r * C:
        return "primal", f"p = {p} ≤ n_r·C = {n_r * C}: the parameter space is the smaller one"
    if low_precision:
        return "primal", (f"n_r·C = {n_r * C} < p = {p}, but the dual form's nested inner solves need a tolerance 100× below "
                          "the outer one, which float32 CG cannot certify: Newton step in parameter space")
    return "dual", f"n_r·C = {n_r * C} < p = {p}: the kernel space is the smaller one"


@with_strict_precision
def unlearn(
    model: torch.nn.Module,
    peft,
    retain,
    forget,
    *,
    trained_with: str,
    ridge: float | str = "auto",
    w0: torch.Tensor | None = None,
    linearize_at: str = "auto",
    form: str = "auto",
    loss: str = "auto",
    target_scale: float = 1.0,
    scale: float | str | None = None,
    steps: int | str = "auto",
    ridge_convention: str = "sum",
    strategy: str = "auto",
    memory_budget: float | None = 2e9,
    batch_size: int = 128,
    solver: str = "auto",
    direct_limit: int = 4096,
    anchor: str = "auto",
    preconditioner: str | None = "none",
    precond_rank: int = 50,
    rtol: float = 1e-6,
    maxiter: int | None = None,
    backend: str = "auto",
    on_fail: str = "raise",
    line_search: bool = True,
    inplace: bool = False,
    progress: bool = False,
    callback: Callable | None = None,
    check_overlap: bool = True,
    harm: HarmTolerance | None = None,
    newton: NewtonOptions | None = None,
) -> UnlearnResult:
    """Remove the influence of ``forget`` from the PEFT parameters of ``model``.

    Parameters
    ----------
    model, peft : the trained model (eval mode) and its PEFT set (``peft.model is model``).
    retain, forget : ``(X, y)`` (or objects with ``.X``/``.y``, or Datasets of pairs): ``D_r`` and ``D_f``.
    trained_with : how the model was fine-tuned -- ``"ce"`` (cross-entropy, what most classifiers are),
        ``"mse"`` (ordinary MSE fine-tuning) or ``"linearized-mse"`` (the linearized model, where the update is
        exact).  Every ``"auto"`` below resolves from it (:mod:`fastntk.update.policy`), and the do-no-harm check
        scores the update with this loss.  Required: a CE-trained model must never silently get the MSE update.
    ridge : ``λ`` of the ridge fits (``½λ‖w − w̄‖²``, sum-loss convention), or ``"auto"``: for CE the damping rule of
        :func:`fastntk.update.tilted.tilted_newton`; for MSE the matched ridge (:func:`match_ridge`, needs ``w0``).
    w0 : PEFT vector before fine-tuning (``linearize_at="w0"``; required then).
    linearize_at : ``"w0"`` (``w̄ = w0``, the theory) or ``"trained"`` (``w̄ = w_trained``, Golatkar's code).
    form : ``"auto" | "dual" | "primal" | "woodbury" | "dense"`` (module docstring).
    loss : ``"mse"`` (the paper's kernel, targets ``target_scale·one_hot``) or ``"ce"``:
        cross-entropy Gauss-Newton ``G = Σ J_iᵀ(diag(p_i) − p_i p_iᵀ)J_i`` at ``w̄``; the step is
        ``Δ = −(G_r + λI)⁻¹ ∇L_r(w_trained)`` (gradient of the retain CE + ridge at the trained
        weights), damped by a backtracking line search on the retain loss (``line_search``).
    scale : ``None`` (1), a number ``s`` (``w_trained + s·Δ``), or ``"trapezium"`` (see :func:`_trapezium_scale`).
    steps : linearization steps.  ``1`` (default): the update above.  ``k > 1``: then ``k − 1`` Gauss-Newton steps on
        the retain objective (MSE or CE, + ``½λ‖w − w̄‖²``) of the *network*, relinearized at the current weights
        ``w`` each time: ``w ← w − t·(G_r(w) + λI)⁻¹ ∇L_r(w)``, ``t`` by Armijo backtracking on the network's
        retain objective (``line_search``; the objective never increases).  Corrects the
        linearization error of the first step when fine-tuning was not linearized; each step costs one more
        Jacobian of ``D_r`` and one solve.
    ridge_convention : ``"sum"`` (one λ for every fit; identities exact) or ``"mean"``
        (Golatkar's mean loss: ridge ``n_r·λ`` for retain fits, ``n·λ`` for the full-data factor;
        the identities between forms then hold only approximately).
    strategy, memory_budget : Jacobian strategy (``"stream"``, ``"cached"``, ``"auto"``: cache ``J`` when
        ``nC·p`` floats fit ``memory_budget`` bytes).
    solver : ``"cg"`` (matrix-free Krylov, :func:`fastntk.solvers.cg`), ``"direct"`` (float64 Cholesky in the
        smaller of the two spaces, needs the cached ``J``) or ``"auto"`` (direct when ``J`` is cached and
        ``min(p, n_r·C) ≤ direct_limit``, else CG: the Gram matrix costs ``m²·max(p, n_r·C)`` flops with
        ``m = min(p, n_r·C)``, a few hundred CG matvecs on the cached ``J`` are cheaper above a few thousand).
    anchor : what ``Δ`` is measured from (primal / woodbury forms; dual and dense are "fit" by construction).
        ``"fit"`` (default, the paper's closed form): ``Δ = w*_{D_r} − w*_D``, the difference of the two ridge fits
        of the linearized model from ``w̄``; computed as the Newton step from ``w*_D`` (one more solve with
        ``G_D + λI``).  Every form then returns the same ``Δ``, and the error of fine-tuning (``w_trained −
        w*_D``) is left in place, as it is in retraining.  ``"trained"``: MATH.md's primal form
        ``Δ = (G_r + λI)⁻¹ J_fᵀ (f_lin(X_f; w_trained) − Y_f)`` (assumes ``w_trained = w*_D``).
        ``"retain"``: ``Δ = −(G_r + λI)⁻¹ ∇L_r(w_trained)`` with the full retain gradient
        ``J_rᵀ(f_lin(X_r; w) − Y_r) + λ(w − w̄)``: lands on ``w*_{D_r}`` from any start.
    preconditioner : ``"none" | "jacobi" | "nystrom"`` (rank ``precond_rank``); rtol / maxiter / backend /
        on_fail / callback go to :func:`fastntk.solvers.cg`.  With a float32 model and CG the
        CG tolerance is floored at 1e-4 (float32 matvecs cannot certify less; logged).
        Use a float64 model for tighter certified tolerances.
    inplace : write ``w_new`` into the model, only after everything succeeded (the do-no-harm check included).
    harm : :class:`fastntk.update.guard.HarmTolerance` of the do-no-harm check (default: on; an update that makes the
        retain loss of ``trained_with`` worse beyond the tolerance is damped, then refused with
        :class:`~fastntk.errors.HarmfulUpdateError`).  Its figures are ``result.info["harm_check"]``.
    newton : :class:`fastntk.update.newton.NewtonOptions` of the CE route (steps, stopping rule, line search).
    check_overlap : refuse a forget set with repeated inputs or inputs that also appear in the retain set
        (exact byte comparison, O(n)).
    allow_tf32 : keyword added by :func:`fastntk.precision.with_strict_precision` (default ``False``: TF32 is off on
        GPUs while this runs, the caller's flags are restored afterwards; measured TF32 error of Δ 2.9e-3).

    Returns
    -------
    UnlearnResult
    """
    t_all = time.perf_counter()
    timings: dict = {}
    # ---------------------------------------------------------------- validation (no work yet)
    variant, reasons = resolve_variant(trained_with, linearize_at=linearize_at, anchor=anchor, loss=loss, steps=steps)
    linearize_at, anchor, loss, steps = variant["linearize_at"], variant["anchor"], variant["loss"], variant["steps"]
    harm = HarmTolerance() if harm is None else harm
    if not isinstance(harm, HarmTolerance):
        raise InvalidInputError(f"harm must be a fastntk.update.guard.HarmTolerance, got {type(harm).__name__}")
    if loss == "ce":
        return _unlearn_ce(model, peft, retain, forget, trained_with=trained_with, ridge=ridge, w0=w0, linearize_at=linearize_at,
                           form=form, anchor=anchor, steps=steps, reasons=reasons, harm=harm, newton=newton,
                           jac=JacobianOptions(strategy=strategy, memory_budget=memory_budget, batch_size=batch_size,
                                               direct_limit=direct_limit, solver=solver, progress=progress),
                           solve=dict(rtol=rtol, maxiter=maxiter, preconditioner=preconditioner, precond_rank=precond_rank,
                                      backend=backend, callback=callback, on_fail=on_fail, progress=progress),
                           inplace=inplace, check_overlap=check_overlap, ridge_convention=ridge_convention, scale=scale,
                           line_search=line_search, t_all=t_all)
    if steps == "auto":
        steps = 1
    if form not in FORMS:
        raise InvalidInputError(f"form must be one of {FORMS}, got {form!r}")
    if loss != "mse":
        raise InvalidInputError(f"loss must be 'auto', 'mse' or 'ce', got {loss!r}")
    if linearize_at not in ("w0", "trained"):
        raise InvalidInputError(f"linearize_at must be 'w0' or 'trained', got {linearize_at!r}")
    if ridge_convention not in ("sum", "mean"):
        raise InvalidInputError(f"ridge_convention must be 'sum' or 'mean', got {ridge_convention!r}")
    if on_fail not in ("raise", "warn"):
        raise InvalidInputError(f"on_fail must be 'raise' or 'warn', got {on_fail!r}")
    if ridge != "auto":
        ridge = _check_scalar("ridge", ridge, nonneg=True)
    rtol = _check_scalar("rtol", rtol, positive=True)
    target_scale = _check_scalar("target_scale", target_scale, positive=True)
    if maxiter is not None and int(maxiter) <= 0:
        raise InvalidInputError(f"maxiter must be a positive integer, got {maxiter!r}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or int(steps) < 1:
        raise InvalidInputError(f"steps must be an integer >= 1, got {steps!r}")
    steps = int(steps)
    if isinstance(scale, str) and scale != "trapezium":
        raise InvalidInputError(f"scale must be None, a number or 'trapezium', got {scale!r}")
    if scale is not None and not isinstance(scale, str):
        scale = _check_scalar("scale", scale)
    if backend == "cupy":
        from .errors import BackendUnavailableError

        if not torch.cuda.is_available() or peft.device.type != "cuda":
            raise BackendUnavailableError("backend='cupy' needs the model on a CUDA GPU and CuPy (pip install 'fastntk[gpu]'); use backend='auto' or 'scipy' on CPU")
    _check_model(model, peft)
    X_r, y_r = _xy(retain, "retain")
    X_f, y_f = _xy(forget, "forget")
    if check_overlap:
        _check_overlap(X_r, X_f)
    w_trained = peft.vector()
    if linearize_at == "w0":
        if w0 is None:
            raise InvalidInputError("linearize_at='w0' needs w0, the PEFT vector before fine-tuning (or use linearize_at='trained')")
        peft.check_vector(w0, name="w0")
        if not torch.isfinite(w0).all():
            raise NumericalError("w0 contains NaN/Inf")
        w_bar = w0.detach().clone()
    else:
        w_bar = w_trained.clone()
    with torch.no_grad():
        C = int(peft.functional()(w_bar, X_f[:1].to(peft.device, peft.dtype)).shape[1])
    _check_labels(y_r, C, "retain")
    _check_labels(y_f, C, "forget")
    n_r, n_f, p = X_r.shape[0], X_f.shape[0], peft.p
    if ridge == "auto" and w0 is None:
        raise InvalidInputError("ridge='auto' for an MSE model is the matched ridge at w0 (match_ridge): pass w0, or ridge=")
    lam = 1.0 if ridge == "auto" else ridge  # the matched ridge (computed after validation) is > 0 by construction
    lam_r = lam * n_r if ridge_convention == "mean" else lam
    if solver not in ("auto", "cg", "direct"):
        raise InvalidInputError(f"solver must be 'auto', 'cg' or 'direct', got {solver!r}")
    if anchor not in ("fit", "trained", "retain"):
        raise InvalidInputError(f"anchor must be 'fit', 'trained' or 'retain', got {anchor!r}")
    if anchor != "fit" and form in ("dual", "dense"):
        raise InvalidInputError(f"form={form!r} computes w*_{{D_r}} − w*_D (anchor='fit'); use form='primal' for anchor={anchor!r}")
    from .operators import jacobian_bytes

    need_r = jacobian_bytes(n_r, C, p, peft.dtype)
    will_cache = strategy == "cached" or (strategy == "auto" and (memory_budget is None or need_r <= float(memory_budget)))
    if solver == "direct" and not will_cache:
        raise InvalidInputError("solver='direct' needs the cached Jacobian: use strategy='cached' (or 'auto' with a larger memory_budget)")
    direct = solver == "direct" or (solver == "auto" and will_cache and min(p, n_r * C) <= int(direct_limit))
    reasons["solver"] = ("direct Cholesky (cached J, min(p, n_r·C) = %d ≤ %d)" % (min(p, n_r * C), direct_limit)) if direct else "conjugate gradients (matrix-free)"
    if peft.dtype == torch.float32 and not direct and rtol < 1e-4:
        log.info("fastntk: float32 operators: CG rtol raised from %g to 1e-4", rtol)
        reasons["rtol"] = f"float32 operators: CG rtol raised from {rtol:g} to 1e-4 (float32 matvecs cannot certify less)"
        rtol = 1e-4
    chosen, why = _choose_form(form, n_r, n_f, C, p, have_factor=False, direct=direct,
                               low_precision=peft.dtype in (torch.float32, torch.float16, torch.bfloat16))
    if form == "auto" and anchor != "fit" and chosen != "primal":
        chosen, why = "primal", f"anchor={anchor!r} is defined as a Newton step in parameter space"
    reasons["form"] = why
    if lam_r <= 0 and (chosen == "dual" and n_r * C > p or chosen in ("primal", "woodbury") and p > n_r * C):
        raise InvalidInputError(
            f"ridge must be > 0: with n_r·C = {n_r * C} and p = {p} the {'kernel' if chosen == 'dual' else 'parameter'} "
            "space system is singular"
        )
    if lam_r <= 0 and chosen in ("dual", "primal", "woodbury"):
        warnings.warn("ridge = 0: the fit is unregularized; the solve may be ill-conditioned", stacklevel=2)
    log.info("fastntk: unlearn n_r=%d n_f=%d C=%d p=%d form=%s (%s)", n_r, n_f, C, p, chosen, why)

    ridge_info = None
    if ridge == "auto":
        t = time.perf_counter()
        lam, ridge_info = match_ridge(peft, (torch.cat([X_r, X_f]), torch.cat([y_r, y_f])), w_trained=w_trained, w0=w0,
                                      target_scale=target_scale, memory_budget=memory_budget)
        lam_r = lam * n_r if ridge_convention == "mean" else lam
        timings["ridge"] = time.perf_counter() - t
        reasons["ridge"] = (f"ridge='auto': matched ridge λ = {lam:.4g} (the λ whose linearized MSE fit at w0 best reproduces "
                            "the trained outputs, match_ridge)")
    else:
        reasons["ridge"] = f"ridge={lam:g} given"
    ctx = _SolveCtx(rtol=rtol, maxiter=maxiter, preconditioner=preconditioner, precond_rank=precond_rank,
                    backend=backend, callback=callback, on_fail=on_fail, progress=progress)
    # ---------------------------------------------------------------- Jacobian sources
    t = time.perf_counter()
    budget = memory_budget
    src_r = make_jacobian(peft, X_r, w=w_bar, loss=loss, strategy=strategy, memory_budget=budget, batch_size=batch_size, progress=progress)
    src_f = make_jacobian(peft, X_f, w=w_bar, loss=loss, strategy=strategy, memory_budget=budget, batch_size=batch_size, progress=progress)
    reasons["strategy"] = getattr(src_r, "reason", "")
    timings["jacobian"] = time.perf_counter() - t
    dt, dev = peft.dtype, peft.device

    # ---------------------------------------------------------------- the update
    t = time.perf_counter()
    w_ret_abs = None
    if loss == "ce":
        delta, info_ce = _delta_ce(peft, src_r, X_r, y_r, w_trained, w_bar, lam_r, ctx, batch_size, line_search)
        space = "primal"
        chosen = "primal" if chosen in ("auto", "dual", "woodbury") else chosen
        reasons["form"] = "loss='ce': Gauss-Newton step in parameter space (primal), damped by line search"
    else:
        Y_r = _targets(y_r, C, target_scale, dt, dev)
        Y_f = _targets(y_f, C, target_scale, dt, dev)
        if chosen == "dual":
            z_r = Y_r - src_r.outputs().reshape(-1)
            z_f = Y_f - src_f.outputs().reshape(-1)
            delta, w_ret = _delta_dual(src_r, src_f, z_r, z_f, lam_r, ctx)
            w_ret_abs = w_bar + w_ret
            space = "dual"
        elif chosen == "primal":
            g_extra = None
            lam_D = lam * (n_r + n_f) if ridge_convention == "mean" else lam
            if anchor == "fit" and direct and hasattr(src_r, "J") and hasattr(src_f, "J") and (p <= n_r * C or (n_r + n_f) * C <= int(direct_limit)):
                delta = _delta_fit_direct(src_r, src_f, Y_r, Y_f, lam_r, lam_D, ctx)
                r_f = None
            elif anchor == "fit":
                dD = _fit_full(src_r, src_f, Y_r, Y_f, lam_D, ctx, direct)
                r_f = src_f.outputs().reshape(-1) + src_f.jmat(dD.unsqueeze(1))[:, 0] - Y_f  # f_lin(X_f; w*_D) − Y_f
            elif anchor == "trained":
                r_f = _forget_residual(src_f, Y_f, w_trained, w_bar)
            else:
                # −∇L_r(w) = J_rᵀ(Y_r − f_lin(X_r; w)) − λ(w − w̄)
                r_f = torch.zeros(src_f.nC, dtype=dt, device=dev)
                d = (w_trained - w_bar).unsqueeze(1)
                z = Y_r - src_r.outputs().reshape(-1) - src_r.jmat(d)[:, 0]
                g_extra = src_r.jtmat(z.unsqueeze(1))[:, 0] - lam_r * d[:, 0]
            if r_f is not None:
                delta = _delta_primal(src_r, src_f, r_f, lam_r, ctx, direct=direct, g_extra=g_extra)
            space = "primal"
        elif chosen == "woodbury":
            if lam <= 0:
                raise InvalidInputError("form='woodbury' needs ridge > 0 (H = G_D + λI must be positive definite)")
            lam_D = lam * (n_r + n_f) if ridge_convention == "mean" else lam
            # H = G_D + λI from both sources (retain Gram in sample chunks: J_r is never held whole when streaming)
            t2 = time.perf_counter()
            Jf = src_f.dense()
            Gd = _gram_of_source(src_r) + gram64(Jf)
            Gd.diagonal().add_(lam_D)
            fac_r = _DenseFactor(Gd, lam_D, keep_matrix=False)
            del Gd
            timings["factor"] = time.perf_counter() - t2
            if anchor == "fit":
                z_r = Y_r - src_r.outputs().reshape(-1)
                z_f = (Y_f - src_f.outputs().reshape(-1)).double()
                b = src_r.jtmat(z_r.unsqueeze(1))[:, 0].double() + _jtv64(Jf, z_f)
                dD = fac_r.solve(b.unsqueeze(1))[:, 0]
                r_f = src_f.outputs().reshape(-1).double() + _jv64(Jf, dD) - Y_f.double()
            elif anchor == "trained":
                r_f = _forget_residual(src_f, Y_f, w_trained, w_bar)
            else:
                raise InvalidInputError("anchor='retain' is available with form='primal'")
            delta = _delta_woodbury(fac_r, Jf, _jtv64(Jf, r_f.double()), ctx).to(dt)
            space = "forget"
        else:  # dense
            delta, w_ret_abs = _delta_dense(src_r, src_f, Y_r, Y_f, w_bar, lam_r)
            space = "dual"
            ctx.solves["dense"] = {"method": "numpy.linalg.solve", "iterations": 0, "matvecs": 0, "converged": True}
    timings["solve"] = time.perf_counter() - t

    # ---------------------------------------------------------------- scale + guard rails
    if scale is None:
        s = 1.0
    elif scale == "trapezium":
        if w_ret_abs is None:
            Y_r = _targets(y_r, C, target_scale, dt, dev)
            z_r = Y_r - src_r.outputs().reshape(-1)
            w_ret_abs = w_bar + _fit_displacement_primal(src_r, z_r, lam_r, ctx, "retain fit (trapezium)")
        s = _trapezium_scale(delta, w_trained, w_ret_abs)
        reasons["scale"] = f"trapezium rescale = {s:.4g}"
    else:
        s = float(scale)
    delta = delta.to(dt)
    if not torch.isfinite(delta).all():
        raise NumericalError("the update Δ has NaN/Inf entries; the model was not changed. Increase the ridge or check the data")
    w_new = w_trained + s * delta
    if not torch.isfinite(w_new).all():
        raise NumericalError("the unlearned parameters overflow; the model was not changed")
    del src_f
    for k in range(2, steps + 1):
        # relinearize at the current weights; Gauss-Newton step on the network's retain objective (ridge centred at w̄)
        t = time.perf_counter()
        src_k = make_jacobian(peft, X_r, w=w_new, loss=loss, strategy=strategy, memory_budget=budget, batch_size=batch_size, progress=progress)
        del src_r
        src_r = src_k
        timings["jacobian"] += time.perf_counter() - t
        t = time.perf_counter()
        if loss == "ce":
            ctx_k = _SolveCtx(rtol=rtol, maxiter=maxiter, preconditioner=preconditioner, precond_rank=precond_rank,
                              backend=backend, callback=callback, on_fail=on_fail, progress=progress)
            dk, _ = _delta_ce(peft, src_k, X_r, y_r, w_new, w_bar, lam_r, ctx_k, batch_size, line_search)
            ctx.solves.update({f"step {k}: {n}": v for n, v in ctx_k.solves.items()})
        else:
            z = _targets(y_r, C, target_scale, dt, dev) - src_k.outputs().reshape(-1)
            g = src_k.jtmat(z.unsqueeze(1))[:, 0] - lam_r * (w_new - w_bar)  # −∇L_r(w) of the network (J at w)
            dk = _delta_primal(src_k, None, None, lam_r, ctx, direct=direct and hasattr(src_k, "J"), g_extra=g,
                               name=f"step {k}: H_r(w) Δ = −∇L_r(w)", key=("step", k))
            L0 = 0.5 * float(z @ z) + 0.5 * lam_r * float((w_new - w_bar) @ (w_new - w_bar))
            dk, _ = _line_search(peft, X_r, y_r, w_new, dk, -g, L0, w_bar, lam_r, ctx, batch_size, line_search,
                                 f"step {k}: line search", loss="mse", target_scale=target_scale)
        timings["solve"] += time.perf_counter() - t
        if not torch.isfinite(dk).all():
            raise NumericalError(f"linearization step {k} produced NaN/Inf; the model was not changed")
        w_new = w_new + dk.to(dt)
        reasons["steps"] = f"{k - 1} Gauss-Newton step(s) on the retain objective after the first update, relinearized each time"
    delta = w_new - w_trained  # the applied update: w_new = w_old + delta (scale and further steps included)
    t = time.perf_counter()
    delta, chk = _harm_check(peft, X_r, y_r, trained_with, w_trained, delta, w0, harm, target_scale)
    w_new = w_trained + delta
    timings["harm check"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_all
    res = UnlearnResult(
        delta=delta, w_new=w_new, w_old=w_trained, form=chosen, strategy=getattr(src_r, "strategy", "?"), space=space,
        loss=loss, scale=s * chk.scale, reasons=reasons, solves=ctx.solves, timings=timings,
        info={"n_retain": n_r, "n_forget": n_f, "C": C, "p": p, "ridge": lam, "ridge_effective": lam_r, "linearize_at": linearize_at,
              "anchor": anchor, "steps": steps, "trained_with": trained_with, "harm_check": chk.summary(),
              "ridge_selection": ridge_info},
    )
    if inplace:
        peft.write(w_new)
    log.info("fastntk: unlearned (form=%s, strategy=%s, |Δ|=%.3e, %d matvecs, %.2fs)", chosen, res.strategy, float(delta.norm()), res.matvecs, timings["total"])
    return res


def _harm_check(peft, X_r, y_r, trained_with, w_old, delta, w0, harm, target_scale):
    """The do-no-harm check (:mod:`fastntk.update.guard`) on a fixed retain sample with the training loss."""
    idx = torch.as_tensor(retain_sample(X_r.shape[0], harm.samples))
    lin = w0 if trained_with == "linearized-mse" else None
    if lin is None and trained_with == "linearized-mse":
        raise InvalidInputError("trained_with='linearized-mse' needs w0 (the linearization point) for the do-no-harm check")
    obj = NetworkObjective(peft, X_r[idx], y_r[idx], loss=loss_of(trained_with), target_scale=target_scale, linearized_at=lin)
    return check_no_harm(obj, w_old, delta, harm)


def _unlearn_ce(model, peft, retain, forget, *, trained_with, ridge, w0, linearize_at, form, anchor, steps, reasons, harm,
                newton, jac, solve, inplace, check_overlap, ridge_convention, scale, line_search, t_all):
    """The cross-entropy route: tilted Gauss-Newton steps (:func:`fastntk.update.tilted.tilted_newton`)."""
    if form not in ("auto", "primal"):
        raise InvalidInputError(f"loss='ce' is a Newton iteration in parameter space; form={form!r} is an MSE form (use form='auto')")
    if linearize_at != "trained":
        raise InvalidInputError("loss='ce' relinearizes at the current weights (linearize_at='trained' or 'auto'); "
                                "linearize_at='w0' has no CE counterpart here")
    if anchor not in ("trained", "retain", "by-request"):
        raise InvalidInputError(f"loss='ce' takes anchor='trained' (tilted: keeps what early stopping left) or 'retain' "
                                f"(plain retain objective), got {anchor!r}")
    if ridge_convention != "sum" or scale is not None:
        raise InvalidInputError("loss='ce' supports ridge_convention='sum' and scale=None only")
    if ridge not in ("auto", "stationarity"):
        ridge = _check_scalar("ridge", ridge, positive=True)
    if newton is not None and steps != "auto":
        raise InvalidInputError("pass either steps= or newton=, not both")
    if newton is not None and not isinstance(newton, NewtonOptions):
        raise InvalidInputError(f"newton must be a fastntk.update.newton.NewtonOptions, got {type(newton).__name__}")
    if steps != "auto" and (isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or int(steps) < 1):
        raise InvalidInputError(f"steps must be 'auto' or an integer >= 1, got {steps!r}")
    _check_model(model, peft)
    X_r, y_r = _xy(retain, "retain")
    X_f, y_f = _xy(forget, "forget")
    if check_overlap:
        _check_overlap(X_r, X_f)
    if w0 is not None:
        peft.check_vector(w0, name="w0")
    w_trained = peft.vector()
    with torch.no_grad():
        C = int(peft.functional()(w_trained, X_f[:1].to(peft.device, peft.dtype)).shape[1])
    _check_labels(y_r, C, "retain")
    _check_labels(y_f, C, "forget")
    if anchor == "by-request":
        anchor, reasons["anchor"] = ce_anchor(y_r, y_f)
    if newton is None:  # exactly `steps` steps when given; else the stopping rule (the growth test guards the tilted objective)
        newton = NewtonOptions(line_search=line_search, stop_on_growth=anchor == "trained") if steps == "auto" else \
            NewtonOptions(max_steps=int(steps), rel_decrement=0.0, line_search=line_search, stop_on_growth=False)
    rtol = solve["rtol"]
    if peft.dtype == torch.float32 and rtol < 1e-4:
        reasons["rtol"] = f"float32 operators: CG rtol raised from {rtol:g} to 1e-4 (float32 matvecs cannot certify less)"
        solve = dict(solve, rtol=1e-4)
    ctx = _SolveCtx(**solve)
    reasons["form"] = "loss='ce': Newton iteration in parameter space (primal)"
    reasons["steps"] = (f"steps='auto': Newton steps until δ²_k ≤ {newton.rel_decrement}·δ²_1 (at most {newton.max_steps})"
                        if steps == "auto" else f"steps={steps} requested: exactly {steps} Newton steps unless the line search stops")
    log.info("fastntk: unlearn (CE) n_r=%d n_f=%d C=%d p=%d anchor=%s", X_r.shape[0], X_f.shape[0], C, peft.p, anchor)
    r = tilted_newton(peft, (X_r, y_r), (X_f, y_f), w_trained=w_trained, w0=w0, loss="ce", ridge=ridge, newton=newton,
                      jac=jac, ctx=ctx, tilt=anchor == "trained")
    reasons["ridge"] = r.ridge_info["rule"] + f": λ = {r.ridge:.4g}"
    reasons["strategy"], reasons["solver"] = r.strategy, r.solver
    reasons["stop"] = f"{r.newton.steps} Newton step(s): {r.newton.stop_reason}"
    delta = r.w - w_trained
    if not torch.isfinite(delta).all():
        raise NumericalError("the update Δ has NaN/Inf entries; the model was not changed. Increase the ridge")
    timings = dict(r.timings)
    t = time.perf_counter()
    delta, chk = _harm_check(peft, X_r, y_r, trained_with, w_trained, delta, w0, harm, 1.0)
    timings["harm check"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_all
    res = UnlearnResult(
        delta=delta, w_new=w_trained + delta, w_old=w_trained, form="primal", strategy=r.strategy.split(" ")[0], space="primal",
        loss="ce", scale=chk.scale, reasons=reasons, solves=ctx.solves, timings=timings,
        info={"n_retain": X_r.shape[0], "n_forget": X_f.shape[0], "C": C, "p": peft.p, "ridge": r.ridge, "ridge_effective": r.ridge,
              "linearize_at": "trained", "anchor": anchor, "trained_with": trained_with, "steps": r.newton.steps,
              "newton": r.newton.summary(), "ridge_selection": r.ridge_info, "harm_check": chk.summary(),
              "grad_forget_norm": r.grad_forget_norm},
    )
    if inplace:
        peft.write(res.w_new)
    log.info("fastntk: unlearned (CE, %d steps, |Δ|=%.3e, %.2fs)", r.newton.steps, float(delta.norm()), timings["total"])
    return res


def _delta_dense(src_r, src_f, Y_r, Y_f, w_bar, lam):
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
    Mi = K_ff - T_fr @ Kinv_Trf
    m = np.linalg.solve(Mi, V)
    u = Jf.T @ m
    Pu = u - Jr.T @ np.linalg.solve(K_rr, Jr @ u)
    w_ret = w_bar + torch.as_tensor(Jr.T @ Kinv_zr, dtype=w_bar.dtype, device=w_bar.device)
    return torch.as_tensor(Pu, dtype=w_bar.dtype, device=w_bar.device), w_ret


def _retain_ce_loss_and_grad(peft, X_r, y_r, w, w_bar, lam, batch_size, need_grad=True, loss="ce", target_scale=1.0):
    """The network's retain objective ``Σ loss(f(x; w), y) + ½λ‖w − w̄‖²`` (CE, or MSE ``½‖f − s·onehot‖²``) and its gradient."""
    f = peft.functional()

    def crit(out, yb):
        if loss == "ce":
            return torch.nn.functional.cross_entropy(out, yb, reduction="sum")
        return 0.5 * ((out - target_scale * torch.nn.functional.one_hot(yb, out.shape[1]).to(out.dtype)) ** 2).sum()

    total = 0.0
    grad = torch.zeros_like(w)
    for s in range(0, X_r.shape[0], batch_size):
        xb = X_r[s : s + batch_size].to(peft.device, peft.dtype)
        yb = y_r[s : s + batch_size].to(peft.device)
        if need_grad:
            wv = w.detach().clone().requires_grad_(True)
            l = crit(f(wv, xb), yb)
            (g,) = torch.autograd.grad(l, wv)
            grad += g
            l = l.detach()
        else:
            with torch.no_grad():
                l = crit(f(w, xb), yb)
        total += float(l)
    d = w - w_bar
    total += 0.5 * lam * float(d @ d)
    grad += lam * d
    return total, grad


def _delta_ce(peft, src_r, X_r, y_r, w_trained, w_bar, lam, ctx, batch_size, line_search):
    """Damped Gauss-Newton step on the retain cross-entropy (+ ridge) from the trained weights."""
    if lam <= 0:
        raise InvalidInputError("loss='ce' needs ridge > 0 (the CE Gauss-Newton is singular along the softmax null space)")
    L0, g = _retain_ce_loss_and_grad(peft, X_r, y_r, w_trained, w_bar, lam, batch_size)
    H = GGNLinearOperator(src_r, lam)
    step = -ctx.solve(H, g, "H_r Δ = −∇L_r", key=("Hce", id(src_r)))
    return _line_search(peft, X_r, y_r, w_trained, step, g, L0, w_bar, lam, ctx, batch_size, line_search, "line search")


def _line_search(peft, X_r, y_r, w, step, grad, L0, w_bar, lam, ctx, batch_size, enabled, name, loss="ce", target_scale=1.0):
    """Armijo backtracking of ``w + t·step`` on the network's retain objective (``t`` halves from 1, 12 tries)."""
    t = 1.0
    info = {"loss_before": L0, "steps_tried": 0}
    if enabled:
        slope = float(grad @ step)
        for _ in range(12):
            info["steps_tried"] += 1
            Lt, _ = _retain_ce_loss_and_grad(peft, X_r, y_r, w + t * step, w_bar, lam, batch_size, need_grad=False,
                                             loss=loss, target_scale=target_scale)
            if math.isfinite(Lt) and Lt <= L0 + 1e-4 * t * slope:
                break
            t *= 0.5
        else:
            t = 0.0
        info["loss_after"] = Lt
    info["step"] = t
    ctx.solves[name] = dict(info, method="armijo backtracking", iterations=info["steps_tried"], matvecs=0, converged=t > 0 or not enabled)
    return t * step, info


# ======================================================================================
# prepared state for a stream of deletion requests
# ======================================================================================
def _check_source(src, n: int, peft, who: str, *, need_cached: bool = False) -> None:
    """A Jacobian source passed in by the caller must describe the same data and parameters."""
    if not hasattr(src, "jtmat") or not hasattr(src, "outputs"):
        raise InvalidInputError(f"{who}: source must be a Jacobian source from fastntk.operators.make_jacobian, got {type(src).__name__}")
    if int(src.n) != int(n) or int(src.p) != int(peft.p):
        raise InvalidInputError(f"{who}: source has n = {src.n}, p = {src.p}; the training set has n = {n} and the PEFT set p = {peft.p}")
    if getattr(src, "loss", "mse") != "mse":
        raise InvalidInputError(f"{who}: source must be built with loss='mse', got {src.loss!r}")
    if need_cached and not hasattr(src, "J"):
        raise InvalidInputError(f"{who}: source must be cached (strategy='cached'), got strategy {getattr(src, 'strategy', '?')!r}")


class Unlearner:
    """Prepared state for many deletion requests against one training set ``D``.

    ``prepare()`` builds, once, the Jacobian of ``D`` (cached when it fits the
    memory budget) and the Cholesky factor of ``H = G_D + λI`` (p × p).  Each
    :meth:`forget` then costs work in the size of the (cumulative) forget set:
    the Woodbury form ``H_r⁻¹ = H⁻¹ + H⁻¹J_fᵀ(I − J_f H⁻¹ J_fᵀ)⁻¹J_f H⁻¹`` with
    ``J_f`` the rows of every sample forgotten so far.  Each request takes a
    Newton step from the current linearized fit (``anchor="fit"``: ``Δ_k = w*_{D∖F_k} − w*_{D∖F_{k−1}}``, which
    telescopes, so a sequence of requests equals one request with their union whatever the fine-tuning did)
    or from the current weights (``anchor="trained"``; exact when they are the fit).  ``anchor="retain"``: the
    Newton step of the full retain objective from the current weights, ``Δ = −(G_r + λI)⁻¹∇L_r(w)`` with
    ``∇L_r(w) = J_rᵀ(f_lin(X_r; w) − Y_r) + λ(w − w̄)``: every request lands on the linearized ridge fit of the
    data not forgotten so far (around ``w̄``), whatever came before.  The gradient costs one ``J_Dᵀz`` product per
    request.  After ordinary fine-tuning, ``linearize_at="trained", anchor="trained"`` came closest to retraining
    on average in ``benchmarks/bench_variants.py`` (the pipeline's default there).
    """

    def __new__(cls, model, peft, train, *, trained_with: str, **kwargs):
        if trained_with == "ce":  # the prepared CE route (fastntk.update.prepared_ce)
            allowed = {"w0", "ridge", "newton", "harm", "memory_budget", "batch_size", "rtol", "progress"}
            other = {k: v for k, v in kwargs.items() if k not in allowed and not (k in ("linearize_at", "anchor") and v == "auto")}
            if other:
                raise InvalidInputError(f"Unlearner(trained_with='ce') does not take {sorted(other)} (its curvature is the CE "
                                        "Gauss-Newton at the trained weights and its anchor follows each request)")
            _check_model(model, peft)
            X, y = _xy(train, "training")
            return CEUnlearner(model, peft, X, y, **{k: v for k, v in kwargs.items() if k in allowed})
        return super().__new__(cls)

    def __init__(self, model, peft, train, *, trained_with: str, ridge: float, w0=None, linearize_at="auto", target_scale=1.0,
                 anchor="auto", strategy="auto", memory_budget: float | None = 4e9, batch_size=128, rtol=1e-8, progress=False,
                 source=None):
        variant, self.reasons = resolve_variant(trained_with, linearize_at=linearize_at, anchor=anchor, loss="mse", steps=1)
        linearize_at, anchor = variant["linearize_at"], variant["anchor"]
        self.trained_with = trained_with
        if anchor not in ("fit", "trained", "retain"):
            raise InvalidInputError(f"anchor must be 'fit', 'trained' or 'retain', got {anchor!r}")
        self.anchor = anchor
        if linearize_at not in ("w0", "trained"):
            raise InvalidInputError(f"linearize_at must be 'w0' or 'trained', got {linearize_at!r}")
        self.lam = _check_scalar("ridge", ridge, positive=True)
        _check_model(model, peft)
        self.model, self.peft = model, peft
        self.X, self.y = _xy(train, "training")
        self.n = self.X.shape[0]
        if linearize_at == "w0":
            if w0 is None:
                raise InvalidInputError("linearize_at='w0' needs w0 (the PEFT vector before fine-tuning)")
            peft.check_vector(w0, name="w0")
            self.w_bar = w0.detach().clone()
        else:
            self.w_bar = peft.vector()
        self.target_scale = _check_scalar("target_scale", target_scale, positive=True)
        self.strategy, self.memory_budget, self.batch_size = strategy, memory_budget, batch_size
        self.rtol = rtol
        self.progress = progress
        if source is not None:
            if linearize_at != "w0":
                raise InvalidInputError("Unlearner(source=...) needs linearize_at='w0' (the source is built at w0)")
            _check_source(source, self.n, peft, "Unlearner")
        self._source = source
        self.forgotten = np.zeros(0, dtype=np.int64)
        self.w = peft.vector()  # current (unlearned) weights; the model is touched only by apply()
        self.prepared = False
        self.history: list[dict] = []  # summaries only: the state does not grow with requests beyond the forgotten ids

    @with_strict_precision
    def prepare(self) -> "Unlearner":
        """Build the Jacobian source of ``D``, ``f̄_D`` and the factor of ``H = G_D + λI``."""
        t = time.perf_counter()
        if self._source is not None:  # shared with match_ridge: J_D is built once
            self.src = self._source
        else:
            self.src = make_jacobian(self.peft, self.X, w=self.w_bar, strategy=self.strategy, memory_budget=self.memory_budget,
                                     batch_size=self.batch_size, progress=self.progress)
        with torch.no_grad():
            C = int(self.src.C)
        _check_labels(self.y, C, "training")
        self.C = C
        self.factor = _DenseFactor.from_source(self.src, self.lam)
        self.outputs = self.src.outputs()
        # the linearized ridge fit on D: w*_D = w̄ + H⁻¹ J_Dᵀ z_D  (the anchor of "fit" requests)
        Y = _targets(self.y, C, self.target_scale, self.peft.dtype, self.peft.device)
        z = (Y - self.outputs.reshape(-1)).unsqueeze(1)
        self.z_D = z[:, 0].double()  # Y_D − f̄_D (the retain gradient of anchor="retain" masks forgotten rows)
        g = self.src.jtmat(z)[:, 0] if not hasattr(self.src, "J") else _jtv64(self.src.J, z[:, 0].double())
        self.w_fit = self.w_bar.double() + self.factor.solve(g.double().unsqueeze(1))[:, 0]
        self.prepare_seconds = time.perf_counter() - t
        self.prepared = True
        log.info("fastntk: Unlearner prepared (n=%d, p=%d, strategy=%s, factor %.2fs, total %.2fs)", self.n, self.src.p,
                 self.src.strategy, self.factor.seconds, self.prepare_seconds)
        return self

    def _check_indices(self, idx) -> np.ndarray:
        return check_request(idx, self.n, self.forgotten)

    @with_strict_precision
    def forget(self, indices, *, apply: bool = False) -> UnlearnResult:
        """Forget the training samples ``indices`` (Newton/Woodbury step from the current weights)."""
        if not self.prepared:
            self.prepare()
        idx = self._check_indices(indices)
        t0 = time.perf_counter()
        timings = {}
        all_f = np.union1d(self.forgotten, idx)
        new_f = idx
        ctx = _SolveCtx(rtol=self.rtol, maxiter=None, preconditioner="none", precond_rank=0, backend="auto", callback=None, on_fail="raise", progress=False)
        t = time.perf_counter()
        src_all = self.src.subset(all_f)
        Jf_all = src_all.dense()
        src_new = self.src.subset(new_f)
        timings["jacobian"] = time.perf_counter() - t
        # residual of the NEW forget samples at the current weights: f_lin(X_f; w) − Y_f
        Y_f = _targets(torch.as_tensor(self.y[new_f]), self.C, self.target_scale, self.peft.dtype, self.peft.device)
        out_new = self.outputs[torch.as_tensor(new_f)].reshape(-1)
        anchor_w = self.w_fit if self.anchor == "fit" else self.w
        d = (anchor_w.to(self.peft.dtype) - self.w_bar).unsqueeze(1)
        r_f = out_new + (src_new.jmat(d)[:, 0]) - Y_f
        # Newton step for the retain set after this request: H_r = H − J_allᵀ J_all
        # Δ = H_r⁻¹ J_newᵀ r_f, expressed with the full-rows Jacobian (zeros for old rows).
        C = self.C
        pos = np.searchsorted(all_f, new_f)
        rows = (pos[:, None] * C + np.arange(C)[None, :]).reshape(-1)
        r_all = torch.zeros(all_f.size * C, dtype=torch.float64, device=self.peft.device)
        r_all[torch.as_tensor(rows)] = r_f.double()
        t = time.perf_counter()
        if self.anchor == "retain":
            # −∇L_r(w) = J_rᵀ(Y_r − f̄_r − J_r d) − λd,  d = w − w̄,  J_r = rows of D not forgotten after this request:
            #          = J_Dᵀ(z_D with forgotten rows zeroed) − (H d − J_allᵀ J_all d)     (H = G_D + λI)
            z = self.z_D.clone()
            all_rows = torch.as_tensor((all_f[:, None] * C + np.arange(C)[None, :]).reshape(-1), device=z.device)
            z[all_rows] = 0
            d = (self.w.double() - self.w_bar.double())
            JDz = _jtv64(self.src.J, z) if hasattr(self.src, "J") else self.src.jtmat(z.to(self.peft.dtype).unsqueeze(1))[:, 0].double()
            g = JDz - self.factor.H @ d + _jtv64(Jf_all, _jv64(Jf_all, d))
        else:
            g = _jtv64(Jf_all, r_all)  # J_newᵀ r_new (rows of earlier requests carry zeros)
        if self.src.p <= Jf_all.shape[0] and getattr(self.factor, "H", None) is not None:
            # forget space larger than parameter space: downdate H_r = H − J_fᵀJ_f and factor it (p × p)
            H_r = self.factor.H - gram64(Jf_all)
            delta = torch.cholesky_solve(g.unsqueeze(1), _cholesky(H_r, "the downdated G_r + λI"))[:, 0]
            res_ = float((H_r @ delta - g).norm())
            method = "cholesky of the downdated H_r (p × p)"
            route = f"downdate (p = {self.src.p} ≤ n_f·C = {Jf_all.shape[0]})"
        else:
            delta = _delta_woodbury(self.factor, Jf_all, g, ctx)
            # certified residual of H_r Δ = g with H_r = H − J_fᵀJ_f
            res_ = float((self.factor.H @ delta - _jtv64(Jf_all, _jv64(Jf_all, delta)) - g).norm())
            method = "Woodbury through the prepared factor of H"
            route = f"Woodbury (n_f·C = {Jf_all.shape[0]} < p = {self.src.p})"
        tol = self.rtol * float(g.norm())
        ctx.solves["H_r Δ = J_fᵀ r_f"] = {"method": method, "iterations": 0, "matvecs": 0, "true_residual": res_,
                                          "tolerance": tol, "converged": res_ <= tol, "seconds": time.perf_counter() - t}
        _check_norm_bound(delta, g, self.lam, ctx.solves["H_r Δ = J_fᵀ r_f"], "request")
        delta = delta.to(self.peft.dtype)
        timings["solve"] = time.perf_counter() - t
        if not torch.isfinite(delta).all():
            raise NumericalError("the update Δ has NaN/Inf entries; nothing was changed")
        w_new = self.w + delta
        timings["total"] = time.perf_counter() - t0
        res = UnlearnResult(delta=delta, w_new=w_new, w_old=self.w.clone(), form="woodbury", strategy=self.src.strategy, space="forget",
                            loss="mse", scale=1.0, reasons={"form": f"Unlearner: prepared H = G_D + λI; {route}"},
                            solves=ctx.solves, timings=timings,
                            info={"n_forget_request": int(idx.size), "n_forgotten_total": int(all_f.size), "n": self.n, "p": self.peft.p})
        # commit the state only now
        self.forgotten = all_f
        self.w = w_new
        self.w_fit = self.w_fit + delta.double()
        self.history.append(res.summary())
        if apply:
            self.apply()
        return res

    def apply(self) -> None:
        """Write the current unlearned weights into the model."""
        self.peft.write(self.w)

    @property
    def retained(self) -> np.ndarray:
        return np.setdiff1d(np.arange(self.n), self.forgotten)


@with_strict_precision
def match_ridge(peft, train, *, w_trained: torch.Tensor, w0: torch.Tensor, grid=None, target_scale: float = 1.0,
                memory_budget: float | None = 2e9, batch_size: int = 128, source=None) -> tuple[float, dict]:
    """The ridge whose linearized fit on ``D`` best reproduces the trained model: the *effective* ridge.

    Fine-tuning stops early, so the trained weights are not the ridge fit of the training ridge; the unlearning
    update ``Δ = w*_{D_r}(λ) − w*_D(λ)`` should use the λ at which the fit matches what training produced.
    With ``J_D`` cached and ``K = J_D J_Dᵀ = U diag(s) Uᵀ`` (one ``eigh``), every λ of ``grid`` costs O((nC)²)::

        f_lin(X_D; w*_D(λ)) = f̄ + K (K + λI)⁻¹ z,     score(λ) = ‖f_lin(X_D; w*_D(λ)) − f_lin(X_D; w_trained)‖

    (in parameter space when ``p < nC``: ``G = V diag(s) Vᵀ``, ``w*_D(λ) − w̄ = V (diag(s) + λ)⁻¹ Vᵀ J_Dᵀ z``).
    ``source``: a cached Jacobian source of ``D`` at ``w0`` (``make_jacobian(peft, X_D, w=w0, strategy="cached")``)
    to share with :class:`Unlearner` (``Unlearner(..., source=src)``), so that ``J_D`` is built once.
    Returns ``(λ*, {"grid", "scores"})``; ``λ*`` minimizes the score.
    """
    from .operators import make_jacobian

    X, y = _xy(train, "training")
    if source is not None:
        _check_source(source, X.shape[0], peft, "match_ridge", need_cached=True)
        src = source
    else:
        src = make_jacobian(peft, X, w=w0, strategy="cached", memory_budget=memory_budget, batch_size=batch_size)
    J = src.J.double()
    C = src.C
    z = (_targets(y, C, target_scale, torch.float64, src.device) - src.outputs().reshape(-1).double())
    target = _jv64(src.J, (w_trained - w0).double())  # J (w_trained − w̄): the trained model's linear part on D
    m, p = J.shape
    if m <= p:
        s_, U = torch.linalg.eigh(gram64(src.J, side="samples"))
        uz, ut = U.T @ z, U.T @ target
        s_ = s_.clamp_min(0)
        fit = lambda lam: (s_ / (s_ + lam)) * uz  # noqa: E731  (coordinates of K (K+λ)⁻¹ z)
    else:
        s_, V = torch.linalg.eigh(gram64(src.J))
        vb = V.T @ _jtv64(src.J, z)
        s_ = s_.clamp_min(0)
        JV = _jv64(src.J, V)  # (m, p)
        ut = target
        fit = lambda lam: JV @ (vb / (s_ + lam))  # noqa: E731
    if grid is None:
        top = float(s_.max())
        grid = top * np.logspace(-8, 0, 33)
    scores = [float((fit(float(l)) - ut).norm()) for l in grid]
    best = float(grid[int(np.argmin(scores))])
    log.info("fastntk: matched ridge λ = %.4g (grid %.2g … %.2g)", best, float(grid[0]), float(grid[-1]))
    return best, {"grid": [float(g) for g in grid], "scores": scores}


def unlearning(net, retain_loader, forget_loader, val_loader=None, *, ridge: float | str = "auto", peft=None, **kwargs):
    """NeurIPS 2023 unlearning-challenge signature: ``unlearning(net, retain, forget, val) -> net``.

    Unlearns the BatchNorm affine parameters of ``net`` (a copy; ``net`` itself is
    not modified) with :func:`unlearn` (``trained_with="ce"`` unless given: the challenge's
    models are classifiers trained with cross-entropy; every other option its default) and
    returns the unlearned copy.  ``val_loader`` is accepted for compatibility and unused.
    """
    import copy

    from .peft import BatchNormPeft

    def collect(loader, name):
        xs, ys = [], []
        for item in loader:
            if not isinstance(item, (tuple, list)) or len(item) < 2:
                raise DataError(f"the {name} loader must yield (inputs, labels) batches")
            xs.append(item[0])
            ys.append(item[1])
        if not xs:
            raise ForgetSetError(f"the {name} loader is empty")
        return torch.cat(xs), torch.cat(ys).long()

    new = copy.deepcopy(net).eval()
    peft = BatchNormPeft(new) if peft is None else type(peft)(new)
    retain = collect(retain_loader, "retain")
    forget = collect(forget_loader, "forget")
    kwargs.setdefault("linearize_at", "trained")
    kwargs.setdefault("trained_with", "ce")  # the challenge's models are classifiers trained with cross-entropy
    unlearn(new, peft, retain, forget, ridge=ridge, inplace=True, **kwargs)
    return new
