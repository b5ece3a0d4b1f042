"""SCRUB, SalUn, l1-sparse and the hyper-parameter selection of fastntk.baselines (tiny float64 model)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fastntk import baselines as B
from fastntk.data import ImageData
from fastntk.errors import ForgetSetError, InvalidInputError
from fastntk.metrics import accuracy
from fastntk.peft import BatchNormPeft
from fastntk.train import finetune_peft, predict
from tests.conftest import tiny_bn_cnn

C = 3


@pytest.fixture(scope="module")
def toy():
    """A learnable 3-class toy set (class patterns + noise), a BN + head PEFT model fine-tuned on it."""
    g = torch.Generator().manual_seed(0)
    n = 90
    y = torch.arange(n) % C
    patterns = torch.randn(C, 3, 6, 6, generator=g, dtype=torch.float64)
    X = patterns[y] + 0.5 * torch.randn(n, 3, 6, 6, generator=g, dtype=torch.float64)
    data = ImageData(X, y, [str(c) for c in range(C)], "toy")
    peft = BatchNormPeft(tiny_bn_cnn(1, C=C), include_head=True)
    w0 = peft.vector().clone()
    log = finetune_peft(peft, data, epochs=15, lr=3e-2, batch_size=30, seed=0, loss="ce", w0=w0, progress=False)
    forget = np.nonzero(y.numpy() == 0)[0]  # forget class 0
    retain = np.nonzero(y.numpy() != 0)[0]
    return peft, data, forget, retain, log.w.clone(), w0


def _acc(peft, data, idx, w):
    return accuracy(predict(peft, data.X[idx], w=w), data.y[idx])


METHODS = {
    "SCRUB": lambda peft, data, f, w, **kw: B.scrub(peft, data, f, w_trained=w, epochs=3, max_epochs=2, lr=3e-2, batch_size=15,
                                                    progress=False, **kw),
    "SalUn": lambda peft, data, f, w, **kw: B.salun(peft, data, f, w_trained=w, epochs=3, lr=3e-2, batch_size=15, progress=False,
                                                    **kw),
    "l1-sparse": lambda peft, data, f, w, **kw: B.l1_sparse(peft, data, f, w_trained=w, epochs=3, lr=3e-2, alpha=1e-3,
                                                            batch_size=15, progress=False, **kw),
}


@pytest.mark.parametrize("name", list(METHODS))
def test_finite_untouched_model_and_forgetting(toy, name):
    peft, data, forget, retain, w, _ = toy
    assert _acc(peft, data, forget, w) > 1.0 / C  # the trained model knows the class to forget
    before = peft.vector().clone()
    res = METHODS[name](peft, data, forget, w)
    assert res.name == name and res.w.shape == (peft.p,) and torch.isfinite(res.w).all()
    assert res.seconds > 0 and res.log.n_steps > 0
    assert torch.equal(peft.vector(), before)  # write=False leaves the model alone
    drop_f = _acc(peft, data, forget, w) - _acc(peft, data, forget, res.w)
    drop_r = _acc(peft, data, retain, w) - _acc(peft, data, retain, res.w)
    assert drop_f > max(drop_r, 0.0), (drop_f, drop_r)  # forgets D_f more than it loses on D_r
    again = METHODS[name](peft, data, forget, w)
    assert torch.equal(again.w, res.w)  # deterministic for a fixed seed
    wrote = METHODS[name](peft, data, forget, w, write=True)
    assert torch.equal(peft.vector(), wrote.w)
    peft.write(before)


def test_salun_moves_only_the_salient_entries(toy):
    peft, data, forget, _, w, _ = toy
    frac = 0.3
    mask = B.saliency_mask(peft, data, forget, w=w, fraction=frac)
    assert int(mask.sum()) == math.ceil(frac * peft.p)
    res = B.salun(peft, data, forget, w_trained=w, fraction=frac, epochs=1, lr=1e-2, batch_size=15, progress=False)
    assert torch.equal(res.w[~mask], w[~mask])
    assert not torch.equal(res.w[mask], w[mask])
    # the mask holds the largest |gradient of the forget loss|
    wv = w.detach().clone().requires_grad_(True)
    f = peft.functional()
    idx = torch.as_tensor(forget)
    loss = torch.nn.functional.cross_entropy(f(wv, data.X[idx]), data.y[idx])
    (g,) = torch.autograd.grad(loss, wv)
    assert g.abs()[mask].min() >= g.abs()[~mask].max()


def test_l1_sparse_penalty_shrinks_the_l1_norm(toy):
    peft, data, forget, _, w, _ = toy
    kw = dict(w_trained=w, epochs=3, lr=1e-2, batch_size=15, progress=False)
    plain = B.l1_sparse(peft, data, forget, alpha=0.0, **kw)
    sparse = B.l1_sparse(peft, data, forget, alpha=1e-2, **kw)
    assert sparse.w.abs().sum() < plain.w.abs().sum()


def test_scrub_without_max_steps_and_distillation_is_plain_retain_training(toy):
    """max_epochs=0, alpha=0: SCRUB's min-steps are gamma·CE on D_r; gamma scales the loss (Adam is scale-free)."""
    peft, data, forget, _, w, _ = toy
    kw = dict(w_trained=w, epochs=2, max_epochs=0, alpha=0.0, lr=1e-2, batch_size=15, progress=False)
    a = B.scrub(peft, data, forget, gamma=1.0, **kw)
    b = B.scrub(peft, data, forget, gamma=0.5, **kw)
    torch.testing.assert_close(a.w, b.w, rtol=1e-6, atol=1e-6)


