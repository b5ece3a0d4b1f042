"""Input handling shared by every unlearning entry point: data sets, model state, scalars, targets.

Every check raises a typed :mod:`fastntk.errors` exception before any work, and none of them changes the model.
"""
from __future__ import annotations

import hashlib
import math

import torch

from ..errors import DataError, ForgetSetError, InvalidInputError, ModelStateError, NumericalError, PeftError

__all__ = ["xy", "row_keys", "check_overlap", "check_labels", "check_model", "check_scalar", "targets", "check_source",
           "linearization_point", "num_outputs"]


def xy(data, name: str):
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


def row_keys(X: torch.Tensor, chunk: int = 4096) -> list[bytes]:
    """A 16-byte digest of every input's exact bytes (chunked: no full copy of ``X``)."""
    keys: list[bytes] = []
    for a in range(0, X.shape[0], chunk):
        block = X[a : a + chunk].detach().cpu().contiguous().reshape(min(chunk, X.shape[0] - a), -1).numpy()
        keys += [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in block]
    return keys


def check_overlap(X_r: torch.Tensor, X_f: torch.Tensor) -> None:
    """Forget samples must be distinct and absent from the retain set (compared by exact input bytes)."""
    kf = row_keys(X_f)
    if len(set(kf)) != len(kf):
        raise ForgetSetError("the forget set contains the same input twice; pass each sample once "
                             "(if the data holds genuine duplicate inputs, pass check_overlap=False)")
    kr = set(row_keys(X_r))
    both = [i for i, k in enumerate(kf) if k in kr]
    if both:
        raise ForgetSetError(f"{len(both)} forget sample(s) also appear in the retain set (e.g. forget index {both[0]}); "
                             "retain and forget must be disjoint (if the data holds genuine duplicate inputs, pass check_overlap=False)")


def check_labels(y: torch.Tensor, C: int, name: str):
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= C):
        raise DataError(f"{name} labels must lie in [0, {C}) (the model has {C} outputs); got range [{int(y.min())}, {int(y.max())}]")


def check_model(model, peft):
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


def check_scalar(name, value, *, positive=False, nonneg=False):
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


def targets(y: torch.Tensor, C: int, scale: float, dtype, device):
    return (torch.nn.functional.one_hot(y.to(device), C).to(dtype) * scale).reshape(-1)



def check_source(src, n: int, peft, who: str, *, need_cached: bool = False) -> None:
    """A Jacobian source passed in by the caller must describe the same data and parameters."""
    if not hasattr(src, "jtmat") or not hasattr(src, "outputs"):
        raise InvalidInputError(f"{who}: source must be a Jacobian source from fastntk.operators.make_jacobian, got {type(src).__name__}")
    if int(src.n) != int(n) or int(src.p) != int(peft.p):
        raise InvalidInputError(f"{who}: source has n = {src.n}, p = {src.p}; the training set has n = {n} and the PEFT set p = {peft.p}")
    if getattr(src, "loss", "mse") != "mse":
        raise InvalidInputError(f"{who}: source must be built with loss='mse', got {src.loss!r}")
    if need_cached and not hasattr(src, "J"):
        raise InvalidInputError(f"{who}: source must be cached (strategy='cached'), got strategy {getattr(src, 'strategy', '?')!r}")


def linearization_point(peft, linearize_at: str, w0, w_trained: torch.Tensor) -> torch.Tensor:
    """``w̄``: ``w0`` (validated) for ``linearize_at="w0"``, else a copy of the trained weights."""
    if linearize_at != "w0":
        return w_trained.clone()
    if w0 is None:
        raise InvalidInputError("linearize_at='w0' needs w0, the PEFT vector before fine-tuning (or use linearize_at='trained')")
    peft.check_vector(w0, name="w0")
    if not torch.isfinite(w0).all():
        raise NumericalError("w0 contains NaN/Inf")
    return w0.detach().clone()


def num_outputs(peft, w: torch.Tensor, X: torch.Tensor) -> int:
    """``C``: the number of outputs of the model at ``w`` (one forward pass on one input)."""
    with torch.no_grad():
        return int(peft.functional()(w, X[:1].to(peft.device, peft.dtype)).shape[1])
