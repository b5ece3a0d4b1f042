"""Truth tests (docs/theory.md): w_trained + Δ equals the ridge fit on D_r, for every form and strategy."""
import hashlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from fastntk.errors import (
    ConvergenceError,
    DataError,
    ForgetSetError,
    InvalidInputError,
    ModelStateError,
    NumericalError,
    PeftError,
    ShapeError,
)
from fastntk.operators import StreamingJacobian
from fastntk.peft import BatchNormPeft, NamedPeft
from fastntk.unlearn import Unlearner, unlearn, unlearning
from tests.conftest import linear_model, tiny_bn_cnn


class LinearizedBNCNN(torch.nn.Module):
    """The linearization of a small BN CNN in its BN+head params: f̄(x) + J(x)(w − w̄)."""

    def __init__(self, seed=0):
        super().__init__()
        base = tiny_bn_cnn(seed)
        self.peft0 = BatchNormPeft(base, include_head=True)
        self.f = self.peft0.functional()
        self.w_bar = self.peft0.vector().clone()
        self.w = torch.nn.Parameter(self.w_bar.clone())

    def forward(self, x):
        out, jv = torch.func.jvp(lambda w: self.f(w, x), (self.w_bar,), (self.w - self.w_bar,))
        return out + jv


def ridge_fit(peft, X, y, w_bar, lam, C, scale=1.0):
    """Dense reference: w̄ + (JᵀJ + λI)⁻¹ Jᵀ z with numpy.linalg.solve."""
    src = StreamingJacobian(peft, X, w=w_bar)
    J = src.dense().numpy()
    z = (torch.nn.functional.one_hot(y, C).double() * scale).reshape(-1).numpy() - src.outputs().reshape(-1).numpy()
    return w_bar + torch.from_numpy(np.linalg.solve(J.T @ J + lam * np.eye(J.shape[1]), J.T @ z))


def make_problem(kind, n, seed, C=3):
    g = torch.Generator().manual_seed(seed)
    if kind == "linear":
        m = linear_model(seed, C=C)
        peft = NamedPeft(m, ["1.*"])
        X = torch.randn(n, 12, dtype=torch.float64, generator=g)
    else:
        m = LinearizedBNCNN(seed).double().eval()
        peft = NamedPeft(m, ["w"])
        X = torch.randn(n, 3, 8, 8, dtype=torch.float64, generator=g)
    y = torch.randint(0, C, (n,), generator=g)
    return m, peft, X, y


def forget_split(n, y, mode, frac, seed):
    rng = np.random.default_rng(seed)
    if mode == "class":
        f = np.flatnonzero(y.numpy() == int(y[0]))
    else:
        k = max(1, min(n // 2, int(round(frac * n))))
        f = np.sort(rng.choice(n, size=k, replace=False))
    r = np.setdiff1d(np.arange(n), f)
    return r, f


def rel_err(w, w_ref, w_D):
    return float((w - w_ref).norm() / max(float((w_ref - w_D).norm()), 1e-300))


@pytest.mark.slow
@settings(deadline=None, max_examples=10, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["linear", "cnn"]),
    n=st.integers(6, 16),
    seed=st.integers(0, 10_000),
    lam=st.floats(1e-2, 10.0),
    mode=st.sampled_from(["random", "class"]),
    frac=st.floats(0.01, 0.5),
)
def test_truth_every_form_equals_retain_fit(kind, n, seed, lam, mode, frac):
    m, peft, X, y = make_problem(kind, n, seed)
    r, f = forget_split(n, y, mode, frac, seed)
    if r.size == 0:
        return
    w0 = peft.vector().clone()
    wD = ridge_fit(peft, X, y, w0, lam, 3)
    wR = ridge_fit(peft, X[r], y[r], w0, lam, 3)
    peft.write(wD)
    for form in ("dual", "primal", "woodbury", "dense"):
        for strategy in ("stream", "cached"):
            if form == "dual" and strategy == "stream" and kind == "cnn":
                continue  # nested CG over a streamed jvp-model: minutes; covered by the linear model and by cached
            for solver in (("cg", "direct") if (form == "primal" and strategy == "cached") else ("auto",)):
                res = unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), trained_with="linearized-mse", ridge=lam, w0=w0, form=form, strategy=strategy,
                              solver=solver, rtol=1e-12)
                assert rel_err(res.w_new, wR, wD) <= 1e-8, (form, strategy, solver)
                assert res.form == form and res.strategy == strategy
    # the retain-gradient Newton step lands on the retain fit from ANY start (here: w0)
    peft.write(w0 + 0.1)
    for strategy in ("stream", "cached"):
        res = unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), trained_with="linearized-mse", ridge=lam, w0=w0, form="primal", anchor="retain",
                      strategy=strategy, rtol=1e-12)
        assert rel_err(res.w_new, wR, wD) <= 1e-8
    peft.write(wD)
    # the model itself was not modified (inplace=False)
    assert torch.equal(peft.vector(), wD)


