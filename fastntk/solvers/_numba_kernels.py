"""Fused CPU kernels for the vector work of fastntk's own Krylov loops.

Each kernel has a Numba version (``@njit(cache=True)``) and a NumPy fallback with the same
signature.  Numba is optional: if it cannot be imported, ``HAVE_NUMBA`` is False and the NumPy
versions are exported under the same names (the solvers then report backend ``"numpy"``).

Which kernels are worth it was measured by ``benchmarks/bench_numba_kernels.py`` (table in
``benchmarks/results/numba_kernels.md``): the fused CG update (x += αp; r −= αq; ‖r‖², and
the Jacobi variant that also forms z = D⁻¹r and rᵀz) saves several passes over memory and wins
for large n; the Nyström apply and block orthogonalisation are GEMV/GEMM dominated and stay on
BLAS (NumPy), see the table.
"""
from __future__ import annotations

import numpy as np

try:  # pragma: no cover - exercised when numba is installed
    import numba as _nb

    HAVE_NUMBA = True
    NUMBA_NOTE = f"numba {_nb.__version__}"
except Exception:  # pragma: no cover
    _nb = None
    HAVE_NUMBA = False
    NUMBA_NOTE = "numba is not installed: fastntk uses the NumPy kernels (pip install numba to enable)"


# ------------------------------------------------------------------------------------------
# NumPy reference versions (also the fallback)
# ------------------------------------------------------------------------------------------
def np_cg_update(x, r, p, q, alpha):
    """x += α p;  r −= α q;  return rᵀr."""
    x += alpha * p
    r -= alpha * q
    return float(r @ r)


def np_cg_update_jacobi(x, r, p, q, alpha, dinv, z):
    """x += α p;  r −= α q;  z = dinv ⊙ r;  return (rᵀr, rᵀz)."""
    x += alpha * p
    r -= alpha * q
    np.multiply(dinv, r, out=z)
    return float(r @ r), float(r @ z)


def np_p_update(p, z, beta):
    """p = z + β p (in place)."""
    p *= beta
    p += z


def np_nystrom_apply(U, coef, x):
    """y = x + U (coef ⊙ (Uᵀ x))  (Nyström inverse, see precond.py)."""
    return x + U @ (coef * (U.T @ x))


def np_orthogonalize(Q, v):
    """Two passes of classical Gram–Schmidt: v −= Q(Qᵀv), twice."""
    v = v - Q @ (Q.T @ v)
    return v - Q @ (Q.T @ v)


if HAVE_NUMBA:  # pragma: no cover - numba compiled code is not traced by coverage
    njit = _nb.njit
    prange = _nb.prange

    @njit(cache=True, parallel=True, fastmath=False)
    def nb_cg_update(x, r, p, q, alpha):
        s = 0.0
        for i in prange(x.shape[0]):
            x[i] += alpha * p[i]
            ri = r[i] - alpha * q[i]
            r[i] = ri
            s += ri * ri
        return s

    @njit(cache=True, parallel=True, fastmath=False)
    def nb_cg_update_jacobi(x, r, p, q, alpha, dinv, z):
        s = 0.0
        t = 0.0
        for i in prange(x.shape[0]):
            x[i] += alpha * p[i]
            ri = r[i] - alpha * q[i]
            r[i] = ri
            zi = dinv[i] * ri
            z[i] = zi
            s += ri * ri
            t += ri * zi
        return s, t

    @njit(cache=True, parallel=True, fastmath=False)
    def nb_p_update(p, z, beta):
        for i in prange(p.shape[0]):
            p[i] = z[i] + beta * p[i]

    @njit(cache=True, parallel=True, fastmath=False)
    def nb_nystrom_apply(U, coef, x):
        n, r = U.shape
        c = np.zeros(r, dtype=x.dtype)
        for j in range(r):
            s = 0.0
            for i in prange(n):
                s += U[i, j] * x[i]
            c[j] = s * coef[j]
        y = np.empty_like(x)
        for i in prange(n):
            s = x[i]
            for j in range(r):
                s += U[i, j] * c[j]
            y[i] = s
        return y

    @njit(cache=True, parallel=True, fastmath=False)
    def nb_orthogonalize(Q, v):
        n, k = Q.shape
        v = v.copy()
        for _ in range(2):
            c = np.zeros(k, dtype=v.dtype)
            for j in range(k):
                s = 0.0
                for i in prange(n):
                    s += Q[i, j] * v[i]
                c[j] = s
            for i in prange(n):
                s = 0.0
                for j in range(k):
                    s += Q[i, j] * c[j]
                v[i] -= s
        return v

    cg_update = nb_cg_update
    cg_update_jacobi = nb_cg_update_jacobi
    p_update = nb_p_update
else:  # pragma: no cover
    nb_cg_update = nb_cg_update_jacobi = nb_p_update = nb_nystrom_apply = nb_orthogonalize = None
    cg_update = np_cg_update
    cg_update_jacobi = np_cg_update_jacobi
    p_update = np_p_update

# Nyström apply and block orthogonalisation: BLAS (NumPy) wins at every measured size, see
# benchmarks/results/numba_kernels.md; the Numba versions are kept only for the benchmark.
nystrom_apply = np_nystrom_apply
orthogonalize = np_orthogonalize


def kernels(use_numba: bool):
    """(cg_update, cg_update_jacobi, p_update) for the requested flavour."""
    if use_numba and HAVE_NUMBA:
        return nb_cg_update, nb_cg_update_jacobi, nb_p_update
    return np_cg_update, np_cg_update_jacobi, np_p_update
