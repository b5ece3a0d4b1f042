"""Per-sample gradient engine: ``J_iᵀ S_i`` for every sample of a batch from ``k`` batched backwards.

For a batch ``x_1 … x_b`` and per-sample output cotangents ``S_i ∈ R^{C×k}`` the engine
returns ``R[i, j] = J_iᵀ S_i[:, j]`` (shape ``(b, k, p)``), where ``J_i = ∂f(x_i; w)/∂w``
(``C × p``) at the linearization point.  It runs **one** forward pass with autograd and
then **one ordinary batched backward per column** ``j`` (``k`` backwards, not ``C``):
the backward asks autograd only for the gradients at the outputs of the layers that own
PEFT parameters, and the per-sample parameter gradients follow from exact rules:

* **BatchNorm affine** (eval mode, running statistics), ``y = x̂·γ + β`` with
  ``x̂ = (x − μ)/√(σ² + ε)``: ``∂/∂γ = Σ_space x̂ ⊙ g``, ``∂/∂β = Σ_space g`` per sample
  (``g = ∂⟨S_j, f⟩/∂y``; BackPACK / nngeometry use the same rules);
* **Linear** ``z = a Wᵀ + b`` (the head, or any ``F.linear`` with a PEFT weight / bias):
  ``∂/∂W = Σ_tokens g ⊗ a``, ``∂/∂b = Σ_tokens g``;
* **prompt tokens** of a :class:`~fastntk.peft.PromptedViT`: the prompts are expanded to a
  per-sample copy ``(b, layers, k, D)`` before they enter the tokens; the gradient at that
  copy is the per-sample gradient;
* any **other** PEFT parameter (conv weights, LayerNorm, a parameter also used outside the
  ops above, ...): ``torch.func.vmap`` over samples of a ``vjp`` restricted to those
  parameters (one forward per sample, ``k`` cotangents vmapped).

The rules are captured with a :class:`~torch.overrides.TorchFunctionMode` (like the
affine-BN rewrite of :mod:`._fast_ggn`) that recognises ``F.batch_norm`` / ``F.linear``
calls whose weight or bias *is* one of the PEFT tensors, evaluates them in the explicit
form above (BatchNorm through a small custom autograd Function with per-sample γ / β copies)
and records what the rule needs (the copies; the input ``a`` and output ``z``); a PEFT tensor seen by any other op
sends its parameter to the fallback.  On the first batch the whole product is checked
against ``torch.func`` (``vmap(jacrev)`` contracted with random cotangents, i.e. a per-sample
``vjp`` vmapped over them) on a few samples (:meth:`PerSampleGradients.check`); if they
disagree the engine logs the reason and uses the fallback for every parameter.  A disagreement in float32 is
first re-checked in float64 (the model's tensors passed to ``functional_call`` as float64 copies): two float32
computations of the same network can differ far beyond rounding where a ReLU input or a max-pool window ties (a
constant image background ties whole regions at once — 2.2e-3 on resnet18 / Fashion-MNIST, 4e-16 in float64), and
only a disagreement that float64 confirms is a wrong rule.

The exact per-sample Jacobian is the engine with ``S_i = I_C``
(:meth:`PerSampleGradients.jacobian`); the cross-entropy rows ``L_iᵀ J_i`` use ``S_i = L_i``;
a sketch ``S_iᵀ J_i`` uses ``k`` random columns (:mod:`.sketch`).

Cost: one forward + ``k`` backwards of the batch (plus, for fallback parameters, a
vmapped per-sample ``vjp``).  Memory: one batch of activations, the ``(b, k, p)`` result and
one column of layer-output gradients at a time.
"""
from __future__ import annotations

import logging
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch.func import jacrev, vjp, vmap
from torch.overrides import TorchFunctionMode

from ..errors import InvalidInputError, ShapeError
from ..peft import PromptedViT, eval_mode
from ._fast_ggn import _bn_args

log = logging.getLogger("fastntk")

__all__ = ["PerSampleGradients", "per_sample_reference"]

RULES = ("batchnorm", "linear", "prompt", "fallback", "unused")


def _linear_args(input, weight, bias=None):
    return input, weight, bias


def _peft_tensors(ids, args, kwargs):
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, (list, tuple)):
            yield from (ids[id(t)] for t in a if isinstance(t, torch.Tensor) and id(t) in ids)
        elif isinstance(a, torch.Tensor) and id(a) in ids:
            yield ids[id(a)]


