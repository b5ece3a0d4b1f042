"""The solvers on torch tensors (CPU here, CUDA where present) and CuPy arrays: one array API code path.

Every torch result is compared with the NumPy/SciPy path on the same float64 problem (≤ 1e-10
relative) and with a dense float64 reference; the torch operators of fastntk.operators are solved
directly, without their SciPy adapter.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse.linalg as spla
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastntk.errors import DeviceError, InvalidInputError, NoDiagonalError, PreconditionerError
from fastntk.operators import GGNLinearOperator, NTKLinearOperator, TorchLinearOperator, make_jacobian
from fastntk.peft import BatchNormPeft
from fastntk.solvers import (
    DeflationPreconditioner,
    JacobiPreconditioner,
    SolveResult,
    block_cg,
    cg,
    check_preconditioner,
    eigsh,
    estimate_condition,
    lanczos,
    make_preconditioner,
    minres,
    multishift_cg,
)
from tests.conftest import tiny_bn_cnn
from tests.test_solvers import spd

TOL = 1e-10  # torch vs NumPy, relative, float64
RTOL = 1e-13  # solver tolerance: far below TOL / κ for the spectra used


def rel(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), np.finfo(float).tiny))


def t(x):
    return torch.from_numpy(np.ascontiguousarray(x))


def npy(x):
    assert isinstance(x, torch.Tensor), type(x)
    return x.detach().cpu().numpy()


def precond_pair(name, A, rank):
    """The same preconditioner built from the NumPy matrix and from the torch tensor."""
    kw = {"rank": rank} if name == "nystrom" else {}
    if name == "none":
        return None, None
    return make_preconditioner(name, A, **kw), make_preconditioner(name, t(A), **kw)


CONDITIONED = ("flat", "graded", "outliers")  # κ ≤ 100: the forward error κ·RTOL ≪ TOL


def spd_k(kind, n, seed):
    """SPD test matrices with κ ≤ 100, so both paths reach RTOL and agree to ≪ TOL."""
    if kind == "flat":
        return spd("flat", n, seed)
    rng = np.random.default_rng(seed)
    Q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    if kind == "graded":
        lam = np.geomspace(100.0, 1.0, n)
    else:  # a cluster at 1 and a few outliers up to 100 (what deflation/Nyström target)
        lam = 1.0 + 0.01 * rng.random(n)
        lam[: max(1, n // 8)] = np.geomspace(100.0, 20.0, max(1, n // 8))
    A = (Q * lam) @ Q.T
    return 0.5 * (A + A.T), lam, rng


# ------------------------------------------------------------------------------------------
# CG / block CG / MINRES / multishift: torch == NumPy/SciPy == dense
# ------------------------------------------------------------------------------------------
@settings(max_examples=12)
@given(kind=st.sampled_from(CONDITIONED), n=st.integers(4, 40), seed=st.integers(0, 10_000),
       precond=st.sampled_from(["none", "jacobi", "nystrom"]))
def test_cg_torch_equals_scipy_and_numpy_loop(kind, n, seed, precond):
    A, _, rng = spd_k(kind, n, seed)
    b = rng.standard_normal(n)
    M_np, M_t = precond_pair(precond, A, rank=max(1, n // 3))
    ref = np.linalg.solve(A, b)
    r_sp = cg(A, b, rtol=RTOL, M=M_np, backend="scipy")
    r_own = cg(A, b, rtol=RTOL, M=M_np, backend="numba")
    r_t = cg(t(A), t(b), rtol=RTOL, M=M_t)
    assert isinstance(r_t.x, torch.Tensor) and r_t.x.dtype == torch.float64
    assert r_t.backend == "torch" and r_t.info["array_namespace"] == "torch"
    assert r_t.method == ("cg" if precond == "none" else "pcg")
    assert r_t.converged and r_t.true_residual <= r_t.tolerance
    assert rel(npy(r_t.x), r_sp.x) <= TOL
    assert rel(npy(r_t.x), r_own.x) <= TOL
    assert rel(npy(r_t.x), ref) <= TOL
    # the recorded residual is the true one of the returned x (up to the rounding of b − Ax itself)
    x = npy(r_t.x)
    rounding = 10 * n * np.finfo(float).eps * (np.linalg.norm(A, 2) * np.linalg.norm(x) + np.linalg.norm(b))
    assert abs(r_t.true_residual - np.linalg.norm(b - A @ x)) <= rounding


@settings(max_examples=8)
@given(kind=st.sampled_from(CONDITIONED), n=st.integers(4, 30), k=st.integers(1, 5), seed=st.integers(0, 10_000),
       precond=st.sampled_from(["none", "jacobi", "nystrom"]), dependent=st.booleans())
def test_block_cg_torch_equals_numpy(kind, n, k, seed, precond, dependent):
    A, _, rng = spd_k(kind, n, seed)
    B = rng.standard_normal((n, k))
    if dependent and k > 1:  # a repeated column: the QR must drop the dependent direction
        B[:, -1] = B[:, 0]
    M_np, M_t = precond_pair(precond, A, rank=max(1, n // 3))
    r_np = block_cg(A, B, rtol=RTOL, M=M_np)
    r_t = block_cg(t(A), t(B), rtol=RTOL, M=M_t)
    assert isinstance(r_t.x, torch.Tensor) and r_t.backend == "torch"
    assert r_t.converged and np.all(r_t.true_residual <= r_t.tolerance)
    assert rel(npy(r_t.x), r_np.x) <= TOL
    assert rel(npy(r_t.x), np.linalg.solve(A, B)) <= TOL


@settings(max_examples=8)
@given(n=st.integers(4, 30), seed=st.integers(0, 10_000), precond=st.sampled_from(["none", "jacobi"]))
def test_minres_torch_equals_numpy_on_indefinite(n, seed, precond):
    rng = np.random.default_rng(seed)
    Q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    lam = rng.uniform(1.0, 3.0, n) * rng.choice([-1.0, 1.0], n)  # indefinite, |λ| ≥ 1
    A = (Q * lam) @ Q.T
    A = 0.5 * (A + A.T)
    b = rng.standard_normal(n)
    M_np = M_t = None
    if precond == "jacobi":  # SPD preconditioner from |diag|
        d = np.abs(np.diag(A)) + 1.0
        M_np, M_t = JacobiPreconditioner(d), JacobiPreconditioner(t(d))
    r_np = minres(A, b, rtol=RTOL, M=M_np)
    r_sp = minres(A, b, rtol=RTOL, M=M_np, backend="scipy")
    r_t = minres(t(A), t(b), rtol=RTOL, M=M_t)
    assert r_t.backend == "torch" and r_t.converged
    assert rel(npy(r_t.x), r_np.x) <= TOL
    assert rel(npy(r_t.x), r_sp.x) <= TOL
    assert rel(npy(r_t.x), np.linalg.solve(A, b)) <= TOL


def test_multishift_torch_equals_numpy():
    A, _, rng = spd("flat", 25, 3)
    b = rng.standard_normal(25)
    shifts = [0.0, 0.1, 1.0, 10.0]
    r_np = multishift_cg(A, b, shifts, rtol=RTOL)
    r_t = multishift_cg(t(A), t(b), shifts, rtol=RTOL)
    assert r_t.converged and all(r.backend == "torch" for r in r_t)
    for s, a, c in zip(shifts, r_t, r_np):
        assert rel(npy(a.x), c.x) <= TOL
        assert rel(npy(a.x), np.linalg.solve(A + s * np.eye(25), b)) <= TOL
    assert isinstance(r_t.X, torch.Tensor) and tuple(r_t.X.shape) == (25, len(shifts))


# ------------------------------------------------------------------------------------------
# Lanczos / eigsh / condition number
# ------------------------------------------------------------------------------------------
@settings(max_examples=8)
@given(n=st.integers(8, 40), seed=st.integers(0, 10_000), k=st.integers(1, 4), which=st.sampled_from(["LA", "SA"]))
def test_lanczos_torch_equals_numpy(n, seed, k, which):
    rng = np.random.default_rng(seed)
    Q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    lam = np.linspace(1.0, 10.0, n) + 0.3 * rng.random(n)  # distinct eigenvalues, gaps ≥ 0.03
    A = (Q * lam) @ Q.T
    A = 0.5 * (A + A.T)
    v_np, V_np = lanczos(A, k, which=which, seed=seed)
    v_t, V_t = lanczos(t(A), k, which=which, seed=seed)
    assert isinstance(V_t, torch.Tensor) and tuple(V_t.shape) == (n, k)
    w = np.linalg.eigvalsh(A)
    ref = w[::-1][:k] if which == "LA" else w[:k]
    np.testing.assert_allclose(v_t, v_np, rtol=TOL, atol=0)
    np.testing.assert_allclose(v_t, ref, rtol=1e-8, atol=0)
    V = npy(V_t)
    # eigenvectors up to sign: the spectral projectors agree, and A v = θ v
    np.testing.assert_allclose(V @ V.T, V_np @ V_np.T, atol=1e-7)
    np.testing.assert_allclose(A @ V, V * v_t[None, :], atol=1e-6 * lam.max())


def test_eigsh_and_condition_on_torch():
    A, lam, _ = spd_k("outliers", 30, 5)
    vals, vecs = eigsh(t(A), 3, which="LA")  # auto → own Lanczos off NumPy
    np.testing.assert_allclose(vals, np.sort(lam)[::-1][:3], rtol=1e-8)
    assert isinstance(vecs, torch.Tensor)
    ridge = 0.5
    np.testing.assert_allclose(estimate_condition(t(A), ridge=ridge, steps=30),
                               estimate_condition(A, ridge=ridge, steps=30), rtol=TOL)
    with pytest.raises(InvalidInputError):
        eigsh(t(A), 3, method="scipy")


def test_deflation_preconditioner_on_torch():
    A, _, rng = spd_k("outliers", 40, 7)
    b = rng.standard_normal(40)
    D_np = DeflationPreconditioner.from_operator(A, 4)
    D_t = DeflationPreconditioner.from_operator(t(A), 4)
    assert isinstance(D_t.U, torch.Tensor)
    r_np, r_t = cg(A, b, rtol=RTOL, M=D_np), cg(t(A), t(b), rtol=RTOL, M=D_t)
    assert rel(npy(r_t.x), r_np.x) <= TOL
    assert r_t.iterations < cg(t(A), t(b), rtol=RTOL).iterations  # deflating the outliers helps


def test_numpy_built_preconditioner_applies_to_torch_and_back():
    A, _, rng = spd("flat", 20, 1)
    b = rng.standard_normal(20)
    M = make_preconditioner("nystrom", A, rank=5)  # factors in NumPy, mirrored once onto torch
    r_t = cg(t(A), t(b), rtol=RTOL, M=M)
    r_np = cg(A, b, rtol=RTOL, M=M)
    assert rel(npy(r_t.x), r_np.x) <= TOL
    Mt = make_preconditioner("jacobi", t(A))  # a torch diagonal applied to NumPy vectors
    np.testing.assert_allclose(Mt.matvec(b), b / np.diag(A), rtol=1e-15)


# ------------------------------------------------------------------------------------------
# torch operators of fastntk.operators, solved directly
# ------------------------------------------------------------------------------------------
def _ggn_setup(n=6, seed=0):
    peft = BatchNormPeft(tiny_bn_cnn(seed), include_head=True)
    X = torch.randn(n, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return peft, make_jacobian(peft, X, strategy="cached")


@pytest.mark.parametrize("precond", ["none", "jacobi", "nystrom"])
@pytest.mark.parametrize("which", ["ggn", "ntk"])
def test_torch_operator_solved_without_scipy_adapter(which, precond, monkeypatch):
    peft, src = _ggn_setup()
    ridge = 0.3
    op = GGNLinearOperator(src, ridge) if which == "ggn" else NTKLinearOperator(src, ridge)
    b = torch.randn(op.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    dense = op.to_dense().numpy()
    kw = {"rank": 5} if precond == "nystrom" else {}
    M_np = None if precond == "none" else make_preconditioner(precond, op.to_scipy() if precond == "nystrom" else dense, **kw)
    r_np = cg(op.to_scipy(), b.numpy(), rtol=RTOL, M=M_np, backend="scipy")

    def no_adapter(*a, **k):
        raise AssertionError("to_scipy() must not be called on the torch path")

    monkeypatch.setattr(type(op), "to_scipy", no_adapter)
    M_t = None if precond == "none" else make_preconditioner(precond, op, **kw)
    before = op.matvecs
    r_t = cg(op, b, rtol=RTOL, M=M_t)
    assert isinstance(r_t.x, torch.Tensor) and r_t.backend == "torch" and r_t.info["operator"] == "torch-linop"
    assert rel(npy(r_t.x), r_np.x) <= TOL
    assert rel(npy(r_t.x), np.linalg.solve(dense, b.numpy())) <= TOL
    assert op.matvecs - before == r_t.matvecs  # every product the solve made, counted once


def test_torch_operator_block_cg_and_lanczos():
    _, src = _ggn_setup()
    op = GGNLinearOperator(src, 0.2)
    dense = op.to_dense().numpy()
    B = torch.randn(op.shape[0], 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    r = block_cg(op, B, rtol=RTOL)
    assert rel(npy(r.x), np.linalg.solve(dense, B.numpy())) <= TOL
    vals, vecs = lanczos(op, 2)
    np.testing.assert_allclose(vals, np.linalg.eigvalsh(dense)[::-1][:2], rtol=1e-8)
    assert isinstance(vecs, torch.Tensor)


class Dense(TorchLinearOperator):
    """A torch operator around a dense matrix (its own dtype only, as every TorchLinearOperator)."""

    symmetric = True

    def __init__(self, M):
        super().__init__(M.shape, M.dtype, M.device)
        self.M = M

    def _matmat(self, X):
        return self.M @ X


def test_float32_operators_with_float64_rhs():
    """Mixed precision as on NumPy: a float32 tensor promotes; a float32 torch operator is fed float32
    vectors (its own dtype) while the iterate stays in float64."""
    A, _, rng = spd_k("graded", 20, 3)
    b = rng.standard_normal(20)
    A32 = A.astype(np.float32)
    r_np = cg(A32, b, rtol=1e-12)
    r_t = cg(t(A32), t(b), rtol=1e-12)
    assert r_t.x.dtype == torch.float64 and rel(npy(r_t.x), r_np.x) <= TOL  # float64 iterate on A32, as NumPy
    op = Dense(t(A32))
    r_op = cg(op, t(b), rtol=1e-5)
    assert r_op.x.dtype == torch.float64 and r_op.converged
    assert rel(npy(r_op.x), np.linalg.solve(A, b)) <= 1e-3  # float32 products: float32 accuracy
    assert op.matvecs == r_op.matvecs


# ------------------------------------------------------------------------------------------
# typed errors before any work
# ------------------------------------------------------------------------------------------
def test_typed_errors_on_the_torch_path():
    A, _, rng = spd("flat", 6, 0)
    b = t(rng.standard_normal(6))
    calls = []
    L = spla.LinearOperator((6, 6), matvec=lambda x: calls.append(1) or A @ x, dtype=np.float64)
    with pytest.raises(InvalidInputError, match="torch"):
        cg(L, b)
    for be in ("scipy", "numba", "cupy"):
        if be == "cupy":
            continue  # cupy is checked for availability first (test_solvers)
        with pytest.raises(InvalidInputError):
            cg(t(A), b, backend=be)
    with pytest.raises(InvalidInputError):
        cg(A, rng.standard_normal(6), backend="torch")
    with pytest.raises(DeviceError):
        cg(t(A), torch.zeros(6, dtype=torch.float64, device="meta"))
    with pytest.raises(InvalidInputError):  # a NumPy-only preconditioner on a torch solve
        cg(t(A), b, M=spla.aslinearoperator(np.eye(6)))
    assert calls == []

    class Elsewhere(Dense):  # a torch operator off the CPU with a NumPy right-hand side
        def _matmat(self, X):
            raise AssertionError("no product before the refusal")

    with pytest.raises(DeviceError, match="torch tensor"):
        cg(Elsewhere(torch.zeros(6, 6, dtype=torch.float64, device="meta")), rng.standard_normal(6))
    # a dense torch matrix takes a NumPy b along to torch
    r = cg(t(A), rng.standard_normal(6), rtol=RTOL)
    assert isinstance(r.x, torch.Tensor) and r.backend == "torch"


def test_check_preconditioner_refuses_before_work():
    _, src = _ggn_setup()
    op = GGNLinearOperator(src, 0.1)
    check_preconditioner("jacobi", op)  # has a cheap diagonal
    check_preconditioner("nystrom", op, rank=3)
    with pytest.raises(PreconditionerError):
        check_preconditioner("ilu", op)
    with pytest.raises(PreconditionerError):
        check_preconditioner("nystrom", op, rank=0)

    class NoDiag:
        shape, dtype = (3, 3), np.float64

        def matvec(self, x):
            raise AssertionError("no matvec before the refusal")

    with pytest.raises(NoDiagonalError):
        check_preconditioner("jacobi", NoDiag())
    with pytest.raises(NoDiagonalError):
        make_preconditioner("jacobi", NoDiag())


# ------------------------------------------------------------------------------------------
# one record for direct and iterative solves
# ------------------------------------------------------------------------------------------
def test_solve_result_direct_and_combine():
    A, _, rng = spd("flat", 12, 2)
    b = rng.standard_normal(12)
    At, bt = t(A), t(b)
    L = torch.linalg.cholesky(At)
    x = torch.cholesky_solve(bt[:, None], L)[:, 0]
    res_norm = torch.linalg.vector_norm(bt - At @ x)
    tol = 1e-10 * float(torch.linalg.vector_norm(bt))
    d = SolveResult.direct(x, residual_norm=res_norm, rhs_norm=torch.linalg.vector_norm(bt), tolerance=tol,
                           seconds=0.0, method="cholesky")
    assert d.solution is x and d.backend == "torch" and d.is_direct and d.iterations == 0
    assert d.converged == (float(res_norm) <= tol) and d.converged
    assert d.residual_norm == pytest.approx(float(res_norm), rel=0, abs=0)
    it = cg(At, bt, rtol=1e-12)
    assert set(d.summary()) == set(it.summary())  # the same record, field for field
    assert it.summary()["direct"] is False and d.summary()["direct"] is True
    bad = SolveResult.direct(x, residual_norm=2 * tol, rhs_norm=1.0, tolerance=tol)
    assert not bad.converged
    assert SolveResult.direct(x, residual_norm=float("nan"), rhs_norm=1.0).converged is False
    both = SolveResult.combine([it, d, bad])
    assert both.iterations == it.iterations and both.matvecs == it.matvecs + d.matvecs + bad.matvecs
    assert both.residual_norm == max(it.residual_norm, d.residual_norm, bad.residual_norm)
    assert not both.converged and both.info["count"] == 3
    assert SolveResult.combine([it, d]).converged
    with pytest.raises(InvalidInputError):
        SolveResult.combine([])


# ------------------------------------------------------------------------------------------
# GPUs: CuPy arrays and CUDA tensors (skipped cleanly without CUDA)
# ------------------------------------------------------------------------------------------
def _cupy_or_skip():
    cp = pytest.importorskip("cupy")
    try:
        if cp.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except Exception as exc:  # noqa: BLE001 - a CuPy without a driver
        pytest.skip(f"CuPy present but CUDA unusable: {exc}")
    return cp


@pytest.mark.gpu
@pytest.mark.parametrize("precond", ["none", "jacobi", "nystrom"])
def test_cupy_arrays_equal_numpy(precond):
    cp = _cupy_or_skip()
    A, _, rng = spd("flat", 50, 4)
    b = rng.standard_normal(50)
    M_np, _ = precond_pair(precond, A, rank=10)
    M_cp = None if precond == "none" else make_preconditioner(precond, cp.asarray(A), **({"rank": 10} if precond == "nystrom" else {}))
    r_np = cg(A, b, rtol=RTOL, M=M_np)
    r_cp = cg(cp.asarray(A), cp.asarray(b), rtol=RTOL, M=M_cp)
    assert r_cp.backend == "cupy" and isinstance(r_cp.x, cp.ndarray)
    assert rel(r_cp.x.get(), r_np.x) <= TOL
    rb = block_cg(cp.asarray(A), cp.asarray(rng.standard_normal((50, 3))), rtol=RTOL)
    assert rb.converged and rb.backend == "cupy"


@pytest.mark.gpu
def test_cuda_tensors_and_torch_operator_stay_on_the_gpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    A, _, rng = spd("flat", 50, 4)
    b = rng.standard_normal(50)
    dev = torch.device("cuda")
    r = cg(t(A).to(dev), t(b).to(dev), rtol=RTOL, M=make_preconditioner("jacobi", t(A).to(dev)))
    assert r.x.device.type == "cuda" and r.backend == "torch"
    assert rel(npy(r.x), np.linalg.solve(A, b)) <= TOL
    peft = BatchNormPeft(tiny_bn_cnn(0).to(dev), include_head=True)
    X = torch.randn(6, 3, 8, 8, dtype=torch.float64, device=dev)
    op = GGNLinearOperator(make_jacobian(peft, X, strategy="stream"), 0.3)
    bb = torch.randn(op.shape[0], dtype=torch.float64, device=dev)
    rr = cg(op, bb, rtol=RTOL, M=make_preconditioner("jacobi", op))
    assert rr.x.device.type == "cuda" and rr.converged
    dense = op.to_dense().cpu().numpy()
    assert rel(npy(rr.x), np.linalg.solve(dense, bb.cpu().numpy())) <= TOL
