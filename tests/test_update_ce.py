"""Cross-entropy unlearning (issue 12): Gauss-Newton steps against dense references, the stationarity ridge,
the do-no-harm check, the variant policy and trained_with."""
import numpy as np
import pytest
import scipy.optimize
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from fastntk.errors import HarmfulUpdateError, InvalidInputError
from fastntk.peft import BatchNormPeft, NamedPeft
from fastntk.unlearn import unlearn
from fastntk.update.guard import HarmTolerance, check_no_harm
from fastntk.update.newton import NewtonOptions, stationarity_ridge
from fastntk.update.objective import NetworkObjective
from fastntk.update.policy import VARIANTS, resolve_variant
from fastntk.update.replay import LinearizedData, Recipe, replay
from tests.conftest import linear_model, tiny_bn_cnn


def _data(n, seed, shape=(12,), C=3):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, *shape, dtype=torch.float64, generator=g)
    y = torch.randint(0, C, (n,), generator=g)
    return X, y


def _ce_objective_np(peft, X, y, lam, center):
    """Retain CE + ½λ‖w − c‖² and its gradient, by autograd, for scipy.optimize."""
    f = peft.functional()

    def fun(wn):
        w = torch.from_numpy(wn).requires_grad_(True)
        v = torch.nn.functional.cross_entropy(f(w, X), y, reduction="sum") + 0.5 * lam * ((w - center) ** 2).sum()
        (g,) = torch.autograd.grad(v, w)
        return float(v.detach()), g.numpy()

    return fun


def _dense_ce_ggn(peft, X, w):
    """Σ_i J_iᵀ (diag p_i − p_i p_iᵀ) J_i from torch.func.jacrev and the softmax Hessian."""
    f = peft.functional()
    J = torch.func.jacrev(lambda v: f(v, X))(w)  # (n, C, p)
    p = torch.softmax(f(w, X), -1)
    Lam = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)
    return torch.einsum("ncp,ncd,ndq->pq", J, Lam, J)


def test_first_ce_newton_step_matches_dense_reference():
    """One CE step, anchor='retain', no line search: (G_r^CE + λI)⁻¹ ∇F_r(w_t) with G from jacrev + softmax Hessian."""
    m = tiny_bn_cnn(0)
    peft = BatchNormPeft(m, include_head=True)
    X, y = _data(20, 1, (3, 8, 8))
    r, f = np.arange(15), np.arange(15, 20)
    w0 = peft.vector().clone()
    with torch.no_grad():
        peft.write(w0 + 0.05 * torch.randn(peft.p, dtype=torch.float64, generator=torch.Generator().manual_seed(3)))
    wt = peft.vector().clone()
    lam = 0.3
    res = unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), trained_with="ce", ridge=lam, w0=w0, anchor="retain",
                  curvature_source="exact", newton=NewtonOptions(max_steps=1, line_search=False),
                  harm=HarmTolerance(enabled=False), rtol=1e-12)
    G = _dense_ce_ggn(peft, X[r], wt).numpy()
    _, g = _ce_objective_np(peft, X[r], y[r], lam, w0)(wt.numpy())
    step = -np.linalg.solve(G + lam * np.eye(peft.p), g)
    np.testing.assert_allclose(res.delta.numpy(), step, rtol=1e-8, atol=1e-10)
    assert res.info["steps"] == 1 and res.loss == "ce"
    assert torch.equal(peft.vector(), wt)  # inplace=False


def _linear_ce_problem(model_seed, data_seed, lam=0.5):
    """A head on fixed features (linear in its PEFT params), 30 retain / 10 forget samples, and scipy's minimizer of
    the plain CE + ridge retain objective."""
    m = linear_model(model_seed, C=3)
    peft = NamedPeft(m, ["1.*"])
    X, y = _data(40, data_seed)
    r, f = np.arange(30), np.arange(30, 40)
    w0 = peft.vector().clone()
    fun = _ce_objective_np(peft, X[r], y[r], lam, w0)
    ref = scipy.optimize.minimize(fun, w0.numpy(), jac=True, method="L-BFGS-B", options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 5000})
    return m, peft, X, y, r, f, w0, lam, ref


@pytest.mark.parametrize("solver,curvature", [("direct", "relinearize"), ("cg", "relinearize"), ("direct", "frozen")])
def test_ce_steps_converge_to_scipy_minimizer_on_linear_model(solver, curvature):
    """A model linear in its PEFT params (head on fixed features), CE + ridge: the Newton iteration lands on
    scipy.optimize.minimize's minimizer of the retain objective (anchor='retain')."""
    m, peft, X, y, r, f, w0, lam, ref = _linear_ce_problem(0, 2)
    res = unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), trained_with="ce", ridge=lam, w0=w0, anchor="retain", solver=solver,
                  curvature_source="exact", newton=NewtonOptions(max_steps=30 if curvature == "relinearize" else 400, rel_decrement=1e-16,
                                       stop_on_growth=False, curvature=curvature),
                  harm=HarmTolerance(enabled=False), rtol=1e-12)
    np.testing.assert_allclose(res.w_new.numpy(), ref.x, atol=1e-6)
    assert res.info["newton"]["steps"] >= 2 and res.info["newton"]["stop_reason"]
    objs = [h["objective_after"] for h in res.info["newton"]["history"]]
    assert all(b <= a + 1e-12 for a, b in zip(objs, objs[1:]))  # the objective never increases


def test_tilted_steps_reach_minimizer_of_tilted_objective_and_first_step_is_influence():
    """anchor='trained': ∇F_r(w_t) = −g_f, the first step is (G_r + λI)⁻¹ g_f, the iteration minimizes the tilted F_r."""
    m = linear_model(1, C=3)
    peft = NamedPeft(m, ["1.*"])
    X, y = _data(40, 4)
    r, f = np.arange(32), np.arange(32, 40)
    w0 = peft.vector().clone()
    with torch.no_grad():
        peft.write(w0 + 0.3 * torch.randn(peft.p, dtype=torch.float64, generator=torch.Generator().manual_seed(5)))
    wt = peft.vector().clone()
    lam = 2.0
    gD = torch.from_numpy(_ce_objective_np(peft, X, y, 0.0, w0)(wt.numpy())[1])
    b = gD + lam * (wt - w0)
    fr = _ce_objective_np(peft, X[r], y[r], lam, w0)

    def tilted(wn):
        v, g = fr(wn)
        return v - float(b.numpy() @ (wn - wt.numpy())), g - b.numpy()

    ref = scipy.optimize.minimize(tilted, wt.numpy(), jac=True, method="L-BFGS-B", options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 5000})
    one = unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), trained_with="ce", ridge=lam, w0=w0, anchor="trained",
                  newton=NewtonOptions(max_steps=1, line_search=False), harm=HarmTolerance(enabled=False), rtol=1e-12)
    gf = torch.from_numpy(_ce_objective_np(peft, X[f], y[f], 0.0, w0)(wt.numpy())[1])
    G = _dense_ce_ggn(peft, X[r], wt).numpy()
    np.testing.assert_allclose(one.delta.numpy(), np.linalg.solve(G + lam * np.eye(peft.p), gf.numpy()), rtol=1e-8, atol=1e-10)
    many = unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), trained_with="ce", ridge=lam, w0=w0, anchor="trained",
                   newton=NewtonOptions(max_steps=30, rel_decrement=1e-14, curvature="relinearize", stop_on_growth=False),
                   harm=HarmTolerance(enabled=False), rtol=1e-12)
    np.testing.assert_allclose(many.w_new.numpy(), ref.x, atol=1e-6)


@settings(deadline=None, max_examples=15, suppress_health_check=[HealthCheck.too_slow])
@given(lam=st.floats(0.01, 100.0), seed=st.integers(0, 10_000), p=st.integers(2, 12))
def test_stationarity_ridge_recovers_the_ridge_of_a_converged_fit(lam, seed, p):
    """w_t = argmin ½‖Aw − z‖² + ½λ‖w − w0‖² exactly ⇒ λ* = λ and the tilt vanishes."""
    rng = np.random.default_rng(seed)
    A, z, w0 = rng.normal(size=(3 * p, p)), rng.normal(size=3 * p), rng.normal(size=p)
    wt = np.linalg.solve(A.T @ A + lam * np.eye(p), A.T @ z + lam * w0)
    g = A.T @ (A @ wt - z)
    est, info = stationarity_ridge(torch.from_numpy(g), torch.from_numpy(wt - w0))
    assert est == pytest.approx(lam, rel=1e-8)
    assert info["relative_residual"] < 1e-7


def test_stationarity_ridge_refuses_non_descent():
    with pytest.raises(InvalidInputError, match="≤ 0"):
        stationarity_ridge(torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    with pytest.raises(InvalidInputError, match="equal w0"):
        stationarity_ridge(torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))


def _harmful_setup():
    m = tiny_bn_cnn(2)
    peft = BatchNormPeft(m, include_head=True)
    X, y = _data(30, 6, (3, 8, 8))
    return m, peft, X, y


