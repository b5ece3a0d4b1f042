"""The fine-tuned setting shared by bench_forget_size.py and bench_unlearn_vs_retrain.py.

The pieces of :func:`fastntk.pipeline.run_experiment` up to the fine-tuned model, reused as they are:
:class:`~fastntk.pipeline.ExperimentConfig`, :func:`~fastntk.pipeline.load_dataset`, the backbone
pretraining cache, :func:`fastntk.train.finetune_peft` (linearized MSE fine-tuning, so that the
gold-standard retrain -- the same recipe on ``D_r`` -- is the model unlearning aims at), and the
evaluation of :mod:`fastntk.metrics` against that retrain.

Threads: both scripts run torch with ONE thread by default (``--threads``).  On this 2-core machine, shared with
other jobs, a 2-thread OpenMP pool is pathological whenever the cores are busy: ``torch.linalg.eigh`` of a 549 × 549
matrix took 5.0 s with 2 threads and 0.07 s with 1 thread at load 6.8 (measured while writing these scripts), so
timings and the ratios between phases depend on the load far more than on the method.  One thread keeps every
method's timing comparable; on an idle machine two threads would speed up retraining and unlearning alike.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch


def add_setting_args(ap, quick_help: str) -> None:
    """The command-line options both scripts share (the setting, threads, memory budget, output folder)."""
    from benchmarks._common import RESULTS

    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument("--limit", type=int, default=10000, help="fine-tuning images")
    ap.add_argument("--size", type=int, default=16, help="image size (px)")
    ap.add_argument("--model", default="fastntk_cnn_small")
    ap.add_argument("--epochs", type=int, default=4, help="fine-tuning epochs (the retrain replays them)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1, see the module doc; 0 = torch's choice)")
    ap.add_argument("--memory-budget", type=float, default=2e9, help="bytes for a cached J")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=RESULTS, help="results folder (default benchmarks/results)")


def setup(args):
    """Threads, config, data, backbone, the one fine-tuning (:func:`build`): ``(setting, log, t0)``,
    ``log(msg)`` printing with the seconds since ``t0``."""
    from benchmarks._common import set_threads

    t0 = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", flush=True)

    set_threads(args.threads)
    cfg = make_config(args.quick, limit=args.limit, size=args.size, model=args.model, epochs=args.epochs, seed=args.seed)
    S = build(cfg)
    log(f"fine-tuned {cfg.model} on n={S.n} ({cfg.dataset}) in {S.finetune_seconds:.1f}s; p={S.peft.p}; "
        f"source= available: {source_kwarg_available()}")
    return S, log, t0


def make_config(quick: bool, *, limit: int, size: int, model: str, epochs: int, seed: int = 0):
    """Full runs: Fashion-MNIST at ``size`` px, ``limit`` fine-tuning images; ``quick``: digits, 300 images, 1 epoch."""
    from fastntk.pipeline import ExperimentConfig

    return ExperimentConfig(
        dataset="digits" if quick else "fashion_mnist", image_size=8 if quick else size, model=model,
        limit=300 if quick else limit, epochs=1 if quick else epochs, pretrain_epochs=1 if quick else 2,
        batch_size=128, lr=1e-2, finetune="linearized", seed=seed, progress=False, prepared=False, baselines=[],
    ).validate()


@dataclass
class Setting:
    cfg: object
    peft: object
    model: object
    w0: torch.Tensor
    w_trained: torch.Tensor
    train: object
    test: object
    recipe: dict
    finetune_seconds: float
    pretrain_seconds: float

    @property
    def n(self) -> int:
        return len(self.train)

    @property
    def k(self) -> int:
        return len(self.cfg.finetune_classes)

    def restore(self) -> None:
        """Put the fine-tuned weights back into the model (every method starts from them)."""
        self.peft.write(self.w_trained)

    def retrain(self, f_idx, *, seed_offset: int = 0):
        """The gold standard: the fine-tuning recipe on ``D_r`` (``seed_offset`` ≠ 0: the noise-floor retrain)."""
        from fastntk.baselines import retrain

        out = retrain(self.peft, self.train, f_idx, w0=self.w0, seed=self.cfg.seed + seed_offset, **self.recipe)
        self.restore()
        return out

    def evaluate(self, w, r_idx, f_idx, gold_w) -> dict:
        """Metrics of the linearized model at ``w`` (``fastntk.metrics.evaluate``) against the retrain ``gold_w``."""
        from fastntk.metrics import evaluate

        return evaluate(self.peft, w, self.train.subset(r_idx), self.train.subset(f_idx), self.test,
                        reference_w=gold_w, linearize_at=self.w0, seed=self.cfg.seed)

    def split(self, spec) -> tuple[np.ndarray, np.ndarray]:
        """``("random", fraction)`` (at least one sample) or ``("class", [c, ...])`` -> (retain idx, forget idx)."""
        from fastntk.data import make_forget_split

        kind, val = spec
        if kind == "random":
            k = max(1, int(round(float(val) * self.n)))
            f = np.sort(np.random.default_rng(self.cfg.seed).choice(self.n, k, replace=False))
            return make_forget_split(self.train.y, indices=f)
        return make_forget_split(self.train.y, classes=list(val))


def build(cfg) -> Setting:
    """Load the data, pretrain (or load from the cache) the backbone, fine-tune BN + head once."""
    from fastntk.pipeline import setup_model
    from fastntk.train import finetune_peft

    train, test, peft, t_pre, _ = setup_model(cfg)
    w0 = peft.vector().clone()
    recipe = cfg.finetune_recipe()
    t = time.perf_counter()
    ft = finetune_peft(peft, train, w0=w0, seed=cfg.seed, desc="fine-tune", **recipe)
    t_ft = time.perf_counter() - t
    return Setting(cfg=cfg, peft=peft, model=peft.model.eval(), w0=w0, w_trained=ft.w.clone(), train=train, test=test,
                   recipe=recipe, finetune_seconds=t_ft, pretrain_seconds=t_pre)


def source_kwarg_available() -> dict:
    """Which of ``match_ridge`` / ``Unlearner`` take a prebuilt Jacobian source (``source=``)."""
    import inspect

    from fastntk.unlearn import Unlearner, match_ridge

    return {"match_ridge": "source" in inspect.signature(match_ridge).parameters,
            "Unlearner": "source" in inspect.signature(Unlearner.__init__).parameters}

