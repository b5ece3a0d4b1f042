"""Matvecs and seconds to rtol 1e-6 for CG, Jacobi-PCG, Nyström-PCG, deflated CG, MINRES.

Synthetic spectra (float64; in float32 rtol 1e-6 at κ ~ 1e5 is below attainable accuracy):
flat, geometric decay, and a GGN-like power law λ_i = 6.5e5·(i+1)^-1.8 with ridge 1e-5·λmax and
1e-3·λmax, at n = 1093 and n = 10000 (the latter as a matrix-free operator Q diag(λ) Qᵀ with Q a
product of Householder reflections, so nothing n×n is formed).  Matvec counts include the
preconditioner build cost (Nyström: r columns of one block matmat; deflation: Lanczos steps).

    python benchmarks/bench_solvers.py [--quick]
writes benchmarks/results/solvers.json and solvers.md.  ``run_real_operator(A, b, name, ridge=...)``
runs the same methods on any operator built elsewhere (real NTK/GGN): A is the operator WITHOUT
the ridge if ``ridge`` is given (preconditioners are built for A + ridge·I), else A already includes it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import scipy.sparse.linalg as spla

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from fastntk.solvers import (  # noqa: E402
    DeflationPreconditioner,
    JacobiPreconditioner,
    NystromPreconditioner,
    cg,
    minres,
)

RTOL = 1e-6


class SpectralOperator:
    """A = C diag(λ) Cᵀ + ridge·I with C the orthonormal DCT-II (matrix-free, O(n log n), dense
    eigenvectors, so the diagonal is nearly constant, as for a real GGN where Jacobi barely helps)."""

    def __init__(self, lam, ridge=0.0, seed=0):
        self.lam, self.ridge = lam, ridge
        n = lam.size
        self.shape = (n, n)
        self.dtype = np.dtype(np.float64)

    def matmat(self, X):
        from scipy.fft import dct, idct

        return idct(self.lam[:, None] * dct(X, axis=0, norm="ortho"), axis=0, norm="ortho") + self.ridge * X

    def matvec(self, x):
        return self.matmat(x[:, None])[:, 0]

    def diagonal(self):
        """diag(CΛCᵀ)_i = Σ_k λ_k C_ki², from the rows of the DCT matrix in chunks (no matvec counted)."""
        from scipy.fft import dct

        n = self.shape[0]
        d = np.empty(n)
        for s in range(0, n, 1024):
            E = np.eye(n, min(1024, n - s), -s)
            d[s:s + E.shape[1]] = (self.lam[:, None] * dct(E, axis=0, norm="ortho") ** 2).sum(0)
        return d + self.ridge


def spectra(n):
    i = np.arange(n)
    pl = 6.5e5 * (i + 1.0) ** -1.8
    return {
        "flat": (1.0 + np.random.default_rng(1).random(n), 0.0),
        "geometric": (np.geomspace(1e4, 1.0, n), 0.0),
        "powerlaw ridge 1e-5": (pl, 1e-5 * pl[0]),
        "powerlaw ridge 1e-3": (pl, 1e-3 * pl[0]),
    }


def _run(label, solve, build=None):
    t = time.perf_counter()
    M, bm = (None, 0) if build is None else build()
    r = solve(M)
    secs = time.perf_counter() - t
    return dict(method=label, matvecs=int(r.matvecs + bm), build_matvecs=int(bm), iterations=int(r.iterations),
                seconds=secs, converged=bool(r.converged), rel_residual=float(r.true_residual / r.rhs_norm))


def run_real_operator(A, b, name, *, ridge=0.0, ranks=(10, 50, 100), deflate_k=20, maxiter=None,
                      diag=None, backend="auto"):
    """All methods on one system (A + ridge·I) x = b; returns a list of row dicts.

    ``A`` is any operator accepted by fastntk.solvers; if ``ridge > 0`` the solves use A + ridge·I
    (matrix-free) and preconditioners are built from A with that ridge.  ``diag`` overrides
    ``A.diagonal()`` for Jacobi (skipped when neither is available).
    """
    from fastntk.solvers._linop import as_operator

    base = as_operator(A)
    n = base.n
    if ridge > 0:
        Ar = spla.LinearOperator((n, n), matvec=lambda x: base._mv(x) + ridge * x,
                                 matmat=lambda X: (base._mm(X) if base._mm else base.matmat(X)) + ridge * X,
                                 dtype=np.float64)
    else:
        Ar = A
    kw = dict(rtol=RTOL, maxiter=maxiter or 20 * n, on_fail="ignore")
    rows = [_run("CG", lambda M: cg(Ar, b, backend=backend, **kw))]
    d = diag
    if d is None and hasattr(A, "diagonal"):
        try:
            d = A.diagonal()
        except Exception:  # noqa: BLE001
            d = None
    if d is not None:
        rows.append(_run("Jacobi-PCG", lambda M: cg(Ar, b, M=M, backend=backend, **kw),
                         lambda: (JacobiPreconditioner(d, ridge), 0)))
    for r in ranks:
        if r >= n:
            continue
        def build(r=r):
            P = NystromPreconditioner.build(A, r, ridge=ridge, seed=0)
            return P, P.build_matvecs
        rows.append(_run(f"Nyström-PCG r={r}", lambda M: cg(Ar, b, M=M, backend=backend, **kw), build))
    def buildd():
        P = DeflationPreconditioner.from_operator(A, deflate_k, ridge=ridge, seed=0)
        return P, P.build_matvecs
    rows.append(_run(f"deflated CG k={deflate_k}", lambda M: cg(Ar, b, M=M, backend=backend, **kw), buildd))
    rows.append(_run("MINRES", lambda M: minres(Ar, b, **kw)))
    for row in rows:
        row["problem"] = name
        row["n"] = n
    return rows


def to_markdown(rows, title):
    lines = [title, "", "| problem | n | method | matvecs (build) | iterations | seconds | converged |",
             "|---|---:|---|---:|---:|---:|:-:|"]
    for r in rows:
        lines.append(f"| {r['problem']} | {r['n']:,} | {r['method']} | {r['matvecs']} ({r['build_matvecs']}) | "
                     f"{r['iterations']} | {r['seconds']:.3f} | {'yes' if r['converged'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = ap.parse_args(argv)
    sizes = [1093, 10000]
    rows = []
    rng = np.random.default_rng(0)
    for n in sizes:
        for name, (lam, ridge) in spectra(n).items():
            if args.quick and n == 10000 and name in ("flat", "geometric"):
                continue
            A0 = SpectralOperator(lam, 0.0, seed=n)
            b = rng.standard_normal(n)
            ranks = (10, 50, 100)
            rr = run_real_operator(A0, b, name, ridge=ridge if ridge > 0 else 0.0, ranks=ranks,
                                   maxiter=4 * n if args.quick else 20 * n)
            for r in rr:
                print(f"{name:22s} n={n:6d} {r['method']:22s} matvecs {r['matvecs']:6d} "
                      f"({r['build_matvecs']:4d}) {r['seconds']:8.3f}s conv={r['converged']}")
            rows += rr
    os.makedirs(args.out, exist_ok=True)
    meta = dict(rtol=RTOL, dtype="float64", cpus=os.cpu_count(), machine=platform.machine(), quick=args.quick)
    name = "solvers_quick" if args.quick else "solvers"  # a quick run never overwrites the full results
    with open(os.path.join(args.out, f"{name}.json"), "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    title = (f"Solvers to rtol {RTOL:g} on synthetic spectra (float64, {os.cpu_count()} CPU cores"
             f"{', quick mode' if args.quick else ''}); matvecs include the preconditioner build (in parentheses)")
    with open(os.path.join(args.out, f"{name}.md"), "w") as f:
        f.write(to_markdown(rows, title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
