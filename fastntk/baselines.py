"""Unlearning baselines on the PEFT parameters: Retrain, FT, GA, NegGrad+, SCRUB, SalUn, l1-sparse.

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
  ``α·CE(D_r) − (1−α)·CE(D_f)``, one D_f batch (cycled) per D_r batch;
* :func:`scrub` (SCRUB, Kurmanji et al. 2023) -- teacher = the trained model; per epoch, during the first
  ``max_epochs`` epochs a pass over D_f *maximising* ``KL_T(teacher ‖ student)``, then a pass over D_r
  minimising ``γ·CE + α·KL_T`` (``KL_T``: softmax at temperature ``T``, times ``T²``);
* :func:`salun` (SalUn, Fan et al. 2024) -- saliency mask: the ``fraction`` of PEFT entries with the largest
  ``|∇_w CE(D_f)|`` at the trained weights; then per epoch a pass over D_f with uniformly random labels and a
  pass over D_r with the true labels, only the masked entries updated (the "RL" variant);
* :func:`l1_sparse` (l1-sparse, Jia et al. 2023) -- FT on D_r with ``α_e·‖w‖₁``, ``α_e = α·(1 − e/E)``
  decaying linearly over the epochs ``e = 0..E−1``.

The reference recipes (SGD with momentum and weight decay on every weight of the network) are restricted
here to the PEFT vector and to Adam, like FT / GA / NegGrad+; their hyper-parameters are chosen by
:func:`select_hyperparameters` on a validation split (:func:`validation_objective`, never the test set), the
grids and budget in :data:`HP_GRIDS`.  With ``linearize_at=w̄`` every method trains the linearized model
``f(x; w̄) + J(x)(w − w̄)`` (after linearized fine-tuning).
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
from .train import TrainLog, batch_schedule, finetune_peft, make_optimizer, progress_bar

__all__ = ["BaselineResult", "retrain", "finetune_retain", "gradient_ascent", "neggrad_plus", "scrub", "salun", "l1_sparse",
           "saliency_mask", "select_hyperparameters", "validation_objective", "HPSelection", "HP_GRIDS"]


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
    from .train import linearized_function as _linearized

    w = peft.check_vector(w_trained, name="w_trained").detach().clone().requires_grad_(True)
    f = peft.functional()
    if linearize_at is not None:
        f = _linearized(f, peft.check_vector(linearize_at, name="linearize_at").detach())
    X, y = data.X.to(peft.dtype), data.y
    opt = make_optimizer([w], optimizer, lr)
    log = TrainLog(n_samples=len(forget) if alpha is None else len(data),
                   config=dict(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, alpha=alpha, optimizer=optimizer))
    rt, ft = torch.as_tensor(retain), torch.as_tensor(forget)
    main = ft if alpha is None else rt
    nb = math.ceil(len(main) / batch_size)
    t0 = time.perf_counter()
    with eval_mode(peft.model), progress_bar(int(epochs) * nb, desc, progress) as bar:
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


# ---------------------------------------------------------------------------- SCRUB, SalUn, l1-sparse


def _peft_function(peft: PeftSet, linearize_at: torch.Tensor | None):
    from .train import linearized_function as _linearized

    f = peft.functional()
    if linearize_at is not None:
        f = _linearized(f, peft.check_vector(linearize_at, name="linearize_at").detach())
    return f


def _check_hp(**kw) -> None:
    for k, v in kw.items():
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0):
            raise InvalidInputError(f"{k} must be a finite number >= 0, got {v!r}")


def _phase_loop(peft: PeftSet, *, w_trained: torch.Tensor, epochs: int, lr: float, optimizer: str, progress: bool,
                desc: str, phases, config: dict, n_samples: int, setup=None) -> TrainLog:
    """Run ``phases(epoch)`` -> ``[(batches, loss(w, idx)), ...]`` for ``epochs`` epochs from ``w_trained``.

    ``setup()`` runs inside the timed block before the first step (teacher outputs, saliency) and returns
    ``None`` or a bool mask ``(p,)``: then only those entries move (gradient masked, the others reset to
    ``w_trained`` after every step).  ``log.seconds`` is the optimisation wall time, setup included.
    """
    if int(epochs) < 1:
        raise InvalidInputError(f"epochs must be >= 1, got {epochs}")
    w_start = peft.check_vector(w_trained, name="w_trained").detach().clone()
    w = w_start.clone().requires_grad_(True)
    opt = make_optimizer([w], optimizer, lr)
    log = TrainLog(n_samples=n_samples, config=dict(config, epochs=epochs, lr=lr, optimizer=optimizer))
    t0 = time.perf_counter()
    with eval_mode(peft.model), progress_bar(0, desc, progress) as bar:
        mask = setup() if setup is not None else None
        for epoch in range(int(epochs)):
            tot, cnt = 0.0, 0
            for batches, loss in phases(epoch):
                for b in batches:
                    opt.zero_grad(set_to_none=True)
                    lv = loss(w, b)
                    lv.backward()
                    if mask is not None:
                        w.grad.mul_(mask)
                    opt.step()
                    if mask is not None:
                        with torch.no_grad():
                            w.copy_(torch.where(mask, w, w_start))
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


def _kl_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float) -> torch.Tensor:
    """SCRUB's DistillKL: ``T² · mean_i KL(softmax(t_i/T) ‖ softmax(s_i/T))``."""
    log_ps = F.log_softmax(student_logits / T, dim=-1)
    pt = F.softmax(teacher_logits / T, dim=-1)
    return F.kl_div(log_ps, pt, reduction="sum") * (T * T) / student_logits.shape[0]


