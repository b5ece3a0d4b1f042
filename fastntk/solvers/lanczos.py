"""Extreme eigenpairs of a symmetric operator, and a condition-number estimate.

* :func:`eigsh` — one entry point: SciPy's ARPACK ``eigsh``, CuPy's ``eigsh``, or fastntk's own
  :func:`lanczos`.
* :func:`lanczos` — plain Lanczos with FULL reorthogonalisation (classical Gram–Schmidt, twice,
  against every previous Lanczos vector), no restarts: memory n × m for m steps.  Why our own:
  CuPy's ``eigsh`` has open correctness reports on low-rank and ill-conditioned matrices, and
  ARPACK needs k < n.  Invariant subspaces (β_j ≈ 0, e.g. a low-rank A) are handled by continuing
  with a fresh random vector orthogonal to all previous ones, so zero eigenvalues are found too.
* :func:`estimate_condition` — κ(A + ridge·I) = (θ_max + ridge)/(θ_min + ridge) from the Ritz
  values θ of an m-step Lanczos run.
"""
from __future__ import annotations

import logging
import warnings

import numpy as np

from ..errors import InvalidInputError
from . import _xp
from ._linop import as_operator, is_cupy_object, require_cupy

log = logging.getLogger(__name__)


def _check_k_which(k, which, n, allow_all=True):
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise InvalidInputError(f"k must be a positive integer; got {k!r}.")
    if k > n:
        raise InvalidInputError(f"k={k} exceeds the operator size n={n}.")
    if which not in ("LA", "SA"):
        raise InvalidInputError(f"which must be 'LA' (largest) or 'SA' (smallest); got {which!r}.")


def lanczos_tridiag(op, v0, m, *, reorth="full", rng=None):
    """Run m Lanczos steps on the wrapped operator ``op`` from v0.

    Returns (alpha (m,), beta (m-1,), V (n, m)) with A V ≈ V T, T = tridiag(beta, alpha, beta).
    ``reorth="full"``: CGS2 against all previous vectors; ``"none"``: the three-term recurrence only.
    A breakdown (β below 1e-10·‖T‖ estimate) restarts with a random vector ⟂ V and β = 0.
    """
    xp = op.xp
    n = op.n
    m = min(int(m), n)
    rng = rng or np.random.default_rng(0)
    V = xp.zeros((n, m), dtype=xp.float64, device=op.device)
    alpha = np.zeros(m)
    beta = np.zeros(max(m - 1, 0))
    v = xp.reshape(_xp.astype(xp, v0, np.float64), (-1,))
    v = v / _xp.norm(xp, v)
    scale = 0.0
    j = 0
    for j in range(m):
        V[:, j] = v
        w = xp.reshape(_xp.astype(xp, op.matvec(v), np.float64), (-1,))
        a = _xp.dot(v, w)
        alpha[j] = a
        if j + 1 == m:
            break
        if reorth == "full":
            Vj = V[:, : j + 1]
            w = w - Vj @ (Vj.T @ w)
            w = w - Vj @ (Vj.T @ w)
        else:
            w = w - a * v - (beta[j - 1] * V[:, j - 1] if j > 0 else 0.0)
        b = _xp.norm(xp, w)
        scale = max(scale, abs(a), b)
        if b <= 1e-10 * max(scale, np.finfo(float).tiny):
            # invariant subspace found: continue in the orthogonal complement (β_j = 0)
            for _ in range(3):
                w = _xp.from_numpy(xp, rng.standard_normal(n), V)
                Vj = V[:, : j + 1]
                w = w - Vj @ (Vj.T @ w)
                w = w - Vj @ (Vj.T @ w)
                nw = _xp.norm(xp, w)
                if nw > 1e-8:
                    break
            beta[j] = 0.0
            v = w / nw
        else:
            beta[j] = b
            v = w / b
    return alpha, beta, V


def _ritz(alpha, beta):
    import scipy.linalg as sla  # noqa: PLC0415

    if alpha.size == 1:
        return alpha.copy(), np.ones((1, 1))
    return sla.eigh_tridiagonal(alpha, beta)


