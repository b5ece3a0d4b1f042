"""Per-sample gradient engine and sketched Gauss-Newton sources (float64, tiny models).

Statistical tests use a fixed seed; each states the probability with which a *correct*
implementation would fail it for a random seed (normal approximation, Bonferroni over entries).
"""
from __future__ import annotations

import logging
import math
import statistics

import pytest
import numpy as np
import torch
from torch import nn

from fastntk.errors import InvalidInputError, NumericalError, ShapeError
from fastntk.operators import GGNLinearOperator, SketchedJacobian, StreamingJacobian, draw_cotangents, half_sketch_error, make_jacobian
from fastntk.operators import persample as PS
from fastntk.operators.linearization import _ce_cotangents
from fastntk.operators.sketch import ridge_solve
from fastntk.peft import BatchNormPeft, NamedPeft, PromptPeft
from tests.conftest import tiny_bn_cnn, tiny_vit
from tests.test_memory import _LargestAllocation

torch.set_num_threads(1)


def _inplace_relu_cnn(seed=0, C=3):
    """BN followed by an in-place ReLU (as in timm ResNets): the rule must read ∂/∂y before the in-place op."""
    g = torch.Generator().manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(4 * 6 * 6, C)).double()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.3)
        m[1].running_mean.uniform_(-0.3, 0.3, generator=g)
        m[1].running_var.uniform_(0.5, 1.5, generator=g)
    return m.eval()


