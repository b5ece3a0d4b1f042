import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from fastntk.errors import DeviceError, DTypeError, PeftError, ShapeError
from fastntk.peft import BatchNormPeft, NamedPeft, PromptPeft, PromptedViT, make_peft
from tests.conftest import tiny_bn_cnn, tiny_vit


def test_batchnorm_set_resnet18_p():
    import timm

    m = timm.create_model("resnet18", num_classes=10, zero_init_last=False).eval()
    assert BatchNormPeft(m).p == 9600
    head = BatchNormPeft(m, include_head=True)
    assert head.p == 9600 + 512 * 10 + 10
    assert head.names[-2:] == ["fc.weight", "fc.bias"]


def test_batchnorm_set_selects_affine(bn_cnn):
    s = BatchNormPeft(bn_cnn)
    assert s.names == ["1.weight", "1.bias", "4.weight", "4.bias"]
    assert s.p == 2 * 4 + 2 * 5


@settings(deadline=None, max_examples=10)
@given(seed=st.integers(0, 1000), head=st.booleans())
def test_flatten_unflatten_roundtrip(seed, head):
    s = BatchNormPeft(tiny_bn_cnn(seed), include_head=head)
    w = torch.randn(s.p, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(s.flatten(s.unflatten(w)), w)
    d = s.params()
    assert all(torch.equal(s.unflatten(s.flatten(d))[k], d[k]) for k in d)


def test_functional_matches_model_in_eval_mode(bn_cnn):
    s = BatchNormPeft(bn_cnn, include_head=True)
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    bn_cnn.train()  # the functional must still evaluate in eval mode and restore the flag
    out = s.functional()(s.vector(), x)
    assert bn_cnn.training
    bn_cnn.eval()
    assert torch.allclose(out, bn_cnn(x))


def test_write_changes_model_and_functional_agrees(bn_cnn):
    s = BatchNormPeft(bn_cnn)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    w = s.vector() + 0.1
    ref = s.functional()(w, x)
    s.write(w)
    assert torch.allclose(bn_cnn(x), ref)
    assert torch.equal(s.vector(), w)


def test_prompt_set_shallow_and_deep():
    v = tiny_vit()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    sh = PromptPeft(v, num_prompts=3, deep=False, seed=1, include_head=False)
    assert isinstance(sh.model, PromptedViT)
    assert sh.p == 3 * 16
    assert sh.model(x).shape == (2, 3)
    deep = PromptPeft(tiny_vit(), num_prompts=2, deep=True, seed=1, include_head=True)
    assert deep.p == 2 * 2 * 16 + 16 * 3 + 3
    # reproducible init from the seed
    again = PromptPeft(tiny_vit(), num_prompts=2, deep=True, seed=1, include_head=True)
    assert torch.equal(deep.vector(), again.vector())
    other = PromptPeft(tiny_vit(), num_prompts=2, deep=True, seed=2, include_head=True)
    assert not torch.equal(deep.vector()[:64], other.vector()[:64])


def test_prompts_change_output_and_token_layout():
    v = tiny_vit()
    s = PromptPeft(v, num_prompts=2, include_head=False)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    feats = s.model.forward_features(x)
    assert feats.shape[1] == v.num_prefix_tokens + 2 + 4  # cls + prompts + 2x2 patches
    f = s.functional()
    assert not torch.allclose(f(s.vector(), x), f(s.vector() + torch.randn(s.p, dtype=torch.float64), x))


def test_prompt_jvp_works_with_fused_attention_disabled():
    v = tiny_vit()
    for m in v.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = True
    s = PromptPeft(v, num_prompts=2)
    assert all(not m.fused_attn for m in s.model.modules() if hasattr(m, "fused_attn"))
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    f = s.functional()
    _, t = torch.func.jvp(lambda w: f(w, x), (s.vector(),), (torch.ones(s.p, dtype=torch.float64),))
    assert torch.isfinite(t).all()


def test_named_set_patterns():
    v = tiny_vit()
    s = NamedPeft(v, ["*norm*.weight", "*norm*.bias"])
    assert all("norm" in n for n in s.names) and len(s.names) > 0
    h = NamedPeft(v, "head.*")
    assert h.names == ["head.weight", "head.bias"]
    assert make_peft(v, "named", patterns=["head.*"]).p == h.p


def test_errors():
    mlp = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(PeftError, match="no affine BatchNorm"):
        BatchNormPeft(mlp)
    with pytest.raises(PeftError, match="VisionTransformer"):
        PromptPeft(tiny_bn_cnn())
    with pytest.raises(PeftError, match="matches"):
        NamedPeft(mlp, ["nothing*"])
    with pytest.raises(PeftError):
        make_peft(mlp, "lora")
    s = BatchNormPeft(tiny_bn_cnn())
    with pytest.raises(ShapeError):
        s.unflatten(torch.zeros(s.p + 1, dtype=torch.float64))
    with pytest.raises(DTypeError):
        s.write(torch.zeros(s.p, dtype=torch.float32))
    with pytest.raises(DTypeError):
        s.write([0.0] * s.p)
    with pytest.raises(DeviceError):
        s.check_vector(torch.zeros(s.p, dtype=torch.float64, device="meta"))


def test_vit_without_token_layout():
    class Fake(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch_embed = nn.Conv2d(3, 4, 2)
            self.blocks = nn.ModuleList([nn.Identity()])

    with pytest.raises(PeftError, match="lacks"):
        PromptPeft(Fake())