def scrub(
    peft: PeftSet,
    data: ImageData,
    forget_idx,
    *,
    w_trained: torch.Tensor,
    epochs: int = 3,
    max_epochs: int = 1,
    lr: float = 1e-3,
    alpha: float = 0.001,
    gamma: float = 0.99,
    temperature: float = 4.0,
    batch_size: int = 128,
    forget_batch_size: int | None = None,
    seed: int = 0,
    optimizer: str = "adam",
    progress: bool = True,
    write: bool = False,
    linearize_at: torch.Tensor | None = None,
) -> BaselineResult:
    """SCRUB (Kurmanji et al. 2023, meghdadk/SCRUB): student from ``w_trained``, teacher = the trained model.

    Epoch ``e``: if ``e < max_epochs`` one pass over D_f minimising ``−KL_T(teacher ‖ student)`` (the
    "max-steps"), then one pass over D_r minimising ``gamma·CE + alpha·KL_T`` (the "min-steps");
    ``KL_T`` is the distillation KL at temperature ``T`` times ``T²``.  Defaults are the reference's
    (``gamma=0.99, alpha=0.001, T=4``, ``beta=0``); the reference's SGD on every weight is Adam on the PEFT
    vector here.  The teacher's outputs on D (one forward pass) are part of the timed work.
    """
    _check_hp(alpha=alpha, gamma=gamma, temperature=temperature, lr=lr)
    if not temperature > 0:
        raise InvalidInputError(f"temperature must be > 0, got {temperature}")
    if int(max_epochs) < 0 or int(max_epochs) > int(epochs):
        raise InvalidInputError(f"max_epochs must lie in [0, epochs={epochs}], got {max_epochs}")
    retain, forget = _split(data, forget_idx)
    f = _peft_function(peft, linearize_at)
    X, y = data.X.to(peft.dtype), data.y
    rt, ft = torch.as_tensor(retain), torch.as_tensor(forget)
    fbs = int(forget_batch_size or batch_size)
    teacher: dict = {}

    def setup():
        from .train import predict

        teacher["z"] = predict(peft, X, max(512, int(batch_size)), w=w_trained, linearize_at=linearize_at).detach()
        return None

    def on(idx):
        return X[idx].to(peft.device), y[idx].to(peft.device), teacher["z"][idx]

    def max_step(w, b):
        xb, _, zt = on(ft[b])
        return -_kl_teacher(f(w, xb), zt, float(temperature))

    def min_step(w, b):
        xb, yb, zt = on(rt[b])
        zs = f(w, xb)
        return float(gamma) * F.cross_entropy(zs, yb) + float(alpha) * _kl_teacher(zs, zt, float(temperature))

    def phases(epoch):
        out = []
        if epoch < int(max_epochs):
            out.append((batch_schedule(len(ft), fbs, epoch, seed + 7919), max_step))
        out.append((batch_schedule(len(rt), batch_size, epoch, seed), min_step))
        return out

    cfg = dict(max_epochs=max_epochs, alpha=alpha, gamma=gamma, temperature=temperature, batch_size=batch_size, seed=seed)
    with _preserved(peft, write) as box:
        log = _phase_loop(peft, w_trained=w_trained, epochs=epochs, lr=lr, optimizer=optimizer, progress=progress, desc="SCRUB",
                          phases=phases, config=cfg, n_samples=len(data), setup=setup)
        box["w"] = log.w
    return BaselineResult(log.w, log.seconds, "SCRUB", log)


