"""Data-parallel unlearning on ``torch.distributed`` (gloo on CPUs, NCCL on GPUs).

Each rank holds a shard of the retain and forget sets (any sizes, a shard may be empty).  What is
sharded and what is replicated:

* dual-space vectors (one entry per sample and output: residuals ``z``, ``J v``) -- sharded by sample,
  each rank owns its rows;
* parameter-space vectors (``w``, ``Jᵀu``, ``G v``, ``Δ``) -- replicated: every product that sums over
  samples (``Jᵀ u``, ``JᵀJ v``, ``diag(JᵀJ)``) is a local partial sum followed by one ``all_reduce``.

The solvers run unchanged on every rank: they only see replicated parameter-space operators, whose
all-reduced results are bitwise identical on all ranks, so every rank walks the same iterates.
Memory per rank: its shard of the data (and of ``J`` when cached) plus O(p) vectors.

Launch with ``torchrun --nproc-per-node=N your_script.py`` (``init_process_group`` reads the
environment), or any other ``torch.distributed`` initialisation.
"""
from __future__ import annotations

import logging
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import DataError, FastNTKError, ForgetSetError, InvalidInputError
from .operators import make_jacobian

log = logging.getLogger("fastntk")

__all__ = ["DistributedError", "DistributedJacobian", "EmptyJacobian", "unlearn_distributed", "is_rank0"]


class DistributedError(FastNTKError, RuntimeError):
    """A peer rank failed, timed out, or reported bad input; no rank wrote anything."""


def _rank():
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_rank0() -> bool:
    """True on rank 0 (or without torch.distributed): the only rank that writes files and prints tables."""
    return _rank() == 0


def _all_reduce(t: torch.Tensor, group=None, op=None) -> torch.Tensor:
    try:
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM, group=group)
    except RuntimeError as e:  # gloo/nccl: a peer died or timed out
        raise DistributedError(f"rank {_rank()}: a collective failed ({str(e).splitlines()[0]}); a peer rank failed or timed out. "
                               "Nothing was written") from None
    return t


class _Source:
    """What every Jacobian source has: ``n`` samples × ``C`` outputs = ``nC`` rows."""

    @property
    def nC(self) -> int:
        return self.n * self.C


class EmptyJacobian(_Source):
    """The Jacobian source of an empty shard: zero rows."""

    strategy = "empty"

    def __init__(self, p, C, dtype, device, loss="mse"):
        self.n, self.C, self.p, self.dtype, self.device, self.loss = 0, C, p, dtype, torch.device(device), loss

    def jmat(self, V):
        return torch.zeros(0, V.shape[1], dtype=self.dtype, device=self.device)

    def jtmat(self, U):
        return torch.zeros(self.p, U.shape[1], dtype=self.dtype, device=self.device)

    def gmat(self, V):
        return torch.zeros_like(V)

    def outputs(self):
        return torch.zeros(0, self.C, dtype=self.dtype, device=self.device)

    def diag_ntk(self):
        return torch.zeros(0, dtype=self.dtype, device=self.device)

    def diag_ggn(self):
        return torch.zeros(self.p, dtype=self.dtype, device=self.device)


class DistributedJacobian(_Source):
    """A rank's local Jacobian source whose parameter-space products are all-reduced.

    ``jmat`` / ``outputs`` / ``diag_ntk`` stay local (sharded rows); ``jtmat`` / ``gmat`` / ``diag_ggn``
    return the global sums, identical on every rank.  ``n`` is the local row count, ``n_global`` the total.
    """

    def __init__(self, local, group=None):
        self.local, self.group = local, group
        self.n, self.C, self.p = local.n, local.C, local.p
        self.dtype, self.device, self.loss = local.dtype, local.device, local.loss
        self.strategy = f"{local.strategy} (data-parallel)"
        cnt = torch.tensor([float(local.n)], dtype=torch.float64)
        self.n_global = int(_all_reduce(cnt, group)[0])

    def jmat(self, V):
        return self.local.jmat(V)

    def jtmat(self, U):
        return _all_reduce(self.local.jtmat(U).contiguous(), self.group)

    def gmat(self, V):
        return _all_reduce(self.local.gmat(V).contiguous(), self.group)

    def outputs(self):
        return self.local.outputs()

    def diag_ntk(self):
        return self.local.diag_ntk()

    def diag_ggn(self):
        return _all_reduce(self.local.diag_ggn().clone(), self.group)


def _agree(ok: bool, message: str, group=None):
    """Every rank learns whether every rank passed validation; all raise together."""
    flag = torch.tensor([0.0 if ok else 1.0], dtype=torch.float64)
    bad = _all_reduce(flag, group)[0]
    if bad > 0:
        raise DistributedError(message if not ok else f"rank {_rank()}: {int(bad)} peer rank(s) reported bad input; nothing was done")


def _validate(model, peft, retain_shard, forget_shard, ridge, rtol, w0, group):
    """Local checks, then every rank agrees before any work: ``(λ, rtol, why the rtol was floored, shards)``."""
    from .update.inputs import check_model, check_scalar
    from .update.plan import rtol_floor

    err = lam = rtol_why = None
    shards = []
    try:
        lam = check_scalar("ridge", ridge, positive=True)
        rtol, rtol_why = rtol_floor(check_scalar("rtol", rtol, positive=True), peft.dtype)
        check_model(model, peft)
        peft.check_vector(w0, name="w0")
        for data, name in ((retain_shard, "retain"), (forget_shard, "forget")):
            X, y = data
            if X.shape[0] != y.shape[0]:
                raise DataError(f"the {name} shard has {X.shape[0]} inputs but {y.shape[0]} labels")
            if X.shape[0] and not torch.isfinite(X).all():
                raise DataError(f"the {name} shard contains NaN/Inf")
            shards.append((X, y))
    except FastNTKError as e:
        err = e
    _agree(err is None, f"rank {_rank()}: {err}", group)
    return lam, rtol, rtol_why, shards


