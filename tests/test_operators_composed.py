"""The operators unlearn composes — SumGGNLinearOperator and SchurComplementLinearOperator — against
dense float64 references built from jacrev Jacobians (tests.test_operators.dense_reference)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastntk.errors import DTypeError, InvalidInputError, NoDiagonalError, PreconditionerError, ShapeError
from fastntk.operators import (
    CachedJacobian,
    SchurComplementLinearOperator,
    SumGGNLinearOperator,
    make_jacobian,
)
from fastntk.peft import BatchNormPeft
from fastntk.solvers import JacobiPreconditioner, NystromPreconditioner, cg, check_preconditioner, make_preconditioner
from tests.conftest import tiny_bn_cnn
from tests.test_operators import dense_reference

TOL = dict(rtol=1e-10, atol=1e-11)


def two_sets(n_r, n_f, seed, loss="mse", strategy="stream"):
    """Retain and forget sources of one PEFT set and their dense jacrev Jacobians (float64)."""
    peft = BatchNormPeft(tiny_bn_cnn(seed), include_head=True)
    g = torch.Generator().manual_seed(seed + 100)
    X = torch.randn(n_r + n_f, 3, 8, 8, dtype=torch.float64, generator=g)
    Xr, Xf = X[:n_r], X[n_r:]
    Jr, _ = dense_reference(peft, Xr, loss)
    Jf, _ = dense_reference(peft, Xf, loss)
    src_r = make_jacobian(peft, Xr, loss=loss, strategy=strategy, batch_size=3)
    src_f = make_jacobian(peft, Xf, loss=loss, strategy=strategy, batch_size=2)
    return peft, src_r, src_f, Jr, Jf


def eye(n):
    return torch.eye(n, dtype=torch.float64)


# ------------------------------------------------------------------------------------------
# G_r + G_f + λI
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("strategy", ["stream", "cached"])
def test_sum_ggn_equals_dense(loss, strategy):
    peft, src_r, src_f, Jr, Jf = two_sets(5, 3, 0, loss, strategy)
    lam = 0.37
    H = SumGGNLinearOperator(src_r, src_f, lam)
    ref = Jr.T @ Jr + Jf.T @ Jf + lam * eye(peft.p)
    assert H.shape == (peft.p, peft.p) and H.symmetric and H.has_diagonal
    torch.testing.assert_close(H.to_dense(), ref, **TOL)
    torch.testing.assert_close(H.diagonal(), torch.diagonal(ref), **TOL)
    # G_D of the concatenated data set: the same operator as a source built on D = D_r ∪ D_f
    J_D = torch.cat([Jr, Jf])
    torch.testing.assert_close(H.to_dense(), J_D.T @ J_D + lam * eye(peft.p), **TOL)


@settings(max_examples=4)
@given(seed=st.integers(0, 50), n_r=st.integers(2, 6), n_f=st.integers(1, 4),
       precond=st.sampled_from(["none", "jacobi", "nystrom"]))
def test_sum_ggn_solves_with_every_preconditioner(seed, n_r, n_f, precond):
    peft, src_r, src_f, Jr, Jf = two_sets(n_r, n_f, seed, strategy="cached")
    lam = 0.5
    H = SumGGNLinearOperator(src_r, src_f, lam)
    b = torch.randn(peft.p, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    check_preconditioner(precond, H, rank=4)
    M = None if precond == "none" else make_preconditioner(precond, H, **({"rank": 4} if precond == "nystrom" else {}))
    r = cg(H, b, rtol=1e-12, M=M)
    x_ref = torch.linalg.solve(Jr.T @ Jr + Jf.T @ Jf + lam * eye(peft.p), b)
    assert isinstance(r.x, torch.Tensor) and r.converged
    torch.testing.assert_close(r.x, x_ref, rtol=1e-9, atol=1e-11)


class _NoDiagSource:
    """A Jacobian source without diag_ggn (e.g. a user's own), counting every product."""

    def __init__(self, src):
        self.src, self.calls = src, 0
        self.p, self.nC, self.dtype, self.device = src.p, src.nC, src.dtype, src.device

    def gmat(self, V):
        self.calls += 1
        return self.src.gmat(V)


def test_sum_ggn_without_source_diagonal_refuses_jacobi_before_work():
    _, src_r, src_f, _, _ = two_sets(3, 2, 1, strategy="cached")
    nd = _NoDiagSource(src_f)
    H = SumGGNLinearOperator(src_r, nd, 0.1)
    assert not H.has_diagonal
    with pytest.raises(NoDiagonalError):
        check_preconditioner("jacobi", H)
    with pytest.raises(NoDiagonalError):
        make_preconditioner("jacobi", H)
    with pytest.raises(NotImplementedError):  # the old contract of TorchLinearOperator.diagonal still holds
        H.diagonal()
    assert nd.calls == 0
    check_preconditioner("nystrom", H, rank=2)  # Nyström needs products only
    M = NystromPreconditioner.build(H, 2, ridge=0.0)
    assert nd.calls > 0 and M.rank >= 1


def test_sum_ggn_bad_inputs():
    peft, src_r, src_f, _, _ = two_sets(3, 2, 2, strategy="cached")
    with pytest.raises(InvalidInputError):
        SumGGNLinearOperator(src_r, src_f, -1.0)
    with pytest.raises(InvalidInputError):
        SumGGNLinearOperator(src_r, src_f, float("nan"))
    f32 = CachedJacobian(src_f.J.float(), src_f.outputs().float())
    with pytest.raises(DTypeError):
        SumGGNLinearOperator(src_r, f32)
    other = CachedJacobian(src_f.J[:, :-1].contiguous(), src_f.outputs())
    with pytest.raises(ShapeError):
        SumGGNLinearOperator(src_r, other)


# ------------------------------------------------------------------------------------------
# S = K_ff − Θ_fr K_rr⁻¹ Θ_rf
# ------------------------------------------------------------------------------------------
def dense_schur(Jr, Jf, lam, lam_r):
    K_rr = Jr @ Jr.T + lam_r * eye(Jr.shape[0])
    K_ff = Jf @ Jf.T + lam * eye(Jf.shape[0])
    T_fr = Jf @ Jr.T
    return K_ff - T_fr @ torch.linalg.solve(K_rr, T_fr.T), K_ff


@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("block", [False, True])
def test_schur_equals_dense_with_exact_inner_solve(loss, block):
    peft, src_r, src_f, Jr, Jf = two_sets(5, 3, 3, loss)
    lam = 0.25
    K_rr = Jr @ Jr.T + lam * eye(Jr.shape[0])
    calls = []

    def inner(b):
        calls.append(tuple(b.shape))
        return torch.linalg.solve(K_rr, b)

    S = SchurComplementLinearOperator(src_f, src_r, inner, lam, block=block)
    ref, K_ff = dense_schur(Jr, Jf, lam, lam)
    nC_f = Jf.shape[0]
    assert S.shape == (nC_f, nC_f) and S.symmetric and not S.has_diagonal
    Sd = S.to_dense()
    torch.testing.assert_close(Sd, ref, **TOL)
    # one inner solve per column, or one block solve
    assert calls == ([(Jr.shape[0], nC_f)] if block else [(Jr.shape[0],)] * nC_f)
    # the Schur complement of K_rr in the whole-set kernel: S⁻¹ is the ff block of K_D⁻¹
    J_D = torch.cat([Jr, Jf])
    K_D = J_D @ J_D.T + lam * eye(J_D.shape[0])
    torch.testing.assert_close(torch.linalg.inv(Sd), torch.linalg.inv(K_D)[-nC_f:, -nC_f:], rtol=1e-8, atol=1e-10)
    # diag(K_ff) bounds diag(S) from above (the cheap Jacobi diagonal)
    torch.testing.assert_close(S.kff_diagonal(), torch.diagonal(K_ff), **TOL)
    assert bool(torch.all(S.kff_diagonal() >= torch.diagonal(Sd) - 1e-12))


@settings(max_examples=4)
@given(seed=st.integers(0, 50), n_r=st.integers(2, 6), n_f=st.integers(1, 3),
       ridges=st.sampled_from([(0.3, 0.3), (0.3, 1.2), (2.0, 0.05)]))
def test_schur_with_cg_inner_solves(seed, n_r, n_f, ridges):
    lam, lam_r = ridges
    _, src_r, src_f, Jr, Jf = two_sets(n_r, n_f, seed, strategy="cached")
    S = SchurComplementLinearOperator.with_cg(src_f, src_r, lam, ridge_r=lam_r, rtol=1e-13)
    ref, _ = dense_schur(Jr, Jf, lam, lam_r)
    torch.testing.assert_close(S.to_dense(), ref, rtol=1e-9, atol=1e-10)
    summary = S.inner_summary()
    assert summary.info["count"] == Jf.shape[0] == len(S.inner_results)  # one inner CG per column
    assert summary.converged and summary.backend == "torch"
    assert summary.iterations == sum(r.iterations for r in S.inner_results)


@pytest.mark.parametrize("precond", ["none", "jacobi_kff", "nystrom"])
def test_schur_solve_with_preconditioners(precond):
    _, src_r, src_f, Jr, Jf = two_sets(5, 3, 4, strategy="cached")
    lam = 0.2
    S = SchurComplementLinearOperator.with_cg(src_f, src_r, lam, rtol=1e-13)
    if precond == "jacobi_kff":
        M = JacobiPreconditioner(S.kff_diagonal())
    elif precond == "nystrom":
        M = make_preconditioner("nystrom", S, rank=4)
    else:
        M = None
    V = torch.randn(S.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    r = cg(S, V, rtol=1e-11, M=M)
    ref, _ = dense_schur(Jr, Jf, lam, lam)
    torch.testing.assert_close(r.x, torch.linalg.solve(ref, V), rtol=1e-8, atol=1e-10)


def test_schur_refuses_jacobi_before_any_inner_solve():
    _, src_r, src_f, _, _ = two_sets(3, 2, 5, strategy="cached")
    calls = []
    S = SchurComplementLinearOperator(src_f, src_r, lambda b: calls.append(1) or b, 0.1)
    with pytest.raises(NoDiagonalError):
        check_preconditioner("jacobi", S)
    with pytest.raises(PreconditionerError):
        make_preconditioner("jacobi", S)
    with pytest.raises(NotImplementedError):
        S.diagonal()
    assert calls == []
    with pytest.raises(InvalidInputError):
        SchurComplementLinearOperator(src_f, src_r, "not callable", 0.1)
    with pytest.raises(InvalidInputError):
        SchurComplementLinearOperator(src_f, src_r, lambda b: b, -0.5)


def test_dense_schur_reference_is_not_trivial():
    """Guard of the references above: S differs from K_ff, so the subtraction is exercised."""
    _, _, _, Jr, Jf = two_sets(5, 3, 6)
    ref, K_ff = dense_schur(Jr, Jf, 0.3, 0.3)
    assert float(torch.linalg.matrix_norm(K_ff - ref)) > 1e-3 * float(torch.linalg.matrix_norm(K_ff))
    assert float(torch.linalg.eigvalsh(ref).min()) > 0
    np.testing.assert_allclose(ref.numpy(), ref.numpy().T, atol=1e-12)
