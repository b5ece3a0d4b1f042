"""PEFT parameter sets: which parameters are the unknowns ``w`` of the NTK.

A :class:`PeftSet` wraps a model and splits its parameters into the PEFT
parameters ``w ∈ R^p`` (docs/theory.md notation) and everything else, which stays
frozen.  It gives

* the named PEFT tensors (:meth:`PeftSet.params`) and ``p``;
* :meth:`flatten` / :meth:`unflatten` between the dict and one vector;
* a pure function ``f(w, x) -> logits`` (:meth:`functional`), built with
  :func:`torch.func.functional_call`, the model always evaluated in eval mode
  (BatchNorm uses its running statistics and nothing is mutated);
* :meth:`write` to copy a vector back into the model.

Three sets are provided:

* :class:`BatchNormPeft` -- the affine weight and bias of every BatchNorm layer
  (timm ``resnet18``: p = 9,600), optionally the classifier head;
* :class:`PromptPeft` -- visual prompt tuning for a timm ``VisionTransformer``:
  ``k`` prompt tokens inserted after the class/register tokens, shallow (first
  block) or deep (fresh prompts for every block), optionally the head;
* :class:`NamedPeft` -- any parameters chosen by glob patterns on their names.
"""
from __future__ import annotations

import contextlib
import fnmatch
import math
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call

from .errors import DeviceError, DTypeError, PeftError, ShapeError

__all__ = [
    "PeftSet",
    "BatchNormPeft",
    "PromptPeft",
    "PromptedViT",
    "NamedPeft",
    "make_peft",
    "disable_fused_attention",
    "eval_mode",
]


def disable_fused_attention(model: nn.Module) -> int:
    """Turn off timm's fused (SDPA) attention in every module of ``model``.

    ``F.scaled_dot_product_attention`` has no forward-mode AD, which the JVPs of
    fastntk need.  timm's attention modules carry a ``fused_attn`` flag; the
    explicit softmax path computes the same function.  Returns how many modules
    were switched.
    """
    count = 0
    for m in model.modules():
        if hasattr(m, "fused_attn") and isinstance(getattr(m, "fused_attn"), bool):
            if m.fused_attn:
                m.fused_attn = False
                count += 1
    return count


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Put ``model`` in eval mode for the duration, then restore every module's flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, t in flags:
            m.training = t


def _find_head(model: nn.Module) -> str | None:
    """Name prefix of the classifier head (timm ``get_classifier`` or a last Linear)."""
    head = None
    if hasattr(model, "get_classifier"):
        try:
            head = model.get_classifier()
        except Exception:  # pragma: no cover - exotic models
            head = None
    if isinstance(head, nn.Module) and any(True for _ in head.parameters()):
        for name, m in model.named_modules():
            if m is head:
                return name
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last = name
    return last


