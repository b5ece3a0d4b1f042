"""fastntk.metrics: accuracies, MIAs, activation distance, avg gap, table."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fastntk.data import ImageData
from fastntk.errors import InvalidInputError, ShapeError
from fastntk.metrics import (
    MetricsTable,
    accuracy,
    activation_distance,
    avg_gap,
    evaluate,
    mia_efficacy,
    mia_loss_lr,
    per_sample_ce,
    true_class_confidence,
)
from fastntk.peft import BatchNormPeft


def test_accuracy():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    assert accuracy(logits, torch.tensor([0, 1, 1])) == pytest.approx(2 / 3)
    assert math.isnan(accuracy(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(ShapeError):
        accuracy(logits, torch.tensor([0, 1]))


def test_confidence_and_ce():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    y = torch.tensor([0, 0])
    np.testing.assert_allclose(true_class_confidence(logits, y), [0.5, 0.75])
    np.testing.assert_allclose(per_sample_ce(logits, y), [math.log(2), -math.log(0.75)])


def test_activation_distance():
    a = torch.tensor([[0.0, 0.0], [5.0, 5.0]])
    assert activation_distance(a, a) == 0.0
    b = torch.tensor([[100.0, -100.0], [5.0, 5.0]])
    # sample 0: |0.5-1| + |0.5-0| = 1, sample 1: 0 -> mean 0.5
    assert activation_distance(a, b) == pytest.approx(0.5)
    with pytest.raises(ShapeError):
        activation_distance(a, b[:1])


def test_mia_efficacy_directions():
    rng = np.random.default_rng(0)
    members = rng.uniform(0.9, 1.0, 400)  # confident on training data
    nonmembers = rng.uniform(0.0, 0.6, 400)
    # a forget set that still looks like training data: predicted member -> efficacy ~ 0
    assert mia_efficacy(members, nonmembers, rng.uniform(0.9, 1.0, 100)) < 0.05
    # a forget set that looks unseen: efficacy ~ 1
    assert mia_efficacy(members, nonmembers, rng.uniform(0.0, 0.6, 100)) > 0.95


def test_mia_loss_lr():
    rng = np.random.default_rng(0)
    same = mia_loss_lr(rng.exponential(1.0, 300), rng.exponential(1.0, 300))
    assert 0.35 < same < 0.65
    sep = mia_loss_lr(rng.uniform(0, 0.1, 300), rng.uniform(1, 2, 300))
    assert sep > 0.95
    assert math.isnan(mia_loss_lr([0.1, 0.2], [1.0, 2.0, 3.0]))


def test_avg_gap():
    m = {"UA": 0.10, "RA": 0.95, "TA": 0.90, "MIA": 0.20}
    r = {"UA": 0.12, "RA": 0.96, "TA": 0.90, "MIA": 0.16}
    assert avg_gap(m, r) == pytest.approx(100 * (0.02 + 0.01 + 0.0 + 0.04) / 4)
    assert avg_gap(m, m) == 0.0
    assert avg_gap(r, m) == avg_gap(m, r)  # a distance: symmetric
    assert avg_gap(m, r, keys=("MIA",)) == pytest.approx(100 * 0.04)  # only the keys asked for
    worse = dict(r, UA=0.50)
    assert avg_gap(m, worse) == pytest.approx(avg_gap(m, r) + 100 * (0.40 - 0.02) / 4)
    with pytest.raises(InvalidInputError):
        avg_gap({"UA": 0.1}, r)


def test_metrics_table():
    t = MetricsTable(["RA", "UA", "MIA", "avg_gap", "seconds"])
    t.add("retrain", {"RA": 0.98, "UA": 0.05, "MIA": 0.1, "avg_gap": 0.0, "seconds": 12.3456})
    t.add("GA", {"RA": 0.5, "UA": float("nan"), "MIA": 0.2})
    md = t.to_markdown()
    lines = md.strip().splitlines()
    assert lines[0] == "| method | RA (%) | UA (%) | MIA (%) | avg_gap | seconds |"
    assert lines[2] == "| retrain | 98.00 | 5.00 | 10.00 | 0.00 | 12.35 |"
    assert lines[3] == "| GA | 50.00 | – | 20.00 | – | – |"
    assert t.to_records()[0]["method"] == "retrain"


def test_evaluate_on_tiny_model():
    from torch import nn

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    m = m.double().eval()
    peft = BatchNormPeft(m, include_head=True)
    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 3
    d = ImageData(torch.randn(60, 1, 6, 6, generator=g, dtype=torch.float64) + y.view(-1, 1, 1, 1), y, ["a", "b", "c"])
    retain, forget, test = d.subset(np.arange(0, 30)), d.subset(np.arange(30, 40)), d.subset(np.arange(40, 60))
    w = peft.vector()
    out = evaluate(peft, None, retain, forget, test)
    assert set(out) == {"RA", "FA", "UA", "TA", "MIA", "MIA_LR"}
    # every metric recomputed here from the network's own outputs (not through fastntk.train.predict)
    with torch.no_grad():
        lr_, lf, lt = (m(d.X) for d in (retain, forget, test))
    assert out["RA"] == accuracy(lr_, retain.y) and out["FA"] == accuracy(lf, forget.y)
    assert out["TA"] == accuracy(lt, test.y)
    assert out["RA"] == float((lr_.argmax(1) == retain.y).double().mean())
    assert out["UA"] == pytest.approx(1 - out["FA"])
    assert out["MIA"] == mia_efficacy(true_class_confidence(lr_, retain.y), true_class_confidence(lt, test.y),
                                      true_class_confidence(lf, forget.y))
    assert out["MIA_LR"] == mia_loss_lr(per_sample_ce(lf, forget.y), per_sample_ce(lt, test.y))
    out2 = evaluate(peft, w + 0.05, retain, forget, test, reference_w=w)
    assert {"AD_f", "AD_r", "AD_t"} <= set(out2) and out2["AD_f"] > 0
    f = peft.functional()
    with torch.no_grad():
        moved = f(w + 0.05, forget.X)
    assert out2["AD_f"] == pytest.approx(activation_distance(moved, lf), rel=1e-12)
    assert torch.equal(peft.vector(), w)  # evaluating at another w does not write it
    out3 = evaluate(peft, w, retain, forget, test, reference_w=w)
    assert out3["AD_f"] == 0.0 and out3["RA"] == out["RA"]
    out4 = evaluate(peft, w, retain, forget, test, linearize_at=w)
    assert out4["RA"] == out["RA"]
    # away from the linearization point the linearized model f(w̄) + J(w − w̄) is scored, not the network
    delta = 0.3 * torch.randn(w.shape, dtype=w.dtype, generator=torch.Generator().manual_seed(1))
    out5 = evaluate(peft, w + delta, retain, forget, test, linearize_at=w)
    for key, d in (("RA", retain), ("TA", test)):
        f0, jd = torch.func.jvp(lambda v: f(v, d.X), (w,), (delta,))
        assert out5[key] == accuracy(f0 + jd, d.y), key
    assert torch.equal(peft.vector(), w)
