"""Linear maps built from autodiff: ``J``, ``Jᵀ``, the NTK (dual), the Gauss-Newton (primal).

Nothing here solves anything.  Build a Jacobian source with
:func:`make_jacobian` (streamed or cached), then wrap it::

    src = make_jacobian(peft, X, strategy="stream")
    J = JacobianLinearOperator(src)          # (nC, p)
    K = NTKLinearOperator(src, ridge=1e-3)   # (nC, nC)  Θ + λI
    H = GGNLinearOperator(src, ridge=1e-3)   # (p, p)    G + λI
    H.to_scipy()                              # scipy.sparse.linalg.LinearOperator
"""
from .base import TorchLinearOperator
from .ggn import GGNLinearOperator
from .jacobian import JacobianLinearOperator
from .linearization import CachedJacobian, StreamingJacobian, jacobian_bytes, make_jacobian
from .ntk import NTKLinearOperator

__all__ = [
    "TorchLinearOperator",
    "JacobianLinearOperator",
    "NTKLinearOperator",
    "GGNLinearOperator",
    "StreamingJacobian",
    "CachedJacobian",
    "make_jacobian",
    "jacobian_bytes",
]
