"""Sketched Gauss-Newton sources: ``k`` rows per sample instead of ``C``.

The curvature of the update is a sum over samples, ``G = Σ_i J_iᵀ Λ_i J_i`` (``Λ_i = I``
for MSE, ``diag(p_i) − p_i p_iᵀ = L_i L_iᵀ`` for cross-entropy).  With per-sample random
cotangents ``S_i ∈ R^{C×k}`` such that ``E[S_i S_iᵀ] = Λ_i``, the sketched rows

    J̃_i = S_iᵀ J_i   (k × p, from k batched backwards: :mod:`.persample`)

give ``G̃ = Σ_i J̃_iᵀ J̃_i`` with ``E[G̃] = G`` (unbiased), at ``k`` backward passes per image
instead of ``C``.  Kinds (``kind=``):

* ``"rademacher"`` / ``"gaussian"``: ``S_i = L_i Ω_i`` with ``Ω_i`` entries ``±1/√k`` /
  ``N(0, 1/k)`` (``E[Ω Ωᵀ] = I``; ``L_i = I`` for MSE);
* ``"orthogonal"``: ``Ω_i`` the first ``k`` columns of a Haar-random orthogonal ``C × C``
  matrix times ``√(C/k)``; with ``k = C``, ``Ω_i Ω_iᵀ = I`` exactly, so ``G̃ = G`` (to rounding);
* ``"fisher"`` (``loss="ce"`` only): the Monte-Carlo Fisher, ``S_i[:, j] = (p_i − e_ŷ)/√k``
  with ``ŷ ~ Cat(p_i)`` drawn from the model's softmax, since
  ``E[(p − e_ŷ)(p − e_ŷ)ᵀ] = diag(p) − p pᵀ = Λ_i``.

Optionally only ``m`` of the ``n`` samples enter (``m`` independent uniform draws, with
replacement), their rows scaled by ``√(n/m)`` so that ``E[G̃] = G`` still holds.

:class:`SketchedJacobian` stores the rows ``J̃`` (``m·k × p``) and offers the curvature part of
the Jacobian-source interface (``J``, ``jmat``, ``jtmat``, ``gmat``, ``gram``, ``dense``,
``diag_ggn``, ``diag_ntk``, ``n``, ``C``, ``nC``, ``p``, ``strategy``, ``reason``), so it
plugs in wherever a :class:`~.linearization.CachedJacobian` is used for ``G = JᵀJ``:
``GGNLinearOperator(sketch, λ)``, a Cholesky factor of ``sketch.gram() + λI``, or the
dual ``J̃J̃ᵀ`` (``n·k × n·k``).

**Its rows are not the residual-space rows.**  Row ``i·k + j`` is a random combination
of the outputs of sample ``i``, not output ``j``; ``n``/``C``/``nC`` count *sketch* rows
(``C`` is ``k`` here, ``num_outputs`` the model's C).  Right-hand sides such as
``J_fᵀ r_f`` and products ``J_f v`` on residuals must still come from the exact source
(``StreamingJacobian.jtmat``: one VJP pass); :meth:`SketchedJacobian.outputs` raises
for that reason (``sample_outputs()`` gives ``f(x_i; w̄)`` of the sketched samples).

:func:`half_sketch_error` estimates the sketch's error on a solve from two independent
halves of the sketch (no exact ``J`` needed).
"""
from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import torch

from ..errors import InvalidInputError, NumericalError, ShapeError
from . import _stream
from ._eta import PhaseEta
from .base import TorchLinearOperator
from .linearization import LOSSES, StreamingJacobian, _MatrixSource, _apply_L, _ce_factors, all_finite

__all__ = ["SketchedJacobian", "draw_cotangents", "half_sketch_error", "ridge_solve", "HalfSketchEstimate", "KINDS"]

KINDS = ("rademacher", "gaussian", "orthogonal", "fisher")


