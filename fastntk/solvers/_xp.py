"""Array-module helpers: one solver code path for NumPy, CuPy and torch arrays.

The solvers are written against the `array API standard <https://data-apis.org/array-api/>`_
through ``array-api-compat``: ``xp`` is always a *compat namespace* (``array_api_compat.numpy``,
``array_api_compat.cupy`` or ``array_api_compat.torch``), so the same loop runs on NumPy arrays,
CuPy arrays and torch tensors on any device (a CUDA tensor never leaves the GPU; only scalars —
dot products, norms — are read back, one host sync each).  The few operations the standard lacks
(a triangular solve, a column-pivoted QR, the host copy of a small array) live here, with one
branch per library.  Importing this module imports neither torch nor cupy.
"""
from __future__ import annotations

from typing import Any

import array_api_compat as aac
import numpy as np

__all__ = [
    "namespace", "numpy_namespace", "compat", "kind", "is_numpy", "np_dtype", "xp_dtype", "astype", "copy",
    "dot", "norm", "to_numpy", "from_numpy", "device", "take_columns", "solve_triangular", "is_array",
]


def is_array(x: Any) -> bool:
    """True for a NumPy/CuPy array or a torch tensor (no import of torch or cupy)."""
    return aac.is_array_api_obj(x) and not np.isscalar(x)


def namespace(*arrays):
    """The compat namespace of the arrays (``array_api_compat.numpy`` for Python lists/scalars)."""
    arrs = [a for a in arrays if a is not None and is_array(a)]
    return aac.array_namespace(*arrs) if arrs else numpy_namespace()


def numpy_namespace():
    import array_api_compat.numpy as anp  # noqa: PLC0415

    return anp


def compat(xp):
    """The compat namespace for a raw module (``numpy`` → ``array_api_compat.numpy``, ``cupy`` → ...)."""
    name = getattr(xp, "__name__", "")
    if name == "numpy":
        return numpy_namespace()
    if name == "cupy":
        import array_api_compat.cupy as acp  # noqa: PLC0415

        return acp
    if name == "torch":
        import array_api_compat.torch as atorch  # noqa: PLC0415

        return atorch
    return xp


def kind(xp) -> str:
    """``"numpy"``, ``"cupy"`` or ``"torch"`` for a compat namespace."""
    if aac.is_numpy_namespace(xp):
        return "numpy"
    if aac.is_cupy_namespace(xp):
        return "cupy"
    if aac.is_torch_namespace(xp):
        return "torch"
    return getattr(xp, "__name__", "array-api")


def is_numpy(xp) -> bool:
    return bool(aac.is_numpy_namespace(xp))


def np_dtype(dt) -> np.dtype:
    """The NumPy dtype of a NumPy/CuPy dtype or a torch dtype (``torch.float64`` → ``float64``)."""
    try:
        return np.dtype(dt)
    except TypeError:
        return np.dtype(str(dt).replace("torch.", ""))


def xp_dtype(xp, dt):
    """The namespace's dtype object for NumPy dtype ``dt`` (``xp.float64`` ...)."""
    return getattr(xp, np_dtype(dt).name)


def astype(xp, x, dt, *, copy: bool = False):
    """``x`` in dtype ``dt`` (a NumPy dtype), without a copy when it already is."""
    return xp.astype(x, xp_dtype(xp, dt), copy=copy)


def copy(xp, x):
    return xp.asarray(x, copy=True)


def dot(a, b) -> float:
    """``aᵀb`` of two vectors as a Python float (one host sync on a GPU)."""
    return float(a @ b)


def norm(xp, a, axis=None):
    """Euclidean norm (of every column with ``axis=0``); a Python float for ``axis=None``."""
    v = xp.linalg.vector_norm(a, axis=axis)
    return float(v) if axis is None else v


def device(x):
    return aac.device(x)


def to_numpy(x) -> np.ndarray:
    """A host NumPy copy (or view) of any array: NumPy, CuPy, torch on any device, or a scalar/list."""
    if isinstance(x, np.ndarray):
        return x
    if aac.is_cupy_array(x):
        return x.get()
    if aac.is_torch_array(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def from_numpy(xp, arr, like):
    """Host array ``arr`` as an array of namespace ``xp`` on the device of ``like``."""
    return xp.asarray(np.ascontiguousarray(arr), device=device(like))


def take_columns(xp, A, mask_host: np.ndarray):
    """``A[:, mask]`` for a host boolean mask (the standard's boolean indexing is sole-index only)."""
    idx = np.flatnonzero(np.asarray(mask_host, dtype=bool))
    if idx.size == A.shape[1]:
        return A
    return xp.take(A, xp.asarray(idx, device=device(A)), axis=1)


def solve_triangular(xp, L, B, *, lower: bool):
    """``L⁻¹ B`` for triangular ``L`` (SciPy, torch or CuPy's own triangular solve)."""
    k = kind(xp)
    if k == "numpy":
        import scipy.linalg as sla  # noqa: PLC0415

        return sla.solve_triangular(L, B, lower=lower)
    if k == "torch":
        import torch  # noqa: PLC0415

        return torch.linalg.solve_triangular(L, B, upper=not lower)
    if k == "cupy":
        import cupyx.scipy.linalg as csla  # noqa: PLC0415

        return csla.solve_triangular(L, B, lower=lower)
    return xp.linalg.solve(L, B)  # pragma: no cover - other array API libraries


def orth_qr(xp, P):
    """(Q, |diag R|) of a QR of P: column-pivoted (rank-revealing) on NumPy, plain elsewhere."""
    if is_numpy(xp):
        import scipy.linalg as sla  # noqa: PLC0415

        Q, R, _ = sla.qr(P, mode="economic", pivoting=True)
    else:
        Q, R = xp.linalg.qr(P)
    return Q, xp.abs(xp.linalg.diagonal(R))
