"""The ``fastntk`` command line: ``fastntk demo`` and ``fastntk run``.

``fastntk demo``  the embedded default: digits (bundled with scikit-learn), a
                  small timm CNN, BN-only PEFT, 10 % random forgetting; prints
                  the table, writes JSON + Markdown + PNG.
``fastntk run``   the same pipeline with flags or a TOML config (``--config``).

Under ``torchrun --nproc-per-node=N -m fastntk run ...`` (``WORLD_SIZE`` > 1) every process joins the process
group (gloo; ``cpu:gloo,cuda:nccl`` when CUDA is available: the pipeline's tensors live on the CPU) and rank 0 runs
the pipeline with the Fast-NTK step data-parallel over all ranks (:class:`fastntk.pipeline.DistContext`); only
rank 0 writes and prints, the others print errors only.  ``FASTNTK_DIST_TIMEOUT`` (seconds, default 6 h) bounds
how long a rank waits for its peers (the followers wait while rank 0 fine-tunes and retrains).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys

from .errors import FastNTKError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    from .pipeline import ExperimentConfig

    p = argparse.ArgumentParser(prog="fastntk", description="Fast-NTK machine unlearning (NTK restricted to PEFT parameters)")
    sub = p.add_subparsers(dest="cmd", required=True)
    demo = sub.add_parser("demo", help="run the embedded default experiment (digits, no download)")
    demo.add_argument("--out", default="runs/demo", help="output directory")
    demo.add_argument("--quiet", action="store_true")
    run = sub.add_parser("run", help="run an experiment from flags and/or a TOML config")
    run.add_argument("--config", help="TOML file with experiment keys (same names as the flags)")
    run.add_argument("--out", dest="out_dir")
    run.add_argument("--quiet", action="store_true")
    defaults = ExperimentConfig()
    for f in dataclasses.fields(ExperimentConfig):
        if f.name in ("out_dir", "progress"):
            continue
        flag = "--" + f.name.replace("_", "-")
        d = getattr(defaults, f.name)
        if isinstance(d, bool):
            run.add_argument(flag, dest=f.name, type=lambda s: s.lower() in ("1", "true", "yes"), default=None, metavar="BOOL")
        elif isinstance(d, list):
            run.add_argument(flag, dest=f.name, default=None, help=f"comma-separated (default {d})")
        elif isinstance(d, (int, float)) and not isinstance(d, bool):
            run.add_argument(flag, dest=f.name, type=type(d), default=None, help=f"default {d}")
        else:
            run.add_argument(flag, dest=f.name, default=None, help=f"default {d}")
    return p


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
            v = None if str(v).lower() == "none" else (int(v) if f.name == "limit" else float(v))
        d[f.name] = v
    d["progress"] = not args.quiet
    return ExperimentConfig.from_dict(d)


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

            cfg = _config_from_args(args).validate()
            cfg.progress = cfg.progress and rank0
            logging.getLogger("fastntk").info("fastntk: config %s", json.dumps(dataclasses.asdict(cfg)))
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