@pytest.mark.parametrize("strategy", ["stream", "cached"])
def test_sequential_requests_equal_one_combined_request(strategy):
    n, lam = 30, 0.5
    m, peft, X, y = make_problem("cnn", n, 3)
    w0 = peft.vector().clone()
    wD = ridge_fit(peft, X, y, w0, lam, 3)
    peft.write(wD)
    u = Unlearner(m, peft, (X, y), trained_with="linearized-mse", ridge=lam, w0=w0, strategy=strategy, rtol=1e-12).prepare()
    reqs = [[1, 7], [3], [10, 11, 12, 20], [25]]
    for q in reqs:
        u.forget(q)
    allf = np.sort(np.concatenate(reqs))
    r = np.setdiff1d(np.arange(n), allf)
    wR = ridge_fit(peft, X[r], y[r], w0, lam, 3)
    assert rel_err(u.w, wR, wD) <= 1e-8
    one = Unlearner(m, peft, (X, y), trained_with="linearized-mse", ridge=lam, w0=w0, strategy=strategy).prepare()
    one.forget(allf)
    assert rel_err(u.w, one.w, wD) <= 1e-8
    assert torch.equal(peft.vector(), wD)  # nothing written without apply()
    u.apply()
    assert torch.equal(peft.vector(), u.w)
    np.testing.assert_array_equal(u.retained, r)


def test_zero_influence_gives_zero_delta():
    """Forget samples whose Jacobian rows vanish (all-zero inputs into a bias-free head feature) -> Δ = 0."""
    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3, bias=False)).double().eval()
    peft = NamedPeft(m, ["1.weight"])
    g = torch.Generator().manual_seed(0)
    X = torch.randn(10, 4, dtype=torch.float64, generator=g)
    X[[2, 5]] = 0.0
    y = torch.randint(0, 3, (10,), generator=g)
    w0 = peft.vector().clone()
    lam = 0.3
    wD = ridge_fit(peft, X, y, w0, lam, 3)
    peft.write(wD)
    r = np.setdiff1d(np.arange(10), [2, 5])
    for form in ("dual", "primal", "woodbury"):
        res = unlearn(m, peft, (X[r], y[r]), (X[[2, 5]], y[[2, 5]]), trained_with="linearized-mse", ridge=lam, w0=w0, form=form, rtol=1e-12,
                      check_overlap=False)  # two all-zero inputs: identical on purpose
        assert float(res.delta.abs().max()) <= 1e-10


def test_auto_form_choice_and_reasons():
    m, peft, X, y = make_problem("linear", 20, 0)
    w0 = peft.vector().clone()
    r, f = np.arange(15), np.arange(15, 20)
    res = unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), trained_with="linearized-mse", ridge=0.1, w0=w0)
    # J cached and small -> direct Cholesky Newton step, in the kernel space since p = 63 > n_r·C = 45
    assert res.form == "primal" and "direct" in res.reasons["form"] and "kernel" in res.reasons["form"]
    res = unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), trained_with="linearized-mse", ridge=0.1, w0=w0, strategy="stream")
    # streamed, p = 63 > n_r·C = 45 -> dual
    assert res.form == "dual" and "kernel space" in res.reasons["form"]
    m2, peft2, X2, y2 = make_problem("linear", 60, 0)
    res = unlearn(m2, peft2, (X2[:50], y2[:50]), (X2[50:], y2[50:]), trained_with="linearized-mse", ridge=0.1, w0=peft2.vector(), solver="cg")
    assert res.form == "primal" and res.space == "primal"
    # cached J, n_f·C = 30 ≤ p = 63 ≤ n_r·C = 150 -> one factor of H = G_D + λI and a forget-space system
    res = unlearn(m2, peft2, (X2[:50], y2[:50]), (X2[50:], y2[50:]), trained_with="linearized-mse", ridge=0.1, w0=peft2.vector())
    assert res.form == "woodbury" and "forget-space" in res.reasons["form"]
    # float32: the dual form's inner solves would need 1e-6, below what float32 CG certifies -> primal
    m32 = m.float()
    res = unlearn(m32, NamedPeft(m32, ["1.*"]), (X[r].float(), y[r]), (X[f].float(), y[f]), trained_with="linearized-mse", ridge=0.1, w0=w0.float(), strategy="stream")
    assert res.form == "primal" and "float32" in res.reasons["form"]


