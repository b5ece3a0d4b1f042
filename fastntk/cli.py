"""The ``fastntk`` command line: ``fastntk demo`` and ``fastntk run``.

``fastntk demo``  the embedded default (:mod:`fastntk.demo`): digits (bundled with scikit-learn), a
                  small BN CNN fine-tuned with cross-entropy, one whole class forgotten beside a
                  random 10 % request; prints the table, writes JSON + Markdown + PNG.
``fastntk run``   the same pipeline with flags or a TOML config (``--config``).

Under ``torchrun --nproc-per-node=N -m fastntk run ...`` (``WORLD_SIZE`` > 1) every process joins the process
group (gloo; ``cpu:gloo,cuda:nccl`` when CUDA is available: the pipeline's tensors live on the CPU) and rank 0 runs
the pipeline with the Fast-NTK step data-parallel over all ranks (:class:`fastntk.pipeline.DistContext`); only
rank 0 writes and prints, the others print errors only.  ``FASTNTK_DIST_TIMEOUT`` (seconds, default 6 h) bounds
how long a rank waits for its peers (the followers wait while rank 0 fine-tunes and retrains).

Every key of :class:`fastntk.pipeline.ExperimentConfig` is a flag of ``fastntk run`` (``--forget-class`` for
``forget_class``) with the help text of :data:`HELP`; the chosen configuration is logged as a ``key = value``
table (:func:`format_config`).  The options are explained in docs/guide.md, the formulas in docs/theory.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys

from .errors import FastNTKError

__all__ = ["main", "HELP", "format_config"]

# One line per ExperimentConfig field (tests/test_cli_help.py checks that every field has one).  The defaults
# are appended by the parser from ExperimentConfig itself, so they cannot drift from the code.
HELP: dict[str, str] = {
    # data
    "dataset": "data set: digits (bundled with scikit-learn, no download), fashion_mnist, cifar10 or folder "
               "(an ImageFolder root in --data-dir)",
    "data_dir": "where the data set lives (Fashion-MNIST IDX files, cifar-10-batches-py, or the ImageFolder root); "
                "digits needs none",
    "image_size": "images are resized to N × N pixels (N >= 4)",
    "limit": "keep at most N fine-tuning training images (a random subset, fixed by --seed); 'none' for all",
    "pretrain_classes": "classes the backbone is pretrained on (comma-separated class indices)",
    "finetune_classes": "classes of the fine-tuning task, relabelled 0..k-1 (comma-separated class indices)",
    "test_fraction": "fraction of the images held out as the test set",
    # model
    "model": "timm model name of the backbone (e.g. resnet10t, resnet18, fastntk_cnn_tiny, vit_tiny_patch16_224)",
    "pretrained": "start from timm's pretrained weights (needs the internet) instead of pretraining here",
    "peft": "the unlearned parameters: batchnorm (BN affine parameters) or prompt (visual prompt tokens of a ViT)",
    "num_prompts": "number of prompt tokens (--peft prompt)",
    "include_head": "also fine-tune (and unlearn) the classification head",
    "pretrain_epochs": "epochs of backbone pretraining on --pretrain-classes (the result is cached)",
    "pretrain_lr": "learning rate of backbone pretraining",
    # fine-tuning
    "finetune": "fine-tuning kind: linearized (train the first-order Taylor model at w0: the update is then exact) "
                "or standard (ordinary fine-tuning of the network)",
    "finetune_loss": "fine-tuning loss: mse (on scaled one-hot targets) or ce (cross-entropy)",
    "epochs": "fine-tuning epochs (the maximum with --val-fraction > 0); retraining replays the same recipe",
    "lr": "fine-tuning learning rate",
    "batch_size": "mini-batch size of fine-tuning, retraining and the streamed Jacobian products",
    "ridge": "weight decay λ of fine-tuning (the ridge of the linearized fit with --unlearn-ridge train)",
    "target_scale": "one-hot targets are scaled by this factor for the MSE loss",
    "val_fraction": "hold out this fraction of the fine-tuning images for early stopping (never trained on, never "
                    "forgotten); 0 trains for exactly --epochs",
    "patience": "early stopping: stop after this many epochs without a better validation accuracy",
    # forgetting
    "forget": "what to forget: random (a random fraction of the training images) or class (one whole class)",
    "forget_fraction": "fraction of the training images to forget (--forget random), in (0, 1)",
    "forget_class": "class to forget (--forget class), an index into --finetune-classes",
    # unlearning
    "form": "form of the update: dual (kernel space, the paper's closed form), primal (one Newton step in parameter "
            "space), woodbury (forget-space form through a factor of G_D + λI), dense (explicit NTK, small n), "
            "auto (the smaller space; the reason is logged)",
    "unlearn_ridge": "ridge λ of the unlearning update: train (the fine-tuning ridge), match (the effective ridge "
                     "of the early-stopped fine-tuning, fastntk.unlearn.match_ridge) or a positive number",
    "unlearn_loss": "loss of the update: mse (kernel ridge regression) or ce (cross-entropy Gauss-Newton with a line "
                    "search on the retain loss)",
    "linearize_at": "where J is taken: w0 (the weights before fine-tuning), trained (the fine-tuned weights) or auto "
                    "(w0 after linearized, trained after standard fine-tuning)",
    "strategy": "Jacobian strategy: stream (JVP/VJP passes, O(p) memory), cached (per-sample J in memory, within "
                "--memory-budget) or auto",
    "solver": "linear solves: direct (float64 Cholesky in the smaller space; needs the cached J), cg (matrix-free "
              "Krylov) or auto (direct when min(p, n_r·C) <= 4096)",
    "anchor": "what the update starts from: fit (Δ = w*_{D_r} − w*_D, exact for linearized fine-tuning), trained "
              "(Newton step from the trained weights), retain (Newton step with the full retain gradient) or auto "
              "(fit after linearized, trained after standard fine-tuning)",
    "memory_budget": "bytes a cached Jacobian may use (strategy auto/cached); above it J is streamed",
    "rtol": "relative residual tolerance of the iterative solves, ‖b − Ax‖ <= rtol·‖b‖ (floored at 1e-4 in float32)",
    "preconditioner": "preconditioner of the CG solves: auto (Nyström where the cross-entropy route solves with rows held in "
                      "memory, none elsewhere), none, jacobi (diagonal of the operator) or nystrom (randomized low-rank)",
    "scale": "multiply the update by this factor; trapezium (average of the kernels at w0 and at the trained "
             "weights) or none for the plain update",
    "steps": "linearization steps: k > 1 adds k − 1 line-searched Gauss-Newton steps relinearized at the current "
             "weights; auto is 1",
    "prepared": "also run the prepared Unlearner (prepare once on the whole training set, then answer the request)",
    "baselines": "comparison methods (comma-separated): FT (fine-tune on the retain set), GA (gradient ascent on the "
                 "forget set), NegGrad+, dense (Golatkar's dense NTK update, small n)",
    "seed": "random seed of the data split, the forget set, the models and training",
    "out_dir": "output directory for results.json, results.md and results.png",
    "cache_dir": "cache of pretrained backbones (default $FASTNTK_CACHE or ~/.cache/fastntk)",
    "progress": "show progress bars (--quiet turns them off)",
}


def _parser() -> argparse.ArgumentParser:
    from .pipeline import ExperimentConfig

    p = argparse.ArgumentParser(prog="fastntk", description="Fast-NTK machine unlearning (NTK restricted to PEFT parameters)")
    sub = p.add_subparsers(dest="cmd", required=True)
    demo = sub.add_parser("demo", help="run the embedded default experiment (digits, no download)",
                          description="The embedded default: digits, a small BN CNN fine-tuned with cross-entropy (BN + "
                                      "head PEFT, early stopping), one whole class forgotten beside a random 10 %% "
                                      "request; Fast-NTK against retraining, a second retraining (noise floor), FT, GA "
                                      "and NegGrad+. Writes demo.json, demo.md, demo.png.")
    demo.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    run = sub.add_parser("run", help="run an experiment from flags and/or a TOML config",
                         description="Every key of fastntk.pipeline.ExperimentConfig is a flag; flags override "
                                     "--config. Which options for which model: docs/guide.md.")
    run.add_argument("--config", metavar="FILE", help="TOML file with experiment keys (the flag names with '_' "
                                                     "for '-', optionally under [experiment])")
    run.add_argument("--out", dest="out_dir", help=_help("out_dir", ExperimentConfig().out_dir))
    run.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    defaults = ExperimentConfig()
    for f in dataclasses.fields(ExperimentConfig):
        if f.name in ("out_dir", "progress"):
            continue
        flag = "--" + f.name.replace("_", "-")
        d = getattr(defaults, f.name)
        h = _help(f.name, d)
        if isinstance(d, bool):
            run.add_argument(flag, dest=f.name, type=_bool, default=None, metavar="BOOL", help=h)
        elif isinstance(d, list):
            run.add_argument(flag, dest=f.name, default=None, metavar="A,B,...", help=h)
        elif isinstance(d, (int, float)) and not isinstance(d, bool):
            run.add_argument(flag, dest=f.name, type=type(d), default=None, metavar=type(d).__name__.upper(), help=h)
        else:
            run.add_argument(flag, dest=f.name, default=None, metavar="VALUE", help=h)
    return p


def _help(name: str, default) -> str:
    """The help line of a config field with its default (a missing entry of HELP is a KeyError: tested)."""
    d = ",".join(map(str, default)) if isinstance(default, list) else default
    return f"{HELP[name]} (default: {d})".replace("%", "%%")


def _bool(s: str) -> bool:
    v = s.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def format_config(cfg) -> str:
    """The configuration as an aligned ``key = value`` table, one field per line, in declaration order."""
    d = dataclasses.asdict(cfg)
    width = max(map(len, d))
    lines = []
    for k, v in d.items():
        if isinstance(v, list):
            v = ", ".join(map(str, v)) if v else "(none)"
        elif v is None:
            v = "none"
        lines.append(f"  {k:<{width}} = {v}")
    return "\n".join(lines)


def _config_from_args(args):
    from .pipeline import ExperimentConfig

    if args.cmd == "demo":
        return ExperimentConfig(out_dir=args.out, progress=not args.quiet)
    base = ExperimentConfig.from_toml(args.config) if args.config else ExperimentConfig()
    d = dataclasses.asdict(base)
    for f in dataclasses.fields(ExperimentConfig):
        v = getattr(args, f.name, None)
        if v is None:
            continue
        if isinstance(d[f.name], list):
            parts = [s for s in str(v).split(",") if s]
            v = [int(s) for s in parts] if f.name.endswith("classes") else parts
        elif f.name in ("scale", "limit") and v is not None:
            v = _scale_or_limit(f.name, str(v))
        d[f.name] = v
    d["progress"] = not args.quiet
    return ExperimentConfig.from_dict(d)


def _demo(args) -> int:
    """``fastntk demo``: both requests of :mod:`fastntk.demo`, the table, the sentence on how to read it, the files."""
    from .demo import demo_config, demo_markdown, run_demo

    logging.getLogger("fastntk").info("fastntk: demo configuration (class request; the random one differs in forget)\n%s",
                                      format_config(demo_config(args.out, not args.quiet)))
    results, paths = run_demo(args.out, progress=not args.quiet)
    print(demo_markdown(results))
    print("wrote " + ", ".join(paths.values()))
    return 0


def _scale_or_limit(name: str, v: str):
    from .errors import ConfigError

    if v.lower() == "none":
        return None
    if name == "scale" and v.lower() == "trapezium":
        return "trapezium"
    try:
        return int(v) if name == "limit" else float(v)
    except ValueError:
        want = "an integer or none" if name == "limit" else "a number, trapezium or none"
        raise ConfigError(f"--{name} must be {want}, got {v!r}") from None


def _init_distributed():
    """torchrun (``WORLD_SIZE`` > 1): join the process group and return a :class:`DistContext`; else ``None``."""
    world = os.environ.get("WORLD_SIZE", "1")
    if not world.isdigit() or int(world) <= 1:
        return None
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    from .distributed import DistributedError
    from .errors import ConfigError
    from .pipeline import DistContext

    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise ConfigError(f"WORLD_SIZE={world} but {', '.join(missing)} not set: launch with torchrun --nproc-per-node=N -m fastntk run ...")
    try:
        timeout = float(os.environ.get("FASTNTK_DIST_TIMEOUT", 6 * 3600))
    except ValueError:
        raise ConfigError(f"FASTNTK_DIST_TIMEOUT must be a number of seconds, got {os.environ['FASTNTK_DIST_TIMEOUT']!r}") from None
    backend = "gloo"
    if torch.cuda.is_available():  # CPU tensors (the pipeline's) over gloo, CUDA tensors over NCCL
        backend = "cpu:gloo,cuda:nccl"
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
    except (RuntimeError, ValueError) as e:
        raise DistributedError(f"rank {os.environ['RANK']}: cannot join the process group ({str(e).splitlines()[0]})") from None
    return DistContext()


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        ctx = _init_distributed()
    except FastNTKError as e:
        print(f"fastntk: error: {e}", file=sys.stderr)
        return 2
    rank0 = ctx is None or ctx.is_rank0
    # the other ranks print errors only (warnings go through logging)
    level = logging.ERROR if not rank0 else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s")
    logging.captureWarnings(not rank0)
    try:
        try:
            from .pipeline import results_markdown, run_experiment, write_report

            if args.cmd == "demo":
                return _demo(args)
            cfg = _config_from_args(args).validate()
            cfg.progress = cfg.progress and rank0
            logging.getLogger("fastntk").info("fastntk: configuration\n%s", format_config(cfg))
            result = run_experiment(cfg, dist=ctx)
            if ctx is not None:
                ctx.agree()  # every rank finished: only now does rank 0 write
                if rank0:
                    result["distributed"] = ctx.describe()
            paths = write_report(result, cfg.out_dir) if rank0 else {}
            if ctx is not None:
                ctx.agree()  # rank 0 wrote the report: the followers exit 0 only now
        except Exception as e:
            if ctx is not None:  # the peers learn it at their next hand-over point (unless the step's collectives told them)
                ctx.fail(f"{type(e).__name__}: {e}")
            raise
    except FastNTKError as e:
        where = f" (rank {ctx.rank})" if ctx is not None and not str(e).startswith(f"rank {ctx.rank}:") else ""
        print(f"fastntk: error{where}: {e}", file=sys.stderr)
        return 2
    finally:
        if ctx is not None:
            ctx.close()
    if not rank0:
        return 0
    print(results_markdown(result))
    print("wrote " + ", ".join(paths.values()))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