def draw_cotangents(out: torch.Tensor, k: int, kind: str = "rademacher", *, loss: str = "mse",
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Random per-sample cotangents ``S`` (b, C, k) with ``E[S_i S_iᵀ] = Λ_i`` (see the module doc).

    ``out`` are the outputs ``f(x; w̄)`` (b, C) of the batch (they give ``p_i`` for CE).
    Draws come from ``generator`` (CPU) in float64 and are cast to ``out``'s dtype and device.
    """
    b, C = out.shape
    g = generator
    if kind == "fisher":
        pr = torch.softmax(out.double(), -1).cpu()
        y = torch.multinomial(pr, k, replacement=True, generator=g)  # (b, k) labels ŷ ~ Cat(p_i)
        S = (pr[:, :, None] - torch.nn.functional.one_hot(y, C).double().transpose(1, 2)) / math.sqrt(k)
        return S.to(dtype=out.dtype, device=out.device)
    if kind == "rademacher":
        O = (torch.randint(0, 2, (b, C, k), generator=g).double() * 2 - 1) / math.sqrt(k)
    elif kind == "gaussian":
        O = torch.randn(b, C, k, generator=g, dtype=torch.float64) / math.sqrt(k)
    else:  # orthogonal: Haar (QR of a Gaussian with the signs of R's diagonal fixed)
        Q, R = torch.linalg.qr(torch.randn(b, C, C, generator=g, dtype=torch.float64))
        Q = Q * torch.sign(torch.diagonal(R, dim1=1, dim2=2))[:, None, :]
        O = Q[:, :, :k] * math.sqrt(C / k)
    O = O.to(dtype=out.dtype, device=out.device)
    if loss == "ce":  # S = L_i Ω_i
        pr, sq = _ce_factors(out)
        O = _apply_L(O.permute(2, 0, 1), pr, sq).permute(1, 2, 0)
    return O


@dataclasses.dataclass
class _Meta:
    n_total: int
    index: torch.Tensor  # (m,) sample indices into the data
    outputs: torch.Tensor  # (m, C) f(x_i; w̄)
    weight: float  # √(n/m)


class SketchedJacobian(_MatrixSource):
    """Sketched rows ``J̃`` (``m·k × p``) of the model linearized at ``w̄`` (see the module doc).

    Parameters
    ----------
    peft : PeftSet
    data : inputs (tensor ``X``, ``(X, y)``, object with ``.X``, or a Dataset)
    k : rows per sample (``1 ≤ k``; ``k ≤ C`` for ``kind="orthogonal"``)
    kind : ``"rademacher"``, ``"gaussian"``, ``"orthogonal"`` or ``"fisher"`` (CE only)
    loss : ``"mse"`` (``E[G̃] = Σ J_iᵀJ_i``) or ``"ce"`` (``E[G̃] = Σ J_iᵀΛ_iJ_i``)
    m : number of samples used (default all ``n``): ``m`` uniform draws with replacement, rows scaled by ``√(n/m)``
    seed : seeds the subsample and the draws (same seed, data and batch size → same rows)
    w, batch_size : as for :class:`~.linearization.StreamingJacobian`
    engine : a :class:`~.persample.PerSampleGradients` of ``peft`` at ``w`` to reuse (its first-batch
        check then runs once for many sketches, e.g. seeds or a second sketch of the same model)

    Attributes: ``J`` (the rows), ``n`` (= m sketched samples), ``C`` (= k rows per sample),
    ``nC`` (rows), ``p``, ``num_outputs`` (the model's C), ``n_total``, ``index`` (samples
    used), ``weight`` (``√(n/m)``), ``strategy = "sketch"``, ``reason``, ``build_seconds``,
    ``engine`` (the :class:`~.persample.PerSampleGradients` used, with its ``plan``).
    """

    strategy = "sketch"

    def __init__(self, peft, data, *, k: int = 1, kind: str = "rademacher", loss: str = "mse", m: int | None = None,
                 seed: int = 0, w: torch.Tensor | None = None, batch_size: int = 128, engine=None):
        if kind not in KINDS:
            raise InvalidInputError(f"kind must be one of {KINDS}, got {kind!r}")
        if loss not in LOSSES:
            raise InvalidInputError(f"loss must be one of {LOSSES}, got {loss!r}")
        if kind == "fisher" and loss != "ce":
            raise InvalidInputError("kind='fisher' (Monte-Carlo Fisher) needs loss='ce'; use 'rademacher' or 'gaussian' for MSE")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or int(k) < 1:
            raise InvalidInputError(f"k (sketch rows per sample) must be an integer >= 1, got {k!r}")
        t0 = time.perf_counter()
        src = StreamingJacobian(peft, data, w=w, batch_size=batch_size, loss=loss)  # validates data, w, batch size; gives C
        k, n = int(k), src.n
        if kind == "orthogonal" and k > src.C:
            raise InvalidInputError(f"kind='orthogonal' needs k <= C = {src.C}, got k={k}")
        m = n if m is None else m
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or not 1 <= int(m) <= n:
            raise InvalidInputError(f"m (samples in the sketch) must be an integer in [1, n={n}], got {m!r}")
        m = int(m)
        gen = torch.Generator().manual_seed(int(seed))
        # m < n: m independent uniform draws (with replacement), so that halves of the draws are independent
        index = torch.arange(n) if m == n else torch.randint(0, n, (m,), generator=gen)
        sub = data if m == n else _stream.subset(data, index.numpy())
        if engine is None:
            engine = src.per_sample_engine()
        elif engine.peft is not peft or not torch.equal(engine.w, src.w):
            raise InvalidInputError("engine= must be a PerSampleGradients of the same PEFT set at the same linearization point w")
        J = torch.empty(m * k, src.p, dtype=src.dtype, device=src.device)
        outs = []
        eta = PhaseEta("sketched jacobian build", m, detail=f" (m={m} of n={n}, k={k}, C={src.C}, p={src.p})")
        for s, e, xb in _stream.iter_batches(sub, src.batch_size, dtype=src.dtype, device=src.device):
            _, out = engine.products(xb, lambda o: draw_cotangents(o, k, kind, loss=loss, generator=gen),
                                     out=J[s * k : e * k].view(e - s, k, src.p))
            outs.append(out)
            eta.update(e)
        eta.done()
        weight = math.sqrt(n / m)
        if m < n:
            J *= weight
        self._set(J, k, _Meta(n, index, torch.cat(outs), weight), peft=peft, loss=loss, kind=kind, seed=int(seed),
                  engine=engine, build_seconds=time.perf_counter() - t0)

    def _set(self, J, k, meta: _Meta, **attrs):
        if not all_finite(J):
            raise NumericalError("the sketched Jacobian has NaN/Inf entries; check the model and inputs for non-finite values")
        self.J, self.k, self.meta = J, k, meta
        self.n, self.C, self.p = meta.index.numel(), k, J.shape[1]
        self.num_outputs, self.n_total, self.index, self.weight = meta.outputs.shape[1], meta.n_total, meta.index, meta.weight
        self.dtype, self.device = J.dtype, J.device
        self.passes = 0
        for key, v in attrs.items():
            setattr(self, key, v)
        self.reason = (f"sketched curvature: kind={self.kind!r}, k={k} rows per sample (C={self.num_outputs}), "
                       f"m={self.n} of n={self.n_total} samples (rows × {self.weight:.3g}), seed={self.seed}")

    def _like(self, J, k, meta) -> "SketchedJacobian":
        out = object.__new__(type(self))
        out._set(J, k, meta, **{a: getattr(self, a) for a in ("peft", "loss", "kind", "seed", "engine", "build_seconds")})
        return out

    # ------------------------------------------------------------------ interface
    def outputs(self):
        raise InvalidInputError(
            "a SketchedJacobian's rows are random combinations of each sample's outputs, not residual-space rows: take "
            "outputs and right-hand sides (J_fᵀ r_f) from the exact source (StreamingJacobian), or sample_outputs() for f(x_i; w̄)"
        )

    def sample_outputs(self) -> torch.Tensor:
        """``f(x_i; w̄)`` (m, C) of the sketched samples ``index`` (from the build's forward passes)."""
        return self.meta.outputs

    def merged(self, other: "SketchedJacobian") -> "SketchedJacobian":
        """The sketch of both subsamples' draws together (``m₁ + m₂`` independent draws of the same ``n`` samples, ``k``,
        kind and loss): rows rescaled to ``√(n/(m₁ + m₂))``, so ``G̃ = (m₁G̃₁ + m₂G̃₂)/(m₁ + m₂)`` stays unbiased — a sketch
        grown by more draws instead of drawn again."""
        if not (self.n < self.n_total and other.n < other.n_total):
            raise InvalidInputError("merged() joins subsampled sketches (m < n draws with replacement)")
        if (other.n_total, other.k, other.kind, other.loss, other.p) != (self.n_total, self.k, self.kind, self.loss, self.p):
            raise InvalidInputError("merged() needs sketches of the same samples, k, kind, loss and p")
        m = self.n + other.n
        w = math.sqrt(self.n_total / m)
        J = torch.empty(m * self.k, self.p, dtype=self.J.dtype, device=self.J.device)  # no temporaries: peak = parts + J
        torch.mul(self.J, w / self.weight, out=J[: self.J.shape[0]])
        torch.mul(other.J.to(self.J.device, self.J.dtype), w / other.weight, out=J[self.J.shape[0]:])
        meta = _Meta(self.n_total, torch.cat([self.index, other.index]),
                     torch.cat([self.meta.outputs, other.meta.outputs.to(self.meta.outputs.device)]), w)
        out = self._like(J, self.k, meta)
        out.build_seconds = self.build_seconds + other.build_seconds
        out.reason += f" (grown: {self.n} + {other.n} draws, seeds {self.seed} and {other.seed})"
        return out

    def subset(self, idx) -> "SketchedJacobian":
        """The rows of the sketched samples at positions ``idx`` (into ``index``), weights kept.  The subset of a
        sketch of all samples is the sketch of all of the subset's samples (``n_total = len(idx)``: its
        :meth:`halves` split the ``k`` columns); that of a subsample stays a subsample of the same ``n_total``."""
        idx = torch.as_tensor(np.asarray(idx, dtype=np.int64))
        J = self.J.view(self.n, self.k, self.p)[idx.to(self.device)].reshape(-1, self.p)
        n_total = int(idx.numel()) if self.n == self.n_total else self.n_total
        return self._like(J, self.k, _Meta(n_total, self.index[idx], self.meta.outputs[idx.to(self.meta.outputs.device)], self.weight))

    def halves(self) -> tuple["SketchedJacobian", "SketchedJacobian"]:
        """Two independent half-sketches whose Grams average to this one's, ``G̃ = (G̃_a + G̃_b)/2``.

        All samples (``m = n``): columns ``:k/2`` and ``k/2:`` of every ``S_i`` (needs an even ``k``).
        A subsample (``m < n``, independent draws): the first and the second half of the draws, with
        all ``k`` columns (needs an even ``m``), so the subsampling noise is seen too.  Rows × √2,
        so each half is unbiased on its own.
        """
        r2 = math.sqrt(2.0)
        J3 = self.J.view(self.n, self.k, self.p) * r2
        if self.n < self.n_total:
            if self.n % 2:
                raise InvalidInputError(f"halves() of a subsampled sketch needs an even m, got m={self.n}")
            h = self.n // 2
            return tuple(self._like(J3[sl].reshape(-1, self.p), self.k,
                                    _Meta(self.n_total, self.index[sl], self.meta.outputs[sl], self.weight * r2))
                         for sl in (slice(0, h), slice(h, None)))
        if self.k < 2 or self.k % 2:
            raise InvalidInputError(f"halves() of a sketch of all samples needs an even k >= 2 rows per sample, got k={self.k}")
        h = self.k // 2
        return tuple(self._like(J3[:, sl].reshape(-1, self.p), h, self.meta) for sl in (slice(0, h), slice(h, None)))


# ---------------------------------------------------------------------------- error estimate
def ridge_solve(J: torch.Tensor, rhs: torch.Tensor, ridge: float) -> torch.Tensor:
    """``(JᵀJ + λI)⁻¹ rhs`` in float64 by Cholesky in the smaller space (``rows < p``: push-through
    ``(rhs − Jᵀ(JJᵀ + λI)⁻¹ J rhs)/λ``).  ``rhs`` is (p,) or (p, r)."""
    Jd, bd = J.double(), rhs.double()
    rows, p = Jd.shape
    if rows < p:
        A = Jd @ Jd.T
        A.diagonal().add_(ridge)
        L, info = torch.linalg.cholesky_ex(A)
        y = Jd @ bd
        x = (bd - Jd.T @ torch.cholesky_solve(y.reshape(rows, -1), L).reshape(y.shape)) / ridge
    else:
        A = Jd.T @ Jd
        A.diagonal().add_(ridge)
        L, info = torch.linalg.cholesky_ex(A)
        x = torch.cholesky_solve(bd.reshape(p, -1), L).reshape(bd.shape)
    if int(info) != 0:
        raise NumericalError("the ridge-regularized sketched Gauss-Newton is not positive definite; increase the ridge")
    return x


#: half_sketch_error solves by dense Cholesky when min(rows, p) of a half-sketch is at most this, else by CG
DIRECT_HALF_LIMIT = 4096
#: ... and when the float64 Gram of the rows costs at most this many flops (min(rows, p)²·max(rows, p)): measured on
#: resnet18 at 5k images (p = 12,165, 4,050 rows per half) the dense Grams took 4–6 gradient passes, CG a fraction
DIRECT_GRAM_FLOPS = 5e10


def dense_is_cheap(rows: int, p: int, limit: int | None = None) -> bool:
    """Whether a float64 Cholesky of ``JᵀJ + λI`` in the smaller space beats CG for ``rows × p`` stored rows: the
    smaller side at most ``limit`` (default :data:`DIRECT_HALF_LIMIT`, read at call time) and its Gram at most
    :data:`DIRECT_GRAM_FLOPS` flops."""
    limit = DIRECT_HALF_LIMIT if limit is None else limit
    small, large = min(rows, p), max(rows, p)
    return small <= limit and float(small) ** 2 * large <= DIRECT_GRAM_FLOPS


class _RowGram(TorchLinearOperator):
    """``V ↦ scale·Σ_B Bᵀ(B V) + λV`` on row blocks ``B`` as stored (no copy, no Gram), for :func:`_cg_ridge`."""

    symmetric = True

    def __init__(self, blocks: list, ridge: float, scale: float = 1.0):
        super().__init__((blocks[0].shape[1],) * 2, blocks[0].dtype, blocks[0].device)
        self.blocks, self.ridge, self.scale = blocks, float(ridge), float(scale)

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        Vb = V.to(self.dtype)
        return (self.scale * sum(B.T @ (B @ Vb) for B in self.blocks)).to(V.dtype) + self.ridge * V


#: the half-sketch estimate's CG route (large sketches) is preconditioned by a randomized Nyström approximation of rank
#: NYSTROM_RANK of the whole sketch's G̃ (Frangella, Tropp & Udell 2023; built from one block product with the rows, a
#: GEMM, and shared by the three systems: each half's G̃_h is the whole sketch's plus its noise); 0: plain CG.  Measured on
#: real sketches (benchmarks/bench_estimate_precond.py)
NYSTROM_RANK = 64


def nystrom_for(op, ridge: float, seed: int = 0):
    """The Nyström preconditioner of ``op + λI`` (``op`` positive semidefinite, ``p × p``, its block products cheap:
    rows held in memory), rank :data:`NYSTROM_RANK` (at most ``p/4``), or ``None`` when it is off, the system is too
    small for it, or its build fails numerically (plain CG then; logged)."""
    import logging

    from ..errors import PreconditionerError
    from ..solvers.precond import NystromPreconditioner

    rank = min(int(NYSTROM_RANK), int(op.shape[0]) // 4)
    if rank < 1:
        return None
    try:
        return NystromPreconditioner.build(op, rank, ridge=float(ridge), seed=seed)
    except (NumericalError, PreconditionerError) as e:
        logging.getLogger("fastntk").info("fastntk: the Nyström preconditioner failed (%s); plain CG", e)
        return None


def _nystrom(blocks: list, scale: float, ridge: float, seed: int = 0):
    """:func:`nystrom_for` of ``scale·Σ_B BᵀB`` (the half-sketch estimate's rows)."""
    return nystrom_for(_RowGram(blocks, 0.0, scale), ridge, seed)


def _cg_ridge(blocks: list, rhs: torch.Tensor, ridge: float, *, scale: float = 1.0, rtol: float = 1e-5,
              maxiter: int = 5000, x0: torch.Tensor | None = None, M=None) -> torch.Tensor:
    """``(scale·Σ_B BᵀB + λI)⁻¹ rhs`` by :func:`fastntk.solvers.cg`, matrix-free on the row blocks ``B`` as stored
    (products in their dtype; float32 rows cannot certify below ~10 eps32); ``rhs`` (p,) or (p, r), ``x0`` a start of
    the same shape.  Raises
    :class:`NumericalError` if CG does not converge."""
    from ..solvers import cg

    if rhs.ndim == 2:
        return torch.stack([_cg_ridge(blocks, rhs[:, j], ridge, scale=scale, rtol=rtol, maxiter=maxiter,
                                      x0=None if x0 is None else x0[:, j], M=M) for j in range(rhs.shape[1])], 1)
    tol = max(rtol, 10 * torch.finfo(blocks[0].dtype).eps)
    res = cg(_RowGram(blocks, ridge, scale), rhs.double(), rtol=tol, maxiter=int(maxiter), on_fail="ignore",
             x0=None if x0 is None else x0.double(), M=M)
    if not res.converged:
        raise NumericalError(f"CG for the half-sketch error estimate did not converge in {res.iterations} iterations "
                             f"(relative residual {res.true_residual / max(res.rhs_norm, 1e-300):.2e})")
    return torch.as_tensor(res.x, dtype=torch.float64)


@dataclasses.dataclass
class HalfSketchEstimate:
    """Result of :func:`half_sketch_error` (all float64 vectors, shape of ``rhs``).

    ``x``: the solve with the full sketch ``(G̃_a + G̃_b)/2``; ``x_a``, ``x_b``: with each half;
    ``error``: estimated ``‖x − x_exact‖/‖x‖`` of the full sketch, ``‖x_a − x_b‖ / (2‖x‖)``;
    ``half_error``: the same for one half-sketch, ``‖x_a − x_b‖ / (√2‖x‖)``; ``method``: how ``x`` was solved
    (``"cholesky"`` or ``"cg"``).
    """

    x: torch.Tensor
    x_a: torch.Tensor
    x_b: torch.Tensor
    error: float
    half_error: float
    method: str = ""  # how ``x`` was solved: "cholesky" (dense float64) or "cg" (matrix-free; "cg (Nyström-…)" preconditioned)


def _cross64(A: torch.Tensor, B: torch.Tensor, cols_bytes: float = 2e8) -> torch.Tensor:
    """``A Bᵀ`` in float64, in column chunks (no float64 copy of the whole rows)."""
    out = torch.zeros(A.shape[0], B.shape[0], dtype=torch.float64, device=A.device)
    step = max(1, int(cols_bytes // max(1, 8 * (A.shape[0] + B.shape[0]))))
    for c in range(0, A.shape[1], step):
        out += A[:, c:c + step].double() @ B[:, c:c + step].double().T
    return out


def _rows_t_rows64(A: torch.Tensor, rows: int = 4096) -> torch.Tensor:
    """``AᵀA`` (p × p) in float64, in row chunks."""
    G = torch.zeros(A.shape[1], A.shape[1], dtype=torch.float64, device=A.device)
    for r in range(0, A.shape[0], rows):
        Ac = A[r:r + rows].double()
        G += Ac.T @ Ac
    return G


def _chol(A: torch.Tensor, ridge: float) -> torch.Tensor:
    A = A.clone()
    A.diagonal().add_(ridge)
    L, info = torch.linalg.cholesky_ex(A)
    if int(info) != 0:
        raise NumericalError("the ridge-regularized sketched Gauss-Newton is not positive definite; increase the ridge")
    return L


def jv64(J, v, rows: int = 4096):
    """``J v`` in float64, row chunks (no float64 copy of the whole ``J``)."""
    return torch.cat([J[r:r + rows].double() @ v for r in range(0, J.shape[0], rows)])


def jtv64(J, u, rows: int = 4096):
    """``Jᵀ u`` in float64, row chunks."""
    out = torch.zeros(J.shape[1], *u.shape[1:], dtype=torch.float64, device=J.device)
    for r in range(0, J.shape[0], rows):
        out += J[r:r + rows].double().T @ u[r:r + rows]
    return out


#: float32 rows: the dense route's Grams by float32 GEMM (2.5× faster than float64 here, 1,620 × 8,437 rows: 0.30 vs
#: 0.76 s), the Cholesky factors in float64, and the whole sketch's solve (the first Newton step) refined against the
#: float64 products of the rows until its relative residual is below this (at most REFINE_STEPS refinements)
REFINE_RTOL, REFINE_STEPS = 1e-7, 3


def _gram_blocks(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """``A Bᵀ`` as float64: float32 rows by float32 GEMM (rounding repaired by the caller's refinement), else
    :func:`_cross64`."""
    if A.dtype == torch.float32 and B.dtype == torch.float32:
        return (A @ B.T).double()
    return _cross64(A, B)


def _gram_params(A: torch.Tensor) -> torch.Tensor:
    if A.dtype == torch.float32:
        return (A.T @ A).double()
    return _rows_t_rows64(A)


def _dense_halves(Ja: torch.Tensor, Jb: torch.Tensor, rhs: torch.Tensor, ridge: float, scale: float = 1.0):
    """``x_a, x_b, x`` of :func:`half_sketch_error` by dense Cholesky (float64 factors), the three systems from the Gram
    work of the whole sketch alone: kernel space (``2·rows < p``) ``K_aa, K_bb, K_ab`` give the whole sketch's
    ``K = [[K_aa, K_ab], [K_ba, K_bb]]/2``; parameter space ``G = (G_a + G_b)/2``.  (Before, each half and the whole
    were Grammed apart: twice the flops.)  Float32 rows: float32 Grams (:func:`_gram_blocks`); the halves' solves keep
    their rounding (an error estimate needs no more), the whole sketch's solve is refined against the float64 products
    of the rows (mixed-precision iterative refinement: it converges while ``‖ΔK‖ < λ``).  ``scale``: the halves are
    ``√scale·J_a`` and ``√scale·J_b`` (row views of a sketch, not scaled copies)."""
    if scale != 1.0:  # fold √scale into the ridge: (s·AᵀA + λI)⁻¹ b = (AᵀA + (λ/s)I)⁻¹ b / s
        x_a, x_b, x = _dense_halves(Ja, Jb, rhs, ridge / scale)
        return x_a / scale, x_b / scale, x / scale
    rows, p = Ja.shape
    b = rhs.double().reshape(p, -1)
    single = Ja.dtype == torch.float32 and Jb.dtype == torch.float32
    # products inside the solves: in the rows' own precision for float32 rows (the refinement below repairs them)
    mv = (lambda J, v: (J @ v.to(J.dtype)).double()) if single else jv64
    tv = (lambda J, u: (J.T @ u.to(J.dtype)).double()) if single else jtv64
    if 2 * rows < p:
        Kaa, Kbb, Kab = _gram_blocks(Ja, Ja), _gram_blocks(Jb, Jb), _gram_blocks(Ja, Jb)
        ya, yb = mv(Ja, b), mv(Jb, b)
        x_a = (b - tv(Ja, torch.cholesky_solve(ya, _chol(Kaa, ridge)))) / ridge
        x_b = (b - tv(Jb, torch.cholesky_solve(yb, _chol(Kbb, ridge)))) / ridge
        L = _chol(torch.cat([torch.cat([Kaa, Kab], 1), torch.cat([Kab.T, Kbb], 1)]) * 0.5, ridge)
        del Kaa, Kbb, Kab

        def solve(r):  # (JᵀJ + λI)⁻¹ r by push-through, J = [J_a; J_b]/√2
            z = torch.cholesky_solve(torch.cat([mv(Ja, r), mv(Jb, r)]) / math.sqrt(2.0), L) / math.sqrt(2.0)
            return (r - tv(Ja, z[:rows]) - tv(Jb, z[rows:])) / ridge
    else:
        Ga, Gb = _gram_params(Ja), _gram_params(Jb)
        x_a = torch.cholesky_solve(b, _chol(Ga, ridge))
        x_b = torch.cholesky_solve(b, _chol(Gb, ridge))
        L = _chol((Ga + Gb) * 0.5, ridge)
        del Ga, Gb

        def solve(r):
            return torch.cholesky_solve(r, L)
    x = solve(b)
    if single:
        bn = max(float(b.norm()), 1e-300)
        for _ in range(REFINE_STEPS):  # r = b − (JᵀJ + λI)x with the rows' exact float64 products
            r = b - 0.5 * (jtv64(Ja, jv64(Ja, x)) + jtv64(Jb, jv64(Jb, x))) - ridge * x
            if float(r.norm()) <= REFINE_RTOL * bn:
                break
            x = x + solve(r)
    shape = rhs.shape
    return x_a.reshape(shape), x_b.reshape(shape), x.reshape(shape)


def _half_rows(sketch) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(J_a, J_b, s)``: the halves' rows are ``√s·J_a`` and ``√s·J_b``.  A subsample's halves are the two halves of its
    draws, row *views* with ``s = 2`` (no copy of the sketch: at 60k images it is gigabytes); a sketch of all samples
    splits its ``k`` columns (:meth:`SketchedJacobian.halves`, a copy); a pair ``(a, b)`` is taken as given."""
    if isinstance(sketch, SketchedJacobian) and sketch.n < sketch.n_total:
        if sketch.n % 2:
            raise InvalidInputError(f"halves() of a subsampled sketch needs an even m, got m={sketch.n}")
        h = (sketch.n // 2) * sketch.k
        return sketch.J[:h], sketch.J[h:], 2.0
    a, b = sketch.halves() if isinstance(sketch, SketchedJacobian) else tuple(sketch)
    return a.J, b.J, 1.0


def half_sketch_error(sketch, rhs: torch.Tensor, ridge: float) -> HalfSketchEstimate:
    """Estimate the sketch error of the solve ``(G̃ + λI) x = rhs`` from two independent half-sketches.

    ``sketch`` is a :class:`SketchedJacobian` with an even ``k`` (split by :meth:`~SketchedJacobian.halves`)
    or a pair ``(a, b)`` of independent sources of equal size (anything with a row matrix ``.J``).

    Scaling (first order in the sketch noise): with ``H = G + λI`` the exact system and
    ``x_h − x* ≈ −H⁻¹(G̃_h − G) x* =: e_h`` for each half ``h``, the halves are independent with
    zero mean and equal covariance, and the full sketch is their average, ``e = (e_a + e_b)/2``.
    Hence ``E‖x_a − x_b‖² = E‖e_a − e_b‖² = 2 E‖e_a‖² = 4 E‖e‖²``: ``‖x_a − x_b‖/2`` estimates the
    (root-mean-square) error of the full-sketch solution and ``‖x_a − x_b‖/√2`` that of one half.
    It is one draw of a random quantity (a ``χ``-like spread around the truth; more reliable for
    large ``p``) and it ignores second-order terms (bias ``O(‖H⁻¹(G̃ − G)‖²)``).

    ``x`` (the whole sketch's solve) comes with it, so a caller that needs that solve anyway (the first Newton step)
    takes it from here.  Small sketches: dense Cholesky, the three systems from one Gram's worth of flops
    (:func:`_dense_halves`); large ones: matrix-free CG, the whole sketch's started from ``(x_a + x_b)/2``.
    """
    if not (isinstance(ridge, (int, float)) and math.isfinite(ridge) and ridge > 0):
        raise InvalidInputError(f"ridge must be a positive finite number, got {ridge!r}")
    Ja, Jb, sc = _half_rows(sketch)
    if Ja.shape != Jb.shape:
        raise ShapeError(f"the two half-sketches must have the same shape, got {tuple(Ja.shape)} and {tuple(Jb.shape)}")
    if not isinstance(rhs, torch.Tensor) or rhs.ndim not in (1, 2) or rhs.shape[0] != Ja.shape[1]:
        raise ShapeError(f"rhs must be a tensor of shape (p={Ja.shape[1]},) or (p, r), got {getattr(rhs, 'shape', type(rhs).__name__)}")
    rows, p = Ja.shape
    method = "cholesky" if dense_is_cheap(2 * rows, p) else "cg"
    if method == "cholesky":  # small: dense Cholesky (float64), one Gram's worth of work for the three solves
        x_a, x_b, x = _dense_halves(Ja, Jb, rhs, ridge, sc)
    else:
        # large: matrix-free CG on the rows as stored (no float64 copy, no Gram: measured on resnet18, p = 14,730,
        # 2 × 8,192 rows: the dense route held ~9 GB and cost more than the whole unlearning), Nyström-preconditioned
        P = _nystrom([Ja, Jb], 0.5 * sc, ridge)
        if P is not None:
            method = f"cg (Nyström-preconditioned, rank {P.rank})"
        if P is None and dense_is_cheap(rows, p):  # unpreconditioned: each half small enough for its own dense Cholesky
            # (with the Nyström preconditioner the halves' CG was faster than their float64 Grams: 0.5 against 2.5 s
            # each on mobilenetv3_small_050, 1,968 rows × 11,621, bench_estimate_precond)
            x_a, x_b = ridge_solve(Ja, rhs, ridge / sc) / sc, ridge_solve(Jb, rhs, ridge / sc) / sc
        else:
            x_a, x_b = _cg_ridge([Ja], rhs, ridge, scale=sc, M=P), _cg_ridge([Jb], rhs, ridge, scale=sc, M=P)
        x = _cg_ridge([Ja, Jb], rhs, ridge, scale=0.5 * sc, x0=(x_a + x_b) * 0.5, M=P)
    d, nx = float((x_a - x_b).norm()), max(float(x.norm()), 1e-300)
    return HalfSketchEstimate(x=x, x_a=x_a, x_b=x_b, error=d / (2 * nx), half_error=d / (math.sqrt(2.0) * nx), method=method)