def test_scale_options_and_inplace():
    m, peft, X, y = make_problem("linear", 20, 1)
    w0 = peft.vector().clone()
    wD = ridge_fit(peft, X, y, w0, 0.2, 3)
    peft.write(wD + 0.01)  # not exactly converged
    r, f = np.arange(16), np.arange(16, 20)
    base = unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), trained_with="linearized-mse", ridge=0.2, w0=w0, form="primal", rtol=1e-10)
    half = unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), trained_with="linearized-mse", ridge=0.2, w0=w0, form="primal", scale=0.5, rtol=1e-10)
    torch.testing.assert_close(half.w_new, base.w_old + 0.5 * base.delta)
    tr = unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), trained_with="linearized-mse", ridge=0.2, w0=w0, form="primal", scale="trapezium", rtol=1e-10)
    assert np.isfinite(tr.scale) and tr.scale > 0 and "trapezium" in tr.reasons["scale"]
    before = peft.vector().clone()
    res = unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), trained_with="linearized-mse", ridge=0.2, w0=w0, inplace=True, form="primal", rtol=1e-10)
    assert torch.equal(peft.vector(), res.w_new) and not torch.equal(before, res.w_new)


def test_mean_ridge_convention_is_close_for_large_n():
    m, peft, X, y = make_problem("linear", 40, 2)
    w0 = peft.vector().clone()
    r, f = np.arange(36), np.arange(36, 40)
    lam = 0.01
    wD = ridge_fit(peft, X, y, w0, lam * 40, 3)
    peft.write(wD)
    res = unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), trained_with="linearized-mse", ridge=lam, w0=w0, form="primal", ridge_convention="mean", rtol=1e-12)
    assert res.info["ridge_effective"] == pytest.approx(lam * 36)
    wR = ridge_fit(peft, X[r], y[r], w0, lam * 36, 3)
    # the primal step uses n_r·λ for the retain fit, the model was fitted with n·λ: approximate only
    assert rel_err(res.w_new, wR, wD) < 0.5


def _hash_model(model):
    h = hashlib.sha256()
    for k, t in list(model.state_dict().items()):
        h.update(k.encode())
        h.update(t.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def test_interrupt_and_nonconvergence_leave_the_model_unchanged():
    m, peft, X, y = make_problem("cnn", 20, 4)
    w0 = peft.vector().clone()
    peft.write(w0 + 0.05)
    h = _hash_model(m)
    r, f = np.arange(15), np.arange(15, 20)

    def boom(xk):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), trained_with="linearized-mse", ridge=1e-6, w0=w0, form="primal", solver="cg", callback=boom, inplace=True)
    assert _hash_model(m) == h
    with pytest.raises(ConvergenceError):
        unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), trained_with="linearized-mse", ridge=1e-8, w0=w0, form="primal", solver="cg", maxiter=1, rtol=1e-14, inplace=True)
    assert _hash_model(m) == h


def test_bad_inputs_raise_typed_errors_before_work():
    m, peft, X, y = make_problem("linear", 12, 0)
    w0 = peft.vector().clone()
    R, F = (X[:8], y[:8]), (X[8:], y[8:])
    ok = dict(trained_with="linearized-mse", ridge=0.1, w0=w0)
    with pytest.raises(ForgetSetError):
        unlearn(m, peft, R, (X[:0], y[:0]), **ok)
    with pytest.raises(InvalidInputError):
        unlearn(m, peft, R, F, trained_with="linearized-mse", ridge=-1.0, w0=w0)
    with pytest.raises(InvalidInputError, match="singular"):
        unlearn(m, peft, R, F, trained_with="linearized-mse", ridge=0.0, w0=w0, form="primal")  # p = 63 > n_r·C = 24: G_r singular
    with pytest.raises(InvalidInputError):
        unlearn(m, peft, R, F, rtol=0.0, **ok)
    with pytest.raises(InvalidInputError):
        unlearn(m, peft, R, F, maxiter=0, **ok)
    with pytest.raises(InvalidInputError):
        unlearn(m, peft, R, F, form="magic", **ok)
    with pytest.raises(InvalidInputError):
        unlearn(m, peft, R, F, trained_with="linearized-mse", ridge=0.1)  # no w0
    Xn = X.clone()
    Xn[0, 0] = float("nan")
    with pytest.raises(DataError):
        unlearn(m, peft, (Xn[:8], y[:8]), F, **ok)
    with pytest.raises(DataError):
        unlearn(m, peft, R, (X[8:], y[8:] + 5), **ok)
    with pytest.raises(ShapeError):
        unlearn(m, peft, R, F, trained_with="linearized-mse", ridge=0.1, w0=torch.zeros(3, dtype=torch.float64))
    with pytest.raises(PeftError):
        unlearn(linear_model(1), peft, R, F, **ok)
    bn = tiny_bn_cnn()
    bn.train()
    with pytest.raises(ModelStateError):
        unlearn(bn, BatchNormPeft(bn), (torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.zeros(4, dtype=torch.long)),
                (torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.zeros(2, dtype=torch.long)), trained_with="linearized-mse", ridge=0.1, linearize_at="trained")
    with torch.no_grad():
        m[1].weight[0, 0] = float("inf")
    with pytest.raises(NumericalError):
        unlearn(m, peft, R, F, **ok)


