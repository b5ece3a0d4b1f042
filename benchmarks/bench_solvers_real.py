"""Solvers on the REAL Gauss-Newton (primal) and NTK (dual) operators of a BN-only CNN.

Model: timm ``resnet10t`` (random init, ``zero_init_last=False``; BN affine params only, head
excluded), Fashion-MNIST 32×32×3, n images (1000 full; ``--quick``: 150 images, the λ = 1e-3·λmax systems
only, one torch thread -- ≤ 2 min).  ``J`` is computed once in
float32 by autodiff (cached strategy) and then promoted to float64, so every matvec is a GEMV
and the solvers run in float64 (rtol 1e-6 is below float32's useful accuracy for CG).

Ridges are relative to λmax of G = JᵀJ (= λmax of Θ = JJᵀ): λ = 1e-5·λmax and 1e-3·λmax.
The top-100 eigenvalues of G come from ``fastntk.solvers.eigsh``.  For each (operator, ridge)
``bench_solvers.run_real_operator`` runs CG, Jacobi-PCG, Nyström-PCG (r = 10, 50, 100),
deflated CG and MINRES; matvec counts include the preconditioner build.

    python benchmarks/bench_solvers_real.py [--quick]
writes benchmarks/results/solvers_real.json + .md (``--quick``: solvers_real_quick.*)
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_solvers import run_real_operator, to_markdown  # noqa: E402

from fastntk.data import load_fashion_mnist  # noqa: E402
from fastntk.operators import GGNLinearOperator, NTKLinearOperator, make_jacobian  # noqa: E402
from fastntk.operators.linearization import CachedJacobian  # noqa: E402
from fastntk.peft import BatchNormPeft  # noqa: E402
from fastntk.solvers import eigsh  # noqa: E402

try:
    from _common import environment, write_results  # noqa: E402
except ImportError:  # pragma: no cover
    environment = write_results = None


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--arch", default="resnet10t")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args(argv)
    n = args.n or (150 if args.quick else 1000)
    if args.quick:
        torch.set_num_threads(1)  # an oversubscribed pool on a shared 2-core machine is far slower
    result_name = "solvers_real_quick" if args.quick else "solvers_real"  # a quick run never overwrites the full results
    torch.manual_seed(0)
    import timm

    model = timm.create_model(args.arch, num_classes=10, zero_init_last=False).eval()
    peft = BatchNormPeft(model, include_head=False)
    data = load_fashion_mnist("train", size=32, limit=n)
    t = time.perf_counter()
    src32 = make_jacobian(peft, data.X, strategy="cached", memory_budget=8e9)
    t_jac = time.perf_counter() - t
    src = CachedJacobian(src32.J.double(), src32.outputs().double(), build_seconds=t_jac)
    del src32
    print(f"{args.arch} BN-only p={src.p}, n={src.n}, nC={src.n * src.C}; J (float32 autodiff) in {t_jac:.1f}s", flush=True)

    G = GGNLinearOperator(src, 0.0).to_scipy()
    K = NTKLinearOperator(src, 0.0).to_scipy()
    k_eig = min(100, src.p - 2)
    t = time.perf_counter()
    evals = np.sort(np.asarray(eigsh(G, k_eig, which="LA")[0]))[::-1]
    t_eig = time.perf_counter() - t
    lmax = float(evals[0])
    spec = {"lambda1": lmax, "lambda10": float(evals[9]), "lambda100": float(evals[k_eig - 1]),
            "k": k_eig, "seconds": t_eig}
    print(f"spectrum of G: λ1={lmax:.4g} λ10={evals[9]:.4g} λ{k_eig}={evals[k_eig - 1]:.4g} ({t_eig:.1f}s)", flush=True)

    def write(partial):
        meta = dict(arch=args.arch, peft="BN affine only (head excluded), random init", n=src.n, C=src.C, p=src.p,
                    dtype="J by float32 autodiff, solves in float64", rtol=1e-6, quick=args.quick, partial=partial,
                    jacobian_seconds=t_jac, load=os.getloadavg())
        title = (f"Solvers to rtol 1e-6 on the real operators of {args.arch} BN-only (random init), "
                 f"Fashion-MNIST n={src.n} at 32×32 (p={src.p:,}, nC={src.n * src.C:,}); matvecs include the "
                 f"preconditioner build (in parentheses)")
        md = to_markdown(rows, title)
        md += (f"\nSpectrum of G (= nonzero spectrum of Θ), top-{k_eig} by eigsh: λ1 = {spec['lambda1']:.4g}, "
               f"λ10 = {spec['lambda10']:.4g}, λ{k_eig} = {spec['lambda100']:.4g} "
               f"(λ1/λ10 = {spec['lambda1'] / spec['lambda10']:.1f}, λ1/λ100 = {spec['lambda1'] / spec['lambda100']:.0f}).\n")
        md += "\n| problem | plain CG matvecs | best preconditioned | its matvecs | ratio (target ≤ 0.33) |\n|---|---:|---|---:|---:|\n"
        for s in summary:
            md += (f"| {s['problem']} | {s['cg_matvecs']} | {s['best']} | {s['best_matvecs']} | "
                   f"{s['ratio']:.2f} |\n" if s["best"] else f"| {s['problem']} | {s['cg_matvecs']} | none converged | | |\n")
        payload = dict(meta=meta, spectrum=spec, top_eigenvalues=evals.tolist(), rows=rows, summary=summary)
        if write_results is not None:
            write_results(result_name, payload, md, args.out)
        else:  # pragma: no cover
            import json

            os.makedirs(args.out, exist_ok=True)
            json.dump(payload, open(os.path.join(args.out, f"{result_name}.json"), "w"), indent=1)
            open(os.path.join(args.out, f"{result_name}.md"), "w").write(md)
        return md

    rng = np.random.default_rng(0)
    rows, summary = [], []
    for opname, A, dim in (("GGN primal G+λI", G, src.p), ("NTK dual Θ+λI", K, src.n * src.C)):
        b = rng.standard_normal(dim)
        for rel in ((1e-3,) if args.quick else (1e-5, 1e-3)):
            ridge = rel * lmax
            name = f"{opname}, λ={rel:g}·λmax"
            rr = run_real_operator(A, b, name, ridge=ridge, ranks=(10, 50, 100), deflate_k=20, maxiter=5000)
            for r in rr:
                r["ridge"] = ridge
                r["ridge_rel"] = rel
                print(f"{name:32s} {r['method']:22s} matvecs {r['matvecs']:6d} ({r['build_matvecs']:4d}) "
                      f"{r['seconds']:8.3f}s conv={r['converged']}", flush=True)
            cg_mv = next(r["matvecs"] for r in rr if r["method"] == "CG")
            pre = [r for r in rr if r["method"] not in ("CG", "MINRES") and r["converged"]]
            best = min(pre, key=lambda r: r["matvecs"]) if pre else None
            summary.append(dict(problem=name, cg_matvecs=cg_mv, best=best["method"] if best else None,
                                best_matvecs=best["matvecs"] if best else None,
                                ratio=(best["matvecs"] / cg_mv) if best else None))
            rows += rr
            write(True)

    md = write(False)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
