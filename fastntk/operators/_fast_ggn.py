"""Faster per-batch Gauss-Newton products ``Σ_{i∈batch} J_iᵀ J_i V`` (MSE case).

Every function here has the signature ``gmat_batch_*(f, w, xb, V) -> (k, p)``:

* ``f(w, x) -> (b, C)`` a pure function (``PeftSet.functional()``),
* ``w`` the linearization point (p,), ``xb`` one batch of inputs,
* ``V`` (p, k) the vectors; the result is ``(J_b V)`` pulled back, ``(J_bᵀ J_b V)ᵀ``
  of shape (k, p) -- the layout of ``StreamingJacobian._gmat_batch``.

Implementations (all equal to the reference to rounding, see ``tests/test_fast_ggn.py``):

``gmat_batch_reference``
    The current ``StreamingJacobian._gmat_batch``: ``vjp`` of a vmapped ``jvp``; one
    primal forward shared by the k tangents and by the reverse pass.
``gmat_batch_affine_bn``
    The same (no ``vmap`` for k = 1) under two rewrites, active only while it runs:
    every eval-mode ``F.batch_norm`` becomes the per-channel affine map ``y = x·s + t``
    (``s = γ/√(σ²+ε)``, ``t = β − μ s``; mathematically identical in eval mode; the
    forward-mode rule of ``native_batch_norm`` costs ~8 elementwise passes over each
    activation, the affine form 2), and ``conv2d`` goes through a custom Function whose
    JVP skips the convolution with the (materialized, zero) tangent of a frozen weight
    that torch's ``convolution_jvp`` computes: 39 instead of 58 convolutions per
    resnet18 tangent pass.  Models without BN / conv2d are unaffected.
``gmat_batch_jacobian``
    Builds the per-sample Jacobian of the batch, (b, C, p), with ``vmap(jacrev)``
    (C reverse passes, whatever k), then two GEMMs.  Cost independent of k: wins when
    k is large compared with C.
``gmat_batch_dual``
    ``torch.autograd.forward_ad`` dual tensors: primal + tangent in one forward while
    autograd records the primal graph, then one ``autograd.grad`` with
    ``grad_outputs = J v``.  One vector per forward (a Python loop over the k columns).
``gmat_batch``
    The default: ``gmat_batch_affine_bn`` for ``k < jac_threshold`` (default C/2, read
    from the output), ``gmat_batch_jacobian`` otherwise, both under the affine-BN rewrite.
"""
from __future__ import annotations

import contextlib

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch.func import jacrev, jvp, vjp, vmap
from torch.overrides import TorchFunctionMode

__all__ = [
    "affine_batchnorm",
    "gmat_batch",
    "gmat_batch_reference",
    "gmat_batch_affine_bn",
    "gmat_batch_jacobian",
    "gmat_batch_dual",
    "IMPLEMENTATIONS",
]


