"""The paper's experiment as a tool: pretrain → PEFT fine-tune → forget → compare with retraining.

:func:`run_experiment` takes an :class:`ExperimentConfig` and returns a dict
with every method's metrics (RA, FA, UA, TA, MIA, activation distances), its
avg gap to the gold-standard retrain, the noise floor (a second retrain with
another seed), and wall times; :func:`write_report` writes JSON + Markdown +
a PNG plot atomically.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError, DataError, InvalidInputError, PeftError

log = logging.getLogger("fastntk")

__all__ = ["DistContext", "Experiment", "ExperimentConfig", "build_model", "load_dataset", "run_experiment", "setup_experiment",
           "setup_model", "write_report"]


@dataclass
class ExperimentConfig:
    """Every knob of one experiment (CLI flags and TOML keys have the same names)."""

    # data
    dataset: str = "digits"  # digits | fashion_mnist | cifar10 | folder
    data_dir: str | None = None
    image_size: int = 16
    limit: int | None = None  # cap on fine-tuning training images
    pretrain_classes: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    finetune_classes: list[int] = field(default_factory=lambda: [5, 6, 7, 8, 9])
    test_fraction: float = 0.2
    # model
    model: str = "resnet10t"
    pretrained: bool = False
    peft: str = "batchnorm"  # batchnorm | prompt
    num_prompts: int = 4
    include_head: bool = True
    pretrain_epochs: int = 3
    pretrain_lr: float = 2e-3
    # fine-tuning recipe (replayed exactly by retraining)
    finetune: str = "linearized"  # linearized | standard
    finetune_loss: str = "mse"
    epochs: int = 5
    lr: float = 1e-2
    batch_size: int = 64
    ridge: float = 1.0
    target_scale: float = 1.0
    # early stopping: a validation split of this fraction of the fine-tuning images is held out (never trained on,
    # never forgotten); fine-tuning and every retraining stop once its accuracy has not improved for `patience`
    # epochs (then `epochs` is the maximum) and keep the best epoch's weights. 0: a fixed number of epochs.
    val_fraction: float = 0.0
    patience: int = 2
    # forgetting
    forget: str = "random"  # random | class
    forget_fraction: float = 0.1
    forget_class: int = 0
    # unlearning
    form: str = "auto"
    # "auto": the library's rule for the model's trained_with (CE: the damping rule of fastntk.update.tilted; MSE: the
    # matched ridge), "train" (the fine-tuning ridge), "match" (effective ridge, fastntk.unlearn.match_ridge) or a number
    unlearn_ridge: str = "auto"
    unlearn_loss: str = "auto"  # "auto" (the kernel of the training loss: fastntk.update.policy), "mse" or "ce"
    # "auto": w0 + anchor "fit" after linearized fine-tuning (exact); after ordinary fine-tuning the trained weights
    # + anchor "trained" (Newton step from the trained weights with the kernel at the trained weights: the variant
    # closest to retraining on average over seeds in benchmarks/bench_variants.py)
    linearize_at: str = "auto"
    strategy: str = "auto"
    solver: str = "auto"
    anchor: str = "auto"
    memory_budget: float = 4e9  # = fastntk.operators.linearization.DEFAULT_MEMORY_BUDGET
    rtol: float = 1e-8  # = fastntk.update.options.DEFAULT_RTOL
    preconditioner: str = "auto"
    scale: float | None = None
    # linearization steps of the one-shot update (unlearn(steps=...)): > 1 adds Gauss-Newton steps relinearized at the
    # current weights; "auto": 1 (further steps helped the "retain" anchor but not the default variants, bench_variants)
    steps: int | str = "auto"
    prepared: bool = True  # also run the prepared Unlearner (prepare once, then the request)
    baselines: list[str] = field(default_factory=lambda: ["FT", "GA", "NegGrad+"])
    seed: int = 0
    out_dir: str = "runs/demo"
    cache_dir: str | None = None
    progress: bool = True

    @classmethod
    def from_dict(cls, d: dict) -> "ExperimentConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}; valid keys: {sorted(names)}")
        return cls(**d)

    @classmethod
    def from_toml(cls, path) -> "ExperimentConfig":
        import tomllib

        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            d = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {str(p)!r} is not valid TOML: {e}") from None
        return cls.from_dict(d.get("experiment", d))

    def finetune_recipe(self) -> dict:
        """Keyword arguments of :func:`fastntk.train.finetune_peft` for this config (replayed exactly by retraining)."""
        return dict(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, loss=self.finetune_loss, ridge=self.ridge,
                    target_scale=self.target_scale, linearized=self.finetune == "linearized", progress=self.progress,
                    patience=self.patience)

    @property
    def trained_with(self) -> str:
        """How the fine-tuned model was trained, as :func:`fastntk.unlearn` takes it: ``"linearized-mse"``,
        ``"mse"`` or ``"ce"``."""
        return "linearized-mse" if self.finetune == "linearized" else self.finetune_loss

    def resolved(self) -> "ExperimentConfig":
        """A copy with ``"auto"`` choices made (linearization point and anchor follow the fine-tuning kind)."""
        from .update.policy import resolve_variant

        v, _ = resolve_variant(self.trained_with, linearize_at=self.linearize_at, anchor=self.anchor, loss=self.unlearn_loss,
                               steps=self.steps)
        return dataclasses.replace(self, linearize_at=v["linearize_at"], anchor=v["anchor"], unlearn_loss=v["loss"],
                                   steps=v["steps"] if v["steps"] == "auto" else int(v["steps"]))

    def validate(self) -> "ExperimentConfig":
        if self.linearize_at not in ("auto", "w0", "trained"):
            raise ConfigError(f"linearize_at must be 'auto', 'w0' or 'trained', got {self.linearize_at!r}")
        if self.anchor not in ("auto", "fit", "trained", "retain", "by-request"):
            raise ConfigError(f"anchor must be 'auto', 'fit', 'trained', 'retain' or 'by-request' (CE), got {self.anchor!r}")
        if self.dataset not in ("digits", "fashion_mnist", "cifar10", "folder"):
            raise ConfigError(f"unknown dataset {self.dataset!r}; choose digits, fashion_mnist, cifar10 or folder")
        if self.forget not in ("random", "class"):
            raise ConfigError(f"forget must be 'random' or 'class', got {self.forget!r}")
        if self.forget == "random" and not (0 < self.forget_fraction < 1):
            raise ConfigError(f"forget_fraction must lie in (0, 1), got {self.forget_fraction}")
        if self.forget == "class" and not (0 <= self.forget_class < len(self.finetune_classes)):
            raise ConfigError(f"forget_class must lie in [0, {len(self.finetune_classes)}) (fine-tuning classes are relabelled 0..k-1)")
        if self.finetune not in ("linearized", "standard"):
            raise ConfigError(f"finetune must be 'linearized' or 'standard', got {self.finetune!r}")
        if self.peft not in ("batchnorm", "prompt"):
            raise ConfigError(f"peft must be 'batchnorm' or 'prompt', got {self.peft!r}")
        if self.finetune == "linearized" and self.finetune_loss != "mse":
            raise ConfigError("linearized fine-tuning is supported with finetune_loss='mse' (the setting where the update is exact)")
        if self.unlearn_loss not in ("auto", "mse", "ce"):
            raise ConfigError(f"unlearn_loss must be 'auto', 'mse' or 'ce', got {self.unlearn_loss!r}")
        if str(self.unlearn_ridge) not in ("auto", "train", "match"):
            try:
                if not float(self.unlearn_ridge) > 0:
                    raise ValueError
            except ValueError:
                raise ConfigError(f"unlearn_ridge must be 'auto', 'train', 'match' or a positive number, got {self.unlearn_ridge!r}") from None
        for b in self.baselines:
            if b not in ("FT", "GA", "NegGrad+", "dense"):
                raise ConfigError(f"unknown baseline {b!r}; choose from FT, GA, NegGrad+, dense")
        if self.steps != "auto":
            try:
                ok = not isinstance(self.steps, (bool, float)) and int(self.steps) >= 1
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ConfigError(f"steps must be 'auto' or an integer >= 1, got {self.steps!r}")
        if not (0 <= self.val_fraction < 1) or self.patience < 1:
            raise ConfigError(f"val_fraction must lie in [0, 1) and patience be >= 1, got {self.val_fraction}, {self.patience}")
        if self.epochs < 1 or self.batch_size < 1 or self.image_size < 4:
            raise ConfigError("epochs, batch_size must be >= 1 and image_size >= 4")
        out = Path(self.out_dir)
        if out.exists() and not out.is_dir():
            raise InvalidInputError(f"output path {str(out)!r} is a file; pass a directory with --out")
        return self


def build_model(name: str, num_classes: int, *, pretrained: bool = False, seed: int = 0, img_size: int | None = None):
    """A timm model (``zero_init_last=False`` for ResNets so the BN-only NTK is not degenerate)."""
    import timm

    if not timm.list_models(name) and name not in timm.list_models(pretrained=False):
        raise ConfigError(f"unknown timm model {name!r}; see timm.list_models()")
    torch.manual_seed(seed)
    kwargs = dict(pretrained=pretrained, num_classes=num_classes)
    if "vit" in name and img_size is not None:  # fastntk_vit_tiny included
        kwargs.update(img_size=img_size)
    try:
        return timm.create_model(name, zero_init_last=False, **kwargs)
    except TypeError:
        return timm.create_model(name, **kwargs)
    except Exception as e:  # pretrained weights need the internet
        if pretrained:
            raise ConfigError(f"cannot load pretrained weights for {name!r} ({str(e).splitlines()[0]}); run with pretrained=false offline") from None
        raise


def load_dataset(cfg: ExperimentConfig):
    """(pretrain set, fine-tune train set, fine-tune test set), images at ``cfg.image_size``."""
    from . import data as D

    if cfg.dataset == "digits":
        full = D.load_digits(size=cfg.image_size)
    elif cfg.dataset == "fashion_mnist":
        full = D.load_fashion_mnist("train", data_dir=cfg.data_dir, size=cfg.image_size)
    elif cfg.dataset == "cifar10":
        if cfg.data_dir is None:
            raise DataError("cifar10 needs data_dir (a folder with cifar-10-batches-py, or where to download it)")
        full = D.load_cifar10(cfg.data_dir, train=True, size=cfg.image_size)
    else:
        if cfg.data_dir is None:
            raise DataError("dataset 'folder' needs data_dir (an ImageFolder root: one sub-folder per class)")
        full = D.load_image_folder(cfg.data_dir, size=cfg.image_size)
    pre = D.split_by_classes(full, cfg.pretrain_classes)
    ft = D.split_by_classes(full, cfg.finetune_classes)
    train, test = D.train_test_split(ft, cfg.test_fraction, seed=cfg.seed)
    if cfg.limit is not None and len(train) > cfg.limit:
        train = train.subset(np.sort(np.random.default_rng(cfg.seed).choice(len(train), cfg.limit, replace=False)))
    return pre, train, test


def _cache_key(cfg: ExperimentConfig) -> str:
    keys = ("dataset", "image_size", "pretrain_classes", "model", "pretrained", "pretrain_epochs", "pretrain_lr", "seed")
    s = json.dumps({k: getattr(cfg, k) for k in keys}, sort_keys=True)
    return hashlib.sha256(s.encode()).hexdigest()[:16]


def _pretrained_backbone(cfg: ExperimentConfig, pre, progress: bool):
    """Pretrain the backbone on the pretraining classes (cached as safetensors)."""
    from .io import load_model_state, save_model_state
    from .train import pretrain

    model = build_model(cfg.model, len(cfg.pretrain_classes), pretrained=cfg.pretrained, seed=cfg.seed, img_size=cfg.image_size)
    cache = Path(cfg.cache_dir or os.environ.get("FASTNTK_CACHE", Path.home() / ".cache" / "fastntk"))
    ck = cache / f"backbone-{cfg.model}-{_cache_key(cfg)}.safetensors"
    t = time.perf_counter()
    if ck.is_file():
        load_model_state(ck, model)
        log.info("fastntk: backbone loaded from cache %s", ck)
        return model, 0.0, str(ck)
    if not cfg.pretrained:
        pretrain(model, pre, epochs=cfg.pretrain_epochs, lr=cfg.pretrain_lr, batch_size=cfg.batch_size, seed=cfg.seed, progress=progress)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        save_model_state(ck, model)
    except OSError as e:  # a read-only home is not fatal
        log.warning("fastntk: cannot cache the backbone (%s)", e)
    return model, time.perf_counter() - t, str(ck)


@dataclass
class Experiment:
    """Everything before unlearning: data, PEFT set, fine-tuned weights, the gold retrain and the noise floor.

    Built by :func:`setup_experiment`; :func:`run_experiment` and the benchmarks that compare unlearning
    variants on one fine-tuned model (``benchmarks/bench_variants.py``) start from it.  ``evaluate(w)`` gives
    a metrics row for PEFT weights ``w`` against the gold retrain.
    """

    cfg: ExperimentConfig
    peft: object
    model: torch.nn.Module
    train: object
    retain: object
    forget: object
    test: object
    r_idx: np.ndarray
    f_idx: np.ndarray
    w0: torch.Tensor
    w_trained: torch.Tensor
    ft: object
    gold: object
    floor: object
    linearized: bool
    lin: torch.Tensor | None
    pretrain_seconds: float
    checkpoint: str
    rows: dict
    times: dict
    val: object = None  # the validation split fine-tuning and retraining stopped on (None: no early stopping)

    def evaluate(self, w: torch.Tensor) -> dict:
        from .metrics import evaluate

        return evaluate(self.peft, w, self.retain, self.forget, self.test, reference_w=self.gold.w, linearize_at=self.lin,
                        seed=self.cfg.seed)

    def baseline(self, name: str):
        """Run one cheap baseline (``"FT"``, ``"GA"``, ``"NegGrad+"``) from the fine-tuned weights with the pipeline's recipe."""
        from . import baselines as B

        cfg, progress = self.cfg, self.cfg.progress
        if name == "FT":
            return B.finetune_retain(self.peft, self.train, self.f_idx, w_trained=self.w_trained, w0=self.w0,
                                     epochs=max(1, cfg.epochs // 4), lr=cfg.lr * 0.1, ridge=cfg.ridge, linearized=self.linearized,
                                     seed=cfg.seed, batch_size=cfg.batch_size, loss=cfg.finetune_loss, target_scale=cfg.target_scale,
                                     progress=progress)
        if name in ("GA", "NegGrad+"):
            fn = B.gradient_ascent if name == "GA" else B.neggrad_plus
            return fn(self.peft, self.train, self.f_idx, w_trained=self.w_trained, epochs=1, lr=cfg.lr * 0.1, seed=cfg.seed,
                      batch_size=cfg.batch_size, progress=progress, linearize_at=self.lin)
        raise ConfigError(f"unknown cheap baseline {name!r}; choose FT, GA or NegGrad+")


def setup_model(cfg: ExperimentConfig):
    """Data, backbone (pretrained, or loaded from the cache), new head, PEFT set: ``(train, test, peft, t_pre, ck)``.

    ``peft.model`` is the backbone in eval mode and ``peft.vector()`` is ``w0``; seeds are set as every run of the
    pipeline sets them, so the same config gives the same model.
    """
    from .peft import BatchNormPeft, PromptPeft

    torch.manual_seed(cfg.seed)
    pre, train, test = load_dataset(cfg)
    backbone, t_pre, ck = _pretrained_backbone(cfg, pre, cfg.progress)
    torch.manual_seed(cfg.seed + 1)
    backbone.reset_classifier(len(cfg.finetune_classes))
    backbone.eval()
    if cfg.peft == "batchnorm":
        peft = BatchNormPeft(backbone, include_head=cfg.include_head)
    else:
        if not hasattr(backbone, "blocks"):
            raise PeftError(f"peft='prompt' needs a ViT; {cfg.model!r} is not one (use peft='batchnorm')")
        peft = PromptPeft(backbone, num_prompts=cfg.num_prompts, seed=cfg.seed, include_head=cfg.include_head)
    log.info("fastntk: %s, PEFT %s with p = %d, |D| = %d, |test| = %d", cfg.model, cfg.peft, peft.p, len(train), len(test))
    return train, test, peft, t_pre, ck


def setup_experiment(cfg: ExperimentConfig) -> Experiment:
    """Data, backbone (pretrained or cached), PEFT set, forget split, fine-tuning, gold retrain, noise floor."""
    from . import baselines as B
    from .data import make_forget_split
    from .train import finetune_peft

    cfg = cfg.validate().resolved()
    train, test, peft, t_pre, ck = setup_model(cfg)
    val = None
    if cfg.val_fraction > 0:
        from .data import train_test_split

        train, val = train_test_split(train, cfg.val_fraction, seed=cfg.seed + 7)
    model = peft.model.eval()
    w0 = peft.vector().clone()
    # ---------------------------------------------------------------- forget split
    if cfg.forget == "random":
        r_idx, f_idx = make_forget_split(train.y, fraction=cfg.forget_fraction, seed=cfg.seed)
    else:
        r_idx, f_idx = make_forget_split(train.y, classes=[cfg.forget_class])
    retain, forget = train.subset(r_idx), train.subset(f_idx)
    # ---------------------------------------------------------------- fine-tune, retrain (gold), noise floor
    linearized = cfg.finetune == "linearized"
    recipe = dict(cfg.finetune_recipe(), val=val)
    ft = finetune_peft(peft, train, w0=w0, seed=cfg.seed, desc="fine-tune", **recipe)
    w_trained = ft.w.clone()
    gold = B.retrain(peft, train, f_idx, w0=w0, seed=cfg.seed, **recipe)
    floor = B.retrain(peft, train, f_idx, w0=w0, seed=cfg.seed + 1000, **{**recipe, "desc": "retrain (seed 2)"})
    peft.write(w_trained)
    e = Experiment(cfg=cfg, peft=peft, model=model, train=train, retain=retain, forget=forget, test=test, r_idx=r_idx,
                   f_idx=f_idx, w0=w0, w_trained=w_trained, ft=ft, gold=gold, floor=floor, linearized=linearized,
                   lin=w0 if linearized else None, pretrain_seconds=t_pre, checkpoint=ck, rows={},
                   times={"pretrain": t_pre, "finetune": ft.seconds, "retrain": gold.seconds}, val=val)
    e.rows["original"] = e.evaluate(w_trained)
    e.rows["retrain"] = e.evaluate(gold.w)
    e.rows["retrain (seed 2)"] = e.evaluate(floor.w)
    return e


def run_experiment(cfg: ExperimentConfig, dist: "DistContext | None" = None) -> dict | None:
    """Run the whole pipeline; return a JSON-able dict of results (see module doc).

    ``dist`` (torchrun, :class:`DistContext`): rank 0 runs the pipeline with the Fast-NTK step data-parallel over
    every rank and returns the results; the other ranks only join that step and return ``None``.
    """
    from .metrics import avg_gap
    from .unlearn import unlearn

    cfg = cfg.validate().resolved()
    if dist is not None:
        if not dist.is_rank0:
            return dist.follow()
        dist.begin(cfg)
    e = setup_experiment(cfg)
    progress = cfg.progress
    peft, model, train, retain, forget, test = e.peft, e.model, e.train, e.retain, e.forget, e.test
    r_idx, f_idx, w0, w_trained, gold = e.r_idx, e.f_idx, e.w0, e.w_trained, e.gold
    k, ck = len(cfg.finetune_classes), e.checkpoint
    ev, rows, times = e.evaluate, e.rows, e.times
    # ---------------------------------------------------------------- Fast-NTK
    t = time.perf_counter()
    ridge_u, ridge_info, src_D = cfg.ridge, None, None
    if str(cfg.unlearn_ridge) == "match" or (str(cfg.unlearn_ridge) == "auto" and cfg.unlearn_loss == "mse"):
        from .operators import make_jacobian
        from .unlearn import match_ridge

        # J_D at w0, cached once: shared by the ridge matching and the prepared Unlearner
        src_D = make_jacobian(peft, train.X, w=w0, strategy="cached", memory_budget=cfg.memory_budget, progress=progress)
        ridge_u, ridge_info = match_ridge(peft, (train.X, train.y), w_trained=w_trained, w0=w0, target_scale=cfg.target_scale,
                                          memory_budget=cfg.memory_budget, source=src_D)
    elif str(cfg.unlearn_ridge) == "auto":
        ridge_u = "auto"  # the library's rule (CE: fastntk.update.tilted), recorded in the result
    elif str(cfg.unlearn_ridge) != "train":
        ridge_u = float(cfg.unlearn_ridge)
    times["ridge selection"] = time.perf_counter() - t
    t = time.perf_counter()
    step_fn = unlearn if dist is None else dist.unlearn  # torchrun: data-parallel, every rank on its shard
    res = step_fn(model, peft, (retain.X, retain.y), (forget.X, forget.y), trained_with=cfg.trained_with, ridge=ridge_u, w0=w0,
                  linearize_at=cfg.linearize_at, form=cfg.form, loss=cfg.unlearn_loss, target_scale=cfg.target_scale,
                  scale=cfg.scale, steps=cfg.steps, strategy=cfg.strategy, memory_budget=cfg.memory_budget, rtol=cfg.rtol,
                  solver=cfg.solver, anchor=cfg.anchor, check_overlap=False,  # disjoint by index; images may repeat
                  preconditioner=cfg.preconditioner, progress=progress)
    times["Fast-NTK"] = time.perf_counter() - t + times["ridge selection"]
    rows["Fast-NTK"] = ev(res.w_new)
    prepared = None
    if cfg.prepared and (cfg.unlearn_loss == "mse" or cfg.trained_with == "ce"):
        # the deployment path: state prepared once on D before any request, then each request costs O(|D_f|)
        from .unlearn import Unlearner

        t = time.perf_counter()
        if cfg.unlearn_loss == "ce":
            u = Unlearner(model, peft, (train.X, train.y), trained_with="ce", ridge=ridge_u, w0=w0,
                          memory_budget=cfg.memory_budget, progress=progress).prepare()
        else:
            u = Unlearner(model, peft, (train.X, train.y), trained_with=cfg.trained_with, ridge=ridge_u, w0=w0,
                          linearize_at=cfg.linearize_at, anchor=cfg.anchor, target_scale=cfg.target_scale,
                          strategy=cfg.strategy, memory_budget=cfg.memory_budget, progress=progress,
                          source=src_D if cfg.linearize_at == "w0" else None).prepare()
        t_prep = time.perf_counter() - t + times["ridge selection"]  # the ridge is chosen before any request too
        t = time.perf_counter()
        req = u.forget(f_idx)
        times["Fast-NTK (prepared)"] = time.perf_counter() - t
        rows["Fast-NTK (prepared)"] = ev(u.w)
        prepared = {"prepare_seconds": t_prep, "request_seconds": times["Fast-NTK (prepared)"], "request": req.summary(),
                    # everything from the fine-tuned model to the unlearned one, J_D built once (ridge matching + factor + request)
                    "one_shot_seconds": t_prep + times["Fast-NTK (prepared)"],
                    "one_shot_ratio": (t_prep + times["Fast-NTK (prepared)"]) / max(gold.seconds, 1e-12),
                    "shared_jacobian": src_D is not None and cfg.linearize_at == "w0"}
    # ---------------------------------------------------------------- cheap baselines
    for name in ("FT", "GA", "NegGrad+"):
        if name in cfg.baselines:
            b = e.baseline(name)
            rows[name], times[name] = ev(b.w), b.seconds
    if "dense" in cfg.baselines:
        t = time.perf_counter()
        d = unlearn(model, peft, (retain.X, retain.y), (forget.X, forget.y), trained_with=cfg.trained_with, loss="mse",
                    ridge=ridge_u if ridge_u != "auto" else cfg.ridge, w0=w0, form="dense", check_overlap=False, anchor="fit",
                    linearize_at=cfg.linearize_at, target_scale=cfg.target_scale, strategy="stream")
        times["dense NTK"] = time.perf_counter() - t
        rows["dense NTK"] = ev(d.w_new)
    peft.write(w_trained)  # the pipeline leaves the fine-tuned model as it found it
    gold_m = rows["retrain"]
    for name, m in rows.items():
        m["avg_gap"] = avg_gap(m, gold_m)
        m["seconds"] = times.get(name, float("nan"))
        m["time_ratio"] = times.get(name, float("nan")) / max(gold.seconds, 1e-12)
    return {
        "config": dataclasses.asdict(cfg),
        "sizes": {"n_train": len(train), "n_retain": int(r_idx.size), "n_forget": int(f_idx.size), "n_test": len(test), "p": peft.p, "C": k},
        "noise_floor": rows["retrain (seed 2)"]["avg_gap"],
        "methods": rows,
        "unlearn": res.summary(),
        "unlearn_ridge": {"ridge": ridge_u, "seconds": times["ridge selection"], **(ridge_info or {})},
        "prepared": prepared,
        "backbone_checkpoint": ck,
    }


def results_markdown(result: dict) -> str:
    from .metrics import MetricsTable

    cols = ["UA", "RA", "TA", "MIA", "AD_f", "avg_gap", "seconds", "time_ratio"]
    t = MetricsTable(cols)
    for name, m in result["methods"].items():
        t.add(name, m)
    s = result["sizes"]
    u = result["unlearn"]
    prep = result.get("prepared")
    prep_s = (f"Fast-NTK (prepared): prepare once {prep['prepare_seconds']:.1f}s before any request, then the request "
              f"{prep['request_seconds']:.2f}s (one-shot from the fine-tuned model, J_D built once: {prep['one_shot_seconds']:.1f}s = "
              f"{prep['one_shot_ratio']:.2f}× retrain); ") if prep else ""
    head = (f"n_train={s['n_train']}, n_forget={s['n_forget']}, p={s['p']}, C={s['C']}; {prep_s}"
            f"Fast-NTK form={u['form']} strategy={u['strategy']} ({u['reasons'].get('form', '')}); "
            f"noise floor (retrain vs retrain, other seed) = {result['noise_floor']:.2f} pp\n\n")
    return head + t.to_markdown() + "\n\nUA, TA, MIA, RA in %; avg_gap = mean |metric − retrain| over UA, RA, TA, MIA in pp (lower is better); " \
        "AD_f = activation distance to retrain on D_f (lower is better); time_ratio = seconds ÷ retrain seconds.\n"


def write_report(result: dict, out_dir) -> dict:
    """Write ``results.json``, ``results.md`` and ``results.png`` atomically into ``out_dir``."""
    from .io import atomic_write_bytes, atomic_write_json, atomic_write_text

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"output path {str(out)!r} is a file; pass a directory")
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": str(atomic_write_json(out / "results.json", result)), "md": str(atomic_write_text(out / "results.md", results_markdown(result)))}
    try:
        import io

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = list(result["methods"])
        gaps = [result["methods"][n]["avg_gap"] for n in names]
        fig, ax = plt.subplots(figsize=(7, 3.2))
        ax.bar(names, gaps, color=["#888" if n.startswith("retrain") or n == "original" else "#2a7" if n.startswith("Fast-NTK") else "#47a" for n in names])
        ax.axhline(result["noise_floor"], ls="--", c="k", lw=1, label="noise floor")
        ax.set_ylabel("avg gap to retrain (pp)")
        ax.legend()
        plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        paths["png"] = str(atomic_write_bytes(out / "results.png", buf.getvalue()))
    except Exception as e:  # plotting is optional
        log.warning("fastntk: plot not written (%s)", e)
    return paths


