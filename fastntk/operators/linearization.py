"""Jacobian sources: the model linearized at ``w̄`` on a dataset.

A *Jacobian source* gives the block primitives every operator is built from
(docs/theory.md notation, ``J = J_S ∈ R^{nC×p}``, rows sample-major: row ``i*C + c``
is ``∂f_c(x_i)/∂w`` at ``w̄``):

* ``jmat(V)``   ``(p, k) -> (nC, k)``: ``J V`` (forward mode, tangents vmapped);
* ``jtmat(U)``  ``(nC, k) -> (p, k)``: ``Jᵀ U`` (reverse mode, cotangents vmapped);
* ``gmat(V)``   ``(p, k) -> (p, k)``: ``Jᵀ (J V)``, one forward pass per batch shared
  by the JVP and the VJP and by all ``k`` vectors;
* ``diag_ntk()`` ``(nC,)``: ``diag(J Jᵀ)`` (per-sample squared Jacobian norms);
  ``diag_ggn()`` ``(p,)``: ``diag(Jᵀ J)``;
* ``outputs()`` ``(n, C)``: ``f̄ = f(X; w̄)``.

With ``loss="ce"`` the source is the *loss-weighted* Jacobian ``J̃_i = L_iᵀ J_i``
where ``L_i L_iᵀ = Λ_i = diag(p_i) − p_i p_iᵀ`` (``p_i`` the softmax at ``w̄``;
``L_i = diag(√p_i) − p_i √p_iᵀ``), so that ``J̃ᵀJ̃ = Σ_i J_iᵀ Λ_i J_i`` is the
cross-entropy Gauss-Newton and ``J̃J̃ᵀ`` its dual kernel.

Two implementations share this interface:

* :class:`StreamingJacobian` -- matrix-free, ``torch.func`` JVP/VJP per batch;
  memory: one batch of activations plus O(p + nC) vectors;
* :class:`CachedJacobian` -- ``J`` built once (the per-sample engine of
  :mod:`.persample`: one forward and C batched backwards per batch; or ``vmap(jacrev)``
  in chunks) and stored (``nC·p`` floats); matvecs become matrix products.

A third, :class:`~fastntk.operators.sketch.SketchedJacobian`, stores ``k`` random rows per
sample (``E[J̃ᵀJ̃] = G``) and serves the *curvature* primitives only (its rows are not residual rows).
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch
from torch.func import jacrev, jvp, vjp, vmap

from ..errors import DataError, InvalidInputError, NumericalError
from . import _stream
from ._eta import PhaseEta

log = logging.getLogger("fastntk")

__all__ = ["StreamingJacobian", "CachedJacobian", "make_jacobian", "jacobian_bytes"]

LOSSES = ("mse", "ce")
ENGINES = ("auto", "persample", "vmap")


def _ce_factors(out: torch.Tensor):
    """Per-sample ``(p, √p)`` of the softmax at the linearization point, shape (b, C)."""
    pr = torch.softmax(out, dim=-1)
    return pr, pr.sqrt()


def _apply_Lt(T: torch.Tensor, pr: torch.Tensor, sq: torch.Tensor) -> torch.Tensor:
    """``L_iᵀ t = √p ⊙ t − √p (pᵀ t)`` for each sample; ``T`` is (..., b, C)."""
    return sq * T - sq * (pr * T).sum(-1, keepdim=True)


def _apply_L(U: torch.Tensor, pr: torch.Tensor, sq: torch.Tensor) -> torch.Tensor:
    """``L_i u = √p ⊙ u − p (√pᵀ u)`` for each sample; ``U`` is (..., b, C)."""
    return sq * U - pr * (sq * U).sum(-1, keepdim=True)


def _ce_cotangents(out: torch.Tensor) -> torch.Tensor:
    """``S_i = L_i`` (b, C, C), so that ``J_iᵀ S_i`` has the rows of ``L_iᵀ J_i`` (the CE-weighted Jacobian)."""
    pr, sq = _ce_factors(out)
    return torch.diag_embed(sq) - pr[:, :, None] * sq[:, None, :]


def all_finite(J: torch.Tensor) -> bool:
    """No NaN/Inf in ``J``: one reading pass (a sum; NaN/Inf propagate), the exact test only if it overflowed."""
    return bool(torch.isfinite(J.sum())) or bool(torch.isfinite(J).all())


def jacobian_bytes(n: int, C: int, p: int, dtype: torch.dtype) -> int:
    """Memory of a cached ``J`` (nC × p)."""
    return int(n) * int(C) * int(p) * torch.empty((), dtype=dtype).element_size()


class _SourceBase:
    n: int
    C: int
    p: int
    dtype: torch.dtype
    device: torch.device
    loss: str
    strategy: str

    @property
    def nC(self) -> int:
        return self.n * self.C


class StreamingJacobian(_SourceBase):
    """Matrix-free Jacobian of ``peft``'s model on ``data`` at ``w̄`` (see module doc).

    Parameters
    ----------
    peft : PeftSet
    data : inputs (tensor ``X``, ``(X, y)``, object with ``.X``, or a Dataset)
    w : linearization point ``w̄`` (default: the model's current PEFT vector)
    batch_size : samples per streamed batch
    loss : ``"mse"`` (plain ``J``) or ``"ce"`` (loss-weighted ``J̃``)
    """

    strategy = "stream"

    def __init__(self, peft, data, *, w: torch.Tensor | None = None, batch_size: int = 128, loss: str = "mse", progress: bool = False,
                 engine: str = "auto"):
        if loss not in LOSSES:
            raise InvalidInputError(f"loss must be one of {LOSSES}, got {loss!r}")
        if engine not in ENGINES:
            raise InvalidInputError(f"engine must be one of {ENGINES}, got {engine!r}")
        self.engine = engine
        if int(batch_size) < 1:
            raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
        self.peft = peft
        self.data = data
        self.n = _stream.num_samples(data)
        if self.n == 0:
            raise DataError("the dataset is empty; fastntk needs at least one sample")
        self.batch_size = int(batch_size)
        self.loss = loss
        self.dtype = peft.dtype
        self.device = peft.device
        w = peft.vector() if w is None else peft.check_vector(w, name="linearization point w̄")
        self.w = w.detach().clone()
        self.p = peft.p
        self.f = peft.functional()
        self.progress = progress
        # output size from one sample
        x0 = next(_stream.iter_batches(data, 1, dtype=self.dtype, device=self.device))[2]
        with torch.no_grad():
            out = self.f(self.w, x0[:1])
        if out.ndim != 2:
            raise InvalidInputError(f"the model must return logits of shape (batch, C), got {tuple(out.shape)}")
        self.C = int(out.shape[1])
        self.passes = 0  # number of data passes (for cost accounting)

    # ------------------------------------------------------------------ helpers
    def _batches(self):
        self.passes += 1
        return _stream.iter_batches(self.data, self.batch_size, dtype=self.dtype, device=self.device)

    def _fb(self, xb):
        f = self.f
        return lambda w: f(w, xb)

    def subset(self, idx) -> "StreamingJacobian":
        """The same linearization on the samples ``idx``."""
        sub = StreamingJacobian(self.peft, _stream.subset(self.data, idx), w=self.w, batch_size=self.batch_size, loss=self.loss,
                                engine=self.engine)
        if getattr(self, "_fast_ok", None) is not None:
            sub._fast_ok = self._fast_ok  # same model and point: the fast-rule check need not run again
        sub._persample = getattr(self, "_persample", None)  # likewise the per-sample engine and its check
        return sub

    # ------------------------------------------------------------------ per-batch primitives
    def _jmat_batch(self, xb, V):
        fb = self._fb(xb)
        out, JV = vmap(lambda v: jvp(fb, (self.w,), (v,)), in_dims=1, out_dims=(None, 0))(V)  # (k, b, C)
        if self.loss == "ce":
            pr, sq = _ce_factors(out)
            JV = _apply_Lt(JV, pr, sq)
        return JV

    def _jtmat_batch(self, xb, U3):
        """``U3`` is (k, b, C); returns (k, p)."""
        out, vjp_fn = vjp(self._fb(xb), self.w)
        if self.loss == "ce":
            pr, sq = _ce_factors(out.detach())
            U3 = _apply_L(U3, pr, sq)
        return vmap(vjp_fn)(U3)[0]

    def _gmat_batch(self, xb, V):
        """``J_bᵀ(J_b V)`` with one forward shared by the JVP, the VJP and all tangents."""
        fb = self._fb(xb)

        def fwd(w):
            out, JV = vmap(lambda v: jvp(fb, (w,), (v,)), in_dims=1, out_dims=(None, 0))(V)
            return out, JV

        out, vjp_fn, JV = vjp(fwd, self.w, has_aux=True)
        if self.loss == "ce":
            pr, sq = _ce_factors(out.detach())
            JV = pr * JV - pr * (pr * JV).sum(-1, keepdim=True)  # Λ J V
        return vmap(vjp_fn)(JV)[0]

    def per_sample_engine(self):
        """The :class:`~fastntk.operators.persample.PerSampleGradients` engine of this source (made once)."""
        if getattr(self, "_persample", None) is None:
            from .persample import PerSampleGradients

            self._persample = PerSampleGradients(self.peft, w=self.w)
        return self._persample

    def _use_engine(self, xb) -> bool:
        """``engine="auto"``: the per-sample engine when its rules pass the check on the first batch
        and cover at least one parameter, else ``vmap(jacrev)``.

        Measured (``benchmarks/results/jacobian_build.md``, CPU time, 1 thread, float32, 28 px, BN +
        head): ``fastntk_cnn_small`` 6.9 vs 9.6 gradient passes (C = 10) and 70 vs 255 (C = 100);
        resnet18 5.3 vs 5.6 (C = 10) and 52 vs 53 (C = 100); the engine's peak memory is the J it
        writes (``vmap(jacrev)`` adds 32 · C activation copies: 1.2 GB vs 0.5 GB for resnet18 at
        C = 100).  The same J in float64 (``tests/test_persample.py``)."""
        if self.engine != "auto":
            return self.engine == "persample"
        eng = self.per_sample_engine()
        if eng.ok is None:
            eng.check(xb)
        return bool(eng.ok) and any(r not in ("fallback", "unused") for r in eng.plan.values())

    def _jac_chunks(self, out_J: torch.Tensor | None = None):
        """Yield ``(start, stop, J_chunk (c, C, p), outputs (c, C))`` over the data (loss-weighted for CE).

        Per-sample engine: whole batches, written straight into ``out_J`` (nC × p) when given (else
        chunks of at most 256 MB of per-sample Jacobians);
        ``vmap(jacrev)``: chunks of 32 samples (its memory grows with chunk · C · activations).
        """
        S = _ce_cotangents if self.loss == "ce" else None
        # without a destination the engine's chunk is a temporary (chunk, C, p): keep it ≤ 256 MB
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        chunk = max(1, (1 << 28) // max(1, self.C * self.p * itemsize))
        for s, e, xb in self._batches():
            if self._use_engine(xb):
                step = e - s if out_J is not None else chunk
                for cs in range(s, e, step):
                    ce = min(cs + step, e)
                    dst = None if out_J is None else out_J[cs * self.C : ce * self.C].view(ce - cs, self.C, self.p)
                    Jb, out = self.per_sample_engine().jacobian(xb[cs - s : ce - s], S, out=dst)
                    yield cs, ce, Jb, out
                continue
            for cs in range(s, e, 32):
                ce = min(cs + 32, e)
                Jb, out = self._jac_batch_vmap(xb[cs - s : ce - s])
                if out_J is not None:
                    out_J[cs * self.C : ce * self.C] = Jb.detach().reshape(-1, self.p)
                yield cs, ce, Jb.detach(), out

    def _jac_batch_vmap(self, xb):
        """:meth:`_jac_batch` by ``vmap(jacrev)`` (C reverse passes vmapped) and a forward for the outputs."""
        f = self.f

        def one(w, x):
            return f(w, x.unsqueeze(0))[0]

        Jb = vmap(jacrev(one), in_dims=(None, 0))(self.w, xb)
        with torch.no_grad():
            out = f(self.w, xb)
        if self.loss == "ce":
            pr, sq = _ce_factors(out)
            Jb = sq[:, :, None] * Jb - sq[:, :, None] * torch.einsum("bc,bcp->bp", pr, Jb)[:, None, :]
        return Jb, out

    # ------------------------------------------------------------------ block primitives
    def jmat(self, V: torch.Tensor) -> torch.Tensor:
        """``J V``: (p, k) -> (nC, k)."""
        k = V.shape[1]
        out = torch.empty(self.nC, k, dtype=self.dtype, device=self.device)
        with torch.no_grad():
            for s, e, xb in self._batches():
                JV = self._jmat_batch(xb, V)  # (k, b, C)
                out[s * self.C : e * self.C] = JV.permute(1, 2, 0).reshape(-1, k)
        return out

    def jtmat(self, U: torch.Tensor) -> torch.Tensor:
        """``Jᵀ U``: (nC, k) -> (p, k)."""
        k = U.shape[1]
        acc = torch.zeros(k, self.p, dtype=self.dtype, device=self.device)
        for s, e, xb in self._batches():
            Ub = U[s * self.C : e * self.C].reshape(e - s, self.C, k).permute(2, 0, 1)
            acc += self._jtmat_batch(xb, Ub).detach()
        return acc.T.contiguous()

    def gmat(self, V: torch.Tensor) -> torch.Tensor:
        """``Jᵀ J V``: (p, k) -> (p, k), shared forward per batch.

        MSE: :func:`fastntk.operators._fast_ggn.gmat_batch` (vjp of jvp with
        cheaper BatchNorm/conv forward-mode rules for few vectors; per-sample
        Jacobians for ``k ≥ C/2``, see ``benchmarks/results/matvec.md``).
        CE: vjp of a vmapped jvp with ``Λ_i`` applied between them.
        """
        from ._fast_ggn import fast_rules_agree, gmat_batch

        k = V.shape[1]
        acc = torch.zeros(k, self.p, dtype=self.dtype, device=self.device)
        for s, e, xb in self._batches():
            if self.loss == "mse":
                if getattr(self, "_fast_ok", None) is None:
                    self._fast_ok, err = fast_rules_agree(self.f, self.w, xb[:2])
                    log.info("fastntk: fast forward-mode rules %s (rel. diff %.1e vs torch.func)",
                             "used" if self._fast_ok else "disabled for this model", err)
                acc += gmat_batch(self.f, self.w, xb, V, C=self.C, fast=self._fast_ok,
                                  prefer_dual=getattr(self.peft, "kind", "") == "batchnorm").detach()
            else:
                acc += self._gmat_batch(xb, V).detach()
        return acc.T.contiguous()

    def outputs(self) -> torch.Tensor:
        """``f̄ = f(X; w̄)``, shape (n, C)."""
        outs = []
        with torch.no_grad():
            for s, e, xb in self._batches():
                outs.append(self.f(self.w, xb))
        return torch.cat(outs)

    def _diag_pass(self):
        dn = torch.empty(self.nC, dtype=self.dtype, device=self.device)
        dg = torch.zeros(self.p, dtype=self.dtype, device=self.device)
        eta = PhaseEta("jacobian diagonal pass", self.n, detail=f" (n={self.n}, C={self.C}, p={self.p})")
        for s, e, Jb, _ in self._jac_chunks():
            dn[s * self.C : e * self.C] = (Jb**2).sum(-1).reshape(-1)
            dg += (Jb**2).sum((0, 1))
            eta.update(e)
        eta.done()
        self._diag_cache = (dn, dg)
        return dn, dg

    def diag_ntk(self) -> torch.Tensor:
        """``diag(J Jᵀ)``, (nC,): squared norms of the per-sample, per-output Jacobian rows."""
        return (getattr(self, "_diag_cache", None) or self._diag_pass())[0]

    def diag_ggn(self) -> torch.Tensor:
        """``diag(Jᵀ J)``, (p,)."""
        return (getattr(self, "_diag_cache", None) or self._diag_pass())[1]

    def dense(self, *, progress: bool = False) -> torch.Tensor:
        """Materialize ``J`` (nC, p): the per-sample engine (``engine="auto"|"persample"``) or ``vmap(jacrev)`` in chunks."""
        J = torch.empty(self.nC, self.p, dtype=self.dtype, device=self.device)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.n, desc="jacobian", unit="img", leave=False)
        # ETA after the first batch (logged when the rest takes ≥ _eta.ETA_MIN_SECONDS)
        eta = PhaseEta("jacobian build", self.n, detail=f" (n={self.n}, C={self.C}, p={self.p}, {self.nC * self.p * J.element_size() / 1e6:.0f} MB)")
        outs = []
        for s, e, _, out in self._jac_chunks(J):
            outs.append(out.detach())
            if bar is not None:
                bar.update(e - s)
            eta.update(e)
        if bar is not None:
            bar.close()
        eta.done()
        self._dense_outputs = torch.cat(outs)  # f(X; w̄) from the same forward passes (CachedJacobian.build)
        return J


class _MatrixSource(_SourceBase):
    """Primitives of a source whose rows are stored as a matrix ``self.J`` (rows × p)."""

    J: torch.Tensor

    def jmat(self, V):
        return self.J @ V

    def jtmat(self, U):
        return self.J.T @ U

    def gmat(self, V):
        return self.J.T @ (self.J @ V)

    def diag_ntk(self):
        return (self.J**2).sum(1)

    def diag_ggn(self):
        return (self.J**2).sum(0)

    def dense(self, *, progress: bool = False):
        return self.J

    def gram(self, *, rows: int = 4096) -> torch.Tensor:
        """``JᵀJ`` (p × p) accumulated in float64 over blocks of ``rows`` rows."""
        G = torch.zeros(self.p, self.p, dtype=torch.float64, device=self.device)
        for a in range(0, self.J.shape[0], rows):
            Jc = self.J[a : a + rows].double()
            G.addmm_(Jc.T, Jc)
        return G


class CachedJacobian(_MatrixSource):
    """``J`` stored once (nC × p); every primitive is a matrix product.

    Build it from a :class:`StreamingJacobian` (``CachedJacobian.build(src)``)
    or from a given matrix (``CachedJacobian(J, outputs, C)``).
    """

    strategy = "cached"

    def __init__(self, J: torch.Tensor, outputs: torch.Tensor, *, loss: str = "mse", build_seconds: float = 0.0):
        if J.ndim != 2 or outputs.ndim != 2 or J.shape[0] != outputs.numel():
            raise InvalidInputError(f"cached J {tuple(J.shape)} does not match outputs {tuple(outputs.shape)}")
        if not all_finite(J):
            raise NumericalError("the Jacobian has NaN/Inf entries; check the model and inputs for non-finite values")
        self.J = J
        self._outputs = outputs
        self.n, self.C = outputs.shape
        self.p = J.shape[1]
        self.dtype = J.dtype
        self.device = J.device
        self.loss = loss
        self.build_seconds = build_seconds
        self.passes = 0

    @classmethod
    def build(cls, src: StreamingJacobian, *, progress: bool = False) -> "CachedJacobian":
        t = time.perf_counter()
        J = src.dense(progress=progress)
        out = src.__dict__.pop("_dense_outputs", None)
        out = src.outputs() if out is None else out
        return cls(J, out, loss=src.loss, build_seconds=time.perf_counter() - t)

    def subset(self, idx) -> "CachedJacobian":
        idx = torch.as_tensor(np.asarray(idx, dtype=np.int64), device=self.device)
        J = self.J.view(self.n, self.C, self.p)[idx].reshape(-1, self.p)
        return CachedJacobian(J, self._outputs[idx], loss=self.loss)

    def outputs(self):
        return self._outputs


#: bytes a cached Jacobian may take, the one default of every entry point (unlearn, Unlearner, match_ridge, the
#: distributed step, the pipeline)
DEFAULT_MEMORY_BUDGET = 4e9


def make_jacobian(peft, data, *, w=None, loss: str = "mse", strategy: str = "auto", memory_budget: float | None = DEFAULT_MEMORY_BUDGET, batch_size: int = 128, progress: bool = False):
    """Jacobian source with the strategy chosen explicitly or by memory.

    ``strategy="auto"`` caches ``J`` when ``nC·p·itemsize ≤ memory_budget`` bytes,
    else streams; the choice and the reason are logged and stored on the
    source as ``.reason``.
    """
    if strategy not in ("auto", "stream", "cached"):
        raise InvalidInputError(f"strategy must be 'auto', 'stream' or 'cached', got {strategy!r}")
    src = StreamingJacobian(peft, data, w=w, batch_size=batch_size, loss=loss)
    need = jacobian_bytes(src.n, src.C, src.p, src.dtype)
    budget = float("inf") if memory_budget is None else float(memory_budget)
    if strategy == "auto":
        strategy = "cached" if need <= budget else "stream"
        reason = f"J needs {need / 1e6:.1f} MB {'≤' if strategy == 'cached' else '>'} memory budget {budget / 1e6:.1f} MB"
    else:
        reason = f"strategy={strategy!r} requested"
        if strategy == "cached" and need > budget:
            raise InvalidInputError(
                f"strategy='cached' needs {need / 1e6:.1f} MB for J (n={src.n}, C={src.C}, p={src.p}) but memory_budget "
                f"is {budget / 1e6:.1f} MB; raise memory_budget or use strategy='stream'"
            )
    log.info("fastntk: jacobian strategy=%s (%s)", strategy, reason)
    if strategy == "cached":
        out = CachedJacobian.build(src, progress=progress)
    else:
        out = src
    out.reason = reason
    return out
