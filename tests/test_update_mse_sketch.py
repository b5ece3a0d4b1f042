"""The sketched curvature on the MSE route (issue #14): G̃_r in the primal and Woodbury forms, exact right-hand sides."""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from fastntk.errors import InvalidInputError
from fastntk.peft import BatchNormPeft
from fastntk.unlearn import unlearn
from fastntk.update.guard import HarmTolerance
from tests.conftest import tiny_bn_cnn


def _problem(n=40, n_f=8, C=3, seed=11):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (n,), generator=g)
    m = tiny_bn_cnn(6)  # C = 3 outputs
    peft = BatchNormPeft(m, include_head=True)
    w0 = peft.vector().clone()
    with torch.no_grad():
        peft.write(w0 + 0.05 * torch.randn(peft.p, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1)))
    r, f = np.arange(n - n_f), np.arange(n - n_f, n)
    return m, peft, (X[r], y[r]), (X[f], y[f]), w0


KW = dict(trained_with="linearized-mse", rtol=1e-12, harm=HarmTolerance(enabled=False))


@pytest.mark.parametrize("form,anchor,solver", [("primal", "trained", "direct"), ("primal", "trained", "cg"),
                                                ("primal", "retain", "direct"), ("primal", "fit", "direct"),
                                                ("primal", "fit", "cg"), ("woodbury", "fit", "auto"),
                                                ("woodbury", "trained", "auto")])
def test_orthogonal_full_rank_sketch_gives_the_exact_update(form, anchor, solver):
    """k = C orthogonal rows per sample: G̃_r = G_r to rounding, so every form that uses G gives the exact Δ (1e-10)."""
    m, peft, retain, forget, w0 = _problem()
    kw = dict(KW, ridge=0.3, w0=w0, form=form, anchor=anchor, solver=solver)
    exact = unlearn(m, peft, retain, forget, curvature_source="exact", **kw)
    orth = unlearn(m, peft, retain, forget, curvature_source="sketch", sketch_k=3, sketch_kind="orthogonal", **kw)
    np.testing.assert_allclose(orth.delta.numpy(), exact.delta.numpy(), rtol=0, atol=1e-10 * float(exact.delta.abs().max()))
    assert orth.plan["curvature_source"]["value"] == "sketch" and exact.plan["curvature_source"]["value"] == "exact"
    assert orth.strategy == "sketch" and orth.info["sketch"]["reason"].startswith("sketched curvature")
    assert exact.info["sketch"] is None


def test_rademacher_sketch_reports_its_error_and_lands_near_the_exact_update():
    m, peft, retain, forget, w0 = _problem(n=80, n_f=10)
    kw = dict(KW, ridge=0.3, w0=w0, form="primal", anchor="trained")
    exact = unlearn(m, peft, retain, forget, curvature_source="exact", **kw)
    errs, ests = [], []
    for seed in range(4):
        res = unlearn(m, peft, retain, forget, curvature_source="sketch", sketch_k=2, sketch_seed=seed, **kw)
        errs.append(float((res.delta - exact.delta).norm() / exact.delta.norm()))
        ests.append(res.info["sketch"]["estimated_relative_error"])
        assert "error estimate" in res.timings
    assert all(e is not None and e > 0 for e in ests)
    assert 0 < np.mean(errs) < 1.0  # a noisy but informative update
    # the estimate tracks the true error in size (first order: within a factor 4 on average over four draws)
    assert 0.25 < np.mean(ests) / np.mean(errs) < 4


def test_sketch_is_refused_by_the_kernel_forms_before_any_work():
    m, peft, retain, forget, w0 = _problem()
    before = peft.vector().clone()
    for form in ("dual", "dense"):
        with pytest.raises(InvalidInputError, match="sketched curvature"):
            unlearn(m, peft, retain, forget, ridge=0.3, w0=w0, form=form, curvature_source="sketch", **KW)
    assert torch.equal(peft.vector(), before)


