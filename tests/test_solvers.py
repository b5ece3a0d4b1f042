"""Tests of fastntk.solvers on plain SPD matrices with controlled spectra (float64)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse.linalg as spla
from hypothesis import given, settings
from hypothesis import strategies as st

from fastntk.errors import (
    BackendUnavailableError,
    ConvergenceError,
    InvalidInputError,
    ShapeError,
)
from fastntk.solvers import (
    DeflationPreconditioner,
    JacobiPreconditioner,
    NystromPreconditioner,
    SolveResult,
    block_cg,
    cg,
    choose_ridge,
    eigsh,
    estimate_condition,
    lanczos,
    make_preconditioner,
    minres,
    multishift_cg,
)
from fastntk.solvers._numba_kernels import HAVE_NUMBA

SPECTRA = ("flat", "geometric", "cluster_outliers", "lowrank_ridge")


def spectrum(kind, n, rng):
    if kind == "flat":
        return 1.0 + 0.5 * rng.random(n)
    if kind == "geometric":
        return np.geomspace(1e4, 1.0, n)
    if kind == "cluster_outliers":
        lam = 1.0 + 0.01 * rng.random(n)
        k = max(1, n // 10)
        lam[:k] = np.geomspace(1e3, 50, k)
        return lam
    if kind == "lowrank_ridge":
        r = max(1, n // 4)
        lam = np.zeros(n)
        lam[:r] = np.geomspace(1e3, 1.0, r)
        return lam + 1e-2
    raise ValueError(kind)


def spd(kind, n, seed, jitter_diag=True):
    rng = np.random.default_rng(seed)
    Q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    lam = spectrum(kind, n, rng)
    A = (Q * lam) @ Q.T
    A = 0.5 * (A + A.T)
    return A, lam, rng


class Counting:
    """A duck-typed operator that counts matvecs (to prove errors come before any work)."""

    def __init__(self, A):
        self.A = A
        self.shape = A.shape
        self.dtype = A.dtype
        self.calls = 0

    def matvec(self, x):
        self.calls += 1
        return self.A @ x

    def matmat(self, X):
        self.calls += X.shape[1]
        return self.A @ X


def power_law(n, seed=0, ridge_frac=1e-3):
    rng = np.random.default_rng(seed)
    Q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    lam = 6.5e5 * (np.arange(n) + 1.0) ** -1.8
    ridge = ridge_frac * lam[0]
    return (Q * lam) @ Q.T, lam, ridge, rng


def assert_bound(res: SolveResult, A, b):
    tr = np.linalg.norm(b - A @ res.x)
    assert res.converged
    assert tr <= res.tolerance * (1 + 1e-9)
    assert abs(tr - res.true_residual) <= 1e-6 * max(tr, res.tolerance) + 1e-10 * res.rhs_norm


# ------------------------------------------------------------------------------------------
# CG / MINRES correctness, hypothesis-driven
# ------------------------------------------------------------------------------------------
@settings(deadline=None, max_examples=25)
@given(kind=st.sampled_from(SPECTRA), n=st.integers(5, 80), seed=st.integers(0, 10_000),
       backend=st.sampled_from(["scipy", "numba"]), rtol=st.sampled_from([1e-4, 1e-8]))
def test_cg_residual_bound(kind, n, seed, backend, rtol):
    A, lam, rng = spd(kind, n, seed)
    b = rng.standard_normal(n)
    res = cg(A, b, rtol=rtol, backend=backend)
    assert_bound(res, A, b)
    assert res.residual_history[0] == pytest.approx(np.linalg.norm(b))
    assert res.matvecs >= res.iterations + 1
    x_star = np.linalg.solve(A, b)
    cond = lam.max() / lam.min()
    assert np.linalg.norm(res.x - x_star) <= 10 * cond * rtol * np.linalg.norm(x_star) + 1e-12


@settings(deadline=None, max_examples=20)
@given(kind=st.sampled_from(SPECTRA), n=st.integers(5, 80), seed=st.integers(0, 10_000),
       backend=st.sampled_from(["scipy", "auto"]), precond=st.booleans())
def test_minres_residual_bound(kind, n, seed, backend, precond):
    A, lam, rng = spd(kind, n, seed)
    b = rng.standard_normal(n)
    M = JacobiPreconditioner.from_operator(A) if precond else None
    res = minres(A, b, rtol=1e-7, backend=backend, M=M)
    assert_bound(res, A, b)


def test_minres_indefinite():
    rng = np.random.default_rng(1)
    n = 60
    Q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    lam = np.concatenate([-np.geomspace(10, 1, n // 2), np.geomspace(1, 10, n - n // 2)])
    A = (Q * lam) @ Q.T
    b = rng.standard_normal(n)
    assert_bound(minres(A, b, rtol=1e-8), A, b)
    with pytest.raises(ConvergenceError):
        cg(A, b, rtol=1e-8, backend="numba")


@pytest.mark.parametrize("kind", SPECTRA)
def test_backends_agree(kind):
    A, lam, rng = spd(kind, 60, 3)
    b = rng.standard_normal(60)
    xs = [cg(A, b, rtol=1e-9, backend=be).x for be in ("scipy", "numba", "auto")]
    xs.append(minres(A, b, rtol=1e-9).x)
    xs.append(minres(A, b, rtol=1e-9, backend="scipy").x)
    ref = np.linalg.solve(A, b)
    for x in xs:
        assert np.linalg.norm(x - ref) <= 1e-8 * np.linalg.norm(ref) * (lam.max() / lam.min()) + 1e-9


def test_input_kinds_and_x0():
    A, _, rng = spd("geometric", 40, 0)
    b = rng.standard_normal(40)
    L = spla.aslinearoperator(A)

    class Exp:
        def to_scipy(self):
            return L

    for op in (A, L, Counting(A), Exp(), A.tolist()):
        assert_bound(cg(op, b, rtol=1e-8), A, b)
    x0 = np.linalg.solve(A, b) + 1e-3 * rng.standard_normal(40)
    for be in ("scipy", "numba"):
        res = cg(A, b, x0=x0, rtol=1e-8, backend=be)
        assert_bound(res, A, b)
        assert res.residual_history[0] == pytest.approx(np.linalg.norm(b - A @ x0))
    # b = 0 -> x = 0
    res = cg(A, np.zeros(40))
    assert res.converged and np.all(res.x == 0)


def test_float32_true_residual_restart():
    A, _, rng = spd("geometric", 80, 5)
    b = rng.standard_normal(80).astype(np.float32)
    res = cg(A.astype(np.float32), b, rtol=1e-3, backend="numba")
    assert res.x.dtype == np.float32
    assert np.linalg.norm(b - A.astype(np.float32) @ res.x) <= res.tolerance * 1.0001


def test_callback_and_keyboardinterrupt():
    A, _, rng = spd("geometric", 50, 0)
    b = rng.standard_normal(50)
    for solver, kw in ((cg, dict(backend="scipy")), (cg, dict(backend="numba")), (minres, {}),
                       (minres, dict(backend="scipy"))):
        seen = []
        res = solver(A, b, callback=lambda x: seen.append(x.copy()), **kw)
        assert len(seen) == res.iterations

        def boom(x):
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            solver(A, b, callback=boom, **kw)
    with pytest.raises(KeyboardInterrupt):
        block_cg(A, rng.standard_normal((50, 2)), callback=lambda X: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        multishift_cg(A, b, [0.0, 1.0], callback=lambda X: (_ for _ in ()).throw(KeyboardInterrupt))


def test_on_fail_raise_warn_ignore():
    A, _, rng = spd("geometric", 60, 0)
    b = rng.standard_normal(60)
    with pytest.raises(ConvergenceError) as ei:
        cg(A, b, rtol=1e-10, maxiter=3)
    r = ei.value.result
    assert isinstance(r, SolveResult) and not r.converged and r.iterations == 3
    with pytest.warns(RuntimeWarning):
        r = cg(A, b, rtol=1e-10, maxiter=3, on_fail="warn", backend="numba")
    assert not r.converged
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not minres(A, b, rtol=1e-10, maxiter=3, on_fail="ignore").converged


# ------------------------------------------------------------------------------------------
# bad inputs: typed errors before any matvec
# ------------------------------------------------------------------------------------------
BAD = [
    (dict(b=np.ones(7)), ShapeError),
    (dict(b=np.ones((10, 2))), ShapeError),
    (dict(rtol=-1.0), InvalidInputError),
    (dict(atol=-1e-3), InvalidInputError),
    (dict(maxiter=0), InvalidInputError),
    (dict(maxiter=-5), InvalidInputError),
    (dict(b=np.r_[np.ones(9), np.nan]), InvalidInputError),
    (dict(b=np.r_[np.ones(9), np.inf]), InvalidInputError),
    (dict(M=np.eye(9)), ShapeError),
    (dict(x0=np.ones(9)), ShapeError),
    (dict(backend="gpu"), InvalidInputError),
    (dict(on_fail="explode"), InvalidInputError),
]


@pytest.mark.parametrize("bad,err", BAD)
@pytest.mark.parametrize("solver", [cg, minres])
def test_bad_inputs_typed_before_matvec(solver, bad, err):
    A, _, _ = spd("flat", 10, 0)
    op = Counting(A)
    kw = dict(b=np.ones(10))
    kw.update(bad)
    b = kw.pop("b")
    with pytest.raises(err):
        solver(op, b, **kw)
    assert op.calls == 0


def test_bad_inputs_other():
    with pytest.raises(ShapeError):
        cg(np.ones((3, 4)), np.ones(3))
    with pytest.raises(ShapeError):
        block_cg(np.eye(4), np.ones((5, 2)))
    op = Counting(np.eye(5))
    with pytest.raises(InvalidInputError):
        multishift_cg(op, np.ones(5), [0.0, np.nan])
    with pytest.raises(InvalidInputError):
        multishift_cg(op, np.ones(5), [])
    with pytest.raises(ShapeError):
        block_cg(op, np.ones((5, 2)), M=np.eye(4))
    with pytest.raises(InvalidInputError):
        lanczos(op, 0)
    with pytest.raises(InvalidInputError):
        eigsh(op, 2, which="LM")
    assert op.calls == 0
    with pytest.raises(InvalidInputError):
        JacobiPreconditioner.from_operator(spla.aslinearoperator(np.eye(3)))
    with pytest.raises(InvalidInputError):
        make_preconditioner("ilu", np.eye(3))


def test_cupy_backend_unavailable_message():
    try:
        import cupy  # noqa: F401

        if cupy.cuda.runtime.getDeviceCount() > 0:
            pytest.skip("a GPU is present")
    except Exception:  # noqa: BLE001
        pass
    op = Counting(np.eye(5))
    with pytest.raises(BackendUnavailableError, match=r"fastntk\[gpu\]"):
        cg(op, np.ones(5), backend="cupy")
    assert op.calls == 0


# ------------------------------------------------------------------------------------------
# block CG
# ------------------------------------------------------------------------------------------
@settings(deadline=None, max_examples=15)
@given(kind=st.sampled_from(SPECTRA), n=st.integers(5, 80), k=st.integers(1, 6), seed=st.integers(0, 10_000),
       precond=st.booleans(), dependent=st.booleans())
def test_block_cg_equals_columnwise(kind, n, k, seed, precond, dependent):
    A, lam, rng = spd(kind, n, seed)
    B = rng.standard_normal((n, k))
    if dependent and k >= 2:
        B[:, 1] = 2.0 * B[:, 0]  # rank-deficient block
    M = JacobiPreconditioner.from_operator(A) if precond else None
    res = block_cg(A, B, rtol=1e-8, M=M)
    assert res.converged and res.x.shape == (n, k)
    tr = np.linalg.norm(B - A @ res.x, axis=0)
    assert np.all(tr <= res.tolerance * (1 + 1e-9))
    for j in range(k):
        rj = cg(A, B[:, j], rtol=1e-8, M=M)
        assert rj.tolerance == pytest.approx(res.tolerance[j])
        scale = np.linalg.norm(np.linalg.solve(A, B[:, j])) * (lam.max() / lam.min()) * 1e-7 + 1e-12
        assert np.linalg.norm(res.x[:, j] - rj.x) <= 2 * scale


def test_block_cg_fewer_iterations():
    A, lam, rng = power_law(300)[0:2] + (None,)
    A = A + 1e-3 * lam[0] * np.eye(300)
    B = np.random.default_rng(1).standard_normal((300, 8))
    rb = block_cg(A, B, rtol=1e-6)
    rc = cg(A, B[:, 0], rtol=1e-6)
    assert rb.converged and rb.iterations < rc.iterations


# ------------------------------------------------------------------------------------------
# preconditioners
# ------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("ridge_frac", [1e-5, 1e-3])
def test_preconditioners_cut_iterations(ridge_frac):
    A, lam, ridge, rng = power_law(400, 0, ridge_frac)
    Ar = A + ridge * np.eye(400)
    b = rng.standard_normal(400)
    base = cg(Ar, b, rtol=1e-8)
    for M in (NystromPreconditioner.build(A, 40, ridge=ridge, seed=0),
              DeflationPreconditioner.from_operator(A, 30, ridge=ridge)):
        for solver in (cg, minres):
            res = solver(Ar, b, rtol=1e-8, M=M)
            assert_bound(res, Ar, b)
            assert res.iterations < base.iterations, (type(M).__name__, solver.__name__)
    # Nystrom cuts matvecs including its build cost on the hard system
    N = NystromPreconditioner.build(A, 40, ridge=ridge)
    r = cg(Ar, b, rtol=1e-8, M=N)
    if ridge_frac == 1e-5:
        assert r.matvecs + N.build_matvecs < base.matvecs
    # Jacobi: undoes a bad diagonal scaling D (A_D = D (A + ridge I) D, built with ridge=0)
    D = np.exp(rng.uniform(-2, 2, 400))
    AD = (D[:, None] * Ar) * D[None, :]
    J = JacobiPreconditioner.from_operator(AD)
    base_d = cg(AD, b, rtol=1e-8, on_fail="ignore", maxiter=4000)
    for be in ("scipy", "numba"):
        rj = cg(AD, b, rtol=1e-8, M=J, backend=be)
        assert_bound(rj, AD, b)
        assert rj.iterations < base_d.iterations


def test_nystrom_ridge_convention_and_reuse():
    A, lam, ridge, rng = power_law(300, 2, 1e-4)
    Ar = A + ridge * np.eye(300)
    b = rng.standard_normal(300)
    base = cg(Ar, b, rtol=1e-8)
    P1 = NystromPreconditioner.build(A, 30, ridge=ridge)   # operator without the ridge
    P2 = NystromPreconditioner.build(Ar, 30, ridge=0.0)    # operator already includes it
    assert P1.build_matvecs == 30
    i1 = cg(Ar, b, rtol=1e-8, M=P1).iterations
    i2 = cg(Ar, b, rtol=1e-8, M=P2).iterations
    assert i1 < base.iterations / 2 and i2 < base.iterations / 2
    # same sketch, other ridge: no new matvecs, still helps
    P3 = P1.with_ridge(10 * ridge)
    assert P3.build_matvecs == 0
    A3 = A + 10 * ridge * np.eye(300)
    assert cg(A3, b, rtol=1e-8, M=P3).iterations < cg(A3, b, rtol=1e-8).iterations
    # reuse with a low-rank-changed operator (a deletion: A - J_f^T J_f) and for several rhs
    w, V = np.linalg.eigh(A)
    down = 0.5 * (V[:, -5:] * w[-5:]) @ V[:, -5:].T          # a deletion: remove half of the top directions
    W = rng.standard_normal((300, 5)) * np.sqrt(lam[10] / 300)  # new data: a PSD low-rank update
    for A_new in (Ar - down, Ar + W @ W.T):
        bb = rng.standard_normal(300)
        r_new = cg(A_new, bb, rtol=1e-8, M=P1)
        assert_bound(r_new, A_new, bb)
        assert r_new.iterations < cg(A_new, bb, rtol=1e-8).iterations


@settings(deadline=None, max_examples=15)
@given(kind=st.sampled_from(SPECTRA), n=st.integers(5, 80), seed=st.integers(0, 10_000),
       name=st.sampled_from(["none", "jacobi", "nystrom", "deflation"]))
def test_preconditioners_never_break_convergence(kind, n, seed, name):
    A, lam, rng = spd(kind, n, seed)
    b = rng.standard_normal(n)
    kw = {"nystrom": dict(rank=min(10, n), seed=seed), "deflation": dict(k=min(5, n))}.get(name, {})
    M = make_preconditioner(name, A, **kw)
    assert M.shape == (n, n)
    for be in ("scipy", "numba"):
        assert_bound(cg(A, b, rtol=1e-8, M=M, backend=be), A, b)
    assert_bound(minres(A, b, rtol=1e-8, M=M), A, b)
    X = rng.standard_normal((n, 3))
    assert np.allclose(M.matmat(X), np.stack([M.matvec(X[:, j]) for j in range(3)], 1))


def test_nystrom_is_exact_for_low_rank():
    A, lam, rng = spd("lowrank_ridge", 60, 0)
    A0 = A - 1e-2 * np.eye(60)  # rank 15
    P = NystromPreconditioner.build(A0, 20, ridge=1e-2, oversample=5)
    res = cg(A, rng.standard_normal(60), rtol=1e-10, M=P)
    assert res.iterations <= 3


# ------------------------------------------------------------------------------------------
# multishift and ridge choice
# ------------------------------------------------------------------------------------------
@settings(deadline=None, max_examples=15)
@given(kind=st.sampled_from(SPECTRA), n=st.integers(5, 80), seed=st.integers(0, 10_000))
def test_multishift_equals_separate(kind, n, seed):
    A, lam, rng = spd(kind, n, seed)
    b = rng.standard_normal(n)
    shifts = [0.0, 1e-3, 0.1, 1.0, 100.0]
    ms = multishift_cg(A, b, shifts, rtol=1e-9)
    assert ms.converged and len(ms) == len(shifts)
    assert ms.matvecs == ms.iterations + len(shifts)
    for s, r in zip(shifts, ms):
        As = A + s * np.eye(n)
        assert_bound(r, As, b)
        ref = np.linalg.solve(As, b)
        cond = (lam.max() + s) / (lam.min() + s)
        assert np.linalg.norm(r.x - ref) <= 1e-7 * cond * np.linalg.norm(ref) + 1e-12
    assert ms.iterations <= cg(A + shifts[0] * np.eye(n), b, rtol=1e-9).iterations + 2


def test_choose_ridge_gcv_and_heldout():
    rng = np.random.default_rng(0)
    n = 120
    X = rng.standard_normal((n, 5))
    K = np.exp(-0.5 * ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1) / 5.0)
    y = np.sin(X[:, 0]) + 0.3 * rng.standard_normal(n)
    shifts = np.geomspace(1e-3, 10, 9)
    out = choose_ridge(K, y, shifts, method="gcv", probes=30, lanczos_steps=60)
    lam, Q = np.linalg.eigh(K)
    exact = np.array([n * np.linalg.norm(np.linalg.solve(K + s * np.eye(n), y)) ** 2
                      / np.sum(1.0 / (lam + s)) ** 2 for s in shifts])
    assert np.allclose(out["scores"], exact, rtol=0.3)
    assert abs(np.argmin(exact) - np.argmin(out["scores"])) <= 1
    ho = choose_ridge(K, y, shifts, method="heldout")
    assert ho["ridge"] in shifts and np.all(np.isfinite(ho["scores"]))
    # the held-out scores of the random split it reports, recomputed densely: fit on T, score on V
    V = np.asarray(ho["holdout"])
    T = np.setdiff1d(np.arange(n), V)
    dense = [np.mean((K[np.ix_(V, T)] @ np.linalg.solve(K[np.ix_(T, T)] + s * np.eye(T.size), y[T]) - y[V]) ** 2)
             for s in shifts]
    assert np.allclose(ho["scores"], dense, rtol=1e-4)
    assert ho["ridge"] == shifts[int(np.argmin(dense))]
    Kv = K[:20, 20:]
    hv = choose_ridge(K[20:, 20:], y[20:], shifts, method="heldout", val_operator=Kv, val_target=y[:20])
    ref = [np.mean((Kv @ np.linalg.solve(K[20:, 20:] + s * np.eye(100), y[20:]) - y[:20]) ** 2) for s in shifts]
    assert np.allclose(hv["scores"], ref, rtol=1e-4)


# ------------------------------------------------------------------------------------------
# Lanczos / eigsh / condition
# ------------------------------------------------------------------------------------------
@settings(deadline=None, max_examples=15)
@given(kind=st.sampled_from(SPECTRA + ("lowrank_exact", "illcond")), n=st.integers(5, 80),
       seed=st.integers(0, 10_000), k=st.integers(1, 5), which=st.sampled_from(["LA", "SA"]))
def test_lanczos_matches_eigh(kind, n, seed, k, which):
    k = min(k, n)
    rng = np.random.default_rng(seed)
    Q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    if kind == "lowrank_exact":
        lam = np.zeros(n)
        r = max(1, n // 5)
        lam[:r] = rng.random(r) * 10 + 1
    elif kind == "illcond":
        lam = np.geomspace(1e10, 1e-4, n)
    else:
        lam = spectrum(kind, n, rng)
    A = (Q * lam) @ Q.T
    A = 0.5 * (A + A.T)
    w_ref = np.linalg.eigvalsh(A)
    vals, vecs = lanczos(A, k, which=which, maxiter=n, tol=1e-10)
    ref = w_ref[::-1][:k] if which == "LA" else w_ref[:k]
    scale = np.abs(w_ref).max()
    assert np.allclose(vals, ref, atol=1e-8 * scale)
    assert np.all(np.diff(vals) <= 0) if which == "LA" else np.all(np.diff(vals) >= 0)
    assert np.allclose(vecs.T @ vecs, np.eye(k), atol=1e-6)
    resid = np.linalg.norm(A @ vecs - vecs * vals, axis=0)
    assert np.all(resid <= 1e-5 * scale)


@pytest.mark.parametrize("method", ["scipy", "lanczos", "auto"])
def test_eigsh_methods(method):
    A, lam, _ = spd("geometric", 60, 1)
    vals, vecs = eigsh(A, 4, which="LA", method=method)
    assert np.allclose(vals, np.sort(lam)[::-1][:4], rtol=1e-7)
    vals, _ = eigsh(A, 3, which="SA", method=method, maxiter=60 if method != "scipy" else 20000)
    assert np.allclose(vals, np.sort(lam)[:3], rtol=1e-6)


def test_estimate_condition():
    A, lam, _ = spd("geometric", 50, 0)
    k = estimate_condition(A, steps=50)
    assert k == pytest.approx(lam.max() / lam.min(), rel=1e-6)
    assert estimate_condition(A, steps=10) <= k * (1 + 1e-9)
    # low rank + ridge: zero eigenvalues are found
    B, lamb, _ = spd("lowrank_ridge", 60, 0)
    B0 = B - 1e-2 * np.eye(60)
    kb = estimate_condition(B0, ridge=1e-1, steps=30)
    assert kb == pytest.approx((lamb.max() - 1e-2 + 1e-1) / 1e-1, rel=1e-4)


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba not installed")
def test_numba_kernels_match_numpy():
    from fastntk.solvers import _numba_kernels as K

    rng = np.random.default_rng(0)
    n = 1000
    arrs = [rng.standard_normal(n) for _ in range(4)]
    a1 = [a.copy() for a in arrs]
    a2 = [a.copy() for a in arrs]
    assert K.nb_cg_update(*a1, 0.3) == pytest.approx(K.np_cg_update(*a2, 0.3))
    assert np.allclose(a1[0], a2[0]) and np.allclose(a1[1], a2[1])
    d = rng.random(n) + 0.5
    z1, z2 = np.empty(n), np.empty(n)
    assert np.allclose(K.nb_cg_update_jacobi(*a1, 0.3, d, z1), K.np_cg_update_jacobi(*a2, 0.3, d, z2))
    assert np.allclose(z1, z2)
    U = np.linalg.qr(rng.standard_normal((n, 7)))[0]
    c = rng.random(7)
    assert np.allclose(K.nb_nystrom_apply(U, c, arrs[0]), K.np_nystrom_apply(U, c, arrs[0]))
    assert np.allclose(K.nb_orthogonalize(U, arrs[0]), K.np_orthogonalize(U, arrs[0]))


# ------------------------------------------------------------------------------------------
# CuPy path (skips without a GPU)
# ------------------------------------------------------------------------------------------
def _cupy():
    cp = pytest.importorskip("cupy")
    try:
        if cp.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except Exception:  # noqa: BLE001
        pytest.skip("no CUDA device")
    return cp


def test_cupy_solvers_match_cpu():
    cp = _cupy()
    A, lam, rng = spd("geometric", 80, 0)
    b = rng.standard_normal(80)
    Ag, bg = cp.asarray(A), cp.asarray(b)
    for M in (None, JacobiPreconditioner.from_operator(A), NystromPreconditioner.build(A, 10)):
        r = cg(Ag, bg, rtol=1e-8, M=M)
        assert r.backend == "cupy" and isinstance(r.x, cp.ndarray)
        assert_bound(SolveResult(**{**r.__dict__, "x": cp.asnumpy(r.x)}), A, b)
        r2 = minres(Ag, bg, rtol=1e-8, M=M)
        assert float(cp.linalg.norm(bg - Ag @ r2.x)) <= r2.tolerance * (1 + 1e-9)
    rb = block_cg(Ag, cp.asarray(rng.standard_normal((80, 3))), rtol=1e-8)
    assert rb.converged
    vals, _ = lanczos(Ag, 3)
    assert np.allclose(vals, np.sort(lam)[::-1][:3], rtol=1e-7)
    ms = multishift_cg(Ag, bg, [0.0, 1.0])
    assert ms.converged