def saliency_mask(peft: PeftSet, data: ImageData, forget_idx, *, w: torch.Tensor, fraction: float = 0.5,
                  batch_size: int = 128, linearize_at: torch.Tensor | None = None) -> torch.Tensor:
    """SalUn's weight saliency: bool ``(p,)``, True on the ``ceil(fraction·p)`` entries of largest ``|g|``.

    ``g = Σ_batches ∇_w CE(batch of D_f)`` at ``w`` (the reference accumulates the gradients of the batch
    mean losses over the forget loader; the sign does not matter).
    """
    if not (isinstance(fraction, (int, float)) and 0 < float(fraction) <= 1):
        raise InvalidInputError(f"fraction must lie in (0, 1], got {fraction!r}")
    _, forget = _split(data, forget_idx)
    f = _peft_function(peft, linearize_at)
    wv = peft.check_vector(w, name="w").detach().clone().requires_grad_(True)
    X, y = data.X.to(peft.dtype), data.y
    g = torch.zeros_like(wv)
    with eval_mode(peft.model):
        for s in range(0, len(forget), int(batch_size)):
            idx = torch.as_tensor(forget[s : s + int(batch_size)])
            (gb,) = torch.autograd.grad(F.cross_entropy(f(wv, X[idx].to(peft.device)), y[idx].to(peft.device)), wv)
            g += gb
    k = int(math.ceil(float(fraction) * peft.p))
    mask = torch.zeros(peft.p, dtype=torch.bool, device=wv.device)
    mask[torch.argsort(g.abs(), descending=True, stable=True)[:k]] = True
    return mask


def salun(
    peft: PeftSet,
    data: ImageData,
    forget_idx,
    *,
    w_trained: torch.Tensor,
    fraction: float = 0.5,
    epochs: int = 1,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
    optimizer: str = "adam",
    progress: bool = True,
    write: bool = False,
    linearize_at: torch.Tensor | None = None,
) -> BaselineResult:
    """SalUn (Fan et al. 2024, OPTML-Group/Unlearn-Saliency): saliency mask + random-label fine-tuning.

    The mask (:func:`saliency_mask`, ``fraction`` of the PEFT entries; the paper's default 0.5) is computed
    at ``w_trained`` inside the timed work.  Each epoch: a pass over D_f with labels drawn uniformly from
    the model's ``C`` outputs (a fresh draw per epoch, seeded), then a pass over D_r with the true labels;
    only the masked entries move (the others stay exactly at ``w_trained``), as the reference's CIFAR-10
    branch of ``RL`` does.
    """
    _check_hp(lr=lr)
    retain, forget = _split(data, forget_idx)
    f = _peft_function(peft, linearize_at)
    X, y = data.X.to(peft.dtype), data.y
    rt, ft = torch.as_tensor(retain), torch.as_tensor(forget)
    state: dict = {}

    def setup():
        state["mask"] = saliency_mask(peft, data, forget, w=w_trained, fraction=fraction, batch_size=batch_size,
                                      linearize_at=linearize_at)
        with torch.no_grad():
            state["C"] = int(f(peft.check_vector(w_trained, name="w_trained"), X[:1].to(peft.device)).shape[-1])
        return state["mask"]

    def rl_step(w, b):
        idx = ft[b]
        return F.cross_entropy(f(w, X[idx].to(peft.device)), state["labels"][b].to(peft.device))

    def retain_step(w, b):
        idx = rt[b]
        return F.cross_entropy(f(w, X[idx].to(peft.device)), y[idx].to(peft.device))

    def phases(epoch):
        g = torch.Generator().manual_seed(int(seed) + 104729 + epoch)
        state["labels"] = torch.randint(0, state["C"], (len(ft),), generator=g)
        return [(batch_schedule(len(ft), batch_size, epoch, seed + 7919), rl_step),
                (batch_schedule(len(rt), batch_size, epoch, seed), retain_step)]

    cfg = dict(fraction=fraction, batch_size=batch_size, seed=seed)
    with _preserved(peft, write) as box:
        log = _phase_loop(peft, w_trained=w_trained, epochs=epochs, lr=lr, optimizer=optimizer, progress=progress, desc="SalUn",
                          phases=phases, config=cfg, n_samples=len(data), setup=setup)
        box["w"] = log.w
    log.config["mask_size"] = int(state["mask"].sum())
    return BaselineResult(log.w, log.seconds, "SalUn", log)


