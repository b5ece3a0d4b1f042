"""The ``fastntk`` command line: ``fastntk demo`` and ``fastntk run``.

``fastntk demo``  the embedded default: digits (bundled with scikit-learn), a
                  small timm CNN, BN-only PEFT, 10 % random forgetting; prints
                  the table, writes JSON + Markdown + PNG.
``fastntk run``   the same pipeline with flags or a TOML config (``--config``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
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


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        from .pipeline import results_markdown, run_experiment, write_report

        cfg = _config_from_args(args).validate()
        logging.getLogger("fastntk").info("fastntk: config %s", json.dumps(dataclasses.asdict(cfg)))
        result = run_experiment(cfg)
        paths = write_report(result, cfg.out_dir)
    except FastNTKError as e:
        print(f"fastntk: error: {e}", file=sys.stderr)
        return 2
    print(results_markdown(result))
    print("wrote " + ", ".join(paths.values()))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