def test_harm_check_refuses_a_harmful_update_and_damps_a_large_one():
    m, peft, X, y = _harmful_setup()
    w = peft.vector().clone()
    obj = NetworkObjective(peft, X, y, loss="ce")
    bad = 50.0 * torch.randn(peft.p, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with pytest.raises(HarmfulUpdateError) as ei:
        check_no_harm(obj, w, bad, HarmTolerance(max_halvings=2))
    assert ei.value.check is not None and not ei.value.check.passed and len(ei.value.check.tries) == 3
    ok, chk = check_no_harm(obj, w, torch.zeros_like(w), HarmTolerance())
    assert chk.passed and chk.scale == 1.0 and chk.loss_after == pytest.approx(chk.loss_before)
    # an update that is harmless only after damping comes back damped, with its figures
    l0 = obj.data_loss(w)[0] / obj.n
    tol = HarmTolerance(loss_rel=0.0, loss_abs=0.0, acc_drop=1.0, max_halvings=30)
    grad = obj.value_and_grad(w)[1]
    up = 1e3 * grad / grad.norm()  # far along the ascent direction: harmful at full size, harmless when tiny
    d, chk = check_no_harm(obj, w, -up, tol)
    assert chk.scale < 1.0 and chk.loss_after <= l0 + 1e-12
    assert torch.allclose(d, -chk.scale * up)


def test_objective_memo_answers_only_for_the_same_weights():
    """memo: a pass at w records (loss, accuracy); data_loss(w) answers from it without a forward pass, and any other w
    (one ulp away) is computed."""
    m, peft, X, y = _harmful_setup()
    w = peft.vector().clone()
    memo = {}
    obj = NetworkObjective(peft, X, y, loss="ce", memo=memo)
    ref = NetworkObjective(peft, X, y, loss="ce")
    F, _ = obj.value_and_grad(w)
    assert len(memo) == 1
    calls = []
    f = obj._f
    obj._f = lambda *a: calls.append(1) or f(*a)
    assert obj.data_loss(w) == pytest.approx(ref.data_loss(w), rel=1e-13) and not calls
    w2 = torch.nextafter(w, w + 1)
    assert obj.data_loss(w2) == pytest.approx(ref.data_loss(w2), rel=1e-13) and calls


@pytest.mark.parametrize("anchor", ["retain", "trained"])
def test_ce_harm_check_reuses_the_iteration_and_scores_what_is_returned(anchor, monkeypatch):
    """On a retain set within HarmTolerance.samples, the check takes the Newton iteration's own evaluations (no extra
    forward pass), and its figures are those of the returned weights, recomputed from scratch."""
    import fastntk.update.oneshot as oneshot

    m, peft, X, y = _harmful_setup()
    r, f = np.arange(24), np.arange(24, 30)
    w0 = peft.vector().clone()
    with torch.no_grad():
        peft.write(w0 + 0.05 * torch.randn(peft.p, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    wt = peft.vector().clone()
    forwards = []
    check = oneshot.check_update

    def counting(obj, *a, **k):
        f = obj._f
        obj._f = lambda *x: forwards.append(1) or f(*x)
        return check(obj, *a, **k)

    monkeypatch.setattr(oneshot, "check_update", counting)
    res = unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), trained_with="ce", ridge=0.5, w0=w0, anchor=anchor)
    assert not forwards  # both weights were evaluated by the iteration
    ref = NetworkObjective(peft, X[r], y[r], loss="ce")
    chk = res.info["harm_check"]
    l1, a1 = ref.data_loss(res.w_new)
    l0, a0 = ref.data_loss(wt)
    assert chk["scale"] == 1.0 and chk["loss_after"] == pytest.approx(l1 / 24, rel=1e-12) and chk["acc_after"] == a1
    assert chk["loss_before"] == pytest.approx(l0 / 24, rel=1e-12) and chk["acc_before"] == a0
    assert torch.equal(res.w_old + res.delta, res.w_new)


def test_unlearn_refuses_harmful_update_and_leaves_model_bit_identical():
    """The MSE kernel on a model trained with CE, with a huge ridge mismatch: the do-no-harm check must refuse it
    when no damping helps, and inplace=True must not write."""
    m, peft, X, y = _harmful_setup()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    r, f = np.arange(24), np.arange(24, 30)
    w0 = peft.vector().clone()
    with pytest.raises(HarmfulUpdateError):
        # target_scale 1e4: the MSE fit drives the logits to ±1e4, destroying the CE model
        unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), trained_with="ce", loss="mse", ridge=1e-6, w0=w0, linearize_at="w0",
                anchor="fit", target_scale=1e4, harm=HarmTolerance(on_harm="raise"), inplace=True)
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_trained_with_is_required_and_checked():
    m, peft, X, y = _harmful_setup()
    r, f = np.arange(24), np.arange(24, 30)
    with pytest.raises(TypeError):
        unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), ridge=1.0)
    with pytest.raises(InvalidInputError, match="trained_with"):
        unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), ridge=1.0, trained_with="hinge")
    with pytest.raises(InvalidInputError, match="MSE form"):
        unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), ridge=1.0, trained_with="ce", form="dual")
    with pytest.raises(InvalidInputError, match="linearize_at"):
        unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), ridge=1.0, trained_with="ce", linearize_at="w0")


def test_policy_resolves_every_auto_from_trained_with():
    for tw, pol in VARIANTS.items():
        vals, why = resolve_variant(tw, linearize_at="auto", anchor="auto", loss="auto", steps="auto")
        assert vals == {k: pol[k] for k in ("linearize_at", "anchor", "loss", "steps")}
        assert all(tw in why[k] for k in vals)
    vals, why = resolve_variant("ce", linearize_at="auto", anchor="retain", loss="mse", steps=2)
    assert vals["anchor"] == "retain" and vals["steps"] == 2 and vals["loss"] == "mse"
    assert "requested" in why["anchor"] and "warning" in why["loss"]


def test_ce_route_records_plan_and_direct_solver():
    m = tiny_bn_cnn(4)
    peft = BatchNormPeft(m, include_head=True)
    X, y = _data(30, 8, (3, 8, 8))
    r, f = np.arange(24), np.arange(24, 30)
    w0 = peft.vector().clone()
    res = unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), trained_with="ce", ridge=1.0, w0=w0, rtol=1e-10)
    assert res.reasons["solver"].startswith("direct Cholesky") and res.info["harm_check"]["passed"]
    assert res.info["trained_with"] == "ce" and "trained_with='ce'" in res.reasons["loss"]
    assert torch.allclose(res.w_new, res.w_old + res.delta)
    solved = [k for k in res.solves if k.startswith("step")]
    steps, why = res.info["steps"], res.info["newton"]["stop_reason"]
    assert steps >= 1 and len(res.info["newton"]["history"]) == len(solved)
    # every solve is a step taken, except a last one whose step the stopping rule rejected (and says why)
    assert len(solved) == steps or (len(solved) == steps + 1 and ("grew" in why or "line search" in why or "descent" in why))
    assert res.reasons["anchor"].startswith("anchor='trained'")  # every class keeps retain samples
    assert all(res.solves[k]["method"].startswith("cholesky") for k in solved)
    # steps='auto' on the tilted objective: TILTED_AUTO_STEPS step(s), said so; an explicit NewtonOptions keeps the
    # growth-tested iteration (it may take more)
    from fastntk.update.policy import TILTED_AUTO_STEPS

    assert steps == TILTED_AUTO_STEPS == 1 and "tilted objective" in res.reasons["steps"]
    assert "max_steps = 1 reached" in why
    grown = unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), trained_with="ce", ridge=1.0, w0=w0, rtol=1e-10,
                    newton=NewtonOptions(max_steps=16))
    np.testing.assert_allclose(grown.info["newton"]["history"][0]["decrement"], res.info["newton"]["history"][0]["decrement"],
                               rtol=1e-10)  # the same first step
    assert "newton=" in grown.reasons["steps"]


def test_replay_of_full_batch_gd_equals_the_spectral_filter():
    """Replayed full-batch GD on the linearized MSE model = (I − (I − ηH)^T) H⁻¹ Jᵀ z (docs/theory.md)."""
    rng = np.random.default_rng(0)
    n, C, p, T, eta, lam = 12, 2, 5, 7, 0.01, 0.5
    J = torch.from_numpy(rng.normal(size=(n, C, p)))
    f0 = torch.from_numpy(rng.normal(size=(n, C)))
    y = torch.from_numpy(rng.integers(0, C, n))
    w0 = torch.from_numpy(rng.normal(size=p))
    # finetune_peft's objective: mean over the batch of ½‖f − Y‖² + ridge/(2m)‖d‖²: GD on (1/n)·(½‖Jd − z‖² + ½λ‖d‖²)
    rec = Recipe(epochs=T, lr=eta, batch_size=n, optimizer="sgd", loss="mse", ridge=lam)
    out = replay(LinearizedData(J, f0, y), w0, rec)
    Jm = J.reshape(-1, p).numpy()
    z = (torch.nn.functional.one_hot(y, C).double() - f0).reshape(-1).numpy()
    H = (Jm.T @ Jm + lam * np.eye(p)) / n
    d_T = (np.eye(p) - np.linalg.matrix_power(np.eye(p) - eta * H, T)) @ np.linalg.solve(H, Jm.T @ z / n)
    np.testing.assert_allclose((out.w - w0).numpy(), d_T, rtol=1e-10, atol=1e-12)