def test_linearized_variants_run(toy):
    peft, data, forget, _, w, w0 = toy
    for name, fn in METHODS.items():
        res = fn(peft, data, forget, w, linearize_at=w0)
        assert torch.isfinite(res.w).all(), name


def test_bad_input(toy):
    peft, data, forget, _, w, _ = toy
    with pytest.raises(ForgetSetError):
        B.scrub(peft, data, [], w_trained=w, progress=False)
    with pytest.raises(ForgetSetError):
        B.salun(peft, data, [len(data)], w_trained=w, progress=False)
    with pytest.raises(InvalidInputError):
        B.scrub(peft, data, forget, w_trained=w, max_epochs=5, epochs=2, progress=False)
    with pytest.raises(InvalidInputError):
        B.scrub(peft, data, forget, w_trained=w, temperature=0.0, progress=False)
    with pytest.raises(InvalidInputError):
        B.salun(peft, data, forget, w_trained=w, fraction=0.0, progress=False)
    with pytest.raises(InvalidInputError):
        B.l1_sparse(peft, data, forget, w_trained=w, alpha=-1.0, progress=False)
    with pytest.raises(InvalidInputError):
        B.l1_sparse(peft, data, forget, w_trained=w, loss="hinge", progress=False)
    with pytest.raises(InvalidInputError):
        B.l1_sparse(peft, data, forget, w_trained=w, epochs=0, progress=False)
    before = peft.vector().clone()
    with pytest.raises(InvalidInputError):
        B.scrub(peft, data, forget, w_trained=w, lr=-1.0, progress=False)
    assert torch.equal(peft.vector(), before)


# ------------------------------------------------------------------------------------------ hyper-parameter selection


def _fake_run(a, b=0.0):
    return B.BaselineResult(torch.tensor([float(a) + float(b)]), 1.0, "fake", None)


def test_select_hyperparameters_picks_the_lowest_objective():
    sel = B.select_hyperparameters(_fake_run, {"a": [1, 2, 3], "b": [0.0, 0.5]}, lambda w: abs(float(w[0]) - 2.5), budget=6)
    assert sel.best == {"a": 2, "b": 0.5} and sel.score == 0.0 and len(sel.trials) == 6
    small = B.select_hyperparameters(_fake_run, {"a": [1, 2, 3], "b": [0.0, 0.5]}, lambda w: 0.0, budget=2, seed=1)
    assert len(small.trials) == 2 and small.budget == 2


def test_select_hyperparameters_records_divergence():
    from fastntk.errors import NumericalError

    def run(a):
        if a > 1:
            raise NumericalError("diverged")
        return _fake_run(a)

    sel = B.select_hyperparameters(run, {"a": [1, 2]}, lambda w: float(w[0]))
    assert sel.best == {"a": 1}
    assert math.isinf(sel.trials[1]["score"]) and "diverged" in sel.trials[1]["error"]


def test_select_hyperparameters_bad_input():
    with pytest.raises(InvalidInputError):
        B.select_hyperparameters(_fake_run, {}, lambda w: 0.0)
    with pytest.raises(InvalidInputError):
        B.select_hyperparameters(_fake_run, {"a": []}, lambda w: 0.0)
    with pytest.raises(InvalidInputError):
        B.select_hyperparameters(_fake_run, {"a": [1]}, lambda w: 0.0, budget=0)


def test_validation_objective(toy):
    peft, data, forget, retain, w, _ = toy
    sets = {"forget": data.subset(forget), "retain": data.subset(retain)}
    accs = {k: accuracy(predict(peft, d.X, w=w), d.y) for k, d in sets.items()}
    obj = B.validation_objective(peft, sets, accs)
    assert obj(w) == 0.0
    shifted = B.validation_objective(peft, sets, {k: v - 0.1 for k, v in accs.items()})
    assert shifted(w) == pytest.approx(0.1)
    with pytest.raises(InvalidInputError):
        B.validation_objective(peft, sets, {"forget": 1.0})
