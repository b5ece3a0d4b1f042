"""Floating-point settings fastntk uses on GPUs.

PyTorch lets cuDNN convolutions run in TF32 by default (``torch.backends.cudnn.allow_tf32 = True``), and
``torch.backends.cuda.matmul.allow_tf32`` turns TF32 on for matrix products.  TF32 keeps a 10-bit mantissa:
``benchmarks/bench_precision.py`` measures a relative error of 2.9e-3 in the update Δ when the Gram products
read TF32 inputs (2,000 Fashion-MNIST images, float64 reference), 28× the float32 CG tolerance (1e-4); a
bfloat16 Jacobian cache gives 2e-2 and bfloat16 passes 9e-2.  fastntk therefore switches TF32 off while it
computes (:func:`strict_precision`, used by :func:`fastntk.unlearn.unlearn`, :class:`fastntk.unlearn.Unlearner`
and :func:`fastntk.unlearn.match_ridge`) and restores the caller's flags afterwards; pass
``allow_tf32=True`` to trade that accuracy for speed.  On CPUs the flags have no effect.
"""
from __future__ import annotations

import contextlib
import functools

import torch

__all__ = ["strict_precision", "with_strict_precision"]


@contextlib.contextmanager
def strict_precision(allow_tf32: bool = False):
    """Set ``torch.backends.cuda.matmul.allow_tf32`` and ``torch.backends.cudnn.allow_tf32`` for the block; restore after."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = bool(allow_tf32)
    torch.backends.cudnn.allow_tf32 = bool(allow_tf32)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def with_strict_precision(fn):
    """Decorator: run ``fn`` under :func:`strict_precision`; adds the keyword ``allow_tf32=False``."""

    @functools.wraps(fn)
    def wrapper(*args, allow_tf32: bool = False, **kwargs):
        if not isinstance(allow_tf32, bool):
            from .errors import InvalidInputError

            raise InvalidInputError(f"allow_tf32 must be True or False, got {allow_tf32!r}")
        with strict_precision(allow_tf32):
            return fn(*args, **kwargs)

    return wrapper