def test_prepared_ce_unlearner_first_step_equals_one_shot_and_sequences_commit():
    """The prepared CE Unlearner: one request with steps=1 equals unlearn(trained_with='ce', steps=1) (same G_r(w_t), λ,
    gradient); a refused request leaves its state; requests accumulate."""
    from fastntk.unlearn import Unlearner
    from fastntk.update.prepared_ce import CEUnlearner

    m = tiny_bn_cnn(5)
    peft = BatchNormPeft(m, include_head=True)
    X, y = _data(36, 9, (3, 8, 8))
    w0 = peft.vector().clone()
    with torch.no_grad():
        peft.write(w0 + 0.05 * torch.randn(peft.p, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    f = np.arange(30, 36)
    r = np.arange(30)
    one = unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), trained_with="ce", w0=w0, anchor="trained", steps=1, rtol=1e-12)
    u = Unlearner(m, peft, (X, y), trained_with="ce", w0=w0, newton=NewtonOptions(max_steps=1), rtol=1e-12)
    assert isinstance(u, CEUnlearner)
    req = u.forget(f)
    assert req.info["anchor"] == "trained" and req.info["steps"] == 1
    np.testing.assert_allclose(req.delta.numpy(), one.delta.numpy(), rtol=1e-7, atol=1e-10)
    assert req.info["ridge"] == pytest.approx(one.info["ridge"], rel=1e-10)
    chk, ref = req.info["harm_check"], NetworkObjective(peft, X[r], y[r], loss="ce")  # the reused figures are the true ones
    assert chk["loss_after"] == pytest.approx(ref.data_loss(req.w_new)[0] / r.size, rel=1e-12)
    assert chk["loss_before"] == pytest.approx(ref.data_loss(req.w_old)[0] / r.size, rel=1e-12)
    # a check sample smaller than D_r: the one step is scored there, the same update, and the check's figures are true
    u_s = Unlearner(m, peft, (X, y), trained_with="ce", w0=w0, newton=NewtonOptions(max_steps=1), rtol=1e-12,
                    harm=HarmTolerance(samples=12))
    req_s = u_s.forget(f)
    assert "(12 of 30)" in req_s.reasons["line_search_sample"] and req_s.info["newton"]["history"][0]["t"] == 1.0
    np.testing.assert_allclose(req_s.delta.numpy(), req.delta.numpy(), rtol=0, atol=1e-10 * float(req.delta.abs().max()))
    from fastntk.update.guard import retain_sample

    s12 = torch.as_tensor(retain_sample(r.size, 12))
    ref12 = NetworkObjective(peft, X[r][s12], y[r][s12], loss="ce")
    assert req_s.info["harm_check"]["loss_after"] == pytest.approx(ref12.data_loss(req_s.w_new)[0] / 12, rel=1e-12)
    w_before = u.w.clone()
    from fastntk.errors import ForgetSetError

    with pytest.raises(ForgetSetError):
        u.forget(f[:2])  # already forgotten: refused, nothing committed
    assert torch.equal(u.w, w_before) and u.forgotten.size == f.size
    u.forget(np.arange(0, 3))
    assert u.forgotten.size == f.size + 3 and len(u.history) == 2
    with pytest.raises(InvalidInputError, match="does not take"):
        Unlearner(m, peft, (X, y), trained_with="ce", w0=w0, source=object())


def test_sketched_curvature_orthogonal_full_rank_equals_exact_and_reports_its_error():
    """curvature_source='sketch' with an orthogonal k = C sketch is the exact G (the update equals the exact one); a
    Rademacher k = 2 sketch reports a half-sketch error estimate and lands near the exact update."""
    m = tiny_bn_cnn(6)
    peft = BatchNormPeft(m, include_head=True)
    X, y = _data(40, 11, (3, 8, 8))
    r, f = np.arange(32), np.arange(32, 40)
    w0 = peft.vector().clone()
    with torch.no_grad():
        peft.write(w0 + 0.05 * torch.randn(peft.p, dtype=torch.float64, generator=torch.Generator().manual_seed(2)))
    kw = dict(trained_with="ce", ridge=0.5, w0=w0, anchor="trained", steps=1, rtol=1e-12, harm=HarmTolerance(enabled=False))
    exact = unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), curvature_source="exact", **kw)
    orth = unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), curvature_source="sketch", sketch_k=3, sketch_kind="orthogonal", **kw)
    np.testing.assert_allclose(orth.delta.numpy(), exact.delta.numpy(), rtol=1e-8, atol=1e-10)
    assert exact.info["sketch"] is None and orth.info["sketch"]["curvature"].startswith("curvature_source='sketch'")
    rad = unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), curvature_source="sketch", sketch_k=2, **kw)
    est = rad.info["sketch"]["estimated_relative_error"]
    true = float((rad.delta - exact.delta).norm() / exact.delta.norm())
    assert est is not None and 0 < est and true < 1.0
    assert rad.plan["curvature_source"]["value"] == "sketch"


@pytest.mark.parametrize("kind,k,m,damping", [("rademacher", 1, 0.5, "none"), ("fisher", 1, 0.5, "none"),
                                               ("rademacher", 2, None, "none"), ("rademacher", 1, 0.5, "lm")])
def test_sketched_curvature_newton_keeps_the_exact_fixed_point(kind, k, m, damping):
    """The curvature only preconditions the steps: with a fresh sketch per relinearized step (k rows, m of n_r samples)
    the iteration still lands on scipy's minimizer of the retain objective (the gradient is exact)."""
    mdl, peft, X, y, r, f, w0, lam, ref = _linear_ce_problem(3, 5)
    res = unlearn(mdl, peft, (X[r], y[r]), (X[f], y[f]), trained_with="ce", ridge=lam, w0=w0, anchor="retain",
                  curvature_source="sketch", sketch_k=k, sketch_m=m, sketch_kind=kind,
                  newton=NewtonOptions(max_steps=200, rel_decrement=1e-20, stop_on_growth=False, damping=damping),
                  harm=HarmTolerance(enabled=False), rtol=1e-12)
    np.testing.assert_allclose(res.w_new.numpy(), ref.x, atol=1e-6)
    assert res.plan["curvature_source"]["value"] == "sketch"
    why = res.plan["curvature_source"]["reason"]
    from fastntk.update.tilted import sketch_samples

    assert f"k={k}" in why and f"m={sketch_samples(m, 30)} of n=30" in why
    objs = [h["objective_after"] for h in res.info["newton"]["history"]]
    assert all(b <= a + 1e-12 for a, b in zip(objs, objs[1:]))


def test_sketch_m_is_validated_and_resolved():
    from fastntk.update.tilted import JacobianOptions, sketch_samples

    for bad in (0, -1, 0.0, 1.5, True, "half"):
        with pytest.raises(InvalidInputError, match="sketch_m"):
            JacobianOptions(sketch_m=bad)
    assert sketch_samples(None, 101) == 101 and sketch_samples(1.0, 101) == 101
    assert sketch_samples(0.25, 101) % 2 == 0 and sketch_samples(0.25, 101) == 26
    assert sketch_samples(7, 5) == 5 and sketch_samples(3, 5) == 3


def test_ce_route_records_exact_curvature_with_its_reason():
    m = tiny_bn_cnn(4)
    peft = BatchNormPeft(m, include_head=True)
    X, y = _data(30, 8, (3, 8, 8))
    r, f = np.arange(24), np.arange(24, 30)
    res = unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), trained_with="ce", ridge=1.0, w0=peft.vector().clone(),
                  curvature_source="exact", rtol=1e-10)
    assert res.plan["curvature_source"]["value"] == "exact"
    assert "curvature_source='exact' requested" in res.plan["curvature_source"]["reason"]


def test_auto_curvature_sketches_only_where_the_fixed_point_does_not_depend_on_it():
    """curvature_source='auto': the plain retain objective (relinearized) gets the preconditioning sketch (k = 1), the
    tilted objective (whose first step is the answer) the exact J̃; LM damping keeps the line-searched descent."""
    m = tiny_bn_cnn(4)
    peft = BatchNormPeft(m, include_head=True)
    X, y = _data(40, 8, (3, 8, 8))
    r, f = np.arange(32), np.arange(32, 40)
    kw = dict(trained_with="ce", ridge=1.0, w0=peft.vector().clone(), rtol=1e-10, harm=HarmTolerance(enabled=False))
    plain = unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), anchor="retain", newton=NewtonOptions(damping="lm"), **kw)
    tilted = unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), anchor="trained", **kw)
    assert plain.plan["curvature_source"]["value"] == "sketch" and "k=1" in plain.plan["curvature_source"]["reason"]
    assert "minimizer does not depend on the curvature" in plain.plan["curvature_source"]["reason"]
    assert tilted.plan["curvature_source"]["value"] == "exact"
    hist = plain.info["newton"]["history"]
    assert all("rho" in h and h["mu_next"] >= 0 for h in hist if "rejected" not in h)
    objs = [h["objective_after"] for h in hist if "objective_after" in h]
    assert all(b <= a + 1e-9 for a, b in zip(objs, objs[1:]))