def test_auto_sketches_only_when_the_exact_jacobian_does_not_fit():
    m, peft, retain, forget, w0 = _problem()
    need = retain[0].shape[0] * 3 * peft.p * 8
    small = unlearn(m, peft, retain, forget, ridge=0.3, w0=w0, memory_budget=need // 4, **KW)
    assert small.plan["curvature_source"]["value"] == "sketch" and "does not fit" in small.plan["curvature_source"]["reason"]
    assert small.plan["form"]["value"] == "primal"
    k = 2
    assert f"k = {k} rows per sample" in small.plan["curvature_source"]["reason"]
    big = unlearn(m, peft, retain, forget, ridge=0.3, w0=w0, memory_budget=10 * need, **KW)
    assert big.plan["curvature_source"]["value"] == "exact"
    streamed = unlearn(m, peft, retain, forget, ridge=0.3, w0=w0, memory_budget=need // 4, strategy="stream", **KW)
    assert streamed.plan["curvature_source"]["value"] == "exact"  # a forced strategy keeps the exact J_r


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n_f=st.integers(2, 10), lam=st.floats(0.05, 5.0), seed=st.integers(0, 50), anchor=st.sampled_from(["trained", "fit"]))
def test_orthogonal_sketch_exact_for_drawn_splits_and_ridges(n_f, lam, seed, anchor):
    m, peft, retain, forget, w0 = _problem(n=30, n_f=n_f, seed=seed)
    kw = dict(KW, ridge=lam, w0=w0, form="primal", anchor=anchor)
    exact = unlearn(m, peft, retain, forget, curvature_source="exact", **kw)
    orth = unlearn(m, peft, retain, forget, curvature_source="sketch", sketch_k=3, sketch_kind="orthogonal", sketch_seed=seed, **kw)
    np.testing.assert_allclose(orth.delta.numpy(), exact.delta.numpy(), rtol=0, atol=1e-10 * max(1.0, float(exact.delta.abs().max())))


def test_matched_ridge_from_an_orthogonal_full_rank_sketch_equals_the_exact_one():
    """match_ridge(curvature=sketch): the parameter-space fit with G̃; k = C orthogonal ⇒ the same scores and λ*."""
    from fastntk.operators import SketchedJacobian
    from fastntk.update.ridge import match_ridge

    m, peft, retain, forget, w0 = _problem(n=30, n_f=5)
    X = torch.cat([retain[0], forget[0]]); y = torch.cat([retain[1], forget[1]])
    w_t = peft.vector().clone()
    grid = np.logspace(-3, 2, 11)
    lam, info = match_ridge(peft, (X, y), w_trained=w_t, w0=w0, grid=grid)
    sk = SketchedJacobian(peft, X, k=3, kind="orthogonal", w=w0, seed=4)
    lam_s, info_s = match_ridge(peft, (X, y), w_trained=w_t, w0=w0, grid=grid, curvature=sk)
    np.testing.assert_allclose(info_s["scores"], info["scores"], rtol=1e-7)
    assert lam_s == lam
    with pytest.raises(InvalidInputError, match="SketchedJacobian of the training set"):
        match_ridge(peft, (X[:20], y[:20]), w_trained=w_t, w0=w0, curvature=sk)


def test_auto_ridge_with_the_sketch_builds_no_exact_jacobian_of_D():
    """ridge='auto' on the sketched route: the matched ridge from a sketch of D at w0 (its reason says so)."""
    m, peft, retain, forget, w0 = _problem(n=40, n_f=6)
    res = unlearn(m, peft, retain, forget, w0=w0, curvature_source="sketch", sketch_k=3, sketch_kind="orthogonal", **KW)
    ref = unlearn(m, peft, retain, forget, w0=w0, curvature_source="exact", **KW)
    assert "from a sketch" in res.plan["ridge"]["reason"]
    assert res.info["ridge"] == pytest.approx(ref.info["ridge"], rel=1e-12)
    np.testing.assert_allclose(res.delta.numpy(), ref.delta.numpy(), atol=1e-10 * float(ref.delta.abs().max()))


@pytest.mark.parametrize("anchor", ["fit", "trained", "retain"])
def test_prepared_unlearner_with_an_orthogonal_full_rank_sketch_equals_the_exact_one(anchor):
    """Unlearner(curvature_source='sketch'): G̃_D from k = C orthogonal rows is G_D, so two requests in a row give the
    exact Unlearner's updates (1e-10); the downdate uses the sketch's rows of the forgotten samples."""
    from fastntk.unlearn import Unlearner

    m, peft, retain, forget, w0 = _problem(n=36, n_f=4)
    X = torch.cat([retain[0], forget[0]]); y = torch.cat([retain[1], forget[1]])
    kw = dict(trained_with="linearized-mse", ridge=0.4, w0=w0, anchor=anchor, rtol=1e-12)
    ex = Unlearner(m, peft, (X, y), curvature_source="exact", **kw)
    sk = Unlearner(m, peft, (X, y), curvature_source="sketch", sketch_k=3, sketch_kind="orthogonal", sketch_seed=3, **kw)
    for req in (np.arange(30, 33), np.array([2, 7, 35])):
        a, b = ex.forget(req), sk.forget(req)
        np.testing.assert_allclose(b.delta.numpy(), a.delta.numpy(), rtol=0, atol=1e-10 * float(a.delta.abs().max()))
        assert b.plan["curvature_source"]["value"] == "sketch" and a.plan["curvature_source"]["value"] == "exact"
        assert b.info["sketch"]["reason"].startswith("sketched curvature") and a.info["sketch"] is None


def test_prepared_unlearner_sketch_auto_choice_and_error_estimate():
    from fastntk.unlearn import Unlearner

    m, peft, retain, forget, w0 = _problem(n=36, n_f=4)
    X = torch.cat([retain[0], forget[0]]); y = torch.cat([retain[1], forget[1]])
    need = 36 * 3 * peft.p * 8
    u = Unlearner(m, peft, (X, y), trained_with="linearized-mse", ridge=0.4, w0=w0, memory_budget=need // 2)
    assert u.curvature == "sketch" and "memory_budget" in u.reasons["curvature_source"]
    res = u.forget(np.arange(30, 34))
    est = res.info["sketch"]["estimated_relative_error"]
    assert est is not None and est > 0 and "error estimate" in res.timings
    assert Unlearner(m, peft, (X, y), trained_with="linearized-mse", ridge=0.4, w0=w0, memory_budget=2 * need).curvature == "exact"
    with pytest.raises(InvalidInputError, match="curvature_source"):
        Unlearner(m, peft, (X, y), trained_with="linearized-mse", ridge=0.4, w0=w0, curvature_source="sketchy")


def test_subset_of_a_full_sketch_is_a_full_sketch_of_the_subset():
    from fastntk.operators import SketchedJacobian

    m, peft, retain, forget, w0 = _problem(n=20, n_f=4)
    sk = SketchedJacobian(peft, retain[0], k=2, seed=1)
    sub = sk.subset(np.arange(1, 16, 2))
    assert sub.n == sub.n_total == 8
    a, b = sub.halves()  # columns split (k = 2 -> 1 + 1), not samples
    assert a.J.shape == b.J.shape == (8, peft.p)
    torch.testing.assert_close(a.J / 2 ** 0.5, sk.J.view(16, 2, -1)[1:16:2, 0])
    part = SketchedJacobian(peft, retain[0], k=1, m=10, seed=1).subset(np.arange(4))
    assert part.n == 4 and part.n_total == 16  # a subsample stays one
