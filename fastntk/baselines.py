"""Unlearning baselines on the PEFT parameters: Retrain, FT, GA, NegGrad+.

Every function takes the PEFT set, the fine-tuning set ``D`` (an
:class:`~fastntk.data.ImageData`) and ``forget_idx`` (indices into ``D``),
works on a *copy* of the PEFT vector, and returns a :class:`BaselineResult`
``(w, seconds, name, log)``.  The model's PEFT parameters are restored
afterwards unless ``write=True``.  ``seconds`` is the wall time of the
optimisation alone (same accounting for every method; evaluation excluded).

* :func:`retrain` -- the gold standard: :func:`~fastntk.train.finetune_peft`
  from ``w0`` with ``drop=forget_idx`` and the original recipe (same seed ->
  same batch schedule minus the forgotten samples);
* :func:`finetune_retain` (FT) -- a few more epochs of training on ``D_r``
  from the trained weights;
* :func:`gradient_ascent` (GA) -- ascend the CE on ``D_f``;
* :func:`neggrad_plus` (NegGrad+, Kurmanji et al. 2023) -- descend
  ``α·CE(D_r) − (1−α)·CE(D_f)``, one D_f batch (cycled) per D_r batch.
"""
from __future__ import annotations

import contextlib
import math
import time
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .data import ImageData
from .errors import ForgetSetError, InvalidInputError, NumericalError
from .peft import PeftSet, eval_mode
from .train import TrainLog, _make_optimizer, _progress, batch_schedule, finetune_peft

__all__ = ["BaselineResult", "retrain", "finetune_retain", "gradient_ascent", "neggrad_plus"]


class BaselineResult(NamedTuple):
    """``w``: the new PEFT vector; ``seconds``: optimisation wall time; ``name``; ``log``."""

    w: torch.Tensor
    seconds: float
    name: str
    log: TrainLog


@contextlib.contextmanager
def _preserved(peft: PeftSet, write: bool):
    """Snapshot the model's PEFT vector and restore it on exit (unless ``write``)."""
    saved = peft.vector().clone()
    box: dict = {}
    try:
        yield box
    finally:
        if write and "w" in box:
            peft.write(box["w"])
        else:
            peft.write(saved)


def _split(data: ImageData, forget_idx) -> tuple[np.ndarray, np.ndarray]:
    n = len(data)
    f = np.asarray(forget_idx.cpu() if isinstance(forget_idx, torch.Tensor) else forget_idx).reshape(-1).astype(np.int64)
    if f.size == 0:
        raise ForgetSetError("the forget set is empty")
    if f.min() < 0 or f.max() >= n:
        raise ForgetSetError(f"forget indices must lie in [0, {n})")
    f = np.unique(f)
    if f.size == n:
        raise ForgetSetError("the forget set is the whole dataset; nothing would remain")
    mask = np.ones(n, dtype=bool)
    mask[f] = False
    return np.nonzero(mask)[0], f


def retrain(
    peft: PeftSet,
    data: ImageData,
    forget_idx,
    *,
    w0: torch.Tensor,
    write: bool = False,
    **recipe,
) -> BaselineResult:
    """Gold standard: ``finetune_peft(peft, data, w0=w0, drop=forget_idx, **recipe)``.

    ``recipe`` must be the original fine-tuning's keyword arguments (epochs,
    lr, batch_size, seed, loss, ridge, linearized, optimizer...).
    """
    _split(data, forget_idx)
    recipe.setdefault("desc", "retrain")
    with _preserved(peft, write) as box:
        log = finetune_peft(peft, data, w0=w0, drop=forget_idx, **recipe)
        box["w"] = log.w
    return BaselineResult(log.w, log.seconds, "retrain", log)


def finetune_retain(
    peft: PeftSet,
    data: ImageData,
    forget_idx,
    *,
    w_trained: torch.Tensor,
    epochs: int = 2,
    lr: float = 1e-3,
    w0: torch.Tensor | None = None,
    write: bool = False,
    **recipe,
) -> BaselineResult:
    """FT: continue training from ``w_trained`` on ``D_r`` for ``epochs`` epochs.

    ``recipe`` (batch_size, seed, loss, ridge, optimizer...) is passed to
    :func:`~fastntk.train.finetune_peft`; ``w0`` is the ridge centre /
    linearization point (default ``w_trained``).
    """
    retain, forget = _split(data, forget_idx)
    recipe.setdefault("desc", "FT")
    with _preserved(peft, write) as box:
        log = finetune_peft(
            peft, data, epochs=epochs, lr=lr, w0=w_trained if w0 is None else w0, w_start=w_trained, drop=forget, **recipe
        )
        box["w"] = log.w
    return BaselineResult(log.w, log.seconds, "FT", log)