def test_unlearner_bad_requests():
    m, peft, X, y = make_problem("linear", 10, 0)
    u = Unlearner(m, peft, (X, y), trained_with="linearized-mse", ridge=0.1, w0=peft.vector()).prepare()
    for bad in ([], [10], [-1], [1, 1], np.arange(10), [0.5]):
        with pytest.raises(ForgetSetError):
            u.forget(bad)
    u.forget([1])
    with pytest.raises(ForgetSetError, match="already"):
        u.forget([1])


def test_challenge_signature_returns_a_new_net():
    m = tiny_bn_cnn(0)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(16, 3, 8, 8, dtype=torch.float64, generator=g)
    y = torch.randint(0, 3, (16,), generator=g)
    dl = lambda a, b: torch.utils.data.DataLoader(torch.utils.data.TensorDataset(a, b), batch_size=5)
    before = _hash_model(m)
    new = unlearning(m, dl(X[:12], y[:12]), dl(X[12:], y[12:]), None, ridge=0.1)
    assert _hash_model(m) == before
    assert new is not m and _hash_model(new) != before


@pytest.mark.parametrize("kind", ["linear", "cnn"])
def test_fit_anchor_is_the_paper_closed_form_for_unconverged_weights(kind):
    """Trained weights away from the fit: every form with anchor='fit' returns Δ = w*_{D_r} − w*_D (the paper's
    closed form); anchor='trained' (Newton from the actual weights) differs."""
    n, lam = 16, 0.3
    m, peft, X, y = make_problem(kind, n, 7)
    w0 = peft.vector().clone()
    wD = ridge_fit(peft, X, y, w0, lam, 3)
    r, f = np.arange(12), np.arange(12, 16)
    wR = ridge_fit(peft, X[r], y[r], w0, lam, 3)
    peft.write(wD + 0.05 * torch.randn(peft.p, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    want = wR - wD
    forms = [("dual", "cached", "auto"), ("dense", "cached", "auto"), ("woodbury", "cached", "auto"),
             ("primal", "cached", "direct"), ("primal", "cached", "cg"), ("primal", "stream", "cg")]
    for form, strategy, solver in forms:
        res = unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), trained_with="linearized-mse", ridge=lam, w0=w0, form=form, strategy=strategy, solver=solver, rtol=1e-12)
        assert float((res.delta - want).norm() / want.norm()) <= 1e-8, (form, strategy, solver)
    tr = unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), trained_with="linearized-mse", ridge=lam, w0=w0, form="primal", anchor="trained", rtol=1e-12)
    assert float((tr.delta - want).norm() / want.norm()) > 1e-3
    with pytest.raises(InvalidInputError):
        unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), trained_with="linearized-mse", ridge=lam, w0=w0, form="dual", anchor="trained")


