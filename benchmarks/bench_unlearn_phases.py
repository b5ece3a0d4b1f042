"""Per-phase cost of ONE unlearning vs one epoch of PEFT fine-tuning.

timm ``resnet18`` (random init, ``zero_init_last=False``), BatchNorm affine params only, head
EXCLUDED (p = 9,600), float32, Fashion-MNIST 32×32×3, n images (5,000 full / 100 ``--quick``, 1 thread /
``--n``), 10 % random forget set (seed 0).  Linearization at w0 = the current PEFT vector.

Runs, in this order (so the process high-water RSS grows monotonically with the runs):
  1. one epoch of ``finetune_peft`` over the retain set (MSE, lr 1e-3, batch 128) — the yardstick;
  2. ``unlearn(form="primal", strategy="stream")`` — CG over matrix-free G_r + λI;
  3. ``unlearn(form="primal", strategy="cached")`` — J_r, J_f cached: with ``solver="cg"`` (CG on
     GEMVs) and with the default ``solver="auto"`` (dense Cholesky of G_r + λI, p×p);
  4. ``Unlearner(strategy="cached").prepare()`` (J_D + dense Cholesky of G_D + λI, p×p) then one
     ``.forget(idx)`` of the same 10 % (Woodbury, forget space).
Ridge: λ = rel·λmax(G_r) with rel = 1e-3 (``--ridge-rel``); λmax is estimated by 30 Lanczos steps
on the cached G of a 200-image subset and scaled by n_r/200 (cost reported as "ridge selection").
The stream solve runs with ``maxiter`` capped (``--stream-maxiter``, default 3) when the cached run needs more
iterations: its solve time is then extrapolated as (seconds per CG iteration) × (cached iterations),
flagged "extrapolated" in the table (the Krylov sequence is the same in exact arithmetic).

    python benchmarks/bench_unlearn_phases.py [--quick | --n N]
writes benchmarks/results/unlearn_phases.json + .md (``--quick``: unlearn_phases_quick.*)
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import PeakRSS, write_results  # noqa: E402

from fastntk.data import ImageData, load_fashion_mnist  # noqa: E402
from fastntk.operators import GGNLinearOperator, make_jacobian  # noqa: E402
from fastntk.peft import BatchNormPeft  # noqa: E402
from fastntk.solvers import estimate_condition  # noqa: E402
from fastntk.train import finetune_peft  # noqa: E402
from fastntk.unlearn import Unlearner, unlearn  # noqa: E402


def maxrss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--ridge-rel", type=float, default=1e-3)
    ap.add_argument("--stream-maxiter", type=int, default=None)
    ap.add_argument("--skip-unlearner", action="store_true")
    ap.add_argument("--skip-stream", action="store_true", help="skip the (extrapolated) streamed run")
    ap.add_argument("--skip-direct", action="store_true", help="skip the solver='auto' run")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args(argv)
    n = args.n or (100 if args.quick else 5000)
    if args.quick:
        torch.set_num_threads(1)  # ≤ 2 min on a shared 2-core machine (an oversubscribed pool is far slower)
    stream_cap = args.stream_maxiter or 3
    torch.manual_seed(0)
    import timm

    model = timm.create_model("resnet18", num_classes=10, zero_init_last=False).eval()
    peft = BatchNormPeft(model, include_head=False)
    w0 = peft.vector().clone()
    data = load_fashion_mnist("train", size=32, limit=n)
    rng = np.random.default_rng(0)
    idx_f = np.sort(rng.choice(n, n // 10, replace=False))
    mask = np.ones(n, bool)
    mask[idx_f] = False
    idx_r = np.nonzero(mask)[0]
    X, y = data.X, data.y
    Xr, yr, Xf, yf = X[idx_r], y[idx_r], X[idx_f], y[idx_f]
    n_r, n_f = len(idx_r), len(idx_f)
    budget = 8e9
    print(f"resnet18 BN-only p={peft.p} n={n} n_r={n_r} n_f={n_f} load={os.getloadavg()}", flush=True)
    rows = []

    def log_row(row):
        rows.append(row)
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)

    # ---- ridge selection
    t = time.perf_counter()
    m = min(200, n_r)
    s200 = make_jacobian(peft, Xr[:m], w=w0, strategy="cached", memory_budget=budget)
    _, lmax_sub, _ = estimate_condition(GGNLinearOperator(s200, 0.0).to_scipy(), steps=30, return_extremes=True)
    lmax = lmax_sub * n_r / m
    ridge = args.ridge_rel * lmax
    t_ridge = time.perf_counter() - t
    del s200
    print(f"λmax(G_r) ≈ {lmax:.4g} (from {m} images ×{n_r / m:.1f}); ridge {ridge:.4g}; {t_ridge:.1f}s", flush=True)

    # ---- 1. one epoch of PEFT fine-tuning on the retain set
    peft.write(w0)
    with PeakRSS() as pr:
        t = time.perf_counter()
        finetune_peft(peft, ImageData(Xr, yr, list(data.classes), "retain"), epochs=1, lr=1e-3, batch_size=128,
                      loss="mse", progress=False)
        t_ft = time.perf_counter() - t
    peft.write(w0)
    log_row(dict(run="fine-tune 1 epoch (retain)", jacobian=None, factor=None, solve=None, total=t_ft, matvecs=None,
                 iterations=None, peak_rss_mb=pr.peak / 2**20, maxrss_mb=maxrss_mb(), note=""))

    def one(strategy, maxiter=None, solver="auto"):
        with PeakRSS() as pr, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = time.perf_counter()
            res = unlearn(model, peft, (Xr, yr), (Xf, yf), trained_with="linearized-mse", ridge=ridge, w0=w0, form="primal", strategy=strategy,
                          memory_budget=budget, rtol=1e-6, maxiter=maxiter, on_fail="warn", solver=solver)
            wall = time.perf_counter() - t
        tm = res.timings
        iters = sum(int(getattr(s, "iterations", 0)) for s in res.solves.values())
        conv = all(bool(getattr(s, "converged", True)) for s in res.solves.values())
        return res, dict(jacobian=tm.get("jacobian"), factor=tm.get("factor"), solve=tm.get("solve"),
                         total=tm.get("total", wall), matvecs=res.matvecs, iterations=iters, converged=conv,
                         peak_rss_mb=pr.peak / 2**20, maxrss_mb=maxrss_mb())

    # ---- 2. stream (capped) — needs the cached iteration count to extrapolate, so run a probe first
    st = None if args.skip_stream else one("stream", maxiter=stream_cap)[1]
    # ---- 3. cached: CG on GEMVs, then the default (solver="auto": direct Cholesky of G_r + λI when p ≤ 16384)
    _res_cg, ca = one("cached", solver="cg")
    ca_row = dict(run="unlearn primal, cached, CG", **ca, note="solver='cg'")
    if args.skip_direct:
        cd_row = None
    else:
        res_c, cd = one("cached")
        cd_row = dict(run="unlearn primal, cached, solver='auto'", **cd, note="solver='auto' → " + str(res_c.reasons.get("solver", "")))
    st_row = None if st is None else dict(run="unlearn primal, stream", **st, note="measured")
    if st is not None and not st["converged"] and st["iterations"] > 0:
        per_it = st["solve"] / st["iterations"]
        solve_est = per_it * ca["iterations"]
        st_row["note"] = (f"solve extrapolated: {st['iterations']} iters measured ({per_it:.2f} s/iter) × "
                          f"{ca['iterations']} iters of the cached run")
        st_row["total"] = st["total"] - st["solve"] + solve_est
        st_row["solve"] = solve_est
        st_row["matvecs"] = int(round(st["matvecs"] * ca["iterations"] / st["iterations"]))
        st_row["iterations"] = ca["iterations"]
    if st_row is not None:
        log_row(st_row)
    log_row(ca_row)
    if cd_row is not None:
        log_row(cd_row)
        delta_c = res_c.delta.double()
        del res_c
    else:
        delta_c = _res_cg.delta.double()

    # ---- 4. Unlearner
    if not args.skip_unlearner:
        with PeakRSS() as pr:
            t = time.perf_counter()
            U = Unlearner(model, peft, (X, y), trained_with="linearized-mse", ridge=ridge, w0=w0, strategy="cached", memory_budget=budget, rtol=1e-6)
            U.prepare()
            t_prep = time.perf_counter() - t
            fr = U.forget(idx_f)
        fac = getattr(U.factor, "seconds", None)
        log_row(dict(run="Unlearner.prepare (once)", jacobian=t_prep - (fac or 0), factor=fac, solve=None, total=t_prep,
                     matvecs=None, iterations=None, peak_rss_mb=pr.peak / 2**20, maxrss_mb=maxrss_mb(),
                     note="J_D cached + dense Cholesky of G_D+λI (p×p)"))
        rel = float((fr.delta.double() - delta_c).norm() / delta_c.norm())
        log_row(dict(run="Unlearner.forget (10 %)", jacobian=fr.timings.get("jacobian"), factor=None,
                     solve=fr.timings.get("solve"), total=fr.timings.get("total"), matvecs=fr.matvecs, iterations=None,
                     peak_rss_mb=pr.peak / 2**20, maxrss_mb=maxrss_mb(),
                     note=f"Woodbury; |Δ−Δ_cached|/|Δ_cached| = {rel:.1e}"))

    for r in rows:
        r["ratio_to_epoch"] = (r["total"] / t_ft) if r["total"] is not None else None

    def f(x, d=2):
        return "—" if x is None else (f"{x:.{d}f}" if isinstance(x, float) else str(x))

    title = (f"One unlearning, timm resnet18 (random init) BN-only, head excluded (p = {peft.p:,}), float32, "
             f"Fashion-MNIST n = {n:,} at 32×32×3, 10 % random forget (n_f = {n_f}), λ = {args.ridge_rel:g}·λmax(G_r) "
             f"= {ridge:.3g}, rtol 1e-6, {torch.get_num_threads()} torch threads, load at start {os.getloadavg()[0]:.1f}"
             f"{' (quick)' if args.quick else ''}")
    md = [title, "", "| run | jacobian s | factor s | solve s | total s | matvecs | CG iters | peak RSS MB | ÷ 1 fine-tune epoch | note |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        md.append(f"| {r['run']} | {f(r['jacobian'])} | {f(r['factor'])} | {f(r['solve'])} | {f(r['total'])} | "
                  f"{f(r['matvecs'])} | {f(r['iterations'])} | {r['peak_rss_mb']:.0f} | {f(r['ratio_to_epoch'])} | {r['note']} |")
    md.append("")
    md.append(f"Ridge selection (not in the rows): {t_ridge:.1f}s, λmax(G_r) ≈ {lmax:.4g}. "
              "Peak RSS: sampled per run (psutil); process high-water (getrusage) in the JSON as maxrss_mb.")
    payload = dict(meta=dict(n=n, n_r=n_r, n_f=n_f, p=peft.p, head=False, dtype="float32", ridge=ridge, lmax=lmax,
                             ridge_rel=args.ridge_rel, ridge_seconds=t_ridge, finetune_epoch_seconds=t_ft,
                             quick=args.quick, stream_maxiter=stream_cap), rows=rows)
    write_results("unlearn_phases_quick" if args.quick else "unlearn_phases", payload, "\n".join(md), args.out)
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
