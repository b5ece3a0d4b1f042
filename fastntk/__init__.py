"""fastntk: scalable NTK-based machine unlearning restricted to PEFT parameters (Fast-NTK)."""
from __future__ import annotations

__version__ = "0.1.0"

from . import errors  # noqa: F401
