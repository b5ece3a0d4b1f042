"""Scaling of one unlearning with n: wall time per phase, peak RSS, predicted dense-NTK memory.

Each (model, n) runs in a fresh subprocess so that its peak RSS (getrusage high-water mark) is its own.
Fashion-MNIST training images (28×28, 1 channel), 10 % random forgetting, BN + head PEFT, float32,
MSE kernel at w0, ridge 1.0, default strategy/solver choices (logged in the JSON).

    python benchmarks/bench_scaling.py [--quick] [--ns 1000 5000 20000 60000] [--models fastntk_cnn_small resnet18]
Targets (issue 6): 60k done in ≤ 10 minutes; peak RSS(2n) ÷ peak RSS(n) ≤ 2.1.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)


def child(model_name: str, n: int, budget: float, trained_with: str = "linearized-mse", sketch_m: int | None = None,
          threads: int | None = None) -> dict:
    import resource

    import numpy as np
    import timm
    import torch

    import fastntk  # noqa: F401  (registers fastntk_cnn_*)
    from fastntk.data import load_fashion_mnist
    from fastntk.peft import BatchNormPeft
    from fastntk.unlearn import unlearn

    if threads:
        torch.set_num_threads(threads)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    torch.manual_seed(0)
    kw = dict(num_classes=10, in_chans=1)
    if model_name.startswith("resnet"):
        kw["zero_init_last"] = False
    model = timm.create_model(model_name, **kw).eval()
    peft = BatchNormPeft(model, include_head=True)
    w0 = peft.vector().clone()
    data = load_fashion_mnist("train", size=28, channels=1, limit=n)
    rng = np.random.default_rng(0)
    f = np.sort(rng.choice(n, max(1, n // 10), replace=False))
    r = np.setdiff1d(np.arange(n), f)
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if trained_with == "ce":  # cost: the CE route (tilted Newton, random request) after one epoch of CE fine-tuning
        from fastntk.train import finetune_peft

        t = time.perf_counter()
        finetune_peft(peft, data, epochs=1, lr=1e-2, batch_size=128, loss="ce", progress=False)
        finetune_epoch_seconds = time.perf_counter() - t
        model.eval()
        kw = dict(trained_with="ce", w0=w0, check_overlap=False, progress=True)
        if sketch_m:
            kw["sketch_m"] = int(sketch_m)
    else:
        kw, finetune_epoch_seconds = dict(trained_with="linearized-mse", ridge=1.0, w0=w0), None
    # one gradient pass over D (the unit of cost, independent of the machine)
    t = time.perf_counter()
    from fastntk.update.objective import NetworkObjective

    NetworkObjective(peft, data.X, data.y, loss="ce").value_and_grad(peft.vector())
    pass_seconds = time.perf_counter() - t
    t = time.perf_counter()
    res = unlearn(model, peft, (data.X[r], data.y[r]), (data.X[f], data.y[f]), memory_budget=budget, **kw)
    wall = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "model": model_name, "n": n, "n_forget": int(f.size), "p": peft.p, "C": 10, "wall": wall, "timings": res.timings,
        "trained_with": trained_with, "gradient_pass_seconds": pass_seconds, "finetune_epoch_seconds": finetune_epoch_seconds, "wall_in_gradient_passes": wall / pass_seconds,
        "threads": torch.get_num_threads(), "plan": {k: str(v) for k, v in res.plan.items()},
        "newton": res.info.get("newton"), "sketch": res.info.get("sketch"),
        "form": res.form, "strategy": res.strategy, "reasons": res.reasons, "matvecs": res.matvecs,
        "peak_rss_mb": rss, "rss_after_import_mb": rss0, "rss_after_data_mb": rss_data,
        "dense_ntk_gb": (n * 10) ** 2 * 4 / 1e9, "jacobian_gb": n * 10 * peft.p * 4 / 1e9,
        "delta_norm": float(res.delta.norm()),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="n = 250, 500, 1000 (≤ 2 min); writes scaling_quick.*")
    ap.add_argument("--ns", type=int, nargs="+", default=None)
    ap.add_argument("--models", nargs="+", default=["fastntk_cnn_small"])
    ap.add_argument("--budget", type=float, default=6e9, help="memory budget (bytes) for a cached J")
    ap.add_argument("--child", nargs=2, metavar=("MODEL", "N"))
    ap.add_argument("--trained-with", default="linearized-mse", choices=["linearized-mse", "ce"],
                    help="ce: the CE route's cost (random 10 %% request after one epoch of CE fine-tuning: cost, not quality)")
    ap.add_argument("--sketch-m", type=int, default=None, help="CE: samples in each curvature sketch (default: the plan's)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    ap.add_argument("--name", default="scaling", help="result name (e.g. scaling_resnet18 for a second model series)")
    args = ap.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args.child[0], int(args.child[1]), args.budget, args.trained_with, args.sketch_m,
                                           args.threads), default=str), flush=True)
        return 0
    from benchmarks._common import environment, write_results

    ns = args.ns or ([250, 500, 1000] if args.quick else [1000, 5000, 20000, 60000])
    rows = []
    for model in args.models:
        for n in ns:
            t = time.perf_counter()
            extra = ["--trained-with", args.trained_with] + (["--sketch-m", str(args.sketch_m)] if args.sketch_m else []) + \
                (["--threads", str(args.threads)] if args.threads else [])
            out = subprocess.run([sys.executable, __file__, "--child", model, str(n), "--budget", str(args.budget)] + extra,
                                 capture_output=True, text=True, cwd=ROOT)
            line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
            if out.returncode != 0 or not line:
                print(out.stderr[-2000:], file=sys.stderr)
                rows.append({"model": model, "n": n, "error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"})
                continue
            row = json.loads(line[0][7:])
            row["process_seconds"] = time.perf_counter() - t
            rows.append(row)
            print(f"{model} n={n}: {row['wall']:.1f}s unlearn, peak RSS {row['peak_rss_mb']:.0f} MB, {row['form']}/{row['strategy']}", flush=True)
    md = ["| model | n | p | form / strategy | jacobian s | solve s | unlearn total s | gradient passes | peak RSS MB | RSS ÷ RSS(n/prev) | J GB | dense NTK GB |",
          "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    prev = {}
    for r in rows:
        if "error" in r:
            md.append(f"| {r['model']} | {r['n']} | – | error: {r['error'][:80]} | | | | | | | | |")
            continue
        ratio = ""
        if r["model"] in prev:
            pn, prss = prev[r["model"]]
            ratio = f"{r['peak_rss_mb'] / prss:.2f} (n ×{r['n'] / pn:g})"
        prev[r["model"]] = (r["n"], r["peak_rss_mb"])
        tm = r["timings"]
        md.append(f"| {r['model']} | {r['n']:,} | {r['p']:,} | {r['form']} / {r['strategy']} | {tm.get('jacobian', 0):.1f} | "
                  f"{tm.get('solve', 0):.1f} | {r['wall']:.1f} | {r.get('wall_in_gradient_passes', float('nan')):.1f} | {r['peak_rss_mb']:.0f} | {ratio} | {r['jacobian_gb']:.2f} | {r['dense_ntk_gb']:,.1f} |")
    route = ("the CE route (trained_with='ce', tilted Newton, after one epoch of CE fine-tuning: cost, not quality)" if args.trained_with == "ce"
             else "the linearized-MSE closed form, ridge 1")
    text = (f"One unlearning (10 % random forget, Fashion-MNIST 28×28×1, BN + head, float32) by {route}, each n in a fresh "
            "process; gradient passes = unlearning seconds ÷ one gradient pass over D measured in the same process; "
            "peak RSS = process high-water mark (includes torch and the data); dense NTK = (nC)² float32.\n\n" + "\n".join(md))
    write_results(args.name + ("_quick" if args.quick else ""), {"env": environment(), "rows": rows}, text, args.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