class _Capture(TorchFunctionMode):
    """Evaluate BN / linear calls on PEFT tensors explicitly and record what the rules need.

    ``ids`` maps ``id(tensor)`` of the PEFT tensors handed to the model to their index in
    ``peft.names``; ``b`` is the batch size (a call whose leading dimension is not ``b`` is
    not per-sample and is left to the fallback).
    """

    def __init__(self, ids: dict[int, int], b: int):
        super().__init__()
        self.ids, self.b = ids, b
        # ("batchnorm", γ index, β index, γ copy (b, ch), β copy (b, ch)) | ("linear", W index, b index, input, output)
        self.records: list[tuple] = []
        self.other: set[int] = set()  # PEFT tensors used by any other op

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        ids = self.ids
        if func is F.batch_norm:
            x, rm, rv, g, bb, training, eps = _bn_args(*args, **kwargs)
            gi, bi = ids.get(id(g)) if g is not None else None, ids.get(id(bb)) if bb is not None else None
            if (gi is not None or bi is not None) and not training and rm is not None and rv is not None \
                    and x.ndim >= 2 and x.shape[0] == self.b:
                # per-sample expanded copies of γ, β (b, ch): their gradients are the per-sample rule
                gb = g.unsqueeze(0).expand(self.b, -1) if gi is not None else None
                bbb = bb.unsqueeze(0).expand(self.b, -1) if bi is not None else None
                gam = gb if gb is not None else None if g is None else g.unsqueeze(0)
                bet = bbb if bbb is not None else None if bb is None else bb.unsqueeze(0)
                y = _PerSampleBatchNorm.apply(x, rm, torch.rsqrt(rv + eps), gam, bet)
                self.records.append(("batchnorm", gi, bi, gb, bbb))
                return y
        elif func is F.linear:
            x, W, bias = _linear_args(*args, **kwargs)
            wi, bi = ids.get(id(W)), ids.get(id(bias)) if bias is not None else None
            if (wi is not None or bi is not None) and x.ndim >= 2 and x.shape[0] == self.b:
                z = func(*args, **kwargs)
                self.records.append(("linear", wi, bi, x.detach(), z))
                return z.clone()  # the model may modify its copy in place; ∂/∂z is asked of the original
        out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor) and out.requires_grad:
            self.other.update(_peft_tensors(ids, args, kwargs))
        return out


class _PerSampleBatchNorm(torch.autograd.Function):
    """Eval-mode BatchNorm ``y = x̂·γ + β``, ``x̂ = (x − μ)·s``, ``s = 1/√(σ² + ε)``, with γ, β given
    per sample (``(b, ch)`` expanded copies, or ``(1, ch)`` frozen, or ``None``).

    Backward (one column of cotangents): ``∂x = g·γs``, per-sample ``∂γ = Σ_space x̂ ⊙ g``,
    ``∂β = Σ_space g``: three passes over the activation, as the fused native rule, instead of the
    five that autograd takes for the same expression written with broadcasting ops.
    """

    @staticmethod
    def forward(ctx, x, rm, s, gam, bet):
        shape = (1, -1) + (1,) * (x.ndim - 2)
        xhat = torch.addcmul((-rm * s).view(shape), x, s.view(shape))
        ctx.save_for_backward(xhat if gam is not None and ctx.needs_input_grad[3] else None, s, gam)
        if gam is None:
            return xhat if bet is None else xhat + bet.view(bet.shape[0], -1, *shape[2:])
        gv = gam.reshape(gam.shape[0], -1, *shape[2:])
        if bet is None:
            return xhat * gv
        return torch.addcmul(bet.reshape(bet.shape[0], -1, *shape[2:]), xhat, gv)

    @staticmethod
    def backward(ctx, g):
        xhat, s, gam = ctx.saved_tensors
        b, ch = g.shape[0], g.shape[1]
        gx = gg = gbt = None
        tail = (1,) * (g.ndim - 2)
        if ctx.needs_input_grad[0]:
            scale = s if gam is None else gam * s
            gx = g * scale.reshape(-1, ch, *tail)
        g3 = g.reshape(b, ch, -1)
        sp = g3.shape[2]
        if ctx.needs_input_grad[3]:
            gg = torch.linalg.vecdot(xhat.reshape(b, ch, -1), g3) if sp > 1 else (xhat * g).reshape(b, ch)
        if ctx.needs_input_grad[4]:  # small spatial extents: a GEMV beats the reduction kernel
            gbt = g3.sum(-1) if sp > 16 else (g3 @ torch.ones(sp, dtype=g.dtype, device=g.device) if sp > 1 else g3[:, :, 0])
        return gx, None, None, gg, gbt