def test_unlearner_fit_anchor_telescopes_for_unconverged_weights():
    n, lam = 24, 0.5
    m, peft, X, y = make_problem("linear", n, 9)
    w0 = peft.vector().clone()
    wD = ridge_fit(peft, X, y, w0, lam, 3)
    w_tr = wD + 0.1 * torch.randn(peft.p, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    peft.write(w_tr)
    u = Unlearner(m, peft, (X, y), trained_with="linearized-mse", ridge=lam, w0=w0).prepare()
    torch.testing.assert_close(u.w_fit, wD, rtol=1e-10, atol=1e-12)
    for q in ([0, 5], [7], [10, 11, 12]):
        u.forget(q)
    allf = np.array([0, 5, 7, 10, 11, 12])
    r = np.setdiff1d(np.arange(n), allf)
    wR = ridge_fit(peft, X[r], y[r], w0, lam, 3)
    # the fine-tuning error (w_tr − w*_D) is carried along, the unlearning step is exact
    assert rel_err(u.w - (w_tr - wD), wR, wD) <= 1e-8


@pytest.mark.parametrize("kind,n", [("linear", 12), ("linear", 40)])  # kernel space (nC < p) and parameter space
def test_match_ridge_recovers_the_ridge_of_the_fit(kind, n):
    from fastntk.unlearn import match_ridge

    m, peft, X, y = make_problem(kind, n, 3)
    w0 = peft.vector().clone()
    grid = np.logspace(-3, 2, 11)
    lam0 = float(grid[6])
    w_fit = ridge_fit(peft, X, y, w0, lam0, 3)
    best, info = match_ridge(peft, (X, y), w_trained=w_fit, w0=w0, grid=grid)
    assert best == pytest.approx(lam0)
    assert min(info["scores"]) <= 1e-8 * max(info["scores"])


def _perturbed_cnn_problem(seed, n, amp):
    """A float64 tanh BN CNN whose PEFT weights are ``w0`` plus noise of size ``amp`` (not a fit of anything), and data."""
    m = tiny_bn_cnn(seed)
    peft = BatchNormPeft(m, include_head=True)
    w0 = peft.vector().clone()
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3, 8, 8, dtype=torch.float64, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    peft.write(w0 + amp * torch.randn(peft.p, dtype=torch.float64, generator=g))
    return m, peft, w0, X, y


def test_extra_linearization_steps_are_noops_at_the_exact_fit():
    """Linear model, trained weights = ridge fit on D: step 1 lands on the retain fit, where ∇L_r = 0."""
    m, peft, X, y = make_problem("linear", 40, 5)
    w0 = peft.vector().clone()
    lam = 0.3
    r, f = forget_split(40, y, "random", 0.2, 5)
    peft.write(ridge_fit(peft, X, y, w0, lam, 3))
    w_ref = ridge_fit(peft, X[r], y[r], w0, lam, 3)
    one = unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), trained_with="linearized-mse", ridge=lam, w0=w0, rtol=1e-12, form="primal")
    three = unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), trained_with="linearized-mse", ridge=lam, w0=w0, rtol=1e-12, form="primal", steps=3)
    assert "steps" in three.reasons and "step 3: H_r(w) Δ = −∇L_r(w)" in three.solves
    assert float((three.w_new - w_ref).norm()) <= 1e-9 * float(w_ref.norm())
    assert float((three.w_new - one.w_new).norm()) <= 1e-9 * float(w_ref.norm())


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_extra_linearization_steps_drive_the_network_retain_gradient_down(loss):
    """Nonlinear CNN (tanh): Gauss-Newton steps relinearized at the current weights approach a stationary point
    of the network's retain objective; the dense gradient (torch.autograd) is the reference."""
    m, peft, w0, X, y = _perturbed_cnn_problem(1, 30, 0.3)
    lam = 0.5
    r, f = np.arange(24), np.arange(24, 30)
    fn = peft.functional()

    def objective_and_grad(w):
        w = w.clone().requires_grad_(True)
        out = fn(w, X[r])
        if loss == "mse":
            L = 0.5 * ((out - torch.nn.functional.one_hot(y[r], 3).double()) ** 2).sum()
        else:
            L = torch.nn.functional.cross_entropy(out, y[r], reduction="sum")
        L = L + 0.5 * lam * ((w - w0) ** 2).sum()
        return float(L.detach()), float(torch.autograd.grad(L, w)[0].norm())

    before = peft.vector().clone()
    kw = dict(trained_with=loss, ridge=lam, w0=w0, loss=loss, rtol=1e-10, anchor="retain")
    Ls, gs = zip(*[objective_and_grad(unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), steps=k, **kw).w_new) for k in (1, 3, 10)])
    assert torch.equal(peft.vector(), before)  # the model is untouched without inplace
    assert Ls[0] >= Ls[1] >= Ls[2], Ls  # line-searched steps never increase the network's retain objective
    assert gs[2] < 0.5 * gs[0], gs