def test_newton_options_validate_damping_and_extrapolate():
    for bad in (dict(damping="trust"), dict(extrapolate=-1), dict(extrapolate=True)):
        with pytest.raises(InvalidInputError):
            NewtonOptions(**bad)


@pytest.mark.parametrize("ridge", ["per-sample", "relative"])
def test_ridge_rules_are_applied_and_recorded(ridge):
    from fastntk.update.tilted import PER_SAMPLE_RIDGE, RELATIVE_RIDGE

    m = tiny_bn_cnn(4)
    peft = BatchNormPeft(m, include_head=True)
    X, y = _data(30, 8, (3, 8, 8))
    r, f = np.arange(24), np.arange(24, 30)
    res = unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), trained_with="ce", ridge=ridge, w0=peft.vector().clone(),
                  curvature_source="exact", rtol=1e-10, harm=HarmTolerance(enabled=False))
    sel = res.info["ridge_selection"]
    if ridge == "per-sample":
        assert res.info["ridge"] == pytest.approx(PER_SAMPLE_RIDGE * 24) and sel["rule"].startswith("per-sample")
    else:
        assert res.info["ridge"] == pytest.approx(RELATIVE_RIDGE * sel["trace_over_p"]) and sel["trace_source"] == "exact"
    assert res.plan["ridge"]["reason"].startswith(ridge) and f"λ = {res.info['ridge']:.4g}" in res.plan["ridge"]["reason"]
    with pytest.raises(InvalidInputError):
        unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), trained_with="ce", ridge="per_sample", w0=peft.vector().clone())


def test_sketch_fallback_fits_the_memory_budget():
    """The tilted route's exact J̃ does not fit memory_budget: the sketch (k = 2) takes as many samples as fit it."""
    m = tiny_bn_cnn(4)
    peft = BatchNormPeft(m, include_head=True)
    X, y = _data(30, 8, (3, 8, 8))
    r, f = np.arange(24), np.arange(24, 30)
    budget = 10 * 2 * peft.p * 8  # 10 samples of 2 float64 rows
    res = unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), trained_with="ce", ridge=1.0, w0=peft.vector().clone(),
                  anchor="trained", memory_budget=budget, rtol=1e-10, harm=HarmTolerance(enabled=False))
    why = res.plan["curvature_source"]["reason"]
    assert res.plan["curvature_source"]["value"] == "sketch" and "> memory_budget" in why
    assert "m = 10 of 24 samples" in why and "m=10 of n=24" in why


def _gate_problem():
    m = tiny_bn_cnn(6)
    peft = BatchNormPeft(m, include_head=True)
    X, y = _data(300, 5, (3, 8, 8))
    r, f = np.arange(270), np.arange(270, 300)
    w0 = peft.vector().clone()
    with torch.no_grad():
        peft.write(w0 + 0.05 * torch.randn(peft.p, dtype=torch.float64, generator=torch.Generator().manual_seed(3)))
    return m, peft, (X[r], y[r]), (X[f], y[f]), w0


def test_gated_sketch_is_kept_when_its_estimate_is_small_and_replaced_by_the_exact_curvature_otherwise(monkeypatch):
    """curvature_source='auto' on the tilted objective with the exact J̃ in budget: the k = 2, m = n_r/2 sketch is kept
    when the half-sketch estimate of the first step's error is ≤ GATE_MAX_ERROR; above it the exact J̃ is built and the
    update equals the exact one (to 1e-10); both verdicts are in the result."""
    import fastntk.update.tilted as tilted

    m, peft, retain, forget, w0 = _gate_problem()
    kw = dict(trained_with="ce", ridge=0.5, w0=w0, anchor="trained", rtol=1e-12, harm=HarmTolerance(enabled=False))
    exact = unlearn(m, peft, retain, forget, curvature_source="exact", **kw)
    monkeypatch.setattr(tilted, "GATE_MAX_ERROR", 10.0)
    kept = unlearn(m, peft, retain, forget, **kw)
    assert kept.plan["curvature_source"]["value"] == "sketch"
    assert kept.info["sketch"]["gate"].startswith("gated sketch accepted") and "m=136 of n=270" in kept.info["sketch"]["curvature"]
    assert 0 < kept.info["sketch"]["estimated_relative_error"] <= 10.0
    monkeypatch.setattr(tilted, "GATE_MAX_ERROR", 1e-9)
    rejected = unlearn(m, peft, retain, forget, **kw)
    assert rejected.plan["curvature_source"]["value"] == "exact"
    assert "gated sketch rejected" in rejected.plan["curvature_source"]["reason"]
    np.testing.assert_allclose(rejected.delta.numpy(), exact.delta.numpy(), rtol=0, atol=1e-10 * float(exact.delta.abs().max()))
    streamed = unlearn(m, peft, retain, forget, strategy="stream", **kw)  # a forced strategy: the exact J̃, no gate
    assert streamed.plan["curvature_source"]["value"] == "exact" and streamed.info["sketch"] is None


def test_gate_is_skipped_for_small_retain_sets():
    import fastntk.update.tilted as tilted

    m, peft, retain, forget, w0 = _gate_problem()
    small = (retain[0][: tilted.GATE_MIN_SAMPLES - 1], retain[1][: tilted.GATE_MIN_SAMPLES - 1])
    res = unlearn(m, peft, small, forget, trained_with="ce", ridge=0.5, w0=w0, anchor="trained", harm=HarmTolerance(enabled=False))
    assert res.plan["curvature_source"]["value"] == "exact" and "≤ memory_budget" in res.plan["curvature_source"]["reason"]


def test_a_costly_gram_sends_the_step_to_cg_with_the_same_update(monkeypatch):
    """The direct Cholesky is taken only when its float64 Gram is cheap (DIRECT_GRAM_FLOPS); above it the step runs by
    CG (the reason says why) and gives the same update."""
    import fastntk.operators.sketch as SK
    from fastntk.operators.sketch import dense_is_cheap

    assert dense_is_cheap(1000, 500) and not dense_is_cheap(5000, 5000) and not dense_is_cheap(4050, 12165)
    m, peft, retain, forget, w0 = _gate_problem()
    kw = dict(trained_with="ce", ridge=0.5, w0=w0, anchor="trained", curvature_source="exact", rtol=1e-12,
              harm=HarmTolerance(enabled=False))
    direct = unlearn(m, peft, retain, forget, **kw)
    assert direct.plan["solver"]["value"] == "direct"
    monkeypatch.setattr(SK, "DIRECT_GRAM_FLOPS", 1.0)
    cg = unlearn(m, peft, retain, forget, **kw)
    assert cg.plan["solver"]["value"] == "cg" and "DIRECT_GRAM_FLOPS" in cg.plan["solver"]["reason"]
    np.testing.assert_allclose(cg.delta.numpy(), direct.delta.numpy(), rtol=0, atol=1e-8 * float(direct.delta.abs().max()))


@pytest.mark.parametrize("damping", ["lm", "none"])
def test_subsampled_warmup_keeps_the_exact_fixed_point(monkeypatch, damping):
    """NewtonOptions.warmup: steps on a uniform subsample of D_r (its loss scaled by n_r/|S|) first, then on all of D_r:
    the iteration still lands on scipy's minimizer of the whole retain objective; the report says what ran, phase by
    phase, and the objective never increases within a phase."""
    import fastntk.update.tilted as tilted

    monkeypatch.setattr(tilted, "WARMUP_MIN_SAMPLES", 4)
    mdl, peft, X, y, r, f, w0, lam, ref = _linear_ce_problem(4, 6)
    res = unlearn(mdl, peft, (X[r], y[r]), (X[f], y[f]), trained_with="ce", ridge=lam, w0=w0, anchor="retain",
                  newton=NewtonOptions(max_steps=60, rel_decrement=1e-16, stop_on_growth=False, damping=damping, warmup=0.25),
                  harm=HarmTolerance(enabled=False), rtol=1e-12)
    np.testing.assert_allclose(res.w_new.numpy(), ref.x, atol=1e-6)
    nw = res.info["newton"]
    assert nw["warmup"]["used"] and nw["warmup"]["samples"] == 8 and nw["warmup"]["steps"] >= 1
    assert nw["steps"] == nw["warmup"]["steps"] + nw["warmup"]["full_steps"] and nw["warmup"]["full_steps"] >= 1
    phases = [h["phase"] for h in nw["history"]]
    assert phases[0].startswith("warm-up (8 of 30)") and phases[-1] == "all of D_r"
    for ph in set(phases):
        objs = [h["objective_after"] for h in nw["history"] if h["phase"] == ph and "objective_after" in h]
        assert all(b <= a + 1e-9 for a, b in zip(objs, objs[1:]))
    # the warm-up's own minimizer differs from the whole set's: the full steps did move the weights
    assert "on all of D_r, after" in nw["stop_reason"]


