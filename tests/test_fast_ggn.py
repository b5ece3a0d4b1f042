"""fastntk.operators._fast_ggn: every per-batch GGN product equals the torch.func reference (float64)."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import jacrev

from fastntk.operators import _fast_ggn as FG
from fastntk.peft import BatchNormPeft, NamedPeft, PromptPeft

IMPLS = ["affine_bn", "jacobian", "dual", "auto"]


def _cnn():
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=True), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 5, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(5), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3),
    ).double().eval()
    with torch.no_grad():  # non-trivial running statistics and affine params
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.5, 0.5)
    return m


def _vit():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=8, patch_size=4, embed_dim=16, depth=2, num_heads=2, num_classes=3)
    return vit.double().eval()


def _cases():
    cnn = _cnn()
    yield "cnn-bn", BatchNormPeft(cnn, include_head=True), torch.randn(6, 3, 8, 8, dtype=torch.float64)
    cnn2 = _cnn()  # a conv weight and a conv bias among the unknowns: W_t / b_t defined
    yield "cnn-named", NamedPeft(cnn2, ["0.weight", "0.bias", "4.*"]), torch.randn(5, 3, 8, 8, dtype=torch.float64)
    yield "vit-prompt", PromptPeft(_vit(), 2, deep=True, seed=0, include_head=True), torch.randn(4, 3, 8, 8, dtype=torch.float64)


CASES = list(_cases())


def _dense_ggn_t(f, w, xb, V):
    J = jacrev(lambda u: f(u, xb))(w).reshape(-1, w.shape[0])
    return (J.T @ (J @ V)).T


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("k", [1, 3])
def test_matches_reference(case, k):
    _, peft, xb = case
    f, w = peft.functional(), peft.vector()
    V = torch.randn(peft.p, k, dtype=torch.float64, generator=torch.Generator().manual_seed(k))
    ref = FG.gmat_batch_reference(f, w, xb, V)
    dense = _dense_ggn_t(f, w, xb, V)
    scale = ref.abs().max()
    assert ref.shape == (k, peft.p)
    assert (ref - dense).abs().max() <= 1e-10 * scale
    for name in IMPLS:
        out = FG.IMPLEMENTATIONS[name](f, w, xb, V)
        assert out.shape == (k, peft.p), name
        assert (out - ref).abs().max() <= 1e-10 * scale, name


def test_affine_mode_leaves_values_and_training_bn_alone():
    m = _cnn()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    y0 = m(x)
    with FG.affine_batchnorm():
        y1 = m(x)
    assert (y0 - y1).abs().max() <= 1e-12 * y0.abs().max()
    m.train()
    with FG.affine_batchnorm():
        m(x)  # training-mode BN takes the native path (batch statistics)


def test_auto_threshold():
    _, peft, xb = CASES[0]
    f, w = peft.functional(), peft.vector()
    V = torch.randn(peft.p, 2, dtype=torch.float64)
    a = FG.gmat_batch(f, w, xb, V, jac_threshold=1)
    b = FG.gmat_batch(f, w, xb, V, jac_threshold=10)
    assert (a - b).abs().max() <= 1e-10 * b.abs().max()
