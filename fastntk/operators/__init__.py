"""Linear maps built from autodiff: ``J``, ``Jᵀ``, the NTK (dual), the Gauss-Newton (primal).

Nothing here solves anything.  Build a Jacobian source with
:func:`make_jacobian` (streamed or cached), then wrap it::

    src = make_jacobian(peft, X, strategy="stream")
    J = JacobianLinearOperator(src)          # (nC, p)
    K = NTKLinearOperator(src, ridge=1e-3)   # (nC, nC)  Θ + λI
    H = GGNLinearOperator(src, ridge=1e-3)   # (p, p)    G + λI
    H.to_scipy()                              # scipy.sparse.linalg.LinearOperator

Sketched curvature (k rows per sample, ``E[J̃ᵀJ̃] = G``; not residual rows)::

    S = SketchedJacobian(peft, X, k=2, kind="rademacher")   # or loss="ce", kind="fisher"
    H = GGNLinearOperator(S, ridge=1e-3)                     # G̃ + λI
    est = half_sketch_error(S, rhs, ridge=1e-3)              # est.x, est.error
"""
from .base import TorchLinearOperator
from .ggn import GGNLinearOperator
from .jacobian import JacobianLinearOperator
from .linearization import CachedJacobian, StreamingJacobian, jacobian_bytes, make_jacobian
from .ntk import NTKLinearOperator
from .persample import PerSampleGradients
from .sketch import SketchedJacobian, draw_cotangents, half_sketch_error

__all__ = [
    "TorchLinearOperator",
    "JacobianLinearOperator",
    "NTKLinearOperator",
    "GGNLinearOperator",
    "StreamingJacobian",
    "CachedJacobian",
    "make_jacobian",
    "jacobian_bytes",
    "PerSampleGradients",
    "SketchedJacobian",
    "draw_cotangents",
    "half_sketch_error",
]
from .schur import SchurComplementLinearOperator  # noqa: E402
from .sum import SumGGNLinearOperator  # noqa: E402

__all__ += ["SumGGNLinearOperator", "SchurComplementLinearOperator"]