def test_warmup_is_skipped_with_its_reason_where_it_would_not_pay():
    """Small D_r (the subsample would exceed half of it), the tilted objective, a fixed step count: no warm-up, and why."""
    mdl, peft, X, y, r, f, w0, lam, _ = _linear_ce_problem(0, 2)
    kw = dict(trained_with="ce", ridge=lam, w0=w0, harm=HarmTolerance(enabled=False), rtol=1e-10)
    default = unlearn(mdl, peft, (X[r], y[r]), (X[f], y[f]), anchor="retain", **kw)  # off by default (measured)
    assert not default.info["newton"]["warmup"]["used"] and "warmup=None" in default.info["newton"]["warmup"]["why"]
    on = NewtonOptions(warmup=0.25)
    small = unlearn(mdl, peft, (X[r], y[r]), (X[f], y[f]), anchor="retain", newton=on, **kw)
    assert not small.info["newton"]["warmup"]["used"] and "more than half" in small.info["newton"]["warmup"]["why"]
    tilt = unlearn(mdl, peft, (X[r], y[r]), (X[f], y[f]), anchor="trained", newton=on, **kw)
    assert not tilt.info["newton"]["warmup"]["used"] and "tilted" in tilt.info["newton"]["warmup"]["why"]
    fixed = unlearn(mdl, peft, (X[r], y[r]), (X[f], y[f]), anchor="retain", newton=NewtonOptions(warmup=0.25, rel_decrement=0.0,
                                                                                                  max_steps=2), **kw)
    assert "fixed number of steps" in fixed.info["newton"]["warmup"]["why"]
    for bad in (1.0, -0.1, True, "half"):
        with pytest.raises(InvalidInputError):
            NewtonOptions(warmup=bad)


def test_network_objective_weight_scales_the_data_term_only():
    """weight a: F = a·Σℓ + ½λ‖w − c‖², ∇F likewise; data_loss stays unscaled."""
    mdl, peft, X, y, r, f, w0, lam, _ = _linear_ce_problem(1, 3)
    w = w0 + 0.1
    one = NetworkObjective(peft, X, y, loss="ce", ridge=lam, center=w0)
    three = NetworkObjective(peft, X, y, loss="ce", ridge=lam, center=w0, weight=3.0)
    v1, g1 = one.value_and_grad(w)
    v3, g3 = three.value_and_grad(w)
    reg = 0.5 * lam * float((w - w0) @ (w - w0))
    np.testing.assert_allclose(v3 - reg, 3 * (v1 - reg), rtol=1e-12)
    np.testing.assert_allclose((g3 - lam * (w - w0)).numpy(), 3 * (g1 - lam * (w - w0)).numpy(), rtol=1e-12)
    assert three.value(w) == pytest.approx(v3, rel=1e-12) and three.data_loss(w) == one.data_loss(w)
    with pytest.raises(InvalidInputError):
        NetworkObjective(peft, X, y, weight=0.0)


def _sharp_linear_head(C=4, sharpness=100.0):
    """A linear head fit perfectly and confidently: labels are its own predictions, weights scaled up (small CE)."""
    m = linear_model(3, C=C)
    peft = NamedPeft(m, ["1.*"])
    X, _ = _data(200, 11, C=C)
    with torch.no_grad():
        y = peft.functional()(peft.vector(), X).argmax(-1)
    return peft, X, y, sharpness * peft.vector().clone()


def test_harm_bound_lets_a_tightly_fit_model_lose_confidence_half_way_to_chance():
    """Scaling every logit by a < 1 keeps each prediction and raises the CE: a forgetting-like loss of confidence.  On a
    tightly fit model the loss can more than double while still far from chance (log C): the check passes it at full
    size with chance_loss = log C, and (loss_chance = 0: the relative bound alone) damps it without; past half way to
    chance it fails either way."""
    import math

    from fastntk.update.guard import loss_bound

    C = 4
    peft, X, y, w = _sharp_linear_head(C)
    obj = NetworkObjective(peft, X, y, loss="ce")
    l0, a0 = obj.data_loss(w)
    l0 /= obj.n
    assert a0 == 1.0 and l0 < 0.1 * math.log(C)
    tol = HarmTolerance()
    bound = loss_bound(l0, tol, math.log(C))
    assert bound == pytest.approx(l0 + 0.5 * (math.log(C) - l0) + tol.loss_abs)
    assert loss_bound(l0, tol, None) == pytest.approx(2 * l0 + tol.loss_abs)

    def loss_at(a):
        return obj.data_loss(a * w)[0] / obj.n

    mid = [a for a in np.linspace(0.95, 0.05, 91) if 2 * l0 + 2e-3 < loss_at(a) < bound - 2e-3]
    assert mid, "no scale lands between doubling and half way to chance"
    a = mid[len(mid) // 2]
    d, chk = check_no_harm(obj, w, (a - 1) * w, tol, chance_loss=math.log(C))
    assert chk.passed and chk.scale == 1.0 and chk.acc_after == 1.0 and chk.loss_bound == pytest.approx(bound)
    assert chk.chance_loss == pytest.approx(math.log(C))
    d, chk = check_no_harm(obj, w, (a - 1) * w, HarmTolerance(loss_chance=0.0), chance_loss=math.log(C))
    assert chk.scale < 1.0  # the relative bound alone halves it
    far = 0.02  # logits 50x flatter: the loss is near log C although every prediction is kept
    assert loss_at(far) > bound
    with pytest.raises(HarmfulUpdateError):
        check_no_harm(obj, w, (far - 1) * w, HarmTolerance(on_harm="raise"), chance_loss=math.log(C))
    for bad in (1.5, -0.1, float("nan"), True):
        with pytest.raises(InvalidInputError, match="loss_chance"):
            HarmTolerance(loss_chance=bad)


def test_damped_update_reports_what_it_left_of_the_forgotten_samples(caplog):
    """forget_figures: the forgotten samples' loss and accuracy before and after the returned update, in the check; a
    damped update says so in the log."""
    import logging

    from fastntk.update.guard import forget_figures

    peft, X, y, w = _sharp_linear_head(4)
    r, f = np.arange(150), np.arange(150, 200)
    obj_r, obj_f = NetworkObjective(peft, X[r], y[r], loss="ce"), NetworkObjective(peft, X[f], y[f], loss="ce")
    grad = obj_r.value_and_grad(w)[1]
    down = -1e3 * grad / grad.norm()  # far along the descent direction: harmful at full size, harmless once damped
    tol = HarmTolerance(loss_rel=0.0, loss_abs=0.0, loss_chance=0.0, acc_drop=1.0, max_halvings=40)
    d, chk = check_no_harm(obj_r, w, down, tol)
    assert chk.scale < 1.0
    with caplog.at_level(logging.WARNING, logger="fastntk"):
        fig = forget_figures(obj_f, w, w + d, chk)
    assert chk.forget is fig and fig["samples"] == 50
    l0, a0 = obj_f.data_loss(w)
    l1, a1 = obj_f.data_loss(w + d)
    assert fig["loss_before"] == pytest.approx(l0 / 50) and fig["loss_after"] == pytest.approx(l1 / 50)
    assert (fig["acc_before"], fig["acc_after"]) == (a0, a1)
    assert any("damped" in rec.getMessage() and "forgotten samples" in rec.getMessage() for rec in caplog.records)


def test_unlearn_records_the_harm_bound_and_the_forget_figures():
    """The CE route's check uses chance_loss = log C and records the forgotten samples' figures (a fresh evaluation)."""
    import math

    m, peft, X, y = _harmful_setup()
    r, f = np.arange(24), np.arange(24, 30)
    w0 = peft.vector().clone()
    res = unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), trained_with="ce", ridge=0.5, w0=w0)
    chk = res.info["harm_check"]
    assert res.info["C"] == 3 and chk["chance_loss"] == pytest.approx(math.log(3)) and math.isfinite(chk["loss_bound"])
    ref = NetworkObjective(peft, X[f], y[f], loss="ce")
    assert chk["forget"]["loss_after"] == pytest.approx(ref.data_loss(res.w_new)[0] / 6, rel=1e-12)
    assert chk["forget"]["acc_before"] == ref.data_loss(w0)[1]


def _sharp_class_request():
    """The sharp linear head (logits ×30) asked to forget class 0, the ridge centred at w0 = 0 (uniform predictions): the
    default per-sample ridge pulls the retained classes' fit back so far that the update fails the accuracy bound."""
    peft, X, y, w = _sharp_linear_head(4, 30.0)
    peft.write(w)
    f, r = (y == 0).nonzero()[:, 0], (y != 0).nonzero()[:, 0]
    return peft.model, peft, X, y, r, f, torch.zeros_like(w)


