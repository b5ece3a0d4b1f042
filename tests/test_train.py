"""fastntk.train and fastntk.baselines on a tiny BatchNorm CNN (float64 where correctness is checked)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import jacrev

from fastntk.baselines import finetune_retain, gradient_ascent, neggrad_plus, retrain
from fastntk.data import ImageData
from fastntk.errors import DataError, InvalidInputError
from fastntk.peft import BatchNormPeft
from fastntk.train import TrainLog, batch_schedule, finetune_peft, predict, pretrain


class TinyCNN(nn.Module):
    def __init__(self, c_in=1, num_classes=3, width=4):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def _data(n=24, C=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % C
    X = torch.randn(n, 1, 6, 6, generator=g, dtype=dtype) + y.view(-1, 1, 1, 1).to(dtype) * 0.5
    return ImageData(X, y, [str(i) for i in range(C)], "synthetic")


def _model(seed=0, dtype=torch.float64, C=3):
    torch.manual_seed(seed)
    m = TinyCNN(num_classes=C).to(dtype)
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.randn(16, 1, 6, 6, dtype=dtype))  # non-trivial running statistics
    # non-trivial BN affine params
    for mod in (m.bn1, m.bn2):
        with torch.no_grad():
            mod.weight.uniform_(0.5, 1.5)
            mod.bias.uniform_(-0.2, 0.2)
    m.eval()
    return m


# ---------------------------------------------------------------- schedule


def test_batch_schedule_and_drop():
    a = batch_schedule(10, 3, epoch=2, seed=5)
    b = batch_schedule(10, 3, epoch=2, seed=5)
    assert [x.tolist() for x in a] == [x.tolist() for x in b]
    assert sorted(torch.cat(a).tolist()) == list(range(10)) and [len(x) for x in a] == [3, 3, 3, 1]
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.cat(batch_schedule(10, 3, epoch=0, seed=7)), perm)
    drop = [int(i) for i in a[3].tolist()] + [int(a[0][0])]
    c = batch_schedule(10, 3, epoch=2, seed=5, drop=drop)
    assert len(c) == 3  # the singleton batch emptied and skipped
    assert [x.tolist() for x in c] == [[i for i in x.tolist() if i not in drop] for x in a[:3]]
    with pytest.raises(InvalidInputError):
        batch_schedule(10, 3, 0, 0, drop=[10])
    with pytest.raises(DataError):
        batch_schedule(3, 3, 0, 0, drop=[0, 1, 2])


# ---------------------------------------------------------------- pretraining


def test_pretrain_decreases_loss_and_leaves_eval():
    m = _model(dtype=torch.float32)
    d = _data(n=48, dtype=torch.float32)
    log = pretrain(m, d, epochs=15, lr=2e-2, batch_size=16, seed=0, progress=False)
    assert isinstance(log, TrainLog) and log.n_steps == 45 and len(log.losses) == 15
    assert log.losses[-1] < log.losses[0]
    assert not m.training and not any(x.training for x in m.modules())
    # deterministic
    m2 = _model(dtype=torch.float32)
    log2 = pretrain(m2, d, epochs=15, lr=2e-2, batch_size=16, seed=0, progress=False)
    assert log.losses == log2.losses


# ---------------------------------------------------------------- PEFT fine-tuning


def test_finetune_changes_only_peft_params():
    m = _model()
    peft = BatchNormPeft(m, include_head=True)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    w0 = peft.vector()
    log = finetune_peft(peft, _data(), epochs=3, lr=1e-2, batch_size=8, seed=0, progress=False)
    assert log.n_steps == 9 and log.losses[-1] < log.losses[0]
    assert not torch.allclose(peft.vector(), w0) and torch.equal(peft.vector(), log.w)
    peft_names = set(peft.names)
    for k, v in m.state_dict().items():
        if k not in peft_names:
            assert torch.equal(v, before[k]), f"{k} changed (running stats / frozen weights must stay)"
    assert not m.training


def test_finetune_input_errors():
    peft = BatchNormPeft(_model(C=3), include_head=True)
    d = _data(C=3)
    bad = ImageData(d.X, d.y, [str(i) for i in range(4)], "four")  # 4 classes for a 3-output model
    with pytest.raises(DataError, match="outputs"):
        finetune_peft(peft, bad, epochs=1, lr=1e-2, progress=False)
    X = d.X.clone()
    X[0, 0, 0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        finetune_peft(peft, ImageData(X, d.y, d.classes), epochs=1, lr=1e-2, progress=False)
    with pytest.raises(InvalidInputError):
        finetune_peft(peft, d, epochs=1, lr=1e-2, loss="hinge", progress=False)
    with pytest.raises(InvalidInputError):
        finetune_peft(peft, d, epochs=1, lr=1e-2, optimizer="rmsprop", progress=False)


@pytest.mark.parametrize("linearized", [False, True])
def test_retrain_with_drop_equals_finetune_on_subset_full_batch(linearized):
    d = _data(n=24)
    forget = np.array([1, 5, 6, 17])
    keep = np.setdiff1d(np.arange(24), forget)
    m = _model()
    peft = BatchNormPeft(m, include_head=True)
    w0 = peft.vector()
    recipe = dict(epochs=5, lr=1e-2, batch_size=24, seed=3, loss="ce", ridge=0.1, linearized=linearized, progress=False)
    res = retrain(peft, d, forget, w0=w0, **recipe)
    assert torch.equal(peft.vector(), w0)  # the caller's model is restored
    log = finetune_peft(peft, d.subset(keep), w0=w0, **recipe)
    assert res.log.n_steps == log.n_steps == 5
    torch.testing.assert_close(res.w, log.w, rtol=1e-10, atol=1e-12)
    assert res.seconds > 0


def test_linearized_mse_ridge_matches_closed_form():
    """Linearized fine-tuning (MSE + ridge, from w0, to convergence) = the closed-form ridge fit of docs/theory.md."""
    d = _data(n=12)
    m = _model()
    peft = BatchNormPeft(m, include_head=True)
    w0 = peft.vector()
    lam, scale = 0.3, 2.0
    f = peft.functional()
    J = jacrev(lambda w: f(w, d.X).reshape(-1))(w0).numpy()  # (nC, p)
    fbar = f(w0, d.X).detach().reshape(-1).numpy()
    Y = (torch.nn.functional.one_hot(d.y, 3).double() * scale).reshape(-1).numpy()
    p = J.shape[1]
    w_star = w0.numpy() + np.linalg.solve(J.T @ J + lam * np.eye(p), J.T @ (Y - fbar))
    log = finetune_peft(peft, d, epochs=15, lr=1.0, batch_size=12, seed=0, loss="mse", target_scale=scale,
                        ridge=lam, linearized=True, optimizer="lbfgs", progress=False)
    err = np.linalg.norm(log.w.numpy() - w_star) / np.linalg.norm(w_star - w0.numpy())
    assert err < 1e-6, err
    # and the linearized model really differs from the network there (the test is not vacuous)
    flin_out = fbar + J @ (log.w.numpy() - w0.numpy())
    assert np.abs(flin_out - f(log.w, d.X).detach().reshape(-1).numpy()).max() > 1e-4
    # predict(linearize_at=w0) evaluates exactly that linearized model
    lin = predict(peft, d.X, batch_size=5, w=log.w, linearize_at=w0).reshape(-1).numpy()
    np.testing.assert_allclose(lin, flin_out, rtol=1e-9, atol=1e-10)


def test_linearized_gradient_matches_jacobian():
    d = _data(n=6)
    peft = BatchNormPeft(_model(), include_head=True)
    w0 = peft.vector()
    from fastntk.train import linearized_function as _linearized

    f = peft.functional()
    flin = _linearized(f, w0)
    w = (w0 + 0.1 * torch.randn(peft.p, dtype=torch.float64, generator=torch.Generator().manual_seed(0))).requires_grad_(True)
    out = flin(w, d.X)
    g, = torch.autograd.grad((out ** 2).sum() / 2, w)
    J = jacrev(lambda v: f(v, d.X).reshape(-1))(w0)
    expect = J.T @ (f(w0, d.X).reshape(-1) + J @ (w.detach() - w0))
    torch.testing.assert_close(g, expect.detach(), rtol=1e-10, atol=1e-10)


def test_predict():
    m = _model()
    peft = BatchNormPeft(m)
    d = _data(n=10)
    a = predict(peft, d.X, batch_size=3)
    b = predict(m, d.X, batch_size=4)
    assert a.shape == (10, 3)
    torch.testing.assert_close(a, b)
    w = peft.vector() + 0.1
    c = predict(peft, d.X, w=w)
    assert not torch.allclose(a, c) and torch.allclose(predict(peft, d.X), a)


# ---------------------------------------------------------------- baselines


def test_baselines_restore_model_and_move_w():
    d = _data(n=24)
    forget = np.array([0, 3, 9, 10])
    m = _model()
    peft = BatchNormPeft(m, include_head=True)
    w0 = peft.vector()
    finetune_peft(peft, d, epochs=4, lr=1e-2, batch_size=8, seed=0, progress=False)
    wt = peft.vector()
    state = {k: v.clone() for k, v in m.state_dict().items()}

    def forget_loss(w):
        out = predict(peft, d.X[forget], w=w)
        return float(torch.nn.functional.cross_entropy(out, d.y[forget]))

    ga = gradient_ascent(peft, d, forget, w_trained=wt, epochs=3, lr=1e-2, batch_size=4, progress=False)
    assert forget_loss(ga.w) > forget_loss(wt) and ga.name == "GA"
    ng = neggrad_plus(peft, d, forget, w_trained=wt, alpha=0.5, epochs=2, lr=1e-2, batch_size=8, progress=False)
    assert not torch.allclose(ng.w, wt)
    ft = finetune_retain(peft, d, forget, w_trained=wt, epochs=1, lr=1e-3, batch_size=8, progress=False)
    assert not torch.allclose(ft.w, wt) and ft.log.n_samples == 20
    for k, v in m.state_dict().items():
        assert torch.equal(v, state[k]), k  # nothing modified the caller's model
    w_ret, secs, name, _ = retrain(peft, d, forget, w0=w0, epochs=4, lr=1e-2, batch_size=8, seed=0, progress=False, write=True)
    assert name == "retrain" and torch.equal(peft.vector(), w_ret) and secs > 0
    with pytest.raises(InvalidInputError):
        neggrad_plus(peft, d, forget, w_trained=wt, alpha=1.5, progress=False)
