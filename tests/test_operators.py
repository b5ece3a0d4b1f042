"""Every operator against a dense torch.func.jacrev reference, in float64."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from fastntk.errors import DataError, DeviceError, DTypeError, InvalidInputError, ShapeError
from fastntk.operators import (
    CachedJacobian,
    GGNLinearOperator,
    JacobianLinearOperator,
    NTKLinearOperator,
    StreamingJacobian,
    jacobian_bytes,
    make_jacobian,
)
from fastntk.peft import BatchNormPeft, PromptPeft
from tests.conftest import tiny_bn_cnn, tiny_vit


def dense_reference(peft, X, loss="mse"):
    """J (nC × p) by jacrev over the whole batch; CE: rows L_iᵀ J_i."""
    f, w = peft.functional(), peft.vector()
    out = f(w, X)
    n, C = out.shape
    J = torch.func.jacrev(lambda w: f(w, X).reshape(-1))(w)
    if loss == "ce":
        P = torch.softmax(out, -1)
        rows = []
        for i in range(n):
            p = P[i]
            L = torch.diag(p.sqrt()) - torch.outer(p, p.sqrt())
            rows.append(L.T @ J[i * C : (i + 1) * C])
        J = torch.cat(rows)
    return J, out


def _setup(kind, n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind == "cnn":
        peft = BatchNormPeft(tiny_bn_cnn(seed), include_head=True)
    else:
        peft = PromptPeft(tiny_vit(seed), num_prompts=2, deep=True, seed=seed, include_head=True)
    X = torch.randn(n, 3, 8, 8, dtype=torch.float64, generator=g)
    return peft, X


@pytest.mark.parametrize("kind", ["cnn", "vit"])
@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("strategy", ["stream", "cached"])
def test_operators_equal_dense_reference(kind, loss, strategy):
    peft, X = _setup(kind)
    Jref, out = dense_reference(peft, X, loss)
    src = make_jacobian(peft, X, loss=loss, strategy=strategy, batch_size=3)
    assert src.strategy == strategy
    lam = 0.37
    J = JacobianLinearOperator(src)
    p, nC = peft.p, Jref.shape[0]
    tol = dict(rtol=1e-10, atol=1e-11)
    torch.testing.assert_close(J.to_dense(), Jref, **tol)
    torch.testing.assert_close(J.T.to_dense(), Jref.T, **tol)
    torch.testing.assert_close(GGNLinearOperator(src, lam).to_dense(), Jref.T @ Jref + lam * torch.eye(p, dtype=torch.float64), **tol)
    torch.testing.assert_close(NTKLinearOperator(src, lam).to_dense(), Jref @ Jref.T + lam * torch.eye(nC, dtype=torch.float64), **tol)
    torch.testing.assert_close(NTKLinearOperator(src, lam).diagonal(), (Jref**2).sum(1) + lam, **tol)
    torch.testing.assert_close(GGNLinearOperator(src, lam).diagonal(), (Jref**2).sum(0) + lam, **tol)
    torch.testing.assert_close(src.outputs(), out, **tol)


def test_ce_weighted_ggn_is_the_cross_entropy_gauss_newton():
    peft, X = _setup("cnn")
    f, w = peft.functional(), peft.vector()
    out = f(w, X)
    J = torch.func.jacrev(lambda w: f(w, X))(w)  # (n, C, p)
    P = torch.softmax(out, -1)
    G = sum(J[i].T @ (torch.diag(P[i]) - torch.outer(P[i], P[i])) @ J[i] for i in range(X.shape[0]))
    src = StreamingJacobian(peft, X, loss="ce", batch_size=4)
    torch.testing.assert_close(GGNLinearOperator(src).to_dense(), G, rtol=1e-10, atol=1e-12)


@settings(deadline=None, max_examples=8)
@given(seed=st.integers(0, 100), n=st.integers(1, 9), k=st.integers(1, 4))
def test_adjoint_identity_and_psd(seed, n, k):
    peft, X = _setup("cnn", n=n, seed=seed)
    src = StreamingJacobian(peft, X, batch_size=2)
    J = JacobianLinearOperator(src)
    g = torch.Generator().manual_seed(seed + 1)
    V = torch.randn(peft.p, k, dtype=torch.float64, generator=g)
    U = torch.randn(J.shape[0], k, dtype=torch.float64, generator=g)
    lhs = (J.matmat(V) * U).sum(0)
    rhs = (V * J.T.matmat(U)).sum(0)
    torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=1e-12)
    G = GGNLinearOperator(src).to_dense()
    K = NTKLinearOperator(src).to_dense()
    for A in (G, K):
        torch.testing.assert_close(A, A.T, rtol=1e-12, atol=1e-12)
        assert torch.linalg.eigvalsh(A).min() > -1e-9 * max(1.0, float(A.abs().max()))


@settings(deadline=None, max_examples=8)
@given(seed=st.integers(0, 100), n=st.integers(1, 10), b1=st.integers(1, 10), b2=st.integers(1, 10))
def test_batch_size_never_changes_the_result(seed, n, b1, b2):
    peft, X = _setup("cnn", n=n, seed=seed)
    V = torch.randn(peft.p, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    s1 = StreamingJacobian(peft, X, batch_size=b1)
    s2 = StreamingJacobian(peft, X, batch_size=b2)
    torch.testing.assert_close(s1.gmat(V), s2.gmat(V), rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(s1.jmat(V), s2.jmat(V), rtol=1e-11, atol=1e-12)
    U = s1.jmat(V)
    torch.testing.assert_close(s1.jtmat(U), s2.jtmat(U), rtol=1e-11, atol=1e-12)


@settings(deadline=None, max_examples=6)
@given(seed=st.integers(0, 100), n=st.integers(2, 9), split=st.integers(1, 8))
def test_dataset_length_is_additive(seed, n, split):
    """G over a dataset = G over its two halves (the operator scales with the data, nothing else)."""
    split = min(split, n - 1)
    peft, X = _setup("cnn", n=n, seed=seed)
    V = torch.randn(peft.p, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    full = StreamingJacobian(peft, X, batch_size=4).gmat(V)
    parts = StreamingJacobian(peft, X[:split], batch_size=4).gmat(V) + StreamingJacobian(peft, X[split:], batch_size=4).gmat(V)
    torch.testing.assert_close(full, parts, rtol=1e-11, atol=1e-12)


def test_repeated_matvecs_agree_and_cached_equals_streamed():
    peft, X = _setup("vit", n=5)
    src = StreamingJacobian(peft, X, batch_size=2)
    cached = CachedJacobian.build(src)
    v = torch.randn(peft.p, dtype=torch.float64)
    H = GGNLinearOperator(src, 0.1)
    a, b = H @ v, H @ v
    assert torch.equal(a, b)
    torch.testing.assert_close(GGNLinearOperator(cached, 0.1) @ v, a, rtol=1e-11, atol=1e-12)
    sub = [0, 3]
    torch.testing.assert_close(cached.subset(sub).J, src.subset(sub).dense(), rtol=1e-11, atol=1e-12)


def test_matmat_shares_work_and_matches_matvecs():
    peft, X = _setup("cnn", n=6)
    src = StreamingJacobian(peft, X, batch_size=3)
    H = GGNLinearOperator(src)
    V = torch.randn(peft.p, 5, dtype=torch.float64)
    passes = src.passes
    M = H.matmat(V)
    assert src.passes == passes + 1  # one pass over the data for all 5 vectors
    cols = torch.stack([H.matvec(V[:, j]) for j in range(5)], 1)
    torch.testing.assert_close(M, cols, rtol=1e-11, atol=1e-12)
    assert H.matvecs == 10


def test_to_scipy_adapter():
    peft, X = _setup("cnn", n=4)
    src = StreamingJacobian(peft, X)
    H = GGNLinearOperator(src, 0.5)
    S = H.to_scipy()
    v = np.random.default_rng(0).standard_normal(peft.p)
    np.testing.assert_allclose(S.matvec(v), (H @ torch.from_numpy(v)).numpy(), rtol=1e-12)
    np.testing.assert_allclose(S.matmat(np.stack([v, 2 * v], 1))[:, 1], 2 * S.matvec(v), rtol=1e-12)
    np.testing.assert_allclose(S.diagonal(), H.diagonal().numpy())
    J = JacobianLinearOperator(src).to_scipy()
    u = np.random.default_rng(1).standard_normal(J.shape[0])
    np.testing.assert_allclose(J.rmatvec(u), (JacobianLinearOperator(src).T @ torch.from_numpy(u)).numpy(), rtol=1e-12)


def test_to_cupy_without_gpu_is_a_clear_error():
    from fastntk.errors import BackendUnavailableError

    peft, X = _setup("cnn", n=2)
    H = GGNLinearOperator(StreamingJacobian(peft, X))
    with pytest.raises((BackendUnavailableError, DeviceError)):
        H.to_cupy()


def test_bad_inputs():
    peft, X = _setup("cnn", n=4)
    src = StreamingJacobian(peft, X)
    H = GGNLinearOperator(src)
    with pytest.raises(ShapeError):
        H.matvec(torch.zeros(peft.p + 1, dtype=torch.float64))
    with pytest.raises(DTypeError):
        H.matvec(torch.zeros(peft.p, dtype=torch.float32))
    with pytest.raises(DTypeError):
        H.matvec(np.zeros(peft.p))
    with pytest.raises(DeviceError):
        H.matvec(torch.zeros(peft.p, dtype=torch.float64, device="meta"))
    with pytest.raises(DataError):
        StreamingJacobian(peft, X[:0])
    with pytest.raises(InvalidInputError):
        StreamingJacobian(peft, X, loss="hinge")
    with pytest.raises(InvalidInputError):
        make_jacobian(peft, X, strategy="cached", memory_budget=10)
    with pytest.raises(ShapeError):
        StreamingJacobian(peft, X, w=torch.zeros(3, dtype=torch.float64))


def test_auto_strategy_respects_memory_budget(caplog):
    peft, X = _setup("cnn", n=4)
    need = jacobian_bytes(4, 3, peft.p, torch.float64)
    import logging

    with caplog.at_level(logging.INFO, logger="fastntk"):
        assert make_jacobian(peft, X, memory_budget=need).strategy == "cached"
        assert make_jacobian(peft, X, memory_budget=need - 1).strategy == "stream"
    assert "strategy=stream" in caplog.text and "memory budget" in caplog.text


def test_dataset_input():
    peft, X = _setup("cnn", n=5)
    ds = torch.utils.data.TensorDataset(X, torch.zeros(5, dtype=torch.long))
    V = torch.randn(peft.p, 2, dtype=torch.float64)
    torch.testing.assert_close(StreamingJacobian(peft, ds, batch_size=2).gmat(V), StreamingJacobian(peft, X).gmat(V), rtol=1e-11, atol=1e-12)


def test_ggn_of_a_model_with_nested_forward_ad_falls_back_correctly():
    """An explicitly linearized network (jvp inside its forward) defeats the fast conv/BN rules: the operator
    must detect it and still equal the dense reference."""
    from tests.test_unlearn import make_problem

    m, peft, X, y = make_problem("cnn", 5, 2)
    src = StreamingJacobian(peft, X, batch_size=2)
    J = src.dense()
    V = torch.randn(peft.p, 1, dtype=torch.float64)
    torch.testing.assert_close(src.gmat(V), J.T @ (J @ V), rtol=1e-10, atol=1e-10)
    assert src._fast_ok is False
    bn = StreamingJacobian(BatchNormPeft(tiny_bn_cnn(0)), X)
    bn.gmat(torch.randn(bn.p, 1, dtype=torch.float64))
    assert bn._fast_ok is True
