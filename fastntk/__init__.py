"""fastntk: scalable NTK-based machine unlearning restricted to PEFT parameters (Fast-NTK).

Main entry points::

    from fastntk import BatchNormPeft, PromptPeft, NamedPeft, unlearn, Unlearner, unlearning
"""
from __future__ import annotations

import os as _os

# timm's fused attention has no forward-mode AD; the PEFT sets also switch it off per model.
_os.environ.setdefault("TIMM_FUSED_ATTN", "0")

__version__ = "0.1.0"

from . import errors  # noqa: E402,F401
from . import models as _models  # noqa: E402,F401  (registers fastntk_cnn_* in timm)
from .peft import BatchNormPeft, NamedPeft, PeftSet, PromptPeft, make_peft  # noqa: E402
from .unlearn import Unlearner, UnlearnResult, unlearn, unlearning  # noqa: E402

__all__ = [
    "errors",
    "PeftSet",
    "BatchNormPeft",
    "PromptPeft",
    "NamedPeft",
    "make_peft",
    "unlearn",
    "Unlearner",
    "UnlearnResult",
    "unlearning",
]