def l1_sparse(
    peft: PeftSet,
    data: ImageData,
    forget_idx,
    *,
    w_trained: torch.Tensor,
    epochs: int = 5,
    lr: float = 1e-3,
    alpha: float = 5e-4,
    batch_size: int = 128,
    seed: int = 0,
    loss: str = "ce",
    target_scale: float = 1.0,
    optimizer: str = "adam",
    progress: bool = True,
    write: bool = False,
    linearize_at: torch.Tensor | None = None,
) -> BaselineResult:
    """l1-sparse (Jia et al. 2023, "Model Sparsity Can Simplify Machine Unlearning"; OPTML-Group/Unlearn-Sparse).

    FT on D_r from ``w_trained`` minimising ``loss(batch) + α_e·‖w‖₁`` with ``α_e = alpha·(1 − e/epochs)``
    in epoch ``e`` (the reference's ``current_alpha``, the l1 norm of the trained parameters -- here the PEFT
    vector).  ``loss``: ``"ce"`` (the reference) or ``"mse"`` (the fine-tuning loss after linearized MSE).
    """
    from .train import peft_loss

    _check_hp(alpha=alpha, lr=lr)
    if loss not in ("ce", "mse"):
        raise InvalidInputError(f"unknown loss {loss!r}; choose 'ce' or 'mse'")
    retain, _ = _split(data, forget_idx)
    f = _peft_function(peft, linearize_at)
    X, y = data.X.to(peft.dtype), data.y
    rt = torch.as_tensor(retain)
    state = {"alpha": float(alpha)}

    def step(w, b):
        idx = rt[b]
        lv = peft_loss(f(w, X[idx].to(peft.device)), y[idx].to(peft.device), loss, target_scale).mean()
        return lv + state["alpha"] * w.abs().sum()

    def phases(epoch):
        state["alpha"] = float(alpha) * (1.0 - epoch / int(epochs))
        return [(batch_schedule(len(rt), batch_size, epoch, seed), step)]

    cfg = dict(alpha=alpha, batch_size=batch_size, seed=seed, loss=loss)
    with _preserved(peft, write) as box:
        log = _phase_loop(peft, w_trained=w_trained, epochs=epochs, lr=lr, optimizer=optimizer, progress=progress,
                          desc="l1-sparse", phases=phases, config=cfg, n_samples=len(retain))
        box["w"] = log.w
    return BaselineResult(log.w, log.seconds, "l1-sparse", log)


# ---------------------------------------------------------------------------- hyper-parameter selection

