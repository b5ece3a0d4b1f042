"""Small CNNs registered in timm's model registry, for fast CPU experiments.

``timm.create_model("fastntk_cnn_small", num_classes=10)`` -- three conv-BN-ReLU
stages + global pool + linear head (the shape of the prototype in the issues:
a small BN CNN whose BN + head PEFT set has about a thousand parameters).
They follow timm's classifier API (``get_classifier``, ``reset_classifier``,
``forward_features``, ``forward_head``) so every fastntk tool treats them like
any timm CNN.  Importing :mod:`fastntk` registers them.
"""
from __future__ import annotations

from torch import nn

__all__ = ["SmallCNN"]


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_chans: int = 3, widths=(16, 32, 64), drop_rate: float = 0.0, **kwargs):
        super().__init__()
        layers = []
        c = in_chans
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(c, w, 3, stride=1 if i == 0 else 2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=False)]
            c = w
        self.features = nn.Sequential(*layers)
        self.num_features = c
        self.num_classes = num_classes
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes) if num_classes > 0 else nn.Identity()

    def get_classifier(self):
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None):
        self.num_classes = num_classes
        ref = next(self.parameters())
        self.fc = (nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()).to(ref.device, ref.dtype)

    def forward_features(self, x):
        return self.features(x)

    def forward_head(self, x, pre_logits: bool = False):
        x = self.global_pool(x).flatten(1)
        return x if pre_logits else self.fc(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def _register():
    try:
        from timm.models import register_model
        from timm.models import is_model
    except Exception:  # pragma: no cover - timm missing
        return
    if is_model("fastntk_cnn_small"):
        return

    @register_model
    def fastntk_cnn_small(pretrained: bool = False, **kwargs) -> SmallCNN:
        """fastntk's small BN CNN (16-32-64 channels); no pretrained weights."""
        if pretrained:
            raise RuntimeError("fastntk_cnn_small has no pretrained weights")
        kwargs.pop("zero_init_last", None)
        return SmallCNN(**kwargs)

    @register_model
    def fastntk_cnn_tiny(pretrained: bool = False, **kwargs) -> SmallCNN:
        """fastntk's tiny BN CNN (8-16-32 channels); no pretrained weights."""
        if pretrained:
            raise RuntimeError("fastntk_cnn_tiny has no pretrained weights")
        kwargs.pop("zero_init_last", None)
        return SmallCNN(widths=(8, 16, 32), **kwargs)

    @register_model
    def fastntk_vit_tiny(pretrained: bool = False, img_size: int = 28, **kwargs):
        """A small timm ViT for 28-32 px images (patch 7 at 28 px / 8 at 32 px, dim 96, depth 4, 3 heads), for
        visual-prompt PEFT on CPUs; no pretrained weights."""
        from timm.models.vision_transformer import VisionTransformer

        if pretrained:
            raise RuntimeError("fastntk_vit_tiny has no pretrained weights")
        kwargs.pop("zero_init_last", None)
        for k in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(k, None)
        patch = 7 if img_size % 7 == 0 else 8 if img_size % 8 == 0 else 4
        return VisionTransformer(img_size=img_size, patch_size=patch, embed_dim=96, depth=4, num_heads=3, mlp_ratio=2.0, **kwargs)


_register()