# ====================================================================== torchrun: one process per device
# Keys of unlearn() that the data-parallel step (fastntk.distributed.unlearn_distributed) takes as they are, that it
# ignores, and the values it accepts for the others (it computes the MSE kernel update at w0: anchor "fit", primal
# form, conjugate gradients, no preconditioner).  Any other key must keep unlearn()'s default.
_DIST_PASS = ("ridge", "w0", "target_scale", "strategy", "memory_budget", "batch_size", "rtol", "maxiter")
_DIST_IGNORED = ("progress", "check_overlap")
_DIST_ACCEPTED = {"form": ("auto", "primal"), "solver": ("auto", "cg"), "preconditioner": (None, "none", "auto"), "scale": (None, 1, 1.0),
                  "linearize_at": ("auto", "w0"), "anchor": ("auto", "fit"), "loss": ("auto", "mse"), "steps": ("auto", 1),
                  "trained_with": ("linearized-mse", "mse")}


def _unlearn_keywords() -> dict:
    """Every keyword :func:`fastntk.unlearn.unlearn` takes (its own and its options' fields), with its default."""
    import inspect

    from .unlearn import unlearn
    from .update.options import option_defaults

    own = {k: p.default for k, p in inspect.signature(unlearn).parameters.items() if p.kind is p.KEYWORD_ONLY}
    return {**option_defaults(), **own}