# ---------------------------------------------------------------------------- eval BN as affine
def _bn_args(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    return input, running_mean, running_var, weight, bias, training, eps


def _pair(x):
    return list(x) if isinstance(x, (tuple, list)) else [int(x), int(x)]


class _Conv2dLinearJvp(torch.autograd.Function):
    """``conv2d`` whose forward-mode rule computes only the convolutions it needs.

    torch's built-in rule (``convolution_jvp``) evaluates ``conv(x_t, W) + conv(x, W_t)``
    with a zero ``W_t`` materialized for a frozen weight: one wasted convolution per
    layer in every tangent pass.  Here ``W_t`` / ``b_t`` enter only when defined.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, W, b, stride, padding, dilation, groups):
        return torch.conv2d(x, W, b, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, W, b, stride, padding, dilation, groups = inputs
        ctx.save_for_backward(x, W)
        ctx.save_for_forward(x, W)
        ctx.conf = (stride, padding, dilation, groups)
        ctx.has_bias = b is not None
        ctx.set_materialize_grads(False)  # frozen W: W_t arrives as None, not zeros

    @staticmethod
    def jvp(ctx, x_t, W_t, b_t, *_):
        x, W = ctx.saved_tensors
        st, pa, di, gr = ctx.conf
        out = None
        if x_t is not None:
            out = torch.conv2d(x_t, W, None, st, pa, di, gr)
        if W_t is not None:
            o2 = torch.conv2d(x, W_t, b_t, st, pa, di, gr)
            out = o2 if out is None else out + o2
        elif b_t is not None:
            o2 = b_t.view(1, -1, 1, 1)
            out = o2.expand(x.shape[0], -1, *([1] * 2)) if out is None else out + o2
        return out

    @staticmethod
    def backward(ctx, g):
        if g is None:
            return (None,) * 7
        x, W = ctx.saved_tensors
        st, pa, di, gr = ctx.conf
        nx, nw, nb = ctx.needs_input_grad[:3]
        gi, gw, gb = torch.ops.aten.convolution_backward(
            g, x, W, [W.shape[0]] if ctx.has_bias else None, _pair(st), _pair(pa), _pair(di), False, [0, 0], gr,
            [nx, nw, nb and ctx.has_bias],
        )
        return gi, gw, gb, None, None, None, None


class _AffineBatchNorm(TorchFunctionMode):
    """Rewrite eval-mode ``F.batch_norm`` (running statistics) as ``x·s + t``
    and route ``conv2d`` (numeric padding) through :class:`_Conv2dLinearJvp`."""

    def __init__(self, conv: bool = True):
        super().__init__()
        self.conv = conv

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.conv and func is torch.conv2d and not kwargs and len(args) == 7 and not isinstance(args[4], str):
            return _Conv2dLinearJvp.apply(*args)
        if func is F.batch_norm:
            x, rm, rv, g, b, training, eps = _bn_args(*args, **kwargs)
            if not training and rm is not None and rv is not None and x.ndim >= 2:
                shape = (1, -1) + (1,) * (x.ndim - 2)
                s = torch.rsqrt(rv + eps)
                if g is not None:
                    s = g * s
                t = -rm * s
                if b is not None:
                    t = t + b
                return torch.addcmul(t.view(shape), x, s.view(shape))
        return func(*args, **kwargs)


def affine_batchnorm():
    """Context manager: eval-mode BatchNorm runs as a per-channel affine map (same values)."""
    return _AffineBatchNorm()


# ---------------------------------------------------------------------------- implementations
def gmat_batch_reference(f, w, xb, V):
    """``vjp`` of a vmapped ``jvp`` (the current ``StreamingJacobian._gmat_batch``, MSE)."""

    def fb(w_):
        return f(w_, xb)

    def fwd(w_):
        return vmap(lambda v: jvp(fb, (w_,), (v,)), in_dims=1, out_dims=(None, 0))(V)

    out, vjp_fn, JV = vjp(fwd, w, has_aux=True)
    return vmap(vjp_fn)(JV)[0]


def gmat_batch_affine_bn(f, w, xb, V):
    """:func:`gmat_batch_reference` with eval BatchNorm rewritten as an affine map
    (and no ``vmap`` when ``k == 1``)."""
    with _AffineBatchNorm():
        if V.shape[1] == 1:
            return _gmat_batch_single(f, w, xb, V[:, 0])[None]
        return gmat_batch_reference(f, w, xb, V)


def _gmat_batch_single(f, w, xb, v):
    """One vector: ``vjp`` of a ``jvp``, no ``vmap`` (returns (p,))."""

    def fwd(w_):
        return jvp(lambda u: f(u, xb), (w_,), (v,))

    out, vjp_fn, Jv = vjp(fwd, w, has_aux=True)
    return vjp_fn(Jv)[0]


def gmat_batch_jacobian(f, w, xb, V, *, chunk: int = 32, affine_bn: bool = True):
    """Per-sample Jacobian of the batch (``vmap(jacrev)``, ``chunk`` samples at a time), then GEMMs."""

    def one(w_, x):
        return f(w_, x.unsqueeze(0))[0]

    jac = vmap(jacrev(one), in_dims=(None, 0))
    acc = torch.zeros(V.shape[1], V.shape[0], dtype=V.dtype, device=V.device)
    ctx = _AffineBatchNorm() if affine_bn else contextlib.nullcontext()
    with ctx:
        for s in range(0, xb.shape[0], chunk):
            Jb = jac(w, xb[s : s + chunk]).detach()  # (c, C, p)
            Jb = Jb.reshape(-1, Jb.shape[-1])
            acc += (Jb.T @ (Jb @ V)).T
    return acc


def gmat_batch_dual(f, w, xb, V, *, affine_bn: bool = True):
    """Forward-mode dual tensors + one reverse pass per column of ``V``."""
    ctx = _AffineBatchNorm() if affine_bn else contextlib.nullcontext()
    rows = []
    with ctx, torch.enable_grad():
        for j in range(V.shape[1]):
            wr = w.detach().requires_grad_(True)
            with fwAD.dual_level():
                out = f(fwAD.make_dual(wr, V[:, j]), xb)
                o, t = fwAD.unpack_dual(out)
                t = t.detach()
            rows.append(torch.autograd.grad(o, wr, t)[0])
    return torch.stack(rows)


def gmat_batch(f, w, xb, V, *, jac_threshold: int | None = None, C: int | None = None, fast: bool = True,
               prefer_dual: bool = False):
    """Best per-batch ``(J_bᵀ J_b V)ᵀ`` found (MSE): (p, k) -> (k, p).

    ``k < jac_threshold`` (default ``max(2, C // 2)``, C the number of outputs):
    shared-forward ``vjp``-of-``jvp`` with eval BatchNorm as an affine map;
    otherwise the per-sample Jacobian of the batch (cost independent of k).
    """
    k = V.shape[1]
    if jac_threshold is None:
        if C is None:
            C = _num_outputs(f, w, xb)
        jac_threshold = max(2, C // 2)
    if k >= jac_threshold:
        return gmat_batch_jacobian(f, w, xb, V)
    if not fast:
        return gmat_batch_reference(f, w, xb, V)
    if prefer_dual and k == 1:  # forward-AD dual pass + one backward: the fastest single vector on BN CNNs (matvec.md)
        return gmat_batch_dual(f, w, xb, V)
    return gmat_batch_affine_bn(f, w, xb, V)


def fast_rules_agree(f, w, x, *, seed: int = 0) -> tuple[bool, float]:
    """Check the rewritten forward-mode rules against plain ``torch.func`` on a couple of samples.

    Models that nest their own forward-mode AD (e.g. an explicitly linearized
    network) can defeat the conv/BatchNorm rewrites; callers fall back to the
    reference product when this returns ``False``.
    """
    g = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn(w.shape[0], 1, generator=g, dtype=torch.float64).to(w.dtype).to(w.device)
    ref = gmat_batch_reference(f, w, x, v)
    scale = max(float(ref.norm()), 1e-300)
    try:
        err = max(float((gmat_batch_affine_bn(f, w, x, v) - ref).norm()) / scale,
                  float((gmat_batch_dual(f, w, x, v) - ref).norm()) / scale)
    except RuntimeError:  # e.g. "Nested forward mode AD is not supported" for models that run their own jvp
        return False, float("inf")
    return err <= 1e3 * torch.finfo(w.dtype).eps, err


def _num_outputs(f, w, xb) -> int:
    with torch.no_grad(), _AffineBatchNorm():
        return int(f(w, xb[:1]).shape[-1])


IMPLEMENTATIONS = {
    "reference": gmat_batch_reference,
    "affine_bn": gmat_batch_affine_bn,
    "jacobian": gmat_batch_jacobian,
    "dual": gmat_batch_dual,
    "auto": gmat_batch,
}
