"""End-to-end benchmark: Fashion-MNIST, Fast-NTK vs retraining vs cheap baselines, several seeds.

For each scenario (random 10 %, one whole class) and seed: pretrain a backbone on classes 0–4, fine-tune
BN + head on classes 5–9 (linearized MSE fine-tuning by default), forget, and compare every method with
the gold-standard retrain (same seed, same batch schedule) next to the noise floor (a retrain with
another seed).  Writes benchmarks/results/pipeline.json and pipeline.md (means ± std over seeds).

    python benchmarks/bench_pipeline.py [--quick] [--seeds 0 1 2] [--limit 10000] [--finetune linearized|standard]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._common import environment, write_results  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="digits-size smoke run (≤ 2 min)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--limit", type=int, default=10000)
    ap.add_argument("--model", default="fastntk_cnn_small")
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--finetune", default="linearized")
    ap.add_argument("--scenarios", nargs="+", default=["random", "class"])
    ap.add_argument("--name", default="pipeline")
    args = ap.parse_args(argv)
    from fastntk.metrics import MetricsTable
    from fastntk.pipeline import ExperimentConfig, run_experiment

    runs = []
    for scen in args.scenarios:
        for seed in args.seeds:
            cfg = ExperimentConfig(
                dataset="digits" if args.quick else "fashion_mnist", image_size=8 if args.quick else args.size,
                model=args.model, limit=300 if args.quick else args.limit, epochs=1 if args.quick else args.epochs,
                pretrain_epochs=1 if args.quick else 2, batch_size=128, lr=1e-2, finetune=args.finetune,
                forget=scen, forget_class=2, seed=seed, progress=False, out_dir=f"/tmp/fastntk-bench/{scen}-{seed}",
            )
            t = time.perf_counter()
            res = run_experiment(cfg)
            res["wall"] = time.perf_counter() - t
            runs.append({"scenario": scen, "seed": seed, "result": res})
            print(f"{scen} seed {seed}: Fast-NTK gap {res['methods']['Fast-NTK']['avg_gap']:.2f} pp, floor {res['noise_floor']:.2f} pp, "
                  f"time ratio {res['methods']['Fast-NTK']['time_ratio']:.3f} ({res['wall']:.0f}s)", flush=True)
    lines = []
    for scen in args.scenarios:
        rs = [r["result"] for r in runs if r["scenario"] == scen]
        methods = list(rs[0]["methods"])
        t = MetricsTable(["UA", "RA", "TA", "MIA", "AD_f", "avg_gap", "time_ratio"])
        for mth in methods:
            row = {}
            for k in ("UA", "RA", "TA", "MIA", "AD_f", "avg_gap", "time_ratio"):
                vals = [r["methods"][mth].get(k, float("nan")) for r in rs]
                row[k] = float(np.nanmean(vals)) if not all(np.isnan(vals)) else float("nan")
                row[k + "_std"] = float(np.nanstd(vals)) if len(vals) > 1 else 0.0
            t.add(mth, row)
        s = rs[0]["sizes"]
        floor = [r["noise_floor"] for r in rs]
        lines.append(f"### {scen} forgetting — n_train={s['n_train']}, n_forget={s['n_forget']}, p={s['p']}, "
                     f"{len(rs)} seed(s); noise floor {np.mean(floor):.2f} ± {np.std(floor):.2f} pp; "
                     f"Fast-NTK form: {rs[0]['unlearn']['form']} / {rs[0]['unlearn']['strategy']}\n")
        lines.append(t.to_markdown())
        lines.append("")
    md = ("Means over seeds (± in the JSON). UA, RA, TA, MIA in %; avg_gap in pp vs the gold retrain (lower is better); "
          "time_ratio = method seconds ÷ retrain seconds.\n\n" + "\n".join(lines))
    write_results(args.name + ("_quick" if args.quick else ""), {"env": environment(), "args": vars(args), "runs": runs}, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
