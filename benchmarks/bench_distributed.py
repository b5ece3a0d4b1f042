"""Speed-up of data-parallel unlearning: 2 vs 1 local gloo processes (CPU, one thread each).

Fashion-MNIST (28×28×1), fastntk_cnn_small BN + head, streamed operators, 10 % random forgetting,
`fastntk.distributed.unlearn_distributed`; wall time of the update (max over ranks) and the agreement
of Δ across world sizes.  Writes benchmarks/results/distributed.json + .md (``--quick``: n = 200, distributed_quick.*).

    python benchmarks/bench_distributed.py [--quick] [--n 2000]
"""
from __future__ import annotations

import argparse
import os
import pickle
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def _worker(rank, world, tmp, n, strategy):
    import timm
    import torch

    import fastntk  # noqa: F401
    from fastntk.data import load_fashion_mnist
    from fastntk.distributed import init_gloo, unlearn_distributed
    from fastntk.peft import BatchNormPeft

    torch.set_num_threads(1)
    init_gloo(rank, world, os.path.join(tmp, "init"))
    torch.manual_seed(0)
    model = timm.create_model("fastntk_cnn_small", num_classes=10, in_chans=1).eval()
    peft = BatchNormPeft(model, include_head=True)
    w0 = peft.vector().clone()
    data = load_fashion_mnist("train", size=28, channels=1, limit=n)
    f_all = np.sort(np.random.default_rng(0).choice(n, n // 10, replace=False))
    mine = np.array_split(np.arange(n), world)[rank]
    f = np.intersect1d(mine, f_all)
    r = np.setdiff1d(mine, f_all)
    t = time.perf_counter()
    res = unlearn_distributed(model, peft, (data.X[r], data.y[r]), (data.X[f], data.y[f]), ridge=1.0, w0=w0, rtol=1e-4,
                              strategy=strategy)
    wall = time.perf_counter() - t
    with open(os.path.join(tmp, f"r{rank}.pkl"), "wb") as fh:
        pickle.dump({"wall": wall, "delta": res.delta.numpy(), "timings": res.timings,
                     "iters": {k: (v.iterations if hasattr(v, "iterations") else v.get("iterations")) for k, v in res.solves.items()}}, fh)


def run(world, n, strategy):
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        ctx = mp.get_context("spawn")
        ps = [ctx.Process(target=_worker, args=(r, world, tmp, n, strategy)) for r in range(world)]
        for p in ps:
            p.start()
        for p in ps:
            p.join()
        outs = [pickle.load(open(os.path.join(tmp, f"r{r}.pkl"), "rb")) for r in range(world)]
    return outs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="n = 200 (≤ 2 min)")
    ap.add_argument("--n", type=int, default=None, help="training images (default 2000; quick 200)")
    ap.add_argument("--strategy", default="stream")
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = ap.parse_args(argv)
    args.n = args.n or (200 if args.quick else 2000)
    from benchmarks._common import environment, write_results

    res = {w: run(w, args.n, args.strategy) for w in (1, 2)}
    t1 = max(o["wall"] for o in res[1])
    t2 = max(o["wall"] for o in res[2])
    d1, d2 = res[1][0]["delta"], res[2][0]["delta"]
    agree = float(np.linalg.norm(d1 - d2) / np.linalg.norm(d1))
    md = ("| world size | wall s (max over ranks) | speed-up | CG iterations |\n|---:|---:|---:|---|\n"
          f"| 1 | {t1:.1f} | 1.00 | {res[1][0]['iters']} |\n| 2 | {t2:.1f} | {t1 / t2:.2f} | {res[2][0]['iters']} |\n\n"
          f"Fashion-MNIST n = {args.n}, fastntk_cnn_small BN + head, strategy={args.strategy}, gloo, 1 thread per process; "
          f"‖Δ₂ − Δ₁‖/‖Δ₁‖ = {agree:.1e} (float32, CG rtol 1e-4).")
    write_results("distributed" + ("_quick" if args.quick else ""),
                  {"env": environment(), "n": args.n, "t1": t1, "t2": t2, "speedup": t1 / t2, "agreement": agree}, md, args.out)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