def test_class_update_failing_the_check_is_re_solved_with_a_smaller_ridge_not_damped():
    """fastntk.update.backoff: a class request whose automatic ridge fails the do-no-harm check is re-solved with λ/2
    (warm start) until it passes: the class is forgotten, the update returned at full size, every try recorded.  Damping
    instead (ridge_backoff=0) keeps most of the class; a ridge the caller gave is damped, not changed."""
    m, peft, X, y, r, f, w0 = _sharp_class_request()
    w_t = peft.vector().clone()
    res = unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), trained_with="ce", w0=w0)
    bo, chk = res.info["ridge_backoff"], res.info["harm_check"]
    assert res.info["anchor"] == "retain" and bo["used"] and len(bo["tries"]) >= 2
    assert not bo["tries"][0]["passed"] and bo["tries"][-1]["passed"] and "passes" in bo["why"]
    lam0 = bo["tries"][0]["ridge"]
    assert lam0 == pytest.approx(0.015 * r.numel())  # the per-sample rule chose it
    assert [t["ridge"] for t in bo["tries"]] == pytest.approx([lam0 * 0.5 ** k for k in range(len(bo["tries"]))])
    assert res.info["ridge"] == bo["tries"][-1]["ridge"] and res.plan["ridge_backoff"]["value"] == len(bo["tries"]) - 1
    assert "re-solved" in res.reasons["ridge"] and res.info["steps"] == sum(t["steps"] for t in bo["tries"])
    assert chk["scale"] == 1.0 and chk["forget"]["acc_after"] == 0.0  # full size, the class forgotten
    # the back-off's test is stricter than the check's: a solve within 5 points of the original's retain accuracy (the
    # check passes it) but more than 2 points down is re-solved (the original's retain accuracy is 1: no sampling slack)
    assert all(t["acc_before"] == 1.0 and t["acc_floor"] == pytest.approx(0.98) for t in bo["tries"])
    assert any(0.95 <= t["acc"] < 0.98 and not t["passed"] for t in bo["tries"][:-1])
    assert bo["tries"][-1]["acc"] >= 0.98
    obj = NetworkObjective(peft, X[r], y[r], loss="ce")  # the recorded figures are the returned weights' own
    assert bo["tries"][-1]["loss"] == pytest.approx(obj.data_loss(res.w_new)[0] / r.numel(), rel=1e-12)
    assert torch.equal(peft.vector(), w_t) and torch.equal(res.w_old, w_t)  # not inplace: the model is unchanged

    damped = unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), trained_with="ce", w0=w0, harm=HarmTolerance(ridge_backoff=0))
    assert not damped.info["ridge_backoff"]["used"] and "ridge_backoff = 0" in damped.info["ridge_backoff"]["why"]
    assert damped.info["harm_check"]["scale"] < 1.0 and damped.info["harm_check"]["forget"]["acc_after"] > 0.5
    given = unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), trained_with="ce", w0=w0, ridge=lam0)
    assert not given.info["ridge_backoff"]["used"] and "given" in given.info["ridge_backoff"]["why"]
    assert given.info["ridge"] == lam0 and given.info["harm_check"]["scale"] < 1.0


def test_prepared_ce_unlearner_re_solves_with_a_smaller_ridge_too():
    from fastntk.unlearn import Unlearner

    m, peft, X, y, r, f, w0 = _sharp_class_request()
    req = Unlearner(m, peft, (X, y), trained_with="ce", w0=w0).forget(f.numpy())
    bo = req.info["ridge_backoff"]
    assert req.info["anchor"] == "retain" and bo["used"] and bo["tries"][-1]["passed"]
    assert req.info["harm_check"]["scale"] == 1.0 and req.info["harm_check"]["forget"]["acc_after"] == 0.0
    assert req.info["ridge"] == bo["tries"][-1]["ridge"] < bo["tries"][0]["ridge"] and "re-solved" in req.reasons["ridge"]