def test_shared_source_gives_the_same_ridge_and_request():
    from fastntk.operators import make_jacobian
    from fastntk.unlearn import match_ridge

    m, peft, w0, X, y = _perturbed_cnn_problem(2, 40, 0.05)
    wt = peft.vector().clone()
    grid = np.logspace(-3, 2, 11)
    src = make_jacobian(peft, X, w=w0, strategy="cached")
    lam_a, info_a = match_ridge(peft, (X, y), w_trained=wt, w0=w0, grid=grid)
    lam_b, info_b = match_ridge(peft, (X, y), w_trained=wt, w0=w0, grid=grid, source=src)
    assert lam_a == lam_b and np.allclose(info_a["scores"], info_b["scores"], rtol=1e-10)
    a = Unlearner(m, peft, (X, y), trained_with="linearized-mse", ridge=lam_a, w0=w0).forget(np.arange(30, 40))
    b = Unlearner(m, peft, (X, y), trained_with="linearized-mse", ridge=lam_a, w0=w0, source=src).forget(np.arange(30, 40))
    assert torch.allclose(a.w_new, b.w_new, rtol=0, atol=1e-10)
    with pytest.raises(InvalidInputError, match="source has n"):
        Unlearner(m, peft, (X[:20], y[:20]), trained_with="linearized-mse", ridge=1.0, w0=w0, source=src)
    with pytest.raises(InvalidInputError, match="cached"):
        match_ridge(peft, (X, y), w_trained=wt, w0=w0, source=make_jacobian(peft, X, w=w0, strategy="stream"))
    with pytest.raises(InvalidInputError, match="steps"):
        unlearn(m, peft, (X[:30], y[:30]), (X[30:], y[30:]), trained_with="linearized-mse", ridge=1.0, w0=w0, steps=0)


def test_tf32_is_off_while_fastntk_computes_and_flags_are_restored():
    from fastntk.precision import strict_precision

    seen = []
    m = tiny_bn_cnn(3)
    peft = BatchNormPeft(m, include_head=True)
    w0 = peft.vector().clone()
    X = torch.randn(12, 3, 8, 8, dtype=torch.float64)
    y = torch.arange(12) % 3
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        cb = lambda *a: seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))  # noqa: E731
        unlearn(m, peft, (X[:9], y[:9]), (X[9:], y[9:]), trained_with="linearized-mse", ridge=1.0, w0=w0, solver="cg", callback=cb)
        assert seen and all(s == (False, False) for s in seen)
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
        seen.clear()
        unlearn(m, peft, (X[:9], y[:9]), (X[9:], y[9:]), trained_with="linearized-mse", ridge=1.0, w0=w0, solver="cg", callback=cb, allow_tf32=True)
        assert seen and all(s == (True, True) for s in seen)
        with pytest.raises(InvalidInputError, match="allow_tf32"):
            unlearn(m, peft, (X[:9], y[:9]), (X[9:], y[9:]), trained_with="linearized-mse", ridge=1.0, w0=w0, allow_tf32="yes")
        with pytest.raises(RuntimeError):
            with strict_precision(False):
                raise RuntimeError("boom")
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.mark.parametrize("linearize_at", ["w0", "trained"])
@pytest.mark.parametrize("n_forget", [3, 30])  # Woodbury (n_f·C < p) and downdate (n_f·C ≥ p) routes
def test_unlearner_retain_anchor_equals_unlearn_and_is_history_free(linearize_at, n_forget):
    m, peft, w0, X, y = _perturbed_cnn_problem(4, 60, 0.2)
    lam = 0.7
    f = np.arange(60 - n_forget, 60)
    r = np.setdiff1d(np.arange(60), f)
    ref = unlearn(m, peft, (X[r], y[r]), (X[f], y[f]), trained_with="linearized-mse", ridge=lam, w0=w0, anchor="retain", form="primal",
                  linearize_at=linearize_at, solver="direct", rtol=1e-12)
    one = Unlearner(m, peft, (X, y), trained_with="linearized-mse", ridge=lam, w0=w0, anchor="retain", linearize_at=linearize_at).forget(f)
    scale = float(ref.delta.norm())
    assert float((one.w_new - ref.w_new).norm()) <= 1e-8 * scale
    # two requests in sequence land where one combined request does
    u = Unlearner(m, peft, (X, y), trained_with="linearized-mse", ridge=lam, w0=w0, anchor="retain", linearize_at=linearize_at)
    u.forget(f[: n_forget // 2])
    two = u.forget(f[n_forget // 2:])
    assert float((two.w_new - ref.w_new).norm()) <= 1e-8 * scale