def _ascent_loop(
    peft: PeftSet,
    data: ImageData,
    retain: np.ndarray,
    forget: np.ndarray,
    *,
    w_trained: torch.Tensor,
    alpha: float | None,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    optimizer: str,
    progress: bool,
    desc: str,
    linearize_at: torch.Tensor | None = None,
) -> TrainLog:
    """GA (``alpha=None``: minimise −CE on D_f) or NegGrad+ (``α·CE(D_r) − (1−α)·CE(D_f)``).

    With ``linearize_at=w̄`` the linearized model ``f(x; w̄) + J(x)(w − w̄)`` is trained (after linearized fine-tuning).
    """
    from .train import _linearized

    w = peft.check_vector(w_trained, name="w_trained").detach().clone().requires_grad_(True)
    f = peft.functional()
    if linearize_at is not None:
        f = _linearized(f, peft.check_vector(linearize_at, name="linearize_at").detach())
    X, y = data.X.to(peft.dtype), data.y
    opt = _make_optimizer([w], optimizer, lr)
    log = TrainLog(n_samples=len(forget) if alpha is None else len(data),
                   config=dict(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, alpha=alpha, optimizer=optimizer))
    rt, ft = torch.as_tensor(retain), torch.as_tensor(forget)
    main = ft if alpha is None else rt
    nb = math.ceil(len(main) / batch_size)
    t0 = time.perf_counter()
    with eval_mode(peft.model), _progress(int(epochs) * nb, desc, progress) as bar:
        for epoch in range(int(epochs)):
            tot, cnt = 0.0, 0
            fb = batch_schedule(len(ft), batch_size, epoch, seed + 7919)
            for k, b in enumerate(batch_schedule(len(main), batch_size, epoch, seed)):
                opt.zero_grad(set_to_none=True)
                if alpha is None:
                    idx = ft[b]
                    lv = -F.cross_entropy(f(w, X[idx].to(peft.device)), y[idx].to(peft.device))
                else:
                    ir, jf = rt[b], ft[fb[k % len(fb)]]
                    lr_ = F.cross_entropy(f(w, X[ir].to(peft.device)), y[ir].to(peft.device))
                    lf_ = F.cross_entropy(f(w, X[jf].to(peft.device)), y[jf].to(peft.device))
                    lv = float(alpha) * lr_ - (1.0 - float(alpha)) * lf_
                lv.backward()
                opt.step()
                if not bool(torch.isfinite(w).all()):
                    raise NumericalError(f"{desc} diverged at epoch {epoch}; lower lr")
                log.n_steps += 1
                tot += lv.item() * len(b)
                cnt += len(b)
                bar.update(1)
            log.losses.append(tot / max(cnt, 1))
    log.seconds = time.perf_counter() - t0
    log.w = w.detach().clone()
    return log


def gradient_ascent(
    peft: PeftSet,
    data: ImageData,
    forget_idx,
    *,
    w_trained: torch.Tensor,
    epochs: int = 1,
    lr: float = 1e-4,
    batch_size: int = 128,
    seed: int = 0,
    optimizer: str = "adam",
    progress: bool = True,
    write: bool = False,
    linearize_at: torch.Tensor | None = None,
) -> BaselineResult:
    """GA: gradient ascent on the mean CE of ``D_f`` from ``w_trained`` (``epochs`` passes)."""
    retain, forget = _split(data, forget_idx)
    with _preserved(peft, write) as box:
        log = _ascent_loop(peft, data, retain, forget, w_trained=w_trained, alpha=None, epochs=epochs, lr=lr,
                           batch_size=batch_size, seed=seed, optimizer=optimizer, progress=progress, desc="GA",
                           linearize_at=linearize_at)
        box["w"] = log.w
    return BaselineResult(log.w, log.seconds, "GA", log)


def neggrad_plus(
    peft: PeftSet,
    data: ImageData,
    forget_idx,
    *,
    w_trained: torch.Tensor,
    alpha: float = 0.99,
    epochs: int = 1,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
    optimizer: str = "adam",
    progress: bool = True,
    write: bool = False,
    linearize_at: torch.Tensor | None = None,
) -> BaselineResult:
    """NegGrad+: descend ``α·CE(D_r batch) − (1−α)·CE(D_f batch)``, ``α ∈ [0, 1]``, over D_r epochs."""
    if not (0.0 <= float(alpha) <= 1.0):
        raise InvalidInputError(f"alpha must lie in [0, 1], got {alpha}")
    retain, forget = _split(data, forget_idx)
    with _preserved(peft, write) as box:
        log = _ascent_loop(peft, data, retain, forget, w_trained=w_trained, alpha=float(alpha), epochs=epochs, lr=lr,
                           batch_size=batch_size, seed=seed, optimizer=optimizer, progress=progress, desc="NegGrad+",
                           linearize_at=linearize_at)
        box["w"] = log.w
    return BaselineResult(log.w, log.seconds, "NegGrad+", log)