def lanczos(A, k, *, which="LA", maxiter=None, reorth="full", seed=0, tol=1e-8, return_info=False):
    """Top-k (``which="LA"``) or bottom-k (``"SA"``) eigenpairs of symmetric A by Lanczos.

    Runs Lanczos with full reorthogonalisation, growing the Krylov dimension m (checked every
    ~k steps) until the k wanted Ritz values are stable between two dimensions and the Ritz pairs (θ_i, y_i) have residual ‖A y_i − θ_i y_i‖ =
    |β_m s_{m,i}| ≤ tol·max|θ|, or m = maxiter (default min(n, max(4k, k + 60))), or m = n (exact).
    Returns (eigenvalues (k,), eigenvectors (n, k)): descending for "LA", ascending for "SA"; plus
    an info dict (matvecs, steps, converged, max_residual) if ``return_info``.  The operator's
    array library (NumPy, CuPy or torch, on the operator's device) is kept.
    """
    op = as_operator(A)
    n = op.n
    _check_k_which(k, which, n)
    if reorth not in ("full",):
        raise InvalidInputError("only reorth='full' is implemented (plain Lanczos loses orthogonality).")
    m_max = min(n, int(maxiter) if maxiter is not None else max(4 * k, k + 60))
    if m_max < k:
        raise InvalidInputError(f"maxiter={maxiter} < k={k}.")
    rng = np.random.default_rng(seed)
    xp = op.xp
    v0 = xp.asarray(rng.standard_normal(n), device=op.device)
    # simple strategy: run to m, check, double m if needed (re-running is avoided by running to m_max
    # in chunks of the same recurrence; for clarity we extend by re-running — matvecs are counted)
    m = min(m_max, max(2 * k + 10, 20))
    prev = None
    while True:
        op.n_matvecs = 0
        alpha, beta, V = lanczos_tridiag(op, v0, m, reorth=reorth, rng=np.random.default_rng(seed + 1))
        theta, S = _ritz(alpha, beta)
        bm = 0.0 if m >= n else _xp.norm(xp, _xp.astype(xp, op.matvec(V[:, -1]), np.float64) - alpha[-1] * V[:, -1]
                                         - (beta[-1] * V[:, -2] if m > 1 else 0))
        if m < n:
            op.n_matvecs -= 1  # the residual probe is a diagnostic; count below
            bm_cost = 1
        else:
            bm_cost = 0
        idx = np.argsort(-theta)[:k] if which == "LA" else np.argsort(theta)[:k]
        res = np.abs(bm * S[-1, idx])
        scale = max(np.max(np.abs(theta)), np.finfo(float).tiny)
        # also require the wanted Ritz values to be stable between two Krylov dimensions: a repeated
        # eigenvalue is only found copy by copy (after invariant-subspace restarts), so a small
        # residual alone can hide a missed copy
        stable = prev is not None and np.allclose(prev, theta[idx], rtol=0, atol=tol * scale)
        prev = theta[idx]
        converged = bool(np.all(res <= tol * scale) and stable) or m >= n
        if converged or m >= m_max:
            break
        m = min(m_max, 2 * m)
    vals = theta[idx]
    vecs = V @ _xp.from_numpy(xp, S[:, idx], V)
    if not converged:
        warnings.warn(f"lanczos: {k} eigenpairs not converged after {m} steps (max Ritz residual "
                      f"{res.max():.2e} > {tol * scale:.2e}); increase maxiter.", RuntimeWarning, stacklevel=2)
    info = dict(matvecs=op.n_matvecs + bm_cost, steps=m, converged=converged,
                max_residual=float(res.max()) if res.size else 0.0)
    return (vals, vecs, info) if return_info else (vals, vecs)