def per_sample_reference(f, w: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
    """Per-sample Jacobians ``(b, C, p)`` by ``vmap(jacrev)`` (C reverse passes; the reference)."""

    def one(w_, x):
        return f(w_, x.unsqueeze(0))[0]

    return vmap(jacrev(one), in_dims=(None, 0))(w, xb)


class PerSampleGradients:
    """``J_iᵀ S_i`` for every sample of a batch (see the module doc).

    Parameters
    ----------
    peft : PeftSet
    w : linearization point (default: the model's current PEFT vector)
    check : compare with ``vmap(jacrev)`` on the first batch (a few samples) and fall back
        to ``vmap`` for every parameter if they disagree (logged with the reason)
    fallback_only : skip the rules (every parameter through ``vmap``); for tests and benchmarks

    After the first call, ``plan`` maps each PEFT tensor name to the rule that computed it
    (``"batchnorm"``, ``"linear"``, ``"prompt"``, ``"fallback"``, ``"unused"``), ``ok`` says
    whether the rules passed the check and ``reason`` why the engine runs as it does.
    """

    def __init__(self, peft, *, w: torch.Tensor | None = None, check: bool = True, fallback_only: bool = False):
        self.peft = peft
        w = peft.vector() if w is None else peft.check_vector(w, name="linearization point w̄")
        self.w = w.detach().clone()
        self.p = peft.p
        self.f = peft.functional()
        self.frozen = peft.frozen()
        self.offsets = [0]
        for m in peft.numels:
            self.offsets.append(self.offsets[-1] + m)
        self.prompts = {}  # name of the prompts tensor -> its PromptedViT
        for mname, mod in peft.model.named_modules():
            name = f"{mname}.prompts" if mname else "prompts"
            if isinstance(mod, PromptedViT) and name in peft.names:
                self.prompts[name] = mod
        self.ok: bool | None = None if check else True
        self.reason = "not run yet"
        self.plan: dict[str, str] = {}
        if fallback_only:
            self.ok, self.reason = False, "fallback_only=True requested"

    # ------------------------------------------------------------------ public
    def products(self, xb: torch.Tensor, S, *, out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(R, f)``: ``R[i, j] = J_iᵀ S_i[:, j]`` (b, k, p) and the outputs ``f(x; w)`` (b, C).

        ``S`` is a tensor (b, C, k) or a callable ``S(f) -> (b, C, k)`` given the (detached)
        outputs of the same forward pass (e.g. the CE factors or a Monte-Carlo label draw).
        ``out``: a (b, k, p) tensor to write ``R`` into (e.g. a slice of a cached ``J``).
        """
        if self.ok is None:
            self.check(xb)
        R, f = self._rules(xb, S, out) if self.ok else self._fallback_all(xb, S)
        if out is not None and R.data_ptr() != out.data_ptr():
            out.copy_(R)
            R = out
        return R, f

    def jacobian(self, xb: torch.Tensor, S=None, *, out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The exact per-sample Jacobians ``(b, C, p)`` (``S_i = I_C``; ``S`` overrides, e.g. ``L_i`` for CE) and the outputs."""
        return self.products(xb, _identity if S is None else S, out=out)

    def check(self, xb: torch.Tensor, *, samples: int = 3, seed: int = 0) -> bool:
        """Compare the rules with ``torch.func`` on the first ``samples`` samples of ``xb``.

        The reference is ``vmap(jacrev)`` contracted with 3 random cotangents, computed as a ``vmap``
        over samples of a ``vjp`` vmapped over the cotangents (``J_iᵀ S_i`` without forming the
        ``C × p`` per-sample Jacobian: a 1,000-class head would make that ``samples · C · p`` floats).
        """
        xs = xb[:samples]
        with torch.no_grad():
            C = int(self.f(self.w, xs[:1]).shape[-1])
        g = torch.Generator(device="cpu").manual_seed(seed)
        S = torch.randn(xs.shape[0], C, min(C, 3), generator=g, dtype=torch.float64).to(self.w)
        ref = self._fallback_all(xs, S)[0]
        scale = max(float(ref.abs().max()), 1e-300)
        try:
            got, _ = self._rules(xs, S)
            err = float((got - ref).abs().max()) / scale
        except RuntimeError as e:  # e.g. a model that runs its own autograd inside the forward
            err, why = float("inf"), f"{type(e).__name__}: {e}"
        else:
            why = f"max rel. diff {err:.1e} vs torch.func vmap(vjp)"
        self.ok = err <= 1e3 * torch.finfo(self.w.dtype).eps
        if not self.ok and math.isfinite(err) and self.w.dtype != torch.float64:
            # two float32 computations of the same network can disagree by far more than rounding where a ReLU input or a
            # max-pool window sits at a tie (a constant image background makes whole regions tie at once: measured 2.2e-3
            # on resnet18 / Fashion-MNIST): the same comparison in float64 tells a wrong rule from a kink
            err64 = self._check64(xs, S)
            if err64 <= 1e3 * torch.finfo(torch.float64).eps:
                self.ok = True
                why = (f"max rel. diff {err:.1e} in {str(self.w.dtype).replace('torch.', '')} (rounding at ReLU / max-pool "
                       f"ties), {err64:.1e} in float64 vs torch.func vmap(vjp)")
            else:
                why += f"; {err64:.1e} in float64"
        counts = {r: sum(v == r for v in self.plan.values()) for r in RULES}
        self.reason = (f"per-sample rules {'used' if self.ok else 'disabled, vmap fallback for every parameter'} ({why}; "
                       + ", ".join(f"{r}: {c}" for r, c in counts.items() if c) + " tensors)")
        (log.info if self.ok else log.warning)("fastntk: %s", self.reason)
        if not self.ok:
            self.plan = {n: "fallback" for n in self.peft.names}
        return self.ok

    def _check64(self, xs: torch.Tensor, S: torch.Tensor) -> float:
        """The check's relative difference with every tensor in float64 (the model's own tensors are not touched: the
        frozen part is passed to ``functional_call`` as float64 copies); ``inf`` if the model cannot run in float64."""
        saved = self.w, self.frozen, self.f, self.plan
        try:
            self.frozen = {k: (v.double() if v.is_floating_point() else v) for k, v in saved[1].items()}
            self.w = saved[0].double()
            self.f = self.peft.functional(self.frozen)
            x64, S64 = xs.double(), S.double()
            ref = self._fallback_all(x64, S64)[0]
            got = self._rules(x64, S64)[0]
            return float((got - ref).abs().max()) / max(float(ref.abs().max()), 1e-300)
        except RuntimeError as e:
            log.info("fastntk: the per-sample float64 check could not run (%s: %s)", type(e).__name__, e)
            return float("inf")
        finally:
            self.w, self.frozen, self.f, self.plan = saved

    # ------------------------------------------------------------------ rules
    def _rules(self, xb, S, dst=None):
        peft, b = self.peft, xb.shape[0]
        wl = self.w.detach().requires_grad_(True)
        chunks = [c.view(s) for c, s in zip(torch.split(wl, peft.numels), peft.shapes)]
        tensors = dict(self.frozen)
        tensors.update(zip(peft.names, chunks))
        ids = {id(c): i for i, c in enumerate(chunks)}
        cap = _Capture(ids, b)
        copies = {}  # prompts name -> per-sample copy (b, layers, k, D)
        for name, mod in self.prompts.items():
            copies[name] = mod._per_sample_prompts = tensors[name].unsqueeze(0).expand(b, *tensors[name].shape)
        try:
            with torch.enable_grad(), eval_mode(peft.model), cap:
                out = torch.func.functional_call(peft.model, tensors, (xb,), strict=False)
        finally:
            for mod in self.prompts.values():
                mod.__dict__.pop("_per_sample_prompts", None)
        if out.ndim != 2 or out.shape[0] != b:
            raise ShapeError(f"the model must return logits of shape (batch, C), got {tuple(out.shape)}")
        Sb = _resolve(S, out.detach(), b)
        k = Sb.shape[2]
        # which rule computes each tensor
        covered = {}
        for rec in cap.records:
            for i in rec[1:3]:
                if i is not None:
                    covered[i] = rec[0]
        plan = {}
        for i, n in enumerate(peft.names):
            if n in copies:
                plan[n] = "prompt"
            elif i in cap.other:
                plan[n] = "fallback"
            else:
                plan[n] = covered.get(i, "unused")
        self.plan = plan
        # autograd is asked for ∂⟨S_j, f⟩ at these tensors; each maps to (parameter index, per-sample rule)
        targets = [(pc, [(peft.names.index(name), _flat)]) for name, pc in copies.items()]
        for rule, wi, bi, t1, t2 in cap.records:
            use = [i is not None and plan[peft.names[i]] == rule for i in (wi, bi)]
            if rule == "batchnorm":
                targets += [(t, [(i, _flat)]) for t, i, u in ((t1, wi, use[0]), (t2, bi, use[1])) if u]
            elif any(use):
                targets.append((t2, [(i, fn) for i, fn, u in ((wi, _linear_weight(t1), use[0]), (bi, _linear_bias, use[1])) if u]))
        if dst is not None and dst.shape == (b, k, self.p) and dst.dtype == self.w.dtype:
            R = dst
        else:
            R = torch.empty(b, k, self.p, dtype=self.w.dtype, device=self.w.device)
        off = self.offsets
        ins = [t for t, _ in targets]
        fb = [i for i, n in enumerate(peft.names) if plan[n] == "fallback"]
        for j in range(k):
            written = set(fb)  # a tensor's first contribution is copied, later ones (shared use) added
            grads = torch.autograd.grad(out, ins, grad_outputs=Sb[:, :, j], retain_graph=j < k - 1, allow_unused=True) \
                if ins and any(t.requires_grad for t in ins) else [None] * len(ins)
            for (_, rules), g in zip(targets, grads):
                for i, fn in rules if g is not None else ():
                    dst_ij = R[:, j, off[i] : off[i + 1]]
                    fn(g, dst_ij, i in written)
                    written.add(i)
            for i in set(range(len(peft.names))) - written:  # unused by this column (zero gradient)
                R[:, j, off[i] : off[i + 1]].zero_()
        if fb:
            idx = torch.cat([torch.arange(off[i], off[i + 1], device=self.w.device) for i in fb])
            R[:, :, idx] = self._fallback(xb, Sb, idx)
        return R, out.detach()

    # ------------------------------------------------------------------ fallback
    def _fallback(self, xb, Sb, idx):
        """``(J_iᵀ S_i)`` restricted to the coordinates ``idx``: vmap over samples of a vjp."""
        f, w0 = self.f, self.w.detach()

        def one(x, s):
            def g(wF):
                return f(w0.index_copy(0, idx, wF), x.unsqueeze(0))[0]

            _, fn = vjp(g, w0[idx])
            return vmap(fn)(s.T)[0]

        return vmap(one)(xb, Sb).detach()

    def _fallback_all(self, xb, S):
        with torch.no_grad():
            out = self.f(self.w, xb)
        Sb = _resolve(S, out, xb.shape[0])
        f = self.f

        def one(x, s):
            _, fn = vjp(lambda w_: f(w_, x.unsqueeze(0))[0], self.w)
            return vmap(fn)(s.T)[0]

        self.plan = {n: "fallback" for n in self.peft.names}
        return vmap(one)(xb, Sb).detach(), out


def _put(dst: torch.Tensor, val: torch.Tensor, add: bool) -> None:
    dst.add_(val) if add else dst.copy_(val)


def _flat(g: torch.Tensor, dst: torch.Tensor, add: bool) -> None:
    """Gradient at a per-sample copy (BN γ / β, prompts): already per sample."""
    _put(dst, g.reshape(g.shape[0], -1), add)


def _linear_weight(a: torch.Tensor) -> Callable:
    """Per-sample ``∂/∂W = Σ_tokens g ⊗ a`` of ``z = a Wᵀ + b`` for the layer input ``a``, written into ``dst``."""
    a3 = a.reshape(a.shape[0], -1, a.shape[-1])

    def rule(g, dst, add):
        b, o, i = g.shape[0], g.shape[-1], a3.shape[-1]
        if a3.shape[1] == 1:  # one token (a head): the outer product straight into the destination
            g3, d3 = g.reshape(b, o, 1), dst.view(b, o, i)
            d3.addcmul_(g3, a3) if add else torch.mul(g3, a3, out=d3)
        else:
            _put(dst, torch.einsum("bto,bti->boi", g.reshape(b, -1, o), a3).reshape(b, -1), add)

    return rule


def _linear_bias(g: torch.Tensor, dst: torch.Tensor, add: bool) -> None:
    _put(dst, g.reshape(g.shape[0], -1, g.shape[-1]).sum(1), add)


def _identity(out: torch.Tensor) -> torch.Tensor:
    b, C = out.shape
    return torch.eye(C, dtype=out.dtype, device=out.device).expand(b, C, C)


def _resolve(S, out, b) -> torch.Tensor:
    Sb = S(out) if callable(S) else S
    if not isinstance(Sb, torch.Tensor) or Sb.ndim != 3 or Sb.shape[0] != b or Sb.shape[1] != out.shape[1]:
        got = tuple(Sb.shape) if isinstance(Sb, torch.Tensor) else type(Sb).__name__
        raise ShapeError(f"cotangents S must have shape (batch={b}, C={out.shape[1]}, k), got {got}")
    if Sb.shape[2] < 1:
        raise InvalidInputError("cotangents S need at least one column (k >= 1)")
    return Sb.to(dtype=out.dtype)

