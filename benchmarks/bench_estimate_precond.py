"""The half-sketch error estimate's CG route, plain against Nyström-preconditioned (operators.sketch.NYSTROM_RANK).

On real sketches — the gated sketch of a random 10 % request (k = 2 rows per draw, two halves) at the trained weights of
bench_ce's cached setups (CE fine-tuning until a validation split stops improving), right-hand side the forget set's
gradient, λ = the default per-sample ridge — the three solves of :func:`fastntk.operators.half_sketch_error` by CG
(the route the plan takes for large sketches; forced here with ``DIRECT_HALF_LIMIT = 0``), once per rank.  Columns:
seconds (best of ``--repeat``), the estimate, and the solution's relative difference to the plain-CG one.

    OMP_NUM_THREADS=1 python benchmarks/bench_estimate_precond.py --models resnet18 mobilenetv3_small_050 --limit 2000
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._common import environment, set_threads, write_results  # noqa: E402
from benchmarks.bench_ce import _cached_experiment, _config, recipe_arguments  # noqa: E402


def run(args, model: str, seed: int, m: float) -> list[dict]:

    from fastntk.operators import SketchedJacobian, half_sketch_error
    from fastntk.operators import sketch as SK
    from fastntk.update.objective import NetworkObjective
    from fastntk.update.tilted import PER_SAMPLE_RIDGE

    e = _cached_experiment(_config(args, model, "random", seed, 0), args.setups)
    X_r = e.retain.X
    n_r = int(X_r.shape[0])
    lam = PER_SAMPLE_RIDGE * n_r
    g_f = NetworkObjective(e.peft, e.forget.X, e.forget.y, loss="ce").value_and_grad(e.w_trained)[1]
    draws = n_r if m >= 1 else int(m * n_r) // 2 * 2
    t = time.perf_counter()
    sk = SketchedJacobian(e.peft, X_r, k=2, kind="rademacher", loss="ce", w=e.w_trained, seed=0,
                          **({} if m >= 1 else {"m": draws}))
    t_sketch = time.perf_counter() - t
    rows = []
    limit0, rank0 = SK.DIRECT_HALF_LIMIT, SK.NYSTROM_RANK
    ref = None
    try:
        SK.DIRECT_HALF_LIMIT = 0
        for rank in args.ranks:
            SK.NYSTROM_RANK = rank
            best, est = float("inf"), None
            for _ in range(args.repeat):
                t = time.perf_counter()
                est = half_sketch_error(sk, g_f, lam)
                best = min(best, time.perf_counter() - t)
            ref = est.x if ref is None else ref
            rows.append({"model": model, "seed": seed, "n_r": n_r, "p": e.peft.p, "draws": draws, "rows_per_half": draws,
                         "ridge": lam, "rank": rank, "method": est.method, "seconds": best, "sketch_seconds": t_sketch,
                         "estimate": est.error, "x_rel_diff_to_plain": float((est.x - ref).norm() / ref.norm())})
            print(f"{model} seed {seed} draws {draws} rank {rank}: {best:.2f}s, estimate {est.error:.4f}, "
                  f"method {est.method}", flush=True)
    finally:
        SK.DIRECT_HALF_LIMIT, SK.NYSTROM_RANK = limit0, rank0
    return rows


def run_scale(args, n: int, draws: int) -> list[dict]:
    """bench_scaling's CE setup at ``n`` images (resnet18 BN + head, random-init backbone, one epoch of CE fine-tuning on
    Fashion-MNIST, random 10 % request): the estimate on a sketch of ``draws`` draws (the gated sketch at 60k grew to
    16,972: scaling_ce_resnet18_60k_gated)."""
    import numpy as np
    import timm
    import torch

    import fastntk  # noqa: F401
    from fastntk.data import load_fashion_mnist
    from fastntk.operators import SketchedJacobian, half_sketch_error
    from fastntk.operators import sketch as SK
    from fastntk.peft import BatchNormPeft
    from fastntk.train import finetune_peft
    from fastntk.update.objective import NetworkObjective
    from fastntk.update.tilted import PER_SAMPLE_RIDGE

    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10, in_chans=1, zero_init_last=False).eval()
    peft = BatchNormPeft(model, include_head=True)
    data = load_fashion_mnist("train", size=28, channels=1, limit=n)
    rng = np.random.default_rng(0)
    f = np.sort(rng.choice(n, max(1, n // 10), replace=False))
    r = np.setdiff1d(np.arange(n), f)
    finetune_peft(peft, data, epochs=1, lr=1e-2, batch_size=128, loss="ce", progress=False)
    model.eval()
    w = peft.vector()
    lam = PER_SAMPLE_RIDGE * r.size
    g_f = NetworkObjective(peft, data.X[f], data.y[f], loss="ce").value_and_grad(w)[1]
    t = time.perf_counter()
    sk = SketchedJacobian(peft, data.X[r], k=2, kind="rademacher", loss="ce", w=w, seed=0, m=int(draws))
    t_sketch = time.perf_counter() - t
    rows, ref, rank0 = [], None, SK.NYSTROM_RANK
    try:
        for rank in args.ranks:
            SK.NYSTROM_RANK = rank
            t = time.perf_counter()
            est = half_sketch_error(sk, g_f, lam)
            sec = time.perf_counter() - t
            ref = est.x if ref is None else ref
            rows.append({"model": "resnet18 (bench_scaling setup)", "seed": 0, "n_r": int(r.size), "p": peft.p, "draws": int(draws),
                         "rows_per_half": int(draws), "ridge": lam, "rank": rank, "method": est.method, "seconds": sec,
                         "sketch_seconds": t_sketch, "estimate": est.error,
                         "x_rel_diff_to_plain": float((est.x - ref).norm() / ref.norm())})
            print(f"scale n={n} draws {draws} rank {rank}: {sec:.2f}s, estimate {est.error:.4f}, method {est.method}", flush=True)
    finally:
        SK.NYSTROM_RANK = rank0
    return rows


def table(rows) -> str:
    out = ["| model | seed | n_r | p | draws | rank | seconds | × plain | estimate | ‖x − x_plain‖/‖x_plain‖ |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    base = {}
    for r in rows:
        key = (r["model"], r["seed"], r["draws"])
        base.setdefault(key, r["seconds"] if r["rank"] == 0 else None)
        b = base[key]
        out.append(f"| {r['model']} | {r['seed']} | {r['n_r']} | {r['p']} | {r['draws']} | {r['rank']} | {r['seconds']:.2f} | "
                   f"{(r['seconds'] / b) if b else float('nan'):.2f} | {r['estimate']:.4f} | {r['x_rel_diff_to_plain']:.1e} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    recipe_arguments(ap)
    ap.add_argument("--quick", action="store_true", help="digits-size setups")
    ap.add_argument("--models", nargs="+", default=["resnet18", "mobilenetv3_small_050"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--m", type=float, nargs="+", default=[0.5, 1.0], help="draws as a fraction of n_r (1: all)")
    ap.add_argument("--ranks", type=int, nargs="+", default=[0, 32, 64, 128])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--scale", type=int, nargs=2, default=None, metavar=("N", "DRAWS"),
                    help="instead: bench_scaling's CE setup on N images, a sketch of DRAWS draws (e.g. 60000 16972)")
    ap.add_argument("--name", default="estimate_precond")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.ranks[0] != 0:
        args.ranks = [0] + [r for r in args.ranks if r != 0]
    set_threads(args.threads)
    if args.scale:
        rows = run_scale(args, *args.scale)
    else:
        rows = [r for model in args.models for seed in args.seeds for m in args.m for r in run(args, model, seed, m)]
    md = ("The half-sketch estimate's three CG solves, plain (rank 0) and Nyström-preconditioned (rank r, built once from "
          "the whole sketch), on gated sketches of bench_ce's random 10 % setups at the trained weights.\n\n" + table(rows))
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    write_results(args.name, {"env": environment(), "args": vars(args), "rows": rows}, md, out)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
