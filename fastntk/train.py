"""Backbone pretraining, PEFT fine-tuning (ordinary or linearized) and prediction.

**Batch schedule** (shared by every training loop here, so that retraining
replays fine-tuning exactly): in epoch ``e`` the sample order is
``torch.randperm(n, generator=torch.Generator().manual_seed(seed + e))``;
batches are consecutive chunks of ``batch_size`` of that permutation.  With
``drop`` (indices into the data), each batch loses its dropped samples and a
batch left empty is skipped -- so ``finetune_peft(peft, D, drop=forget_idx,
seed=s)`` is the gold-standard retraining on ``D_r`` of the run
``finetune_peft(peft, D, seed=s)``.

**Objective** of :func:`finetune_peft` (docs/theory.md, sum-loss convention), over the
``m`` samples actually trained on (``m = n − |drop|``)::

    L(w) = Σ_i ℓ(f(x_i; w), y_i) + ½·ridge·‖w − w0‖²

with ``ℓ = CE`` or ``ℓ = ½‖f(x_i; w) − target_scale·onehot(y_i)‖²`` (MSE).
Each step minimises the minibatch estimate of ``L / m``:
``mean_{i∈B} ℓ_i + ridge/(2m)·‖w − w0‖²`` -- the same minimiser as ``L``,
with step sizes independent of ``m``.

During PEFT fine-tuning the model runs in **eval mode**: BatchNorm uses its
frozen running statistics (from pretraining); only the PEFT parameters (BN
affine weights/biases, prompts, head) train.  With ``linearized=True`` the
trained function is ``f_lin(x; w) = f(x; w̄) + J(x)(w − w̄)``, ``w̄ = w0``,
evaluated by one ``torch.func.jvp`` per batch (gradients flow through the
tangent ``w − w̄``); after such training the unlearning update of docs/theory.md is
exact up to solver tolerance.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import ImageData, check_finite, check_labels
from .errors import DataError, InvalidInputError, NumericalError
from .peft import PeftSet, eval_mode

__all__ = ["TrainLog", "batch_schedule", "pretrain", "finetune_peft", "predict", "peft_loss", "linearized_function",
           "make_optimizer", "progress_bar"]


@dataclass
class TrainLog:
    """What a training run did: mean loss per epoch, wall seconds, optimizer steps.

    ``w`` is the final PEFT vector (``None`` for :func:`pretrain`).
    """

    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    n_steps: int = 0
    n_samples: int = 0
    w: torch.Tensor | None = None
    config: dict = field(default_factory=dict)
    val_acc: list[float] = field(default_factory=list)
    epochs_run: int = 0
    best_epoch: int | None = None


# ---------------------------------------------------------------------------- schedule


def batch_schedule(n: int, batch_size: int, epoch: int, seed: int, drop=None) -> list[torch.Tensor]:
    """Index batches of epoch ``epoch``: chunks of ``randperm(n, Generator(seed+epoch))``.

    ``drop``: indices removed from every batch (empty batches are skipped).
    """
    if int(batch_size) < 1:
        raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
    g = torch.Generator().manual_seed(int(seed) + int(epoch))
    perm = torch.randperm(int(n), generator=g)
    keep = _keep_mask(n, drop)
    out = []
    for s in range(0, int(n), int(batch_size)):
        b = perm[s : s + int(batch_size)]
        if keep is not None:
            b = b[keep[b]]
        if b.numel():
            out.append(b)
    return out


def _keep_mask(n: int, drop) -> torch.Tensor | None:
    if drop is None:
        return None
    d = torch.as_tensor(np.asarray(drop.cpu() if isinstance(drop, torch.Tensor) else drop)).reshape(-1)
    if d.numel() == 0:
        return None
    if d.is_floating_point() or d.dtype == torch.bool:
        raise InvalidInputError("drop must hold integer indices")
    d = d.long()
    if int(d.min()) < 0 or int(d.max()) >= n:
        raise InvalidInputError(f"drop indices must lie in [0, {n})")
    keep = torch.ones(int(n), dtype=torch.bool)
    keep[d] = False
    if not bool(keep.any()):
        raise DataError("drop removes every sample; nothing left to train on")
    return keep


def progress_bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)


def make_optimizer(params, optimizer: str, lr: float, momentum: float = 0.0):
    opt = optimizer.lower()
    if not (lr > 0 and math.isfinite(lr)):
        raise InvalidInputError(f"lr must be a positive number, got {lr}")
    if opt == "adam":
        return torch.optim.Adam(params, lr=lr)
    if opt == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    if opt == "lbfgs":
        return torch.optim.LBFGS(params, lr=lr, max_iter=20, history_size=50, line_search_fn="strong_wolfe",
                                 tolerance_grad=1e-12, tolerance_change=1e-14)
    raise InvalidInputError(f"unknown optimizer {optimizer!r}; choose 'adam', 'sgd' or 'lbfgs'")


def _check_data(data: ImageData, num_outputs: int | None = None) -> None:
    if not isinstance(data, ImageData):
        raise DataError(f"expected an ImageData, got {type(data).__name__}")
    if len(data) == 0:
        raise DataError(f"the dataset {data.name!r} is empty")
    check_finite(data.X)
    check_labels(data.y, data.num_classes if num_outputs is None else num_outputs)


# ---------------------------------------------------------------------------- pretraining


def pretrain(
    model: nn.Module,
    data: ImageData,
    *,
    epochs: int,
    lr: float,
    batch_size: int = 128,
    seed: int = 0,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    progress: bool = True,
) -> TrainLog:
    """Train every parameter of ``model`` on ``data`` with mean cross-entropy (train mode).

    BatchNorm updates its running statistics.  Global RNG state is untouched
    (dropout / drop-path draw from a forked RNG seeded with ``seed``).  The
    model is left in eval mode.
    """
    _check_data(data)
    ref = next(model.parameters())
    X, y = data.X.to(ref.dtype), data.y
    n = len(data)
    params = [p for p in model.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = make_optimizer(params, optimizer, lr, momentum)
    if weight_decay:
        for g in opt.param_groups:
            g["weight_decay"] = float(weight_decay)
    log = TrainLog(n_samples=n, config=dict(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, optimizer=optimizer))
    nb = math.ceil(n / batch_size)
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model.train()
        with progress_bar(int(epochs) * nb, "pretrain", progress) as bar:
            for epoch in range(int(epochs)):
                tot, cnt = 0.0, 0
                for b in batch_schedule(n, batch_size, epoch, seed):
                    xb, yb = X[b].to(ref.device), y[b].to(ref.device)
                    out = model(xb)
                    if epoch == 0 and cnt == 0 and out.shape[-1] < data.num_classes:
                        raise DataError(f"the model has {out.shape[-1]} outputs but the data {data.num_classes} classes")
                    loss = F.cross_entropy(out, yb)
                    if not torch.isfinite(loss):
                        raise NumericalError(f"pretraining loss became {loss.item()} at epoch {epoch}; lower lr")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    log.n_steps += 1
                    tot += loss.item() * len(b)
                    cnt += len(b)
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss.item():.4f}")
                log.losses.append(tot / max(cnt, 1))
    model.eval()
    log.seconds = time.perf_counter() - t0
    return log


# ---------------------------------------------------------------------------- PEFT fine-tuning


def peft_loss(logits: torch.Tensor, y: torch.Tensor, loss: str = "ce", target_scale: float = 1.0) -> torch.Tensor:
    """Per-sample losses ``(B,)``: CE, or MSE ``½‖logits − target_scale·onehot(y)‖²``."""
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    if loss == "mse":
        Y = F.one_hot(y, logits.shape[-1]).to(logits.dtype) * float(target_scale)
        return 0.5 * ((logits - Y) ** 2).sum(-1)
    raise InvalidInputError(f"unknown loss {loss!r}; choose 'ce' or 'mse'")


def linearized_function(f: Callable, wbar: torch.Tensor) -> Callable:
    """``f_lin(w, x) = f(w̄, x) + J(x)(w − w̄)`` via one ``torch.func.jvp`` (differentiable in ``w``)."""
    from torch.func import jvp

    def flin(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        primal, tangent = jvp(lambda v: f(v, x), (wbar,), (w - wbar,))
        return primal + tangent

    return flin


_linearized = linearized_function  # older private name (kept for scripts that used it)
_make_optimizer, _progress = make_optimizer, progress_bar  # likewise


def finetune_peft(
    peft: PeftSet,
    data: ImageData,
    *,
    epochs: int,
    lr: float,
    batch_size: int = 128,
    seed: int = 0,
    loss: str = "ce",
    target_scale: float = 1.0,
    ridge: float = 0.0,
    w0: torch.Tensor | None = None,
    w_start: torch.Tensor | None = None,
    linearized: bool = False,
    drop=None,
    optimizer: str = "adam",
    momentum: float = 0.0,
    progress: bool = True,
    desc: str = "finetune",
    val: ImageData | None = None,
    patience: int = 2,
) -> TrainLog:
    """Train the PEFT parameters on ``data`` (the module docstring gives the objective and schedule).

    ``val``: a held-out validation split (never part of ``data``).  With it, ``epochs`` is the *maximum*
    number of epochs: after each epoch the validation accuracy is measured, training stops once it has not
    improved for ``patience`` epochs, and the weights of the best epoch are returned (the recipe a
    practitioner uses; ``log.best_epoch`` / ``log.epochs_run`` / ``log.val_acc`` record what happened).
    Retraining replays the same rule on ``D_r`` with the same ``val``, so it may stop at another epoch.

    ``w0``: ridge centre and linearization point ``w̄`` (default: the model's
    current PEFT vector); training starts at ``w_start`` (default ``w0``).
    ``drop``: indices of ``data`` left out (retraining on ``D_r``).
    ``optimizer``: "adam", "sgd" or "lbfgs" (one L-BFGS step of ≤ 20
    iterations per batch -- for full-batch convergence on small problems).
    The final vector is written into the model (``log.w`` holds a copy); the
    model is left in eval mode.
    """
    if loss not in ("ce", "mse"):
        raise InvalidInputError(f"unknown loss {loss!r}; choose 'ce' or 'mse'")
    if not (ridge >= 0 and math.isfinite(ridge)):
        raise InvalidInputError(f"ridge must be >= 0, got {ridge}")
    if int(epochs) < 1:
        raise InvalidInputError(f"epochs must be >= 1, got {epochs}")
    if int(patience) < 1:
        raise InvalidInputError(f"patience must be >= 1, got {patience}")
    _check_data(data)
    if val is not None:
        _check_data(val)
        if len(val) == 0:
            raise DataError("the validation split is empty")
    n = len(data)
    keep = _keep_mask(n, drop)
    m = n if keep is None else int(keep.sum())
    w0 = peft.vector() if w0 is None else peft.check_vector(w0, name="w0").detach().clone()
    ws = w0 if w_start is None else peft.check_vector(w_start, name="w_start")
    w = ws.detach().clone().requires_grad_(True)
    X, y = data.X.to(peft.dtype), data.y
    f = peft.functional()
    fn = linearized_function(f, w0) if linearized else f
    opt = make_optimizer([w], optimizer, lr, momentum)
    coef = float(ridge) / (2.0 * m)
    log = TrainLog(
        n_samples=m,
        config=dict(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, loss=loss, target_scale=target_scale,
                    ridge=ridge, linearized=linearized, optimizer=optimizer, n_dropped=n - m,
                    early_stopping=val is not None, patience=int(patience) if val is not None else None),
    )
    best = (-1.0, None, 0)  # (val accuracy, w, epoch)
    nb = math.ceil(n / batch_size)
    checked = False
    t0 = time.perf_counter()
    model = peft.model
    with eval_mode(model), progress_bar(int(epochs) * nb, desc, progress) as bar:
        for epoch in range(int(epochs)):
            tot, cnt = 0.0, 0
            for b in batch_schedule(n, batch_size, epoch, seed, drop=drop):
                xb, yb = X[b].to(peft.device), y[b].to(peft.device)

                def closure():
                    opt.zero_grad(set_to_none=True)
                    out = fn(w, xb)
                    lv = peft_loss(out, yb, loss, target_scale).mean()
                    if coef:
                        lv = lv + coef * ((w - w0) ** 2).sum()
                    lv.backward()
                    return lv

                if not checked:
                    with torch.no_grad():
                        C = f(w.detach(), xb[:1]).shape[-1]
                    if C < data.num_classes:
                        raise DataError(f"the model has {C} outputs but {data.name!r} has {data.num_classes} classes")
                    checked = True
                lv = opt.step(closure) if optimizer == "lbfgs" else (closure(), opt.step())[0]
                if not torch.isfinite(lv) or not bool(torch.isfinite(w).all()):
                    raise NumericalError(f"fine-tuning diverged (loss {lv.item()}) at epoch {epoch}; lower lr")
                log.n_steps += 1
                tot += lv.item() * len(b)
                cnt += len(b)
                bar.update(1)
                bar.set_postfix(loss=f"{lv.item():.4f}")
            log.losses.append(tot / max(cnt, 1))
            if val is not None:
                acc = _val_accuracy(fn, w.detach(), val, peft, batch_size)
                log.val_acc.append(acc)
                if acc > best[0]:
                    best = (acc, w.detach().clone(), epoch + 1)
                elif epoch + 1 - best[2] >= int(patience):
                    break
    log.epochs_run = len(log.losses)
    if val is not None:
        w, log.best_epoch = best[1], best[2]
    w = w.detach()
    peft.write(w)
    model.eval()
    log.w = w.clone()
    log.seconds = time.perf_counter() - t0
    return log


@torch.no_grad()
def _val_accuracy(fn: Callable, w: torch.Tensor, val: ImageData, peft: PeftSet, batch_size: int) -> float:
    """Accuracy of ``fn(w, ·)`` on the validation split (the early-stopping criterion)."""
    hits = 0
    for s in range(0, len(val), max(int(batch_size), 256)):
        xb = val.X[s : s + max(int(batch_size), 256)].to(peft.device, peft.dtype)
        hits += int((fn(w, xb).argmax(-1).cpu() == val.y[s : s + xb.shape[0]].cpu()).sum())
    return hits / len(val)


# ---------------------------------------------------------------------------- prediction


@torch.no_grad()
def predict(
    peft_or_model,
    X: torch.Tensor,
    batch_size: int = 512,
    *,
    w: torch.Tensor | None = None,
    linearize_at: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits ``(n, C)`` of a :class:`PeftSet` (at ``w``, default current) or a module, eval mode, no grad.

    ``linearize_at=w̄`` evaluates the linearized model ``f(x; w̄) + J(x)(w − w̄)``
    instead (the function that ``finetune_peft(linearized=True)`` trains).
    """
    if isinstance(X, ImageData):
        X = X.X
    if isinstance(peft_or_model, PeftSet):
        f = peft_or_model.functional()
        wv = peft_or_model.vector() if w is None else peft_or_model.check_vector(w)
        dtype, device = peft_or_model.dtype, peft_or_model.device
        if linearize_at is not None:
            wbar = peft_or_model.check_vector(linearize_at, name="linearize_at")
            flin = linearized_function(f, wbar)
            run = lambda xb: flin(wv, xb)  # noqa: E731
        else:
            run = lambda xb: f(wv, xb)  # noqa: E731
        model = peft_or_model.model
    elif isinstance(peft_or_model, nn.Module):
        if w is not None or linearize_at is not None:
            raise InvalidInputError("w and linearize_at are only meaningful with a PeftSet")
        model = peft_or_model
        ref = next(model.parameters())
        dtype, device = ref.dtype, ref.device
        run = model
    else:
        raise InvalidInputError(f"predict needs a PeftSet or nn.Module, got {type(peft_or_model).__name__}")
    outs = []
    with eval_mode(model):
        for s in range(0, X.shape[0], int(batch_size)):
            outs.append(run(X[s : s + int(batch_size)].to(dtype=dtype, device=device)))
    if not outs:
        return torch.zeros(0, 0, dtype=dtype)
    return torch.cat(outs)
