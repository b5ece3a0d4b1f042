"""Numba vs NumPy for the vector kernels of fastntk's CPU Krylov loops.

Writes benchmarks/results/numba_kernels.json and .md (``--quick``: numba_kernels_quick.*).  Usage:
    python benchmarks/bench_numba_kernels.py [--quick]
Kernels: fused CG update (x += αp; r −= αq; ‖r‖²) + p = r + βp, i.e. one plain CG iteration's vector
work; the Jacobi-PCG variant; Nyström apply (rank 50); block orthogonalisation against 20 vectors.
float64, median of repeats, after one warm-up call (compilation excluded; it is cached on disk).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from fastntk.solvers import _numba_kernels as K  # noqa: E402


def timeit(fn, reps):
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = ap.parse_args(argv)
    if not K.HAVE_NUMBA:
        print("numba not installed; nothing to compare")
        return 1
    sizes = [1_000, 10_000, 100_000] if args.quick else [1_000, 10_000, 100_000, 1_000_000]
    rng = np.random.default_rng(0)
    rows = []
    for n in sizes:
        reps = max(5, int(2e6 / n)) if not args.quick else 5
        x, r, p, q, z = (rng.standard_normal(n) for _ in range(5))
        dinv = rng.random(n) + 0.5
        a, b = 1e-3, 0.5

        def cg_np():
            K.np_cg_update(x, r, p, q, a)
            K.np_p_update(p, r, b)

        def cg_nb():
            K.nb_cg_update(x, r, p, q, a)
            K.nb_p_update(p, r, b)

        def jac_np():
            K.np_cg_update_jacobi(x, r, p, q, a, dinv, z)
            K.np_p_update(p, z, b)

        def jac_nb():
            K.nb_cg_update_jacobi(x, r, p, q, a, dinv, z)
            K.nb_p_update(p, z, b)

        U = np.linalg.qr(rng.standard_normal((n, 50)))[0]
        coef = rng.random(50)
        Q = np.linalg.qr(rng.standard_normal((n, 20)))[0]
        kreps = max(3, reps // 10)
        for name, fnp, fnb, rp in (
            ("fused CG update", cg_np, cg_nb, reps),
            ("fused Jacobi-PCG update", jac_np, jac_nb, reps),
            ("Nystrom apply (r=50)", lambda: K.np_nystrom_apply(U, coef, x), lambda: K.nb_nystrom_apply(U, coef, x), kreps),
            ("block orthogonalisation (k=20, CGS2)", lambda: K.np_orthogonalize(Q, x), lambda: K.nb_orthogonalize(Q, x), kreps),
        ):
            tn, tb = timeit(fnp, rp), timeit(fnb, rp)
            rows.append(dict(kernel=name, n=n, numpy_us=tn * 1e6, numba_us=tb * 1e6, speedup=tn / tb))
            print(f"{name:40s} n={n:>8d} numpy {tn*1e6:10.1f} us  numba {tb*1e6:10.1f} us  x{tn/tb:5.2f}")
    os.makedirs(args.out, exist_ok=True)
    meta = dict(machine=platform.processor() or platform.machine(), cpus=os.cpu_count(),
                numpy=np.__version__, numba=K.NUMBA_NOTE, threads=int(os.environ.get("NUMBA_NUM_THREADS", os.cpu_count())))
    name = "numba_kernels_quick" if args.quick else "numba_kernels"  # a quick run never overwrites the full results
    with open(os.path.join(args.out, f"{name}.json"), "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    lines = [f"Numba vs NumPy kernels, float64, {meta['cpus']} CPU cores, {meta['numba']}, numpy {meta['numpy']} "
             f"(median time per call, µs; speedup = numpy/numba)", "",
             "| kernel | n | NumPy µs | Numba µs | speedup |", "|---|---:|---:|---:|---:|"]
    for r_ in rows:
        lines.append(f"| {r_['kernel']} | {r_['n']:,} | {r_['numpy_us']:.1f} | {r_['numba_us']:.1f} | {r_['speedup']:.2f} |")
    with open(os.path.join(args.out, f"{name}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
