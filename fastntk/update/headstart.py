"""The head stage: the plain retain objective minimized over the linear classifier head first (block coordinate).

On the plain retain objective of a class request (``Σ_{D_r} ℓ_i(w) + ½λ‖w − c‖²``, :mod:`fastntk.update.tilted`), the
slow part of the Newton iteration is the forgotten class's logit: no retain sample has that label, so the
cross-entropy pushes the logit down along ``ℓ ≈ e^{z_c}``, where each Gauss-Newton step moves ``z_c`` by about one
unit (``p_c / p_c(1 − p_c)``) and every step costs a gradient pass over ``D_r``.  When the PEFT set holds the linear
head ``z = W φ + b`` and ``φ`` (its input) is all the rest of the network feeds it, the objective restricted to
``(W, b)`` with every other PEFT parameter held at ``w_t`` is a ridge-regularized multinomial logistic regression on the
fixed features ``Φ`` of ``D_r`` — convex, and solved here to high accuracy (L-BFGS in float64 on ``Φ``) after **one
forward pass** over ``D_r`` (which also gives the data loss at ``w_t``).  The Newton steps over all PEFT parameters then
start from there: the same objective, so the same minimizer; only the path (and where the stopping rule ends it)
changes.

The reference of the stopping rule is the head block's Newton decrement at ``w_t`` (``g_hᵀ(H_hh + λI)⁻¹g_h ≤ δ₁²``,
the full decrement: a block of a positive definite matrix bounds it from below, so the rule is no looser than
measuring from a full step at ``w_t``) and the head stage's decrease of the objective.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..operators.base import TorchLinearOperator
from ..train import peft_loss

log = logging.getLogger("fastntk")

__all__ = ["HeadBlock", "head_block", "head_stage", "HEAD_GTOL", "HEAD_MAXITER"]

#: L-BFGS of the head stage: stop when the gradient of the mean objective has max-norm ≤ HEAD_GTOL, or after
#: HEAD_MAXITER iterations (the problem is strongly convex: λ > 0)
HEAD_GTOL, HEAD_MAXITER = 1e-7, 2000


@dataclass(frozen=True)
class HeadBlock:
    """Where the linear head ``z = W φ + b`` sits in the PEFT vector: ``W`` at ``[w0:w1)`` (C × d, row-major), ``b``
    at ``[b0:b1)`` (or ``None`` without a bias)."""

    name: str
    module: nn.Module
    w_range: tuple[int, int]
    b_range: tuple[int, int] | None
    C: int
    d: int

    def indices(self) -> torch.Tensor:
        parts = [torch.arange(*self.w_range)] + ([torch.arange(*self.b_range)] if self.b_range else [])
        return torch.cat(parts)


def head_block(peft) -> tuple[HeadBlock | None, str]:
    """The classifier head of ``peft.model`` as a block of the PEFT vector, or ``None`` and why not."""
    from ..peft import _find_head

    model = getattr(peft, "model", None)
    if model is None:
        return None, "no head stage: the PEFT set has no model"
    name = _find_head(model)
    if name is None:
        return None, "no head stage: the model has no linear classifier head"
    module = dict(model.named_modules()).get(name)
    if not isinstance(module, nn.Linear):
        return None, f"no head stage: the head {name!r} is not a torch.nn.Linear"
    offsets, o = {}, 0
    for n, k in zip(peft.names, peft.numels):
        offsets[n] = (o, o + k)
        o += k
    wn, bn = f"{name}.weight" if name else "weight", f"{name}.bias" if name else "bias"
    if wn not in offsets:
        return None, f"no head stage: the head's weight {wn!r} is not in the PEFT set"
    if module.bias is not None and bn not in offsets:
        return None, f"no head stage: the head's bias {bn!r} is not in the PEFT set (only its weight is)"
    C, d = module.weight.shape
    return HeadBlock(name, module, offsets[wn], offsets.get(bn) if module.bias is not None else None, int(C), int(d)), \
        f"head {name!r} ({C} × {d}{' + bias' if module.bias is not None else ''}) in the PEFT set"


@torch.no_grad()
def head_features(objective, w: torch.Tensor, block: HeadBlock) -> tuple[torch.Tensor | None, str]:
    """The head's inputs ``Φ`` (n × d, float64) on the objective's samples at ``w`` — one forward pass, whose data loss
    and accuracy are remembered like any other pass — or ``None`` and why (the head's output is not the model's)."""
    feats, outs = [], []

    def hook(mod, inp, out):
        feats.append(inp[0].detach())
        outs.append(out.detach())

    handle = block.module.register_forward_hook(hook)
    total, hits = 0.0, 0
    try:
        for xb, yb in objective._batches():
            n0 = len(feats)
            out = objective._f(w, xb)
            if len(feats) != n0 + 1 or feats[-1].ndim != 2 or not torch.equal(outs[-1], out):
                return None, ("no head stage: the model's output is not its head's output on the head's input (the head "
                              "runs more than once, on non-flat inputs, or something follows it)")
            total += float(peft_loss(out, yb, objective.loss, objective.target_scale).sum())
            hits += int((out.argmax(-1) == yb).sum())
            feats[-1] = feats[-1].double()
            outs.pop()
    finally:
        handle.remove()
    objective._remember(w, total, hits)
    return torch.cat(feats), ""


def head_stage(objective, w: torch.Tensor, block: HeadBlock) -> tuple[torch.Tensor | None, dict]:
    """Minimize ``objective`` (a :class:`fastntk.update.objective.NetworkObjective`, plain or tilted, CE or MSE) over
    the head block from ``w``, every other coordinate fixed: ``(w', info)`` with ``w'`` equal to ``w`` outside the
    head, or ``(None, info)`` when the head stage does not apply (``info["why"]``)."""
    from scipy.optimize import minimize

    t0 = time.perf_counter()
    if objective.linearized_at is not None:
        return None, {"used": False, "why": "no head stage: the model is a linearization (its head is not a layer of it)"}
    Phi, why = head_features(objective, w, block)
    if Phi is None:
        return None, {"used": False, "why": why}
    t_feat = time.perf_counter() - t0
    n, C, d = Phi.shape[0], block.C, block.d
    y = objective.y.to(Phi.device)
    idx = block.indices().to(w.device)
    h0 = w[idx].double()
    a = float(objective.weight)
    lam = float(objective.ridge)
    c = objective.center[idx].double() if objective.center is not None else None
    tilt = objective.tilt[idx].double() if objective.tilt is not None else None
    ref = objective.tilt_ref[idx].double() if objective.tilt is not None else None
    nw = C * d
    scale = 1.0 / max(n * a, 1.0)  # the mean objective: gradients O(1), so that one gtol serves every n

    def value(h):
        W, b = h[:nw].view(C, d), (h[nw:] if block.b_range else None)
        z = Phi @ W.T + (b if b is not None else 0.0)
        v = a * peft_loss(z, y, objective.loss, objective.target_scale).sum()
        if lam > 0:
            v = v + 0.5 * lam * ((h - c) ** 2).sum()
        if tilt is not None:
            v = v - tilt @ (h - ref)
        return v * scale

    def fun(hn):
        h = torch.from_numpy(hn).to(Phi.device).requires_grad_(True)
        v = value(h)
        (g,) = torch.autograd.grad(v, h)
        return float(v.detach()), g.detach().cpu().numpy()

    F0, g0 = fun(h0.cpu().numpy().copy())
    res = minimize(fun, h0.cpu().numpy().copy(), jac=True, method="L-BFGS-B",
                   options={"gtol": HEAD_GTOL, "ftol": 1e-15, "maxiter": HEAD_MAXITER, "maxcor": 20})
    h1 = torch.from_numpy(res.x).to(h0.device)
    F1 = float(res.fun)
    # the head block's Newton decrement at w: g_hᵀ (H_hh + λI)⁻¹ g_h (H_hh the exact Hessian of the block: the logits are
    # linear in (W, b)), by CG on Hessian-vector products (a lower bound on the full decrement at w)
    dec = _block_decrement(value, h0.clone(), torch.from_numpy(g0).to(h0.device)) / scale
    w1 = w.detach().clone()
    w1[idx] = h1.to(w1.dtype)
    gmax = float(np.abs(res.jac).max()) if res.jac is not None else float("nan")
    info = {"used": True, "why": f"{block.name!r} ({C} × {d}) on fixed features, then the steps on every PEFT parameter",
            "samples": int(n), "iterations": int(res.nit), "converged": bool(res.success) or gmax <= HEAD_GTOL * 10,
            "message": str(res.message), "objective_before": F0 / scale, "objective_after": F1 / scale,
            "decrease": (F0 - F1) / scale, "head_decrement": dec, "grad_max_after": gmax,
            "step_norm": float((h1 - h0).norm()), "seconds": time.perf_counter() - t0, "feature_seconds": t_feat}
    if not (math.isfinite(F1) and F1 <= F0):
        return None, dict(info, used=False, why="no head stage: the head solve did not decrease the objective")
    log.info("fastntk: head stage: %s: objective %.6g -> %.6g in %d L-BFGS iterations (%.2f s)", block.name,
             info["objective_before"], info["objective_after"], info["iterations"], info["seconds"])
    return w1, info


class _BlockHessian(TorchLinearOperator):
    """``v ↦ H v`` of the (scaled) block objective at ``h`` by double backward (the block's exact Hessian)."""

    symmetric = True

    def __init__(self, grad: torch.Tensor, h: torch.Tensor):
        super().__init__((h.numel(), h.numel()), h.dtype, h.device)
        self.grad, self.h = grad, h

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.autograd.grad(self.grad, self.h, grad_outputs=v, retain_graph=True)[0].detach()
                            for v in V.T], 1)


def _block_decrement(value, h0: torch.Tensor, g: torch.Tensor, iters: int = 100) -> float:
    """``gᵀ(H + λI)⁻¹g`` of the (scaled) block objective ``value`` at ``h0`` (``H + λI`` its Hessian, ridge included) by
    :func:`fastntk.solvers.cg` on exact Hessian-vector products, to a relative residual of 1e-8 or ``iters``
    iterations."""
    from ..solvers import cg

    if float(g.norm()) == 0.0:
        return 0.0
    h = h0.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(value(h), h, create_graph=True)
    res = cg(_BlockHessian(grad, h), g, rtol=1e-8, maxiter=iters, on_fail="ignore")
    return float(g @ torch.as_tensor(res.x, dtype=g.dtype, device=g.device))