def test_warm_start_lands_on_the_minimizer_of_the_new_ridge():
    """tilted_newton(start=Δ): the steps from w_t + Δ reach the plain objective's minimizer (scipy) for the ridge given;
    start= is refused for the tilted objective and for a ridge rule."""
    from fastntk.update.solve import SolveContext
    from fastntk.update.tilted import JacobianOptions, tilted_newton

    m, peft, X, y, r, f, w0, lam, ref = _linear_ce_problem(1, 3, lam=0.3)
    w_t = peft.vector().clone()
    newton = NewtonOptions(max_steps=30, rel_decrement=1e-16, stop_on_growth=False)
    from fastntk.update.options import SolverOptions

    ctx = SolveContext.from_options(SolverOptions(), rtol=1e-12)
    start = torch.as_tensor(ref.x) - w_t + 0.3 * torch.randn(peft.p, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    kw = dict(w_trained=w_t, w0=w0, loss="ce", newton=newton, jac=JacobianOptions(curvature_source="exact"), ctx=ctx)
    res = tilted_newton(peft, (X[r], y[r]), (X[f], y[f]), ridge=lam, tilt=False, start=start, **kw)
    np.testing.assert_allclose(res.w.numpy(), ref.x, atol=1e-6)
    assert torch.equal(res.w, w_t + res.delta) and res.newton.history[0]["objective_before"] < float("inf")
    for bad in (dict(ridge=lam, tilt=True), dict(ridge="auto", tilt=False)):
        with pytest.raises(InvalidInputError, match="start="):
            tilted_newton(peft, (X[r], y[r]), (X[f], y[f]), start=start, **bad, **kw)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3"])
def test_ridge_backoff_is_validated(bad):
    with pytest.raises(InvalidInputError, match="ridge_backoff"):
        HarmTolerance(ridge_backoff=bad)
    if not isinstance(bad, (bool, str)) and bad < 0:
        with pytest.raises(InvalidInputError, match="backoff_acc_drop"):
            HarmTolerance(backoff_acc_drop=bad)


def test_the_first_step_reuses_the_half_sketch_estimates_solve(monkeypatch):
    """With a kept sketch the first step's system is the one the half-sketch estimate already solved with the whole
    sketch: the step takes that solve (recorded with its true residual) and equals the step CG computes on the same
    sketch (solver='cg', which is respected: no reuse of a Cholesky solve)."""
    import fastntk.update.tilted as tilted

    m, peft, retain, forget, w0 = _gate_problem()
    monkeypatch.setattr(tilted, "GATE_MAX_ERROR", 10.0)
    kw = dict(trained_with="ce", ridge=0.5, w0=w0, anchor="trained", rtol=1e-12, harm=HarmTolerance(enabled=False))
    reused = unlearn(m, peft, retain, forget, **kw)
    assert reused.plan["curvature_source"]["value"] == "sketch"
    assert reused.plan["solver"]["value"] == "direct" and "the half-sketch error estimate made" in reused.plan["solver"]["reason"]
    rec = reused.solves["step 1: (G_r(w) + λI) s = −∇F_r(w)"]
    assert rec.converged and rec.residual_norm <= 1e-12 * rec.rhs_norm
    cg = unlearn(m, peft, retain, forget, solver="cg", **kw)
    assert "half-sketch" not in cg.plan["solver"]["reason"] and cg.plan["solver"]["value"] == "cg"
    np.testing.assert_allclose(reused.delta.numpy(), cg.delta.numpy(), rtol=0, atol=1e-9 * float(cg.delta.abs().max()))


@pytest.mark.parametrize("anchor", ["trained", "retain"])
def test_one_tilted_step_is_scored_on_the_check_sample_and_gives_the_same_update(anchor):
    """A random request (one tilted step) scores its line search on the do-no-harm check's retain sample S when S is
    smaller than D_r: the data term and tilt on S × n_r/|S| keep ∇F_S(w_t) = −g_f, so the step (its direction, here
    accepted at t = 1 both ways) equals the one scored on all of D_r; the plan says which ran.  The plain objective of a
    class request (several steps, each needing ∇F_r on all of D_r) never takes the sample."""
    m, peft, retain, forget, w0 = _gate_problem()
    kw = dict(trained_with="ce", ridge=0.5, w0=w0, anchor=anchor, rtol=1e-12, curvature_source="exact")
    full = unlearn(m, peft, retain, forget, harm=HarmTolerance(samples=10_000), **kw)
    part = unlearn(m, peft, retain, forget, harm=HarmTolerance(samples=64), **kw)
    assert full.plan["line_search_sample"]["value"] == "all"
    if anchor == "retain":
        assert part.plan["line_search_sample"]["value"] == "all" and "plain retain objective" in part.plan["line_search_sample"]["reason"]
        return
    assert part.plan["line_search_sample"]["value"] == 64 and "64 of 270" in part.plan["line_search_sample"]["reason"]
    assert full.info["steps"] == part.info["steps"] == 1
    assert full.info["newton"]["history"][0]["t"] == part.info["newton"]["history"][0]["t"] == 1.0
    np.testing.assert_allclose(part.delta.numpy(), full.delta.numpy(), rtol=0, atol=1e-10 * float(full.delta.abs().max()))
    # the check scored the same weights on its sample: its figures are the line search's (memo), not new ones
    assert part.info["harm_check"]["samples"] == 64 and part.info["harm_check"]["passed"]


def test_the_sampled_tilted_objective_has_the_forget_gradient_at_the_trained_weights():
    """F_S(w) = (n_r/|S|)·Σ_S ℓ_i(w) + ½λ‖w − c‖² − b_Sᵀ(w − w_t), b_S = (n_r/|S|)·∇Σ_S ℓ_i(w_t) + g_f + λ(w_t − c):
    its gradient at w_t is −g_f whatever S is (the identity that makes the sampled line search score the same step),
    and its value change along a step is the sample's unbiased estimate of F_r's (checked exactly for S = D_r)."""
    import fastntk.update.tilted as tilted
    from fastntk.update.solve import SolveContext

    m, peft, (X_r, y_r), (X_f, y_f), w0 = _gate_problem()
    wt = peft.vector().clone()
    idx = np.sort(np.random.default_rng(0).choice(X_r.shape[0], 50, replace=False))
    memo = {}
    res = tilted.tilted_newton(peft, (X_r, y_r), (X_f, y_f), w_trained=wt, w0=w0, loss="ce", ridge=0.5,
                               newton=NewtonOptions(max_steps=1), jac=tilted.JacobianOptions(curvature_source="exact"),
                               ctx=SolveContext(rtol=1e-12), sample=(idx, memo))
    assert res.line_search.startswith("the step's line search on the do-no-harm check's retain sample S (50 of 270)")
    g_f = NetworkObjective(peft, X_f, y_f, loss="ce").value_and_grad(wt)[1]
    n_r = X_r.shape[0]
    S = NetworkObjective(peft, X_r[idx], y_r[idx], loss="ce", weight=n_r / 50)
    LS, gS = S.value_and_grad(wt)
    F_S = NetworkObjective(peft, X_r[idx], y_r[idx], loss="ce", weight=n_r / 50, ridge=0.5, center=w0,
                           tilt=gS + g_f + 0.5 * (wt - w0), tilt_ref=wt)
    torch.testing.assert_close(F_S.value_and_grad(wt)[1], -g_f, rtol=1e-10, atol=1e-12)
    # the iteration evaluated F_S (on the sample's memo) at w_t and at w_t + Δ
    assert len(memo) == 2
    F0, F1 = F_S.value(wt), F_S.value(res.w)
    h = res.newton.history[0]
    assert h["objective_before"] == pytest.approx(F0, rel=1e-12) and h["objective_after"] == pytest.approx(F1, rel=1e-12)


def test_a_rejected_gated_sketch_is_grown_before_the_exact_curvature(monkeypatch):
    """Above GATE_MAX_ERROR the gated sketch is first grown by m·((e/GATE_MAX_ERROR)²·1.2 − 1) more draws (error ∝
    1/√draws) when that stays under GATE_GROW_MAX of the exact J̃'s rows; it is kept if its new estimate passes, else the
    exact J̃ runs (the update then equals the exact one). Too large a growth goes to the exact J̃ at once."""
    import fastntk.update.tilted as tilted

    m, peft, retain, forget, w0 = _gate_problem()
    kw = dict(trained_with="ce", ridge=0.5, w0=w0, anchor="trained", rtol=1e-12, harm=HarmTolerance(enabled=False))
    exact = unlearn(m, peft, retain, forget, curvature_source="exact", **kw)
    monkeypatch.setattr(tilted, "GATE_MAX_ERROR", 10.0)
    e1 = unlearn(m, peft, retain, forget, **kw).info["sketch"]["estimated_relative_error"]
    monkeypatch.setattr(tilted, "GATE_MAX_ERROR", e1 / 1.05)
    res = unlearn(m, peft, retain, forget, **kw)
    reason = res.plan["curvature_source"]["reason"]
    add = int(np.ceil(136 * 1.05 ** 2 * 1.2)) - 136
    add += add % 2
    assert f"{add} more" in reason or f"{add} more" in res.info["sketch"]["gate"]
    if res.plan["curvature_source"]["value"] == "sketch":  # kept: the grown sketch ran, its estimate under the bar
        assert res.info["sketch"]["gate"].startswith("gated sketch grown") and ": kept" in res.info["sketch"]["gate"]
        assert f"grown: 136 + {add} draws" in reason and res.info["sketch"]["estimated_relative_error"] <= e1 / 1.05
    else:
        assert "still >" in reason
        np.testing.assert_allclose(res.delta.numpy(), exact.delta.numpy(), rtol=0, atol=1e-10 * float(exact.delta.abs().max()))
    monkeypatch.setattr(tilted, "GATE_GROW_MAX", 1e-3)
    res = unlearn(m, peft, retain, forget, **kw)
    assert res.plan["curvature_source"]["value"] == "exact" and "grown" not in res.plan["curvature_source"]["reason"]


def test_where_the_exact_curvature_does_not_fit_the_gated_sketch_grows_within_the_memory_budget(monkeypatch):
    """The exact J̃ over memory_budget: the tilted route's gated sketch starts on min(n_r/2, GATE_START_MAX, cap) draws and
    grows by its estimate up to cap = half of the draws that fit the budget; with nothing to fall back to, the largest
    sketch is kept and says so.  A sketch that already passes is kept at its start."""
    import fastntk.update.tilted as tilted

    m, peft, retain, forget, w0 = _gate_problem()
    n_r, p = retain[0].shape[0], peft.p
    budget = 5000 * p  # bytes: k = 2 rows of 312 draws fit (float64), the exact J̃'s 270·3 rows do not
    kw = dict(trained_with="ce", ridge=0.5, w0=w0, anchor="trained", rtol=1e-12, harm=HarmTolerance(enabled=False),
              memory_budget=budget)
    assert tilted._scale_gate(tilted.JacobianOptions(memory_budget=budget), n_r, p, torch.float64) == (136, 156)
    monkeypatch.setattr(tilted, "GATE_MAX_ERROR", 10.0)
    easy = unlearn(m, peft, retain, forget, **kw)
    reason = easy.plan["curvature_source"]["reason"]
    assert easy.plan["curvature_source"]["value"] == "sketch" and "grown:" not in reason and "m=136 of n=270" in reason
    assert "at most to 156 draws" in reason and easy.info["sketch"]["gate"].startswith("gated sketch accepted")
    monkeypatch.setattr(tilted, "GATE_MAX_ERROR", 1e-6)
    hard = unlearn(m, peft, retain, forget, **kw)
    reason = hard.plan["curvature_source"]["reason"]
    assert hard.plan["curvature_source"]["value"] == "sketch" and "grown: 136 + 20 draws" in reason
    assert "kept: the exact J̃ does not fit memory_budget" in reason
    assert hard.info["sketch"]["estimated_relative_error"] > 1e-6
    monkeypatch.setattr(tilted, "GATE_START_MAX", 10_000)
    forced = unlearn(m, peft, retain, forget, sketch_m=100, **kw)  # a forced size: no gate
    assert "gated" not in forced.plan["curvature_source"]["reason"] and "m=100 of n=270" in forced.plan["curvature_source"]["reason"]


def test_which_line_search_trials_carry_a_gradient_changes_the_cost_not_the_steps(monkeypatch):
    """The plain retain objective's first full step is scored by value alone and a trial after a rejected full step with
    its gradient (reused by the next step): bit-identical iterates to scoring every trial by value, with fewer passes
    whenever a step is cut (the first full step of this class request is rejected)."""
    import fastntk.update.newton as NW
    import fastntk.update.tilted as TT

    m, peft, retain, forget, w0 = _gate_problem()
    X_r, y_r = retain
    keep = y_r != 0  # forget class 0: its retain samples leave with it
    retain = (X_r[keep], y_r[keep])
    forget = (torch.cat([forget[0], X_r[~keep]]), torch.cat([forget[1], y_r[~keep]]))
    calls = {"value": 0, "value_and_grad": 0}
    ov, ovg = NetworkObjective.value, NetworkObjective.value_and_grad

    def value(self, w):
        calls["value"] += self.memo is None or self.memo.get(self._key(w)) is None
        return ov(self, w)

    def value_and_grad(self, w):
        calls["value_and_grad"] += 1
        return ovg(self, w)

    monkeypatch.setattr(NetworkObjective, "value", value)
    monkeypatch.setattr(NetworkObjective, "value_and_grad", value_and_grad)
    kw = dict(trained_with="ce", ridge=0.1, w0=w0, anchor="retain", rtol=1e-12, harm=HarmTolerance(enabled=False),
              curvature_source="exact")
    now = unlearn(m, peft, retain, forget, **kw)
    now_calls = dict(calls)
    assert now.info["newton"]["history"][0]["t"] < 1  # the case the change is for
    orig_armijo, orig_gn = NW.armijo, TT.gauss_newton
    monkeypatch.setattr(NW, "armijo", lambda *a, **k: orig_armijo(*a, **dict(k, grad_retry=False)))
    monkeypatch.setattr(TT, "gauss_newton", lambda *a, **k: orig_gn(*a, **dict(k, first_by_value=False)))
    calls.update(value=0, value_and_grad=0)
    before = unlearn(m, peft, retain, forget, **kw)
    assert torch.equal(now.delta, before.delta) and now.info["steps"] == before.info["steps"]
    assert [h["t"] for h in now.info["newton"]["history"]] == [h["t"] for h in before.info["newton"]["history"]]
    assert now_calls["value"] + now_calls["value_and_grad"] < calls["value"] + calls["value_and_grad"]
    assert now_calls["value_and_grad"] <= calls["value_and_grad"]


def test_growing_by_more_draws_than_the_retain_set_has_is_capped(monkeypatch):
    """A growth that would need n_r or more new draws takes n_r − 1 (even) — a sketch of n_r draws would be one of all
    samples, which cannot be merged — and the request completes (the exact J̃ follows if the estimate still fails)."""
    import fastntk.update.tilted as tilted

    m, peft, retain, forget, w0 = _gate_problem()
    monkeypatch.setattr(tilted, "GATE_MAX_ERROR", 1e-3)
    monkeypatch.setattr(tilted, "GATE_GROW_MAX", 10.0)
    res = unlearn(m, peft, retain, forget, trained_with="ce", ridge=0.5, w0=w0, anchor="trained", rtol=1e-12,
                  harm=HarmTolerance(enabled=False))
    assert "so 268 more" in res.plan["curvature_source"]["reason"] and res.plan["curvature_source"]["value"] == "exact"


def test_a_sketch_size_the_caller_fixed_is_not_grown(monkeypatch):
    """sketch_m= given: where the exact J̃ fits, a failing estimate sends the request to the exact J̃ without growing."""
    import fastntk.update.tilted as tilted

    m, peft, retain, forget, w0 = _gate_problem()
    monkeypatch.setattr(tilted, "GATE_MAX_ERROR", 1e-6)
    res = unlearn(m, peft, retain, forget, trained_with="ce", ridge=0.5, w0=w0, anchor="trained", rtol=1e-12,
                  harm=HarmTolerance(enabled=False), sketch_m=100)
    reason = res.plan["curvature_source"]["reason"]
    assert res.plan["curvature_source"]["value"] == "exact" and "rejected" in reason and "grown" not in reason


def _bn_cnn_ce_problem(seed=0, n=24, lam=0.4):
    """A tiny BN CNN (smooth activations) with its head in the PEFT set, moved off w0, and a class-like split."""
    m = tiny_bn_cnn(seed)
    peft = BatchNormPeft(m, include_head=True)
    X, y = _data(n, seed + 1, (3, 8, 8))
    w0 = peft.vector().clone()
    with torch.no_grad():
        peft.write(w0 + 0.05 * torch.randn(peft.p, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 3)))
    r, f = np.arange(n - 6), np.arange(n - 6, n)
    return m, peft, X, y, r, f, w0, lam