def eigsh(A, k, *, which="LA", method="auto", tol=0.0, maxiter=None, seed=0):
    """k extreme eigenpairs of symmetric A: ``which="LA"`` largest (returned descending), ``"SA"``
    smallest (ascending).  ``method``: "scipy" (ARPACK), "cupy" (cupyx eigsh), "lanczos" (fastntk's
    own, full reorthogonalisation) or "auto" (CPU: ARPACK for "LA" when k < n − 1, else Lanczos; GPU: own
    Lanczos because of CuPy's eigsh correctness issues).  The choice is logged."""
    if method not in ("auto", "scipy", "cupy", "lanczos"):
        raise InvalidInputError(f"method must be 'auto', 'scipy', 'cupy' or 'lanczos'; got {method!r}.")
    op = as_operator(A, prefer_gpu=(method == "cupy"))
    n = op.n
    _check_k_which(k, which, n)
    if method == "auto":
        if not _xp.is_numpy(op.xp):
            method = "lanczos"
        else:
            # ARPACK's "SA" mode (no shift-invert) converges very slowly on decaying spectra
            method = "scipy" if (k < n - 1 and which == "LA") else "lanczos"
        log.info("fastntk.eigsh: method=%s (auto, n=%d, k=%d)", method, n, k)
    if method == "lanczos":
        return lanczos(op, k, which=which, maxiter=maxiter, seed=seed, tol=tol if tol > 0 else 1e-8)
    rng = np.random.default_rng(seed)
    if method == "scipy":
        import scipy.sparse.linalg as spla  # noqa: PLC0415

        if not _xp.is_numpy(op.xp):
            raise InvalidInputError("method='scipy' needs a NumPy operator; use 'lanczos' (torch, CuPy) or 'cupy'.")
        if k >= n - 1:
            raise InvalidInputError(f"ARPACK needs k < n - 1 (k={k}, n={n}); use method='lanczos'.")
        vals, vecs = spla.eigsh(op.to_scipy(), k=k, which=which, tol=tol, maxiter=maxiter,
                                v0=rng.standard_normal(n))
    else:
        require_cupy()
        import cupyx.scipy.sparse.linalg as cspla  # noqa: PLC0415

        if _xp.kind(op.xp) != "cupy":
            raise InvalidInputError("method='cupy' needs a GPU operator (CuPy array / cupyx LinearOperator).")
        src = op.source if is_cupy_object(op.source) else None
        L = src if src is not None and not hasattr(src, "ndim") else cspla.LinearOperator(
            op.shape, matvec=op.matvec, dtype=op.dtype)
        vals, vecs = cspla.eigsh(L, k=k, which=which, tol=tol, maxiter=maxiter)
        vals = vals.get()
    order = np.argsort(-vals) if which == "LA" else np.argsort(vals)
    return vals[order], vecs[:, order]


def estimate_condition(A, *, ridge=0.0, steps=30, seed=0, return_extremes=False):
    """κ(A + ridge·I) ≈ (θ_max + ridge)/(θ_min + ridge) from the Ritz values of ``steps`` Lanczos steps
    (full reorthogonalisation) on A.

    θ_max converges fast from below; θ_min approaches λ_min from above, so with few steps the
    estimate is a lower bound of κ (exact once the Krylov space is invariant, e.g. n ≤ steps or
    rank(A) < steps, where zero eigenvalues are found).  Returns ``inf`` if θ_min + ridge ≤ 0.
    """
    if ridge < 0 or not np.isfinite(ridge):
        raise InvalidInputError(f"ridge must be finite and >= 0; got {ridge}.")
    op = as_operator(A)
    rng = np.random.default_rng(seed)
    alpha, beta, _ = lanczos_tridiag(op, op.xp.asarray(rng.standard_normal(op.n), device=op.device), min(steps, op.n),
                                     rng=np.random.default_rng(seed + 1))
    theta, _ = _ritz(alpha, beta)
    lo, hi = float(theta.min()), float(theta.max())
    lo = max(lo, 0.0) if lo > -1e-12 * abs(hi) else lo
    kappa = (hi + ridge) / (lo + ridge) if lo + ridge > 0 else float("inf")
    return (kappa, hi, lo) if return_extremes else kappa