def unlearn_distributed(model, peft, retain_shard, forget_shard, *, ridge: float, w0: torch.Tensor, target_scale: float = 1.0,
                        strategy: str = "auto", memory_budget: float | None = 4e9, batch_size: int = 128, rtol: float = 1e-8,
                        maxiter: int | None = None, inplace: bool = False, group=None):
    """Data-parallel Fast-NTK update (MSE kernel at ``w0``, anchor "fit", primal form, CG).

    ``Δ = w*_{D_r} − w*_D`` with ``w*_S − w̄ = (G_S + λI)⁻¹ J_Sᵀ z_S``; computed as the Newton step
    ``Δ = (G_r + λI)⁻¹ J_fᵀ (f_lin(X_f; w*_D) − Y_f)`` -- exactly what :func:`fastntk.unlearn` returns with
    ``form="primal", solver="cg"`` on the union of the shards.  Every rank returns the same ``Δ``;
    with ``inplace=True`` every rank writes it into its replica of the model, after all succeeded.
    """
    from .update.forms import FIT_D, forget_residual, newton_step, ridge_fit
    from .update.inputs import targets
    from .update.result import UnlearnResult
    from .update.solve import SolveContext

    t0 = time.perf_counter()
    if not (dist.is_available() and dist.is_initialized()):
        raise InvalidInputError("unlearn_distributed needs torch.distributed initialised (torchrun, or init_process_group)")
    lam, rtol, rtol_why, shards = _validate(model, peft, retain_shard, forget_shard, ridge, rtol, w0, group)
    (X_r, y_r), (X_f, y_f) = shards
    with torch.no_grad():
        probe = X_r[:1] if X_r.shape[0] else X_f[:1]
        C = int(peft.functional()(w0, probe.to(peft.device, peft.dtype)).shape[1]) if probe.shape[0] else -1
    Cs = torch.tensor([float(C)], dtype=torch.float64)
    C = int(_all_reduce(Cs, group, op=dist.ReduceOp.MAX)[0])
    bad = any(int(t.min()) < 0 or int(t.max()) >= C for t in (y_r, y_f) if t.numel())
    _agree(not bad, f"rank {_rank()}: labels outside [0, {C})", group)
    counts = _all_reduce(torch.tensor([float(X_r.shape[0]), float(X_f.shape[0])], dtype=torch.float64), group)
    n_r, n_f = int(counts[0]), int(counts[1])
    if n_f == 0:
        raise ForgetSetError("the forget set is empty on every rank; nothing to unlearn")
    if n_r == 0:
        raise ForgetSetError("the retain set is empty on every rank: forgetting everything means retraining from w0")

    def source(X):
        if X.shape[0] == 0:
            return EmptyJacobian(peft.p, C, peft.dtype, peft.device)
        return make_jacobian(peft, X, w=w0, strategy=strategy, memory_budget=memory_budget, batch_size=batch_size)

    t = time.perf_counter()
    src_r = DistributedJacobian(source(X_r), group)
    src_f = DistributedJacobian(source(X_f), group)
    t_jac = time.perf_counter() - t
    ctx = SolveContext(rtol=rtol, maxiter=maxiter)
    t = time.perf_counter()
    Y_r = targets(y_r, C, target_scale, peft.dtype, peft.device)
    Y_f = targets(y_f, C, target_scale, peft.dtype, peft.device)
    dD = ridge_fit([(src_r, Y_r), (src_f, Y_f)], lam, ctx, FIT_D)  # w*_D − w̄ (SumGGNLinearOperator, CG)
    r_f = forget_residual(src_f, Y_f, w0 + dD, w0)  # f_lin(X_f; w*_D) − Y_f
    delta = newton_step(src_r, src_f.jtmat(r_f.unsqueeze(1))[:, 0], lam, ctx)
    ok = bool(torch.isfinite(delta).all())
    _agree(ok, f"rank {_rank()}: non-finite update", group)
    w_old = peft.vector()
    w_new = w_old + delta
    timings = {"jacobian": t_jac, "solve": time.perf_counter() - t, "total": time.perf_counter() - t0}
    res = UnlearnResult(delta=delta, w_new=w_new, w_old=w_old, form="primal", strategy=src_r.strategy, space="primal", loss="mse",
                        scale=1.0, reasons={"form": "data-parallel: primal form (replicated parameter space), CG",
                                                      **({"rtol": rtol_why} if rtol_why else {})},
                        solves=ctx.solves, timings=timings,
                        info={"n_retain": n_r, "n_forget": n_f, "C": C, "p": peft.p, "ridge": lam, "world_size": dist.get_world_size(group),
                              "rank": _rank(), "n_retain_local": int(X_r.shape[0]), "n_forget_local": int(X_f.shape[0])})
    if inplace:
        _agree(True, "", group)  # everyone reached this point: write
        peft.write(w_new)
    return res


def init_gloo(rank: int, world_size: int, init_file: str, timeout_s: float = 60.0):
    """Initialise a CPU (gloo) process group from a shared file (tests, single-machine runs)."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=timeout_s))