class PeftSet:
    """Base class: a model plus the ordered names of its PEFT tensors.

    Subclasses choose ``names``.  The order of ``names`` fixes the layout of
    the flat vector ``w``: ``w = concat(t.reshape(-1) for t in params)``.
    """

    def __init__(self, model: nn.Module, names: Sequence[str], *, kind: str = "named"):
        if not isinstance(model, nn.Module):
            raise PeftError(f"expected a torch.nn.Module, got {type(model).__name__}")
        if len(names) == 0:
            raise PeftError(
                f"the {kind} PEFT set selects no parameter of {type(model).__name__}; "
                "choose another PEFT kind or pass name patterns that match (see model.named_parameters())"
            )
        disable_fused_attention(model)
        self.model = model
        self.kind = kind
        params = dict(model.named_parameters())
        missing = [n for n in names if n not in params]
        if missing:
            raise PeftError(f"parameters not found in the model: {missing[:5]}")
        self.names: list[str] = list(names)
        self.shapes: list[torch.Size] = [params[n].shape for n in self.names]
        self.numels: list[int] = [params[n].numel() for n in self.names]
        self.p: int = int(sum(self.numels))
        ref = params[self.names[0]]
        self.dtype: torch.dtype = ref.dtype
        self.device: torch.device = ref.device
        for n in self.names:
            if params[n].dtype != self.dtype or params[n].device != self.device:
                raise DTypeError("all PEFT parameters must share one dtype and device; call model.to(...) first")

    # ------------------------------------------------------------------ dicts and vectors
    def params(self) -> dict[str, torch.Tensor]:
        """The current PEFT tensors (detached views of the model's parameters)."""
        params = dict(self.model.named_parameters())
        return {n: params[n].detach() for n in self.names}

    def frozen(self) -> dict[str, torch.Tensor]:
        """Every other parameter and every buffer, detached (the frozen part of θ)."""
        peft = set(self.names)
        out = {n: t.detach() for n, t in self.model.named_parameters() if n not in peft}
        out.update({n: b for n, b in self.model.named_buffers()})
        return out

    def vector(self) -> torch.Tensor:
        """The PEFT parameters as one vector ``w ∈ R^p`` (a copy)."""
        return self.flatten(self.params())

    def flatten(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Dict of PEFT tensors -> vector of length ``p`` (order of ``self.names``)."""
        try:
            parts = [tensors[n].reshape(-1) for n in self.names]
        except KeyError as e:
            raise ShapeError(f"missing PEFT tensor {e.args[0]!r} in the dict to flatten") from None
        for n, t, s in zip(self.names, parts, self.numels):
            if t.numel() != s:
                raise ShapeError(f"PEFT tensor {n!r} has {t.numel()} entries, expected {s}")
        return torch.cat(parts)

    def unflatten(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        """Vector of length ``p`` -> dict of views shaped like the PEFT tensors."""
        self.check_vector(w, check_dtype=False)
        chunks = torch.split(w, self.numels)
        return {n: c.view(s) for n, c, s in zip(self.names, chunks, self.shapes)}

    def check_vector(self, w, *, name: str = "w", check_dtype: bool = True) -> torch.Tensor:
        """Validate a PEFT vector: a torch tensor of shape ``(p,)``, same dtype/device."""
        if not isinstance(w, torch.Tensor):
            raise DTypeError(f"{name} must be a torch.Tensor of shape ({self.p},), got {type(w).__name__}")
        if w.ndim != 1 or w.shape[0] != self.p:
            raise ShapeError(f"{name} must have shape ({self.p},) (p of this PEFT set), got {tuple(w.shape)}")
        if check_dtype and w.dtype != self.dtype:
            raise DTypeError(f"{name} has dtype {w.dtype}, the PEFT parameters are {self.dtype}; convert with .to({self.dtype})")
        if w.device != self.device:
            raise DeviceError(f"{name} is on {w.device}, the model on {self.device}; move it with .to('{self.device}')")
        return w

    @torch.no_grad()
    def write(self, w: torch.Tensor) -> None:
        """Copy the vector ``w`` into the model's PEFT parameters (in place)."""
        self.check_vector(w)
        if not torch.isfinite(w).all():
            from .errors import NumericalError

            raise NumericalError("refusing to write a PEFT vector with NaN/Inf entries into the model")
        params = dict(self.model.named_parameters())
        for n, t in self.unflatten(w).items():
            params[n].copy_(t)

    def requires_grad_(self) -> None:
        """Make exactly the PEFT parameters trainable (for fine-tuning)."""
        peft = set(self.names)
        for n, t in self.model.named_parameters():
            t.requires_grad_(n in peft)

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = dict(self.model.named_parameters())
        return [params[n] for n in self.names]

    # ------------------------------------------------------------------ the pure function
    def functional(self, frozen: Mapping[str, torch.Tensor] | None = None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Return the pure function ``f(w, x) -> logits``.

        ``w`` is the flat PEFT vector (length ``p``), ``x`` a batch of inputs;
        the frozen tensors are captured now (pass ``frozen`` to override).  The
        model is run in eval mode and its modes are restored afterwards.  The
        function is safe under ``torch.func`` transforms (vmap / jvp / vjp).
        """
        frozen = dict(self.frozen() if frozen is None else frozen)
        model = self.model
        names, numels, shapes = self.names, self.numels, self.shapes

        def f(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            chunks = torch.split(w, numels)
            tensors = dict(frozen)
            for n, c, s in zip(names, chunks, shapes):
                tensors[n] = c.view(s)
            with eval_mode(model):
                return functional_call(model, tensors, (x,), strict=False)

        return f

    def __call__(self, x: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of the model at PEFT vector ``w`` (default: current), eval mode, no grad."""
        w = self.vector() if w is None else w
        with torch.no_grad():
            return self.functional()(w, x)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, p={self.p}, tensors={len(self.names)}, dtype={self.dtype})"


class BatchNormPeft(PeftSet):
    """The affine weight and bias of every BatchNorm layer (+ optionally the head).

    Works for any torch / timm CNN (``nn.modules.batchnorm._BatchNorm``
    subclasses, timm's ``BatchNormAct2d`` included).  timm ``resnet18`` gives
    p = 9,600 without the head.
    """

    def __init__(self, model: nn.Module, *, include_head: bool = False):
        from torch.nn.modules.batchnorm import _BatchNorm

        names: list[str] = []
        for mname, m in model.named_modules():
            if isinstance(m, _BatchNorm) and m.affine:
                prefix = f"{mname}." if mname else ""
                names += [prefix + "weight", prefix + "bias"]
        if not names:
            raise PeftError(
                f"{type(model).__name__} has no affine BatchNorm layer, so the BatchNorm PEFT set is empty; "
                "use PromptPeft for a ViT or NamedPeft(model, patterns) for other parameters"
            )
        if include_head:
            head = _find_head(model)
            if head is None:
                raise PeftError("include_head=True but no classifier head (get_classifier() or nn.Linear) was found")
            names += [n for n, _ in model.named_parameters() if n.startswith(head + ".") and n not in names]
        super().__init__(model, names, kind="batchnorm")
        self.include_head = include_head


class NamedPeft(PeftSet):
    """Parameters selected by glob patterns on their names (``fnmatch``).

    Example: ``NamedPeft(vit, ["*norm*.weight", "*norm*.bias"])`` (LayerNorm
    affine), ``NamedPeft(model, ["head.*"])`` (the head alone).
    """

    def __init__(self, model: nn.Module, patterns: str | Iterable[str]):
        if isinstance(patterns, str):
            patterns = [patterns]
        patterns = list(patterns)
        if not patterns:
            raise PeftError("NamedPeft needs at least one name pattern")
        names = [n for n, _ in model.named_parameters() if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
        if not names:
            raise PeftError(f"no parameter name of {type(model).__name__} matches {patterns}; see model.named_parameters()")
        super().__init__(model, names, kind="named")
        self.patterns = patterns


class PromptedViT(nn.Module):
    """A timm ``VisionTransformer`` with ``k`` visual prompt tokens (VPT, Jia et al. 2022).

    The prompts are inserted after the class / register tokens (timm's
    ``num_prefix_tokens``) and before the patch tokens.  Shallow: one set of
    prompts enters the first block and flows through the network.  Deep: the
    prompt tokens are replaced by a fresh set before every block.  The prompt
    tokens are dropped before the final pooling only through timm's own head
    (``forward_head``), which pools the class token (or averages tokens).
    """

    def __init__(self, vit: nn.Module, num_prompts: int, *, deep: bool = False, seed: int = 0, init_scale: float | None = None):
        super().__init__()
        for attr in ("patch_embed", "blocks", "norm", "forward_head", "num_prefix_tokens"):
            if not hasattr(vit, attr):
                raise PeftError(
                    f"{type(vit).__name__} lacks '{attr}': PromptPeft needs a timm VisionTransformer "
                    "(patch_embed, _pos_embed, blocks, norm, forward_head, num_prefix_tokens)"
                )
        if int(num_prompts) < 1:
            raise PeftError(f"num_prompts must be >= 1, got {num_prompts}")
        self.vit = vit
        self.num_prompts = int(num_prompts)
        self.deep = bool(deep)
        dim = int(getattr(vit, "embed_dim", vit.blocks[0].norm1.normalized_shape[0]))
        layers = len(vit.blocks) if deep else 1
        ref = next(vit.parameters())
        g = torch.Generator().manual_seed(int(seed))
        # VPT init: uniform(-v, v), v = sqrt(6 / (3 * patch_area + dim))
        if init_scale is None:
            ps = getattr(vit.patch_embed, "patch_size", (16, 16))
            area = int(ps[0]) * int(ps[1]) if isinstance(ps, (tuple, list)) else int(ps) ** 2
            init_scale = math.sqrt(6.0 / float(3 * area + dim))
        init = (torch.rand(layers, self.num_prompts, dim, generator=g, dtype=torch.float64) * 2 - 1) * init_scale
        self.prompts = nn.Parameter(init.to(dtype=ref.dtype, device=ref.device))
        disable_fused_attention(vit)

    def _insert(self, x: torch.Tensor, layer: int, replace: bool) -> torch.Tensor:
        npt = self.vit.num_prefix_tokens
        per_sample = self.__dict__.get("_per_sample_prompts")  # (b, layers, k, D), set by operators.persample
        pr = per_sample[:, layer] if per_sample is not None else self.prompts[layer].unsqueeze(0).expand(x.shape[0], -1, -1)
        if replace:
            return torch.cat([x[:, :npt], pr, x[:, npt + self.num_prompts :]], dim=1)
        return torch.cat([x[:, :npt], pr, x[:, npt:]], dim=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        vit = self.vit
        x = vit.patch_embed(x)
        x = vit._pos_embed(x)
        if hasattr(vit, "patch_drop"):
            x = vit.patch_drop(x)
        if hasattr(vit, "norm_pre"):
            x = vit.norm_pre(x)
        x = self._insert(x, 0, replace=False)
        for i, blk in enumerate(vit.blocks):
            if self.deep and i > 0:
                x = self._insert(x, i, replace=True)
            x = blk(x)
        return vit.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit.forward_head(self.forward_features(x))


class PromptPeft(PeftSet):
    """Visual prompt tuning on a timm ViT: the prompts (and optionally the head) are ``w``.

    ``PromptPeft(vit, num_prompts=k, deep=False, seed=0)`` wraps ``vit`` into a
    :class:`PromptedViT` available as ``.model`` (train and evaluate that one);
    prompt init is reproducible from ``seed``.  ``p = layers·k·D`` (+ head).
    """

    def __init__(self, vit: nn.Module, num_prompts: int = 4, *, deep: bool = False, seed: int = 0, include_head: bool = True):
        if isinstance(vit, PromptedViT):
            wrapped = vit
        else:
            if not (hasattr(vit, "blocks") and hasattr(vit, "patch_embed")):
                raise PeftError(
                    f"prompts need a timm VisionTransformer; {type(vit).__name__} has no patch_embed/blocks. "
                    "Use BatchNormPeft for a CNN"
                )
            wrapped = PromptedViT(vit, num_prompts, deep=deep, seed=seed)
        names = ["prompts"]
        if include_head:
            head = _find_head(wrapped.vit)
            if head is None:
                raise PeftError("include_head=True but the ViT has no classifier head")
            names += ["vit." + n for n, _ in wrapped.vit.named_parameters() if n.startswith(head + ".")]
        super().__init__(wrapped, names, kind="prompt")
        self.num_prompts = wrapped.num_prompts
        self.deep = wrapped.deep
        self.include_head = include_head


def make_peft(model: nn.Module, kind: str, **kwargs) -> PeftSet:
    """Factory: ``kind`` in {"batchnorm", "bn", "prompt", "vpt", "named"}."""
    k = kind.lower()
    if k in ("batchnorm", "bn"):
        return BatchNormPeft(model, **kwargs)
    if k in ("prompt", "vpt"):
        return PromptPeft(model, **kwargs)
    if k == "named":
        return NamedPeft(model, **kwargs)
    raise PeftError(f"unknown PEFT kind {kind!r}; choose 'batchnorm', 'prompt' or 'named'")