# Per baseline, the grid searched by select_hyperparameters (lr is relative to the fine-tuning lr: the
# benchmark multiplies it).  Budget: at most HP_BUDGET configurations per baseline and scenario, each one
# unlearning run from one original model, scored on the validation split only.
HP_BUDGET = 6
HP_GRIDS: dict[str, dict[str, list]] = {
    "FT": {"epochs": [1, 2], "lr_scale": [0.1, 0.3]},
    "GA": {"epochs": [1], "lr_scale": [0.01, 0.03, 0.1, 0.3]},
    "NegGrad+": {"alpha": [0.9, 0.99], "lr_scale": [0.03, 0.1, 0.3]},
    "SCRUB": {"epochs": [2, 3], "max_epochs": [1], "lr_scale": [0.03, 0.1, 0.3]},
    "SalUn": {"fraction": [0.3, 0.5], "epochs": [1], "lr_scale": [0.03, 0.1, 0.3]},
    "l1-sparse": {"epochs": [2, 3], "alpha": [1e-4, 5e-4], "lr_scale": [0.1, 0.3]},
}


class HPSelection(NamedTuple):
    """``best``: chosen hyper-parameters; ``score``: their validation objective; ``trials``: every
    ``{"hp", "score", "seconds", "error"}`` tried; ``budget``; ``seconds``: total wall time of the search."""

    best: dict
    score: float
    trials: list
    budget: int
    seconds: float


def select_hyperparameters(run, grid: dict[str, list], objective, *, budget: int = HP_BUDGET, seed: int = 0) -> HPSelection:
    """Pick the hyper-parameters of one baseline: the grid point with the lowest ``objective``.

    ``run(**hp)`` -> :class:`BaselineResult` (or a PEFT vector); ``objective(w)`` -> float, lower is better,
    computed on a *validation* split (:func:`validation_objective`) -- never on the test set.  ``grid``:
    name -> candidate values; its Cartesian product is tried in order, or a ``budget``-sized random subset
    of it (``numpy.random.default_rng(seed)``) when larger.  A configuration that diverges
    (:class:`~fastntk.errors.NumericalError`) scores ``inf`` and is recorded, not raised.
    """
    import itertools

    if not isinstance(grid, dict) or not grid or any(not isinstance(v, (list, tuple)) or not v for v in grid.values()):
        raise InvalidInputError("grid must map each hyper-parameter name to a non-empty list of candidates")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise InvalidInputError(f"budget must be an integer >= 1, got {budget!r}")
    names = list(grid)
    points = [dict(zip(names, vals)) for vals in itertools.product(*(grid[n] for n in names))]
    if len(points) > budget:
        pick = np.sort(np.random.default_rng(int(seed)).choice(len(points), size=budget, replace=False))
        points = [points[i] for i in pick]
    t0 = time.perf_counter()
    trials = []
    for hp in points:
        try:
            res = run(**hp)
            w = res.w if isinstance(res, BaselineResult) else res
            score = float(objective(w))
            trials.append({"hp": hp, "score": score, "seconds": getattr(res, "seconds", float("nan")), "error": None})
        except NumericalError as e:
            trials.append({"hp": hp, "score": float("inf"), "seconds": float("nan"), "error": str(e)})
    best = min(trials, key=lambda t: (not math.isfinite(t["score"]), t["score"]))
    return HPSelection(dict(best["hp"]), best["score"], trials, budget, time.perf_counter() - t0)


def validation_objective(peft: PeftSet, sets: dict, reference: dict, *, linearize_at: torch.Tensor | None = None,
                         batch_size: int = 512):
    """``w -> mean_S |acc_S(w) − reference[S]|`` over the named ImageData ``sets`` (fractions).

    Typical use: ``sets = {"forget": D_f, "val": held-out validation images}`` and ``reference`` the mean
    accuracies of oracle models (retrained without D_f) on the same sets: the objective asks a baseline to
    match retraining on the forget set without losing (or gaining) on unseen data -- no test image involved.
    """
    from .metrics import accuracy
    from .train import predict

    missing = sorted(set(sets) - set(reference))
    if not sets or missing:
        raise InvalidInputError(f"validation_objective needs a reference accuracy for every set; missing {missing or 'all'}")

    def objective(w: torch.Tensor) -> float:
        gaps = [abs(accuracy(predict(peft, d.X, batch_size, w=w, linearize_at=linearize_at), d.y) - float(reference[k]))
                for k, d in sets.items()]
        return float(np.mean(gaps))

    return objective