def test_head_stage_minimizes_the_objective_over_the_head_block_only():
    """head_stage: the objective's gradient on the head block vanishes at the returned weights (autograd through the whole
    network), every other coordinate is unchanged, the objective fell, and the head block's Newton decrement at the start
    equals gᵀ(H_hh + λI)⁻¹g from the dense Hessian of the block (torch.func.hessian)."""
    from fastntk.update.headstart import head_block, head_stage

    m, peft, X, y, r, f, w0, lam = _bn_cnn_ce_problem(1)
    wt = peft.vector().clone()
    memo = {}
    F = NetworkObjective(peft, X[r], y[r], loss="ce", ridge=lam, center=w0, memo=memo)
    block, why = head_block(peft)
    assert block is not None and block.C == 3 and block.d == 5 and block.b_range is not None, why
    w1, info = head_stage(F, wt, block)
    # its one forward pass left the data loss and accuracy at w_t in the memo, as a pass of the objective would
    assert len(memo) == 1
    fresh = NetworkObjective(peft, X[r], y[r], loss="ce").data_loss(wt)
    assert F.data_loss(wt)[0] == pytest.approx(fresh[0], rel=1e-12) and F.data_loss(wt)[1] == fresh[1]
    idx = block.indices()
    other = torch.ones(peft.p, dtype=torch.bool)
    other[idx] = False
    assert torch.equal(w1[other], wt[other]) and info["used"] and info["converged"]
    F0, g0 = F.value_and_grad(wt)
    F1, g1 = F.value_and_grad(w1)
    assert F1 < F0 and abs((F0 - F1) - info["decrease"]) <= 1e-8 * abs(F0)
    assert float(g1[idx].abs().max()) <= 1e-5 * float(g0[idx].abs().max())
    f_ = peft.functional()

    def block_value(h):
        w = wt.clone()
        w[idx] = h
        return torch.nn.functional.cross_entropy(f_(w, X[r]), y[r], reduction="sum") + 0.5 * lam * ((w - w0) ** 2).sum()

    H = torch.func.hessian(block_value)(wt[idx].clone())
    gh = g0[idx]
    dec = float(gh @ torch.linalg.solve(H, gh))
    assert info["head_decrement"] == pytest.approx(dec, rel=1e-8)


def test_head_start_then_one_full_step_matches_dense_reference():
    """NewtonOptions(head_start=True): the steps start from the head stage's weights w₁ (the same objective: its
    minimizer is unchanged), and the first full step is the Gauss-Newton step there, (G_r(w₁) + λI)⁻¹∇F_r(w₁), with G
    from jacrev + the softmax Hessian; the report says what ran and the caller's model is untouched."""
    from fastntk.update.headstart import head_block, head_stage

    m, peft, X, y, r, f, w0, lam = _bn_cnn_ce_problem(2)
    wt = peft.vector().clone()
    res = unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), trained_with="ce", ridge=lam, w0=w0, anchor="retain",
                  curvature_source="exact", newton=NewtonOptions(max_steps=1, line_search=False, head_start=True),
                  harm=HarmTolerance(enabled=False), rtol=1e-12)
    F = NetworkObjective(peft, X[r], y[r], loss="ce", ridge=lam, center=w0)
    w1, _ = head_stage(F, wt, head_block(peft)[0])
    G = _dense_ce_ggn(peft, X[r], w1).numpy()
    _, g = _ce_objective_np(peft, X[r], y[r], lam, w0)(w1.numpy())
    expect = w1.numpy() - np.linalg.solve(G + lam * np.eye(peft.p), g)
    np.testing.assert_allclose(res.w_new.numpy(), expect, rtol=1e-8, atol=1e-10)
    head = res.info["newton"]["head"]
    assert head["used"] and head["iterations"] >= 1 and head["decrease"] > 0 and head["converged"]
    assert "head stage" in res.timings
    assert torch.equal(peft.vector(), wt)  # inplace=False: the caller's model is untouched
    # the stopping rule's reference is the head block's decrement at w_t and the head stage's decrease
    assert res.info["newton"]["dec0"] == pytest.approx(head["head_decrement"]) and res.info["newton"]["drop0"] == head["decrease"]


def test_head_start_is_skipped_with_its_reason():
    """Off by default; the tilted objective; a head outside the PEFT set; a model whose output is not its head's."""
    from fastntk.update.headstart import head_block, head_stage

    m, peft, X, y, r, f, w0, lam = _bn_cnn_ce_problem(3)
    kw = dict(trained_with="ce", ridge=lam, w0=w0, harm=HarmTolerance(enabled=False), curvature_source="exact")
    default = unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), anchor="retain", newton=NewtonOptions(max_steps=2), **kw)
    assert not default.info["newton"]["head"]["used"] and "head_start=False" in default.info["newton"]["head"]["why"]
    on = NewtonOptions(max_steps=2, head_start=True)
    tilt = unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), anchor="trained", newton=on, **kw)
    assert not tilt.info["newton"]["head"]["used"] and "tilted" in tilt.info["newton"]["head"]["why"]
    bn_only = BatchNormPeft(m, include_head=False)
    assert head_block(bn_only)[0] is None and "not in the PEFT set" in head_block(bn_only)[1]

    class Scaled(torch.nn.Module):  # something follows the head: its output is not the model's
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return 2.0 * self.inner(x)

    sm = Scaled(m)
    speft = BatchNormPeft(sm, include_head=True)
    block, _ = head_block(speft)
    F = NetworkObjective(speft, X[r], y[r], loss="ce", ridge=lam, center=speft.vector().clone())
    w1, info = head_stage(F, speft.vector().clone(), block)
    assert w1 is None and not info["used"] and "not its head's output" in info["why"]
    with pytest.raises(InvalidInputError):
        NewtonOptions(head_start="yes")


def test_auto_preconditioner_nystrom_on_cached_rows_gives_the_same_step():
    """preconditioner='auto' (default): the CE route's CG solve on a cached curvature is Nyström-preconditioned (built
    from the rows; the solve record says pcg, the plan and the solver reason say so) and gives the unpreconditioned
    step to the solve tolerance; preconditioner='none' runs plain CG."""
    m, peft, X, y, r, f, w0, lam = _bn_cnn_ce_problem(4, n=30)
    kw = dict(trained_with="ce", ridge=lam, w0=w0, anchor="trained", curvature_source="exact", solver="cg",
              harm=HarmTolerance(enabled=False), rtol=1e-11)
    auto = unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), **kw)
    plain = unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), preconditioner="none", **kw)
    assert auto.plan["preconditioner"]["value"] == "auto" and "Nyström" in auto.plan["preconditioner"]["reason"]
    assert any(rec.method == "pcg" for rec in auto.records.values())
    assert not any(rec.method == "pcg" for rec in plain.records.values())
    assert "Nyström" in auto.reasons["solver"] and "Nyström" not in plain.reasons["solver"]
    np.testing.assert_allclose(auto.delta.numpy(), plain.delta.numpy(), rtol=0, atol=1e-8 * float(plain.delta.abs().max()))