def _same(a, b) -> bool:
    try:
        return a is b or (type(a) is type(b) and bool(a == b))
    except Exception:  # noqa: BLE001 - tensors, arrays: not a default
        return False


class DistContext:
    """The ``torch.distributed`` side of :func:`run_experiment`: ``torchrun --nproc-per-node=N -m fastntk run ...``.

    Rank 0 runs the whole pipeline (data, backbone + cache, fine-tuning, retraining, evaluation, baselines) exactly as
    one process does; the other ranks (followers) only join the Fast-NTK step.  There rank 0 scatters, to every
    follower, the PEFT model as fine-tuned (pickled: frozen weights, buffers, ``w_trained``), ``w0``, the chosen ridge
    and that rank's shard of the retain and forget sets; every rank then runs
    :func:`fastntk.distributed.unlearn_distributed` on its shard (each keeps its own rows of ``J`` when cached) and
    all get the same ``Δ``.  Only rank 0 writes files and prints; followers return ``None``.

    Failures: every hand-over point (before the step, after the pipeline, after rank 0 wrote the report) starts with
    an all-gather of each rank's status, so a rank that fails outside a collective reports at whichever point its
    peers wait (:meth:`fail`) and every rank raises (:class:`~fastntk.distributed.DistributedError` on the others);
    a failure inside the step reaches the peers through the step's own collectives.  The report is written only once
    every rank finished, so a failure anywhere leaves nothing written.
    """

    def __init__(self, group=None):
        import torch.distributed as tdist

        if not (tdist.is_available() and tdist.is_initialized()):
            raise InvalidInputError("DistContext needs torch.distributed initialised (torchrun, or init_process_group)")
        self.group = group
        self.rank, self.world_size = tdist.get_rank(group), tdist.get_world_size(group)
        self.backend = str(tdist.get_backend(group))
        self._in_step = False  # inside the collective step: a failure reaches the peers through its collectives
        self._failed = False  # a status exchange carried a failure: every rank knows

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0

    def describe(self) -> dict:
        return {"world_size": self.world_size, "backend": self.backend}

    def _collective(self, fn, *args, **kwargs):
        from .distributed import DistributedError

        try:
            return fn(*args, group=self.group, **kwargs)
        except RuntimeError as e:  # gloo/nccl: a peer died or timed out
            self._failed = True
            raise DistributedError(f"rank {self.rank}: lost contact with the other ranks ({str(e).splitlines()[0]}); "
                                   "nothing was written") from None

    def _exchange(self, ok: bool, message: str = ""):
        """Every rank's status to every rank; raise on the ranks that were fine when another one failed."""
        import torch.distributed as tdist

        from .distributed import DistributedError

        statuses = [None] * self.world_size
        self._collective(tdist.all_gather_object, statuses, (bool(ok), str(message)))
        bad = [(r, m) for r, (o, m) in enumerate(statuses) if not o]
        if bad:
            self._failed = True
            if ok:
                raise DistributedError("; ".join(f"rank {r} failed: {m}" for r, m in bad) + "; nothing was written")

    def agree(self):
        """A hand-over point: returns when every rank got here without error, raises if one failed."""
        self._exchange(True)

    def fail(self, message: str):
        """Tell the peers this rank failed (at whichever hand-over point they wait); no-op inside the step or twice."""
        if self._failed or self._in_step:
            return
        self._failed = True
        try:
            self._exchange(False, message)
        except Exception:  # noqa: BLE001 - the peers are gone already; the local error is reported by the caller
            pass

    def close(self):
        import torch.distributed as tdist

        try:
            tdist.destroy_process_group(self.group)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass

    @staticmethod
    def step_options(kw: dict, dtype=None) -> dict:
        """The keys of ``kw`` (``unlearn()``'s) for ``unlearn_distributed``; :class:`ConfigError` for what it cannot do."""
        defaults = _unlearn_keywords()
        bad = []
        for k, v in kw.items():
            if k in _DIST_PASS or k in _DIST_IGNORED:
                continue
            ok = any(_same(v, a) for a in _DIST_ACCEPTED[k]) if k in _DIST_ACCEPTED else k in defaults and _same(v, defaults[k])
            if not ok:
                bad.append(f"{k}={v!r}")
        if bad:
            raise ConfigError(f"the data-parallel Fast-NTK step (torchrun, fastntk.distributed.unlearn_distributed) computes the "
                              f"MSE kernel update at w0 (anchor 'fit', primal form, CG, no preconditioner) and cannot run "
                              f"{', '.join(bad)}; change these options or run in one process")
        opts = {k: kw[k] for k in _DIST_PASS if k in kw}
        from .update.plan import rtol_floor

        rtol, floored = rtol_floor(float(opts.get("rtol", 1e-8)), dtype)  # as unlearn(): float32 cannot certify less
        if floored:
            opts["rtol"] = rtol
        return opts

    def begin(self, cfg: ExperimentConfig):
        """Rank 0, before any training: fail early on options the data-parallel step cannot run (hand-over 0)."""
        names = set(_unlearn_keywords())
        kw = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name in names}
        kw["loss"] = cfg.unlearn_loss
        self.step_options(kw)
        self.agree()

    def unlearn(self, model, peft, retain, forget, **kw):
        """Rank 0's Fast-NTK step (called like :func:`fastntk.unlearn.unlearn` with ``(X, y)`` pairs)."""
        import torch.distributed as tdist

        from .distributed import unlearn_distributed

        opts = self.step_options(kw, peft.dtype)
        shards = [tuple(np.array_split(np.arange(int(d[0].shape[0])), self.world_size)) for d in (retain, forget)]

        def part(d, idx):
            return d[0][idx], d[1][idx]

        payloads = [None] + [{"peft": peft, "retain": part(retain, shards[0][r]), "forget": part(forget, shards[1][r]), "opts": opts}
                             for r in range(1, self.world_size)]
        self.agree()  # hand-over 1: every rank is up (a follower that failed says so here)
        self._in_step = True
        self._collective(tdist.scatter_object_list, [None], payloads, src=0)
        res = unlearn_distributed(model, peft, part(retain, shards[0][0]), part(forget, shards[1][0]), group=self.group, **opts)
        if opts.get("rtol") != kw.get("rtol"):
            res.reasons["rtol"] = f"float32 operators: CG rtol raised from {kw.get('rtol'):g} to {opts['rtol']:g}"
        self._in_step = False
        return res

    def follow(self):
        """A follower's part of :func:`run_experiment`: wait for rank 0, then its shard of the Fast-NTK step."""
        import torch.distributed as tdist

        from .distributed import unlearn_distributed

        self.agree()  # hand-over 0: the config is runnable (rank 0's begin())
        self.agree()  # hand-over 1 (rank 0 reaches it after fine-tuning, retraining and the ridge selection)
        self._in_step = True
        got = [None]
        self._collective(tdist.scatter_object_list, got, None, src=0)
        pl = got[0]
        unlearn_distributed(pl["peft"].model, pl["peft"], pl["retain"], pl["forget"], group=self.group, **pl["opts"])
        self._in_step = False
        return None