class _SharedBN(nn.Module):
    """A BN weight that the model also reads outside F.batch_norm: the rule must hand it to the fallback."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv, self.bn, self.head = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 3)
        with torch.no_grad():
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        h = torch.tanh(self.bn(self.conv(x)) + 0.3 * self.bn.weight.view(1, -1, 1, 1) ** 2)
        return self.head(h.mean((2, 3)))


def _bn1d_mlp(seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)).double()
    with torch.no_grad():
        m[2].running_mean.uniform_(-0.2, 0.2)
        m[2].running_var.uniform_(0.5, 1.5)
        m[2].weight.uniform_(0.5, 1.5)
    return m.eval()


def _cases():
    return {
        "partial-bn-and-head": NamedPeft(tiny_bn_cnn(3), ["1.weight", "4.bias", "8.weight"]),
        "bn1d-mlp+head": BatchNormPeft(_bn1d_mlp(4), include_head=True),
        "shared-bn-weight": BatchNormPeft(_SharedBN(5).double().eval(), include_head=True),
        "bn-cnn+head": BatchNormPeft(tiny_bn_cnn(0), include_head=True),
        "bn-inplace-relu": BatchNormPeft(_inplace_relu_cnn(1), include_head=True),
        "vit-prompts+head": PromptPeft(tiny_vit(0), num_prompts=2, deep=True, seed=0, include_head=True),
        "fallback-conv+bn+head-bias": NamedPeft(tiny_bn_cnn(2), ["0.weight", "0.bias", "1.*", "8.bias"]),
    }


EXPECTED = {
    "partial-bn-and-head": {"batchnorm", "linear"},
    "bn1d-mlp+head": {"batchnorm", "linear"},
    "shared-bn-weight": {"fallback", "batchnorm", "linear"},
    "bn-cnn+head": {"batchnorm", "linear"},
    "bn-inplace-relu": {"batchnorm", "linear"},
    "vit-prompts+head": {"prompt", "linear"},
    "fallback-conv+bn+head-bias": {"fallback", "batchnorm", "linear"},
}
CASES = _cases()


def _X(n, seed=0):
    return torch.randn(n, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(CASES))
def test_engine_equals_vmap_jacrev(name):
    peft = CASES[name]
    X = _X(5)
    ref = PS.per_sample_reference(peft.functional(), peft.vector(), X)  # (n, C, p)
    eng = PS.PerSampleGradients(peft)
    J, out = eng.jacobian(X)
    assert eng.ok and set(eng.plan.values()) == EXPECTED[name], eng.plan
    scale = ref.abs().max()
    assert (J - ref).abs().max() <= 1e-12 * scale
    torch.testing.assert_close(out, peft.functional()(peft.vector(), X), rtol=1e-12, atol=1e-14)
    S = torch.randn(5, ref.shape[1], 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    R, _ = eng.products(X, S)
    assert (R - torch.einsum("bcp,bck->bkp", ref, S)).abs().max() <= 1e-12 * scale * S.abs().max()


def test_failed_check_falls_back_with_a_reason(monkeypatch, caplog):
    peft = CASES["bn-cnn+head"]
    X = _X(4)
    monkeypatch.setattr(PS, "_linear_bias", lambda g, dst, add: PS._put(dst, 2 * g.sum(1) if g.ndim == 3 else 2 * g, add))  # a wrong rule
    eng = PS.PerSampleGradients(peft)
    with caplog.at_level(logging.WARNING, logger="fastntk"):
        J, _ = eng.jacobian(X)
    assert eng.ok is False and "disabled" in eng.reason and "torch.func" in eng.reason
    assert any("disabled" in r.getMessage() for r in caplog.records)
    assert set(eng.plan.values()) == {"fallback"}
    ref = PS.per_sample_reference(peft.functional(), peft.vector(), X)
    assert (J - ref).abs().max() <= 1e-12 * ref.abs().max()


def _float32_case():
    m = tiny_bn_cnn(0).float()
    return BatchNormPeft(m, include_head=True), _X(4).float()


def test_float32_disagreement_at_kinks_is_settled_in_float64(monkeypatch):
    """Two float32 computations can differ far beyond rounding where a ReLU / max-pool input ties (the rules vs vmap on
    resnet18 / Fashion-MNIST: 2.2e-3): a difference that only float32 shows keeps the rules, with both figures."""
    peft, X = _float32_case()
    rules = PS.PerSampleGradients._rules

    def noisy32(self, xb, S, dst=None):  # a disagreement of float32 only (as at a tie), the rule itself right
        R, out = rules(self, xb, S, dst)
        return (R * (1 + 1e-2) if R.dtype == torch.float32 else R), out

    monkeypatch.setattr(PS.PerSampleGradients, "_rules", noisy32)
    eng = PS.PerSampleGradients(peft)
    assert eng.check(X) is True and "in float64" in eng.reason and "float32" in eng.reason
    assert set(eng.plan.values()) <= {"batchnorm", "linear"} and peft.dtype == torch.float32
    assert peft.vector().dtype == torch.float32 and all(v.dtype == torch.float32 for v in peft.frozen().values()
                                                         if v.is_floating_point())  # the model was not converted


def test_float32_wrong_rule_still_falls_back(monkeypatch):
    peft, X = _float32_case()
    monkeypatch.setattr(PS, "_linear_bias", lambda g, dst, add: PS._put(dst, 2 * g.sum(1) if g.ndim == 3 else 2 * g, add))
    eng = PS.PerSampleGradients(peft)
    J, _ = eng.jacobian(X)
    assert eng.ok is False and "disabled" in eng.reason and "in float64" in eng.reason
    ref = PS.per_sample_reference(peft.functional(), peft.vector(), X)
    assert (J - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_engine_rejects_bad_cotangents_before_backward():
    peft = CASES["bn-cnn+head"]
    eng = PS.PerSampleGradients(peft)
    X = _X(3)
    with pytest.raises(ShapeError):
        eng.products(X, torch.zeros(3, 2, 1, dtype=torch.float64))  # C is 3
    with pytest.raises(InvalidInputError):
        eng.products(X, torch.zeros(3, 3, 0, dtype=torch.float64))


@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("name", ["bn-cnn+head", "vit-prompts+head"])
def test_cached_jacobian_through_engine_equals_vmap_build(loss, name):
    peft = CASES[name]
    X = _X(7, seed=3)
    old = StreamingJacobian(peft, X, batch_size=3, loss=loss, engine="vmap").dense()
    src = StreamingJacobian(peft, X, batch_size=3, loss=loss)  # engine="auto"
    assert src._use_engine(X[:3])
    new = src.dense()
    assert (new - old).abs().max() <= 1e-12 * old.abs().max()
    cached = make_jacobian(peft, X, loss=loss, strategy="cached", batch_size=3)
    assert (cached.J - old).abs().max() <= 1e-12 * old.abs().max()
    torch.testing.assert_close(cached.outputs(), peft.functional()(peft.vector(), X), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(src.diag_ggn(), (old**2).sum(0), rtol=1e-11, atol=1e-13)
    with pytest.raises(InvalidInputError):
        StreamingJacobian(peft, X, engine="nope")


def test_ce_cotangents_are_the_ce_factors():
    out = torch.randn(4, 5, dtype=torch.float64)
    L = _ce_cotangents(out)
    P = torch.softmax(out, -1)
    Lam = torch.diag_embed(P) - P[:, :, None] * P[:, None, :]
    torch.testing.assert_close(L @ L.transpose(1, 2), Lam, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------- sketches
def _exact(peft, X, loss):
    src = make_jacobian(peft, X, loss=loss, strategy="cached", batch_size=64)
    return src, src.gram()


@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("name", ["bn-cnn+head", "vit-prompts+head"])
def test_orthogonal_k_equals_C_sketch_is_exact(loss, name):
    peft = CASES[name]
    X = _X(9, seed=4)
    ex, G = _exact(peft, X, loss)
    sk = SketchedJacobian(peft, X, k=ex.C, kind="orthogonal", loss=loss, batch_size=4, seed=5)
    assert sk.strategy == "sketch" and sk.nC == ex.nC and sk.num_outputs == ex.C and "orthogonal" in sk.reason
    assert (sk.gram() - G).abs().max() <= 1e-10 * G.abs().max()
    lam = 0.3
    torch.testing.assert_close(GGNLinearOperator(sk, lam).to_dense(), G + lam * torch.eye(peft.p, dtype=torch.float64), rtol=1e-10, atol=1e-10)
    b = torch.randn(peft.p, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    x_exact = torch.linalg.solve(G + lam * torch.eye(peft.p, dtype=torch.float64), b)
    for J in (sk.J, sk.J[: max(1, peft.p // 2)]):  # primal (rows ≥ p) and push-through (rows < p) branches
        Gj = J.T @ J
        torch.testing.assert_close(ridge_solve(J, b, lam), torch.linalg.solve(Gj + lam * torch.eye(peft.p, dtype=torch.float64), b),
                                   rtol=1e-9, atol=1e-10)
    assert (ridge_solve(sk.J, b, lam) - x_exact).norm() <= 1e-10 * x_exact.norm()


def test_sketch_class_rows_are_the_formula():
    """SketchedJacobian(seed=s) = S_iᵀ J_i with draw_cotangents from the same seeded generator (one batch,
    all samples): the statistical tests below may then use the formula on the exact J directly."""
    peft = CASES["bn-cnn+head"]
    X = _X(6, seed=7)
    J3 = PS.PerSampleGradients(peft).jacobian(X)[0]
    out = peft.functional()(peft.vector(), X)
    for loss, kind in (("mse", "rademacher"), ("mse", "gaussian"), ("ce", "fisher"), ("ce", "rademacher")):
        sk = SketchedJacobian(peft, X, k=2, kind=kind, loss=loss, seed=11)
        S = draw_cotangents(out, 2, kind, loss=loss, generator=torch.Generator().manual_seed(11))
        torch.testing.assert_close(sk.J, torch.einsum("bcp,bck->bkp", J3, S).reshape(-1, peft.p), rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(sk.sample_outputs(), out, rtol=1e-12, atol=1e-14)


def _unbiased(samples: torch.Tensor, target: torch.Tensor, alpha: float) -> tuple[bool, float]:
    """Entry-wise z-test of ``mean(samples) = target`` (upper triangle), Bonferroni over entries.

    For an unbiased estimator the test fails with probability ≈ ``alpha`` (normal approximation).
    Entries with zero spread must match to rounding.  Returns (passed, largest |z|)."""
    N = samples.shape[0]
    iu = torch.triu_indices(target.shape[0], target.shape[1])
    s = samples[:, iu[0], iu[1]]
    t = target[iu[0], iu[1]]
    mean, sd = s.mean(0), s.std(0)
    scale = target.abs().max()
    const = sd <= 1e-12 * scale
    if ((mean - t).abs()[const] > 1e-10 * scale).any():
        return False, math.inf
    z = ((mean - t).abs() / (sd / math.sqrt(N)))[~const]
    from statistics import NormalDist

    zcrit = NormalDist().inv_cdf(1 - alpha / (2 * max(1, int((~const).sum()))))
    zmax = float(z.max()) if z.numel() else 0.0
    return zmax <= zcrit, zmax


ALPHA = 1e-4  # stated failure probability of each statistical test for a correct implementation
N_DRAWS = 400


def _draws(J3, out, k, kind, loss, N, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    G = []
    for _ in range(N):
        R = torch.einsum("bcp,bck->bkp", J3, draw_cotangents(out, k, kind, loss=loss, generator=g)).reshape(-1, J3.shape[-1]) * scale
        G.append(R.T @ R)
    return torch.stack(G)


@pytest.mark.parametrize("loss,kind", [("mse", "rademacher"), ("mse", "gaussian"), ("mse", "orthogonal"),
                                       ("ce", "fisher"), ("ce", "rademacher")])
def test_sketched_gauss_newton_is_unbiased(loss, kind):
    """mean of G̃ over N draws approaches G (the CE Gauss-Newton Σ J_iᵀΛ_iJ_i for CE; MC Fisher
    included) within the z-bound of its own spread; a 10 %-biased variant is rejected (power)."""
    peft = CASES["bn-cnn+head"]
    X = _X(12, seed=8)
    J3 = PS.PerSampleGradients(peft).jacobian(X)[0]
    out = peft.functional()(peft.vector(), X)
    P = torch.softmax(out, -1)
    Lam = torch.diag_embed(P) - P[:, :, None] * P[:, None, :] if loss == "ce" else torch.eye(3, dtype=torch.float64).expand(12, 3, 3)
    G = torch.einsum("bcp,bcd,bdq->pq", J3, Lam, J3)
    samples = _draws(J3, out, 2, kind, loss, N_DRAWS, seed=9)
    ok, z = _unbiased(samples, G, ALPHA)
    assert ok, f"max |z| = {z:.2f}"
    ok_biased, z_b = _unbiased(samples * 1.1, G, ALPHA)
    assert not ok_biased, f"the test has no power: biased variant max |z| = {z_b:.2f}"


def test_subsampled_sketch_is_unbiased():
    """m < n independent draws reweighted by √(n/m): E[G̃] = G."""
    peft = CASES["bn-cnn+head"]
    n, m = 10, 4
    X = _X(n, seed=10)
    J3 = PS.PerSampleGradients(peft).jacobian(X)[0]
    G = torch.einsum("bcp,bcq->pq", J3, J3)
    eng = PS.PerSampleGradients(peft)
    samples = torch.stack([SketchedJacobian(peft, X, k=1, m=m, seed=s, engine=eng).gram() for s in range(N_DRAWS)])
    ok, z = _unbiased(samples, G, ALPHA)
    assert ok, f"max |z| = {z:.2f}"
    sk = SketchedJacobian(peft, X, k=1, m=m, seed=0)
    assert sk.n == m and sk.n_total == n and sk.weight == pytest.approx(math.sqrt(n / m)) and sk.J.shape == (m, peft.p)


@pytest.mark.slow
@pytest.mark.parametrize("m,k", [(None, 2), (32, 4)])
def test_half_sketch_estimate_tracks_the_true_error(m, k):
    """Over many seeds, the RMS of the half-sketch estimate matches the RMS of the true error of the
    full-sketch solve within a factor √2 (first-order theory: equal); ≥ 80 % of single estimates within 2×
    (about 95 % on this problem)."""
    peft = CASES["bn-cnn+head"]
    n = 64
    X = _X(n, seed=12)
    ex, G = _exact(peft, X, "mse")
    lam = 0.05 * float(torch.diagonal(G).mean())
    b = ex.jtmat(torch.randn(ex.nC, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(13)))[:, 0]
    x_exact = torch.linalg.solve(G + lam * torch.eye(peft.p, dtype=torch.float64), b)
    est, true = [], []
    eng = PS.PerSampleGradients(peft)
    for s in range(150):
        sk = SketchedJacobian(peft, X, k=k, m=m, seed=s, engine=eng)
        e = half_sketch_error(sk, b, lam)
        est.append(e.error)
        true.append(float((e.x - x_exact).norm() / e.x.norm()))
    rms_est = math.sqrt(statistics.fmean(v * v for v in est))
    rms_true = math.sqrt(statistics.fmean(v * v for v in true))
    print(f"half-sketch estimate: RMS est {rms_est:.3g}, RMS true {rms_true:.3g}, ratio {rms_est / rms_true:.3f}")
    assert 1 / math.sqrt(2) <= rms_est / rms_true <= math.sqrt(2), (rms_est, rms_true)
    within2 = sum(0.5 <= a / t <= 2 for a, t in zip(est, true)) / len(est)
    print(f"single estimates within 2x of the true error: {within2:.2f}")
    assert within2 >= 0.8, within2


def test_half_sketch_error_on_one_problem():
    peft = CASES["bn-cnn+head"]
    X = _X(16, seed=14)
    sk = SketchedJacobian(peft, X, k=2, seed=1)
    a, bb = sk.halves()
    torch.testing.assert_close((a.gram() + bb.gram()) / 2, sk.gram(), rtol=1e-12, atol=1e-12)
    b = torch.randn(peft.p, dtype=torch.float64)
    e = half_sketch_error(sk, b, 0.5)
    assert e.x.shape == b.shape and e.error > 0 and e.half_error == pytest.approx(math.sqrt(2) * e.error)
    torch.testing.assert_close(e.x, ridge_solve(sk.J, b, 0.5), rtol=1e-10, atol=1e-12)
    e2 = half_sketch_error((a, bb), b, 0.5)
    assert e2.error == pytest.approx(e.error)


@pytest.mark.parametrize("n,k,m", [(16, 2, None), (16, 2, 8), (200, 2, None), (200, 4, 120)])
def test_half_sketch_solves_from_one_gram_equal_three_separate_solves(n, k, m):
    """The dense route takes the halves' and the whole sketch's systems from one Gram's worth of products (kernel space
    when 2·rows < p, parameter space otherwise): each equals its own Cholesky solve (float64, 1e-10), for halves by
    columns (all samples) and by draws (a subsample)."""
    from fastntk.operators import sketch as SK

    peft = CASES["bn-cnn+head"]
    X = _X(n, seed=15)
    sk = SketchedJacobian(peft, X, k=k, m=m, seed=2)
    a, bb = sk.halves()
    assert (2 * a.J.shape[0] < peft.p) == (n == 16)  # both spaces are exercised
    b = torch.randn(peft.p, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    lam = 0.3
    e = half_sketch_error(sk, b, lam)
    assert e.method == "cholesky" and SK.dense_is_cheap(2 * a.J.shape[0], peft.p)
    for got, J in ((e.x_a, a.J), (e.x_b, bb.J), (e.x, sk.J)):
        ref = torch.linalg.solve(J.T.double() @ J.double() + lam * torch.eye(peft.p, dtype=torch.float64), b)
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12 * float(ref.abs().max()))


@pytest.mark.parametrize("rank", [0, 8])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_half_sketch_error_by_cg_equals_the_dense_route(monkeypatch, dtype, rank):
    """Above DIRECT_HALF_LIMIT the three solves run by matrix-free CG on the stored rows (no float64 copy, no Gram),
    plain (NYSTROM_RANK = 0) or Nyström-preconditioned: the same estimate and solutions as the dense Cholesky route, to
    the 1e-3 a diagnostic needs (CG stops at a relative residual of 1e-5)."""
    from fastntk.operators import sketch as SK

    monkeypatch.setattr(SK, "NYSTROM_RANK", rank)

    peft = CASES["bn-cnn+head"]
    X = _X(16, seed=14)
    sk = SketchedJacobian(peft, X, k=2, seed=1)
    a, bb = sk.halves()
    a.J, bb.J = a.J.to(dtype), bb.J.to(dtype)
    b = torch.randn(peft.p, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    dense = half_sketch_error((a, bb), b, 0.5)
    monkeypatch.setattr(SK, "DIRECT_HALF_LIMIT", 0)
    cg = half_sketch_error((a, bb), b, 0.5)
    assert dense.method == "cholesky" and cg.method == ("cg" if rank == 0 else f"cg (Nyström-preconditioned, rank {rank})")
    tol = 1e-3
    assert cg.error == pytest.approx(dense.error, rel=tol)
    for u, v in ((cg.x, dense.x), (cg.x_a, dense.x_a), (cg.x_b, dense.x_b)):
        assert float((u - v).norm()) <= tol * float(v.norm())
    with pytest.raises(NumericalError, match="did not converge"):
        SK._cg_ridge([a.J], b, 1e-12, maxiter=2)


def test_sketch_bad_inputs_raise_typed_errors():
    peft = CASES["bn-cnn+head"]
    X = _X(6)
    for kw in (dict(kind="nope"), dict(k=0), dict(k=1.5), dict(kind="fisher"), dict(kind="orthogonal", k=4),
               dict(m=0), dict(m=7), dict(loss="l1"), dict(batch_size=0),
               dict(engine=PS.PerSampleGradients(peft, w=peft.vector() + 1))):
        with pytest.raises(InvalidInputError):
            SketchedJacobian(peft, X, **kw)
    sk = SketchedJacobian(peft, X, k=1)
    with pytest.raises(InvalidInputError):
        sk.outputs()  # not residual-space rows
    with pytest.raises(InvalidInputError):
        sk.halves()  # odd k over all samples
    with pytest.raises(InvalidInputError):
        SketchedJacobian(peft, X, k=2, m=3).halves()  # odd m
    sk2 = SketchedJacobian(peft, X, k=2)
    with pytest.raises(InvalidInputError):
        half_sketch_error(sk2, torch.zeros(peft.p, dtype=torch.float64), 0.0)
    with pytest.raises(ShapeError):
        half_sketch_error(sk2, torch.zeros(peft.p + 1, dtype=torch.float64), 1.0)


def test_streamed_sketch_allocates_nothing_of_size_nC_p():
    n, batch = 96, 8
    peft = BatchNormPeft(tiny_bn_cnn(0), include_head=True)
    X = _X(n, seed=15)
    nCp = n * 3 * peft.p
    with _LargestAllocation() as mode:
        sk = SketchedJacobian(peft, X, k=1, batch_size=batch)
    assert sk.J.numel() == n * peft.p
    assert mode.largest < nCp, (mode.largest, nCp)
    assert mode.largest <= max(sk.J.numel(), batch * 4 * 6 * 6 * 8)  # the k=1 rows, or one batch of activations


def test_merged_sketch_is_the_weighted_average_of_its_parts():
    """Two subsampled sketches of the same samples joined: G̃ = (m₁G̃₁ + m₂G̃₂)/(m₁ + m₂) (float64, exact), rows scaled to
    √(n/(m₁ + m₂)), halves still available; sketches of other samples or of all samples are refused."""
    peft = CASES["bn-cnn+head"]
    X = _X(20, seed=16)
    a = SketchedJacobian(peft, X, k=2, m=6, seed=1)
    b = SketchedJacobian(peft, X, k=2, m=4, seed=2)
    ab = a.merged(b)
    assert ab.n == 10 and ab.weight == pytest.approx(math.sqrt(20 / 10)) and "grown: 6 + 4 draws" in ab.reason
    torch.testing.assert_close(ab.gram(), (6 * a.gram() + 4 * b.gram()) / 10, rtol=1e-12, atol=1e-12)
    h1, h2 = ab.halves()
    torch.testing.assert_close((h1.gram() + h2.gram()) / 2, ab.gram(), rtol=1e-12, atol=1e-12)
    with pytest.raises(InvalidInputError):
        a.merged(SketchedJacobian(peft, X[:10], k=2, m=4, seed=3))
    with pytest.raises(InvalidInputError):
        a.merged(SketchedJacobian(peft, X, k=2, seed=3))


@pytest.mark.parametrize("n", [16, 200])
def test_float32_rows_take_float32_grams_and_a_refined_whole_sketch_solve(n):
    """Float32 sketch rows: the Grams by float32 GEMM, the factors in float64; the whole sketch's solve refined until its
    true residual (float64 products of the stored rows) is ≤ REFINE_RTOL, the halves' solves within 1e-3 of their exact
    solves (the float32 Gram's rounding times the conditioning: an error estimate needs no more), in both spaces."""
    from fastntk.operators import sketch as SK

    peft = CASES["bn-cnn+head"]
    X = _X(n, seed=17)
    sk = SketchedJacobian(peft, X, k=2, seed=3)
    a, bb = sk.halves()
    a.J, bb.J = a.J.float(), bb.J.float()
    b = torch.randn(peft.p, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    got = half_sketch_error((a, bb), b, 0.2)

    def exact(J):  # the exact float64 solve of the stored rows
        J = J.double()
        return torch.linalg.solve(J.T @ J + 0.2 * torch.eye(peft.p, dtype=torch.float64), b)

    J = torch.cat([a.J, bb.J]).double() / math.sqrt(2.0)
    x = exact(J)
    res = J.T @ (J @ got.x) + 0.2 * got.x - b
    assert float(res.norm()) <= SK.REFINE_RTOL * float(b.norm())
    assert float((got.x - x).norm()) <= 1e-4 * float(x.norm())
    x_a, x_b = exact(a.J), exact(bb.J)
    for u, v in ((got.x_a, x_a), (got.x_b, x_b)):
        assert float((u - v).norm()) <= 1e-3 * float(v.norm())
    assert got.error == pytest.approx(float((x_a - x_b).norm()) / (2 * float(x.norm())), rel=1e-2)


def test_a_subsampled_sketch_is_halved_by_row_views_on_both_routes(monkeypatch):
    """A subsample's halves are row views (scale 2, no copy): the dense and the CG route give the halves' and the whole
    sketch's solves of the scaled copies that halves() makes (1e-10 dense, 1e-4 CG)."""
    from fastntk.operators import sketch as SK

    peft = CASES["bn-cnn+head"]
    X = _X(40, seed=18)
    sk = SketchedJacobian(peft, X, k=2, m=20, seed=4)
    a, bb = sk.halves()
    b = torch.randn(peft.p, dtype=torch.float64, generator=torch.Generator().manual_seed(6))

    def solve(J):
        J = J.double()
        return torch.linalg.solve(J.T @ J + 0.4 * torch.eye(peft.p, dtype=torch.float64), b)

    refs = (solve(a.J), solve(bb.J), solve(sk.J))
    dense = half_sketch_error(sk, b, 0.4)
    monkeypatch.setattr(SK, "DIRECT_HALF_LIMIT", 0)
    cg = half_sketch_error(sk, b, 0.4)
    assert dense.method == "cholesky" and cg.method.startswith("cg")
    for est, tol in ((dense, 1e-10), (cg, 1e-4)):
        for got, ref in zip((est.x_a, est.x_b, est.x), refs):
            assert float((got - ref).norm()) <= tol * float(ref.norm())


def test_nystrom_preconditioner_of_the_estimate_cuts_cg_iterations():
    """The half-sketch estimate's CG preconditioner (operators.sketch._nystrom, rank NYSTROM_RANK): on rows whose
    spectrum decays (as sketched Jacobians' do) with a small ridge, preconditioned CG needs far fewer iterations than
    plain CG for the same solution; float64, dense reference by numpy.linalg.solve."""
    from fastntk.operators import sketch as SK
    from fastntk.solvers import cg

    g = torch.Generator().manual_seed(0)
    rows, p = 300, 120
    U, _ = torch.linalg.qr(torch.randn(rows, p, dtype=torch.float64, generator=g))
    V, _ = torch.linalg.qr(torch.randn(p, p, dtype=torch.float64, generator=g))
    J = U @ torch.diag(10.0 ** torch.linspace(2, -2, p, dtype=torch.float64)) @ V.T
    b = torch.randn(p, dtype=torch.float64, generator=g)
    lam = 1e-2
    ref = np.linalg.solve((J.T @ J).numpy() + lam * np.eye(p), b.numpy())
    P = SK._nystrom([J], 1.0, lam)
    assert P is not None and P.rank == min(SK.NYSTROM_RANK, p // 4)
    plain = cg(SK._RowGram([J], lam), b, rtol=1e-10, maxiter=5000)
    pre = cg(SK._RowGram([J], lam), b, rtol=1e-10, maxiter=5000, M=P)
    for r in (plain, pre):
        np.testing.assert_allclose(np.asarray(r.x), ref, rtol=1e-6, atol=1e-8 * np.abs(ref).max())
    assert pre.iterations * 3 <= plain.iterations, (pre.iterations, plain.iterations)
