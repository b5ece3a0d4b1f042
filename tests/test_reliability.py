"""Determinism, long request streams, and hypothesis fuzzing of the public API (issue: reliability)."""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from fastntk.errors import FastNTKError
from fastntk.peft import NamedPeft
from fastntk.unlearn import Unlearner, unlearn
from tests.conftest import linear_model, tiny_bn_cnn
from tests.test_unlearn import make_problem, rel_err, ridge_fit


@pytest.mark.parametrize("strategy", ["stream", "cached"])
@pytest.mark.parametrize("form", ["primal", "dual", "woodbury"])
def test_same_inputs_give_bit_identical_delta(strategy, form):
    m, peft, X, y = make_problem("cnn", 14, 5)
    w0 = peft.vector().clone()
    peft.write(w0 + 0.01)
    runs = [unlearn(m, peft, (X[:10], y[:10]), (X[10:], y[10:]), trained_with="linearized-mse", ridge=0.3, w0=w0, form=form, strategy=strategy, rtol=1e-8).delta
            for _ in range(2)]
    assert torch.equal(runs[0], runs[1])


def test_twenty_sequential_requests_match_one_combined_request():
    n, lam = 60, 0.4
    m, peft, X, y = make_problem("linear", n, 11)
    w0 = peft.vector().clone()
    wD = ridge_fit(peft, X, y, w0, lam, 3)
    peft.write(wD)
    u = Unlearner(m, peft, (X, y), trained_with="linearized-mse", ridge=lam, w0=w0).prepare()
    rng = np.random.default_rng(0)
    order = rng.permutation(n)[:40]
    reqs = np.array_split(order, 20)
    for i, q in enumerate(reqs):
        u.forget(q)
        assert torch.isfinite(u.w).all()
        done = np.sort(np.concatenate(reqs[: i + 1]))
        r = np.setdiff1d(np.arange(n), done)
        assert rel_err(u.w, ridge_fit(peft, X[r], y[r], w0, lam, 3), wD) <= 1e-8
    assert len(u.history) == 20 and all(isinstance(h, dict) for h in u.history)  # summaries, no tensors kept
    one = Unlearner(m, peft, (X, y), trained_with="linearized-mse", ridge=lam, w0=w0).prepare()
    one.forget(np.sort(order))
    assert rel_err(u.w, one.w, wD) <= 1e-8


@settings(deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(
    n=st.integers(0, 14),
    n_f=st.integers(0, 6),
    C=st.integers(2, 4),
    lam=st.sampled_from([-1.0, 0.0, 1e-6, 1e-2, 1.0, 1e3, float("nan")]),
    form=st.sampled_from(["auto", "dual", "primal", "woodbury", "dense", "bogus"]),
    strategy=st.sampled_from(["auto", "stream", "cached", "bogus"]),
    loss=st.sampled_from(["mse", "ce"]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    label_shift=st.sampled_from([0, 0, 0, 7]),
    rtol=st.sampled_from([1e-8, 1e-4, 0.0]),
    seed=st.integers(0, 1000),
)
def test_fuzz_public_api_only_raises_typed_errors(n, n_f, C, lam, form, strategy, loss, dtype, label_shift, rtol, seed):
    m = linear_model(seed, C=C).to(dtype)
    peft = NamedPeft(m, ["1.*"])
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n + n_f, 12, generator=g).to(dtype)
    y = torch.randint(0, C, (n + n_f,), generator=g) + label_shift
    before = peft.vector().clone()
    try:
        res = unlearn(m, peft, (X[:n], y[:n]), (X[n:], y[n:]), trained_with="linearized-mse", ridge=lam, w0=before, form=form, strategy=strategy, loss=loss,
                      rtol=rtol, maxiter=500, inplace=True)
    except FastNTKError:
        assert torch.equal(peft.vector(), before)  # nothing written on error
        return
    assert torch.isfinite(res.w_new).all()
    assert torch.equal(peft.vector(), res.w_new)


def _state_numel(u):
    total = 0
    for v in vars(u).values():
        if isinstance(v, torch.Tensor):
            total += v.numel()
        elif hasattr(v, "__dict__"):
            total += sum(t.numel() for t in vars(v).values() if isinstance(t, torch.Tensor))
    return total


@pytest.mark.slow
def test_twenty_requests_in_the_pipeline_setting_stay_close_to_retraining():
    """Ordinary (non-converged) linearized fine-tuning, 20 deletion requests: no NaN, state does not grow,
    the result stays as close to the retrained model as one combined request (anchor 'fit' telescopes)."""
    from fastntk.baselines import retrain
    from fastntk.data import load_digits, split_by_classes
    from fastntk.peft import BatchNormPeft
    from fastntk.train import finetune_peft, predict

    data = split_by_classes(load_digits(size=8), [0, 1, 2, 3]).subset(np.arange(160)).to(torch.float64)
    model = tiny_bn_cnn(0, C=4)
    peft = BatchNormPeft(model, include_head=True)
    w0 = peft.vector().clone()
    recipe = dict(epochs=15, lr=0.05, batch_size=32, loss="mse", ridge=1.0, linearized=True, progress=False, seed=0)
    finetune_peft(peft, data, w0=w0, **recipe)
    u = Unlearner(model, peft, (data.X, data.y), trained_with="linearized-mse", ridge=1.0, w0=w0).prepare()
    size0 = _state_numel(u)
    reqs = np.array_split(np.random.default_rng(0).permutation(160)[:40], 20)
    for q in reqs:
        u.forget(q)
        assert torch.isfinite(u.w).all()
        assert _state_numel(u) == size0
    allf = np.sort(np.concatenate(reqs))
    one = Unlearner(model, peft, (data.X, data.y), trained_with="linearized-mse", ridge=1.0, w0=w0).prepare()
    one.forget(allf)
    assert float((u.w - one.w).norm() / (one.w - peft.vector()).norm()) <= 1e-8
    gold = retrain(peft, data, allf, w0=w0, **recipe)
    X = data.X
    lin = lambda w: predict(peft, X, w=w, linearize_at=w0)  # noqa: E731
    d_un = (lin(u.w) - lin(gold.w)).norm() / lin(gold.w).norm()
    d_orig = (lin(peft.vector()) - lin(gold.w)).norm() / lin(gold.w).norm()
    print(f"relative output distance to retrain: unlearned {float(d_un):.4f}, original {float(d_orig):.4f}")
    assert float(d_un) < float(d_orig)
