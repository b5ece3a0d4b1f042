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
from . import unlearn as _unlearn_module  # noqa: E402
from .unlearn import Unlearner, UnlearnResult, unlearn, unlearning  # noqa: E402

# ``fastntk.unlearn`` is the function (the main entry point), which hides the module of the same name as an attribute
# of the package; the module's public names are attached to the function so that ``fastntk.unlearn.match_ridge`` (and
# ``fastntk.unlearn.Unlearner`` ...) keep working.  ``from fastntk.unlearn import match_ridge`` imports the module.
for _name in _unlearn_module.__all__:
    if _name != "unlearn":
        setattr(unlearn, _name, getattr(_unlearn_module, _name))
del _name

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
