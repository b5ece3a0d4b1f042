"""Shared tiny models for the tests (float64, eval mode, smooth activations)."""
from __future__ import annotations

import os

os.environ.setdefault("TIMM_FUSED_ATTN", "0")

import pytest
import torch
from hypothesis import settings
from torch import nn

# Deterministic example generation by default (a CI run never fails on a draw a previous run did not make);
# set HYPOTHESIS_PROFILE=explore for fresh random draws while developing.
settings.register_profile("fastntk", derandomize=True, deadline=None)
settings.register_profile("explore", derandomize=False, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fastntk"))


def tiny_bn_cnn(seed: int = 0, C: int = 3, act=nn.Tanh) -> nn.Module:
    """A small CNN with BatchNorm (random running stats) in float64, eval mode."""
    g = torch.Generator().manual_seed(seed)
    m = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), act(),
        nn.Conv2d(4, 5, 3), nn.BatchNorm2d(5), act(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, C),
    ).double()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.copy_(torch.randn(mod.num_features, generator=g, dtype=torch.float64) * 0.1)
                mod.running_var.copy_(torch.rand(mod.num_features, generator=g, dtype=torch.float64) + 0.5)
    return m.eval()


def tiny_vit(seed: int = 0, C: int = 3):
    import timm

    torch.manual_seed(seed)
    v = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=8, patch_size=4, num_classes=C,
                          depth=2, embed_dim=16, num_heads=2, mlp_ratio=2.0)
    return v.double().eval()


def linear_model(seed: int = 0, d_in: int = 12, d_feat: int = 20, C: int = 3) -> nn.Module:
    """Frozen random features + linear head: linear in the head parameters."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Sequential(nn.Flatten(), nn.Linear(d_in, d_feat), nn.Tanh()), nn.Linear(d_feat, C)).double().eval()


@pytest.fixture
def bn_cnn():
    return tiny_bn_cnn()


@pytest.fixture
def vit():
    return tiny_vit()
