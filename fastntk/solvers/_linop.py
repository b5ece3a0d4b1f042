"""One normaliser for every solver input (the analogue of SciPy's ``make_system``).

Every public solver calls :func:`make_system` (or :func:`as_operator`) first.  It

* turns the operator ``A`` into a :class:`Operator` (shape, dtype, array module ``xp``,
  ``matvec``/``matmat`` that count operator applications),
* picks the backend (``"scipy"``, ``"numba"``, ``"cupy"``) and says why (``reason``),
* validates ``b``, ``x0``, ``M``, ``rtol``, ``atol``, ``maxiter``, ``on_fail``, ``callback``,

and raises the typed errors of :mod:`fastntk.errors` *before any matvec*.

Accepted operators: a NumPy array, anything :func:`scipy.sparse.linalg.aslinearoperator` accepts
(LinearOperator, sparse matrix), an object with ``to_scipy()`` (or ``to_cupy()`` on the CuPy
path), any object with ``.shape``, ``.dtype`` and ``.matvec`` (``.matmat`` optional), a CuPy
array or a ``cupyx.scipy.sparse.linalg.LinearOperator`` (then the CuPy backend is used).
This module never imports torch, cupy or numba at import time.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from ..errors import (
    BackendUnavailableError,
    DTypeError,
    InvalidInputError,
    ShapeError,
)

BACKENDS = ("auto", "scipy", "numba", "cupy")
ON_FAIL = ("raise", "warn", "ignore")

# Crossover for backend="auto" on CPU (benchmarks/results/numba_kernels.md, 2-core box shared with
# other jobs, so noisy): fused CG update numba/numpy speed-up 1.2-1.55x at n=1e4..1e6, Jacobi-PCG
# update 1.7-3.0x; at n=1e3 parallel Numba lost badly under CPU contention (10 ms vs 9 µs), and at
# n<1e5 the vector work is negligible next to a matvec, so the conservative crossover is 1e5.  Below it, SciPy's CG
# (NumPy vector updates, negligible overhead) is used.  Overwritten only by re-measuring.
NUMBA_CROSSOVER_N = 100_000

_GPU_INSTALL_HINT = (
    "Install a CUDA build of CuPy: `pip install fastntk[gpu]` (or `pip install cupy-cuda12x` / "
    "`pip install cupy-cuda13x`, matching your CUDA driver), and run on a machine with an NVIDIA GPU; "
    "otherwise use backend='scipy' or 'auto'."
)


# --------------------------------------------------------------------------------------------
# array-module helpers
# --------------------------------------------------------------------------------------------
def is_cupy_object(obj: Any) -> bool:
    """True for a CuPy array or a ``cupyx.scipy.sparse.linalg`` operator (no cupy import)."""
    mod = type(obj).__module__ or ""
    if mod.startswith("cupy") or mod.startswith("cupyx"):
        return True
    return any((c.__module__ or "").startswith("cupyx") for c in type(obj).__mro__[1:])


def get_xp(x: Any):
    """NumPy or CuPy, the module that owns array ``x``."""
    if is_cupy_object(x):
        import cupy  # noqa: PLC0415

        return cupy
    return np


def numba_available() -> bool:
    from . import _numba_kernels  # noqa: PLC0415

    return _numba_kernels.HAVE_NUMBA


def require_cupy():
    """Import CuPy and check that a CUDA device exists, else BackendUnavailableError."""
    try:
        import cupy  # noqa: PLC0415
    except Exception as exc:  # ImportError or a broken CUDA install
        raise BackendUnavailableError(f"backend='cupy' needs CuPy, which cannot be imported ({exc}). "
                                      + _GPU_INSTALL_HINT) from exc
    try:
        ndev = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        raise BackendUnavailableError(f"backend='cupy': CuPy is installed but no CUDA device is usable "
                                      f"({exc}). " + _GPU_INSTALL_HINT) from exc
    if ndev < 1:
        raise BackendUnavailableError("backend='cupy': no CUDA device found. " + _GPU_INSTALL_HINT)
    return cupy


def _to_array(x: Any, name: str, xp) -> Any:
    """Convert a vector/matrix argument to an array of module xp (no torch import)."""
    if xp is np:
        if is_cupy_object(x):
            raise InvalidInputError(f"{name} is a CuPy array but the operator lives on the CPU; "
                                    f"move it with cupy.asnumpy({name}) or pass a GPU operator.")
        try:
            arr = np.asarray(x)
        except Exception as exc:  # e.g. a CUDA torch tensor
            raise DTypeError(f"{name} cannot be converted to a NumPy array ({exc}); pass a NumPy array "
                             f"or a CPU tensor.") from exc
    else:
        if hasattr(x, "__cuda_array_interface__") or is_cupy_object(x):
            arr = xp.asarray(x)
        elif hasattr(x, "__dlpack__") and not isinstance(x, np.ndarray):
            arr = xp.from_dlpack(x)
        else:
            arr = xp.asarray(np.asarray(x))
    if arr.dtype.kind not in "fiub":
        raise DTypeError(f"{name} has dtype {arr.dtype}; fastntk solvers need real floating point "
                         f"(float32 or float64).")
    return arr


def result_dtype(*dtypes) -> np.dtype:
    dt = np.result_type(*[np.dtype(d) for d in dtypes if d is not None])
    if dt.kind == "c":
        raise DTypeError(f"complex dtype {dt} is not supported; the solvers are for real symmetric "
                         f"operators.")
    if dt.kind != "f" or dt.itemsize < 4:
        dt = np.dtype(np.float64)
    if dt.itemsize > 8:
        dt = np.dtype(np.float64)
    return dt


# --------------------------------------------------------------------------------------------
# the operator wrapper
# --------------------------------------------------------------------------------------------
class Operator:
    """A square operator with counted ``matvec``/``matmat`` on one array module.

    ``n_matvecs`` counts operator applications *per column* (a matmat on k columns counts k);
    ``n_matmat_calls`` counts calls (a block matmat of r columns is one call, which an operator
    that shares forward passes makes much cheaper than r matvecs).
    """

    def __init__(self, shape, dtype, xp, matvec: Callable, matmat: Optional[Callable], source: Any,
                 kind: str):
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(dtype)
        self.xp = xp
        self._mv = matvec
        self._mm = matmat
        self.source = source
        self.kind = kind
        self.n_matvecs = 0
        self.n_matmat_calls = 0

    @property
    def n(self) -> int:
        return self.shape[0]

    def matvec(self, x):
        self.n_matvecs += 1
        self.n_matmat_calls += 1
        y = self._mv(x)
        return self.xp.asarray(y).reshape(-1)

    def matmat(self, X):
        k = X.shape[1]
        self.n_matvecs += k
        self.n_matmat_calls += 1
        if self._mm is not None:
            Y = self.xp.asarray(self._mm(X))
            return Y.reshape(self.shape[0], k)
        cols = [self.xp.asarray(self._mv(X[:, j])).reshape(-1) for j in range(k)]
        return self.xp.stack(cols, axis=1) if cols else self.xp.zeros((self.shape[0], 0), X.dtype)

    __matmul__ = lambda self, x: self.matvec(x) if x.ndim == 1 else self.matmat(x)  # noqa: E731

    def diagonal(self):
        src = self.source
        if hasattr(src, "diagonal") and callable(src.diagonal):
            return self.xp.asarray(src.diagonal())
        raise InvalidInputError("the operator has no diagonal(); pass the diagonal explicitly "
                                "(JacobiPreconditioner(diag)) or use another preconditioner.")

    def to_scipy(self):
        """A SciPy LinearOperator that counts through this wrapper (CPU only)."""
        import scipy.sparse.linalg as spla  # noqa: PLC0415

        return spla.LinearOperator(self.shape, matvec=self.matvec, matmat=self.matmat, rmatvec=self.matvec,
                                   dtype=self.dtype)


def _check_square(shape, what="operator A"):
    if len(shape) != 2:
        raise ShapeError(f"{what} must be 2-D (n, n); got shape {tuple(shape)}.")
    if shape[0] != shape[1]:
        raise ShapeError(f"{what} must be square; got shape {tuple(shape)}. The solvers need a symmetric "
                         f"(positive definite) operator.")
    if shape[0] == 0:
        raise ShapeError(f"{what} is empty (shape {tuple(shape)}).")


def as_operator(A: Any, *, prefer_gpu: bool = False) -> Operator:
    """Wrap any accepted operator (see module doc) in a counting :class:`Operator`."""
    if isinstance(A, Operator):
        A.n_matvecs = 0
        A.n_matmat_calls = 0
        return A
    if A is None:
        raise InvalidInputError("operator A is None.")
    # fastntk / curvlinops style operators with an export
    if not is_cupy_object(A) and not isinstance(A, np.ndarray):
        if prefer_gpu and hasattr(A, "to_cupy") and callable(A.to_cupy):
            A = A.to_cupy()
        elif hasattr(A, "to_scipy") and callable(A.to_scipy):
            A = A.to_scipy()
    if is_cupy_object(A):
        cupy = require_cupy()
        shape = tuple(A.shape)
        _check_square(shape)
        if isinstance(A, cupy.ndarray):
            M = A if A.dtype.kind == "f" else A.astype(cupy.float64)
            return Operator(shape, M.dtype, cupy, lambda x: M @ x, lambda X: M @ X, A, "cupy-dense")
        mm = getattr(A, "matmat", None)
        return Operator(shape, A.dtype, cupy, A.matvec, mm, A, "cupy-linop")
    if isinstance(A, np.ndarray) or isinstance(A, (list, tuple)):
        M = np.asarray(A)
        if M.dtype.kind not in "fiub":
            raise DTypeError(f"operator A has dtype {M.dtype}; need real floating point.")
        _check_square(M.shape)
        if M.dtype.kind != "f":
            M = M.astype(np.float64)
        if not np.all(np.isfinite(M)):
            raise InvalidInputError("operator A contains NaN or Inf.")
        return Operator(M.shape, M.dtype, np, lambda x: M @ x, lambda X: M @ X, M, "dense")
    # scipy sparse matrices and LinearOperators
    try:
        import scipy.sparse as sp  # noqa: PLC0415
        import scipy.sparse.linalg as spla  # noqa: PLC0415
    except ImportError:  # pragma: no cover
        sp = spla = None
    if spla is not None and (isinstance(A, spla.LinearOperator) or sp.issparse(A)):
        shape = tuple(A.shape)
        _check_square(shape)
        L = spla.aslinearoperator(A)
        dt = L.dtype if L.dtype is not None else np.float64
        return Operator(shape, dt, np, L.matvec, L.matmat, A, "scipy")
    if hasattr(A, "shape") and hasattr(A, "matvec"):
        shape = tuple(A.shape)
        _check_square(shape)
        dt = getattr(A, "dtype", None) or np.float64
        try:
            dt = np.dtype(dt)
        except TypeError:  # e.g. a torch dtype
            dt = np.dtype(str(dt).replace("torch.", ""))
        mm = getattr(A, "matmat", None)
        return Operator(shape, dt, np, A.matvec, mm if callable(mm) else None, A, "duck")
    if spla is not None:
        try:
            L = spla.aslinearoperator(A)
        except Exception as exc:
            raise InvalidInputError(f"cannot use {type(A).__name__} as a linear operator: pass a NumPy "
                                    f"array, a SciPy LinearOperator, an object with to_scipy(), or an "
                                    f"object with .shape, .dtype and .matvec ({exc}).") from exc
        _check_square(tuple(L.shape))
        return Operator(L.shape, L.dtype or np.float64, np, L.matvec, L.matmat, A, "scipy")
    raise InvalidInputError(f"cannot use {type(A).__name__} as a linear operator.")  # pragma: no cover


def as_preconditioner(M: Any, n: int, xp) -> Optional[Operator]:
    """Wrap a preconditioner (applied as M ≈ A⁻¹); ShapeError if it is not (n, n)."""
    if M is None:
        return None
    if callable(M) and not hasattr(M, "shape"):
        return Operator((n, n), np.float64, xp, M, None, M, "callable")
    shape = getattr(M, "shape", None)
    if shape is None:
        raise InvalidInputError(f"preconditioner M of type {type(M).__name__} has no shape.")
    shape = tuple(shape)
    if shape != (n, n):
        raise ShapeError(f"preconditioner M has shape {shape} but the operator is ({n}, {n}); build the "
                         f"preconditioner from the same operator.")
    if hasattr(M, "matvec") and hasattr(M, "build_matvecs"):  # fastntk preconditioner: array-generic
        mm = getattr(M, "matmat", None)
        return Operator(shape, getattr(M, "dtype", np.float64), xp, M.matvec, mm, M, "precond")
    if xp is not np and not is_cupy_object(M):
        raise InvalidInputError("preconditioner M lives on the CPU but the operator is on the GPU; use a "
                                "fastntk preconditioner (array-generic) or a CuPy operator.")
    op = as_operator(M)
    op.kind = "precond-" + op.kind
    return op


# --------------------------------------------------------------------------------------------
# scalar arguments
# --------------------------------------------------------------------------------------------
def check_tolerances(rtol, atol, maxiter, n: int, default_factor: int = 10):
    for name, v in (("rtol", rtol), ("atol", atol)):
        if not isinstance(v, numbers.Real) or isinstance(v, bool):
            raise InvalidInputError(f"{name} must be a real number; got {v!r}.")
        if not math.isfinite(v) or v < 0:
            raise InvalidInputError(f"{name} must be finite and >= 0; got {v!r}.")
    if rtol == 0 and atol == 0:
        raise InvalidInputError("rtol and atol are both 0: the solver could never stop. Set rtol > 0 "
                                "(e.g. 1e-6) or atol > 0.")
    if maxiter is None:
        maxiter = default_factor * n
    if isinstance(maxiter, bool) or not isinstance(maxiter, numbers.Integral):
        raise InvalidInputError(f"maxiter must be a positive integer or None; got {maxiter!r}.")
    if maxiter <= 0:
        raise InvalidInputError(f"maxiter must be > 0; got {maxiter}.")
    return float(rtol), float(atol), int(maxiter)


def check_on_fail(on_fail):
    if on_fail not in ON_FAIL:
        raise InvalidInputError(f"on_fail must be one of {ON_FAIL}; got {on_fail!r}.")


def check_callback(callback):
    if callback is not None and not callable(callback):
        raise InvalidInputError(f"callback must be callable or None; got {type(callback).__name__}.")


# --------------------------------------------------------------------------------------------
# backend choice
# --------------------------------------------------------------------------------------------
def resolve_backend(backend: str, A: Any, b: Any, n: int, *, own_loop_only: bool = False):
    """Return (backend, reason).  ``own_loop_only``: the method has no SciPy version."""
    if backend not in BACKENDS:
        raise InvalidInputError(f"backend must be one of {BACKENDS}; got {backend!r}.")
    on_gpu = is_cupy_object(A) or is_cupy_object(b)
    if backend == "cupy":
        require_cupy()
        return "cupy", "requested"
    if on_gpu:
        if backend in ("scipy", "numba"):
            raise InvalidInputError(f"backend={backend!r} runs on the CPU but the operator/vector is a CuPy "
                                    f"object; use backend='cupy' or 'auto', or move the data to the host.")
        require_cupy()
        return "cupy", "auto: operator lives on the GPU"
    if backend == "auto":
        if n >= NUMBA_CROSSOVER_N and numba_available():
            return "numba", f"auto: n={n} >= measured Numba crossover {NUMBA_CROSSOVER_N}"
        if own_loop_only:
            return "numba" if numba_available() else "numpy", "auto: own loop (no SciPy version)"
        return "scipy", f"auto: n={n} < measured Numba crossover {NUMBA_CROSSOVER_N}" + (
            "" if numba_available() else " (numba not installed)")
    if backend == "numba" and not numba_available():
        return "numpy", "numba requested but not installed: own loop with NumPy kernels"
    return backend, "requested"


# --------------------------------------------------------------------------------------------
# the system
# --------------------------------------------------------------------------------------------
@dataclass
class System:
    A: Operator
    b: Any  # (n,) or (n, k)
    x0: Any
    M: Optional[Operator]
    rtol: float
    atol: float
    maxiter: int
    backend: str
    reason: str
    xp: Any
    dtype: np.dtype
    bnorm: Any  # float, or array per column
    tolerance: Any
    info: dict = field(default_factory=dict)


def _check_finite(arr, name, xp):
    if not bool(xp.all(xp.isfinite(arr))):
        raise InvalidInputError(f"{name} contains NaN or Inf; clean the right-hand side (e.g. check the "
                                f"targets and the model outputs) before solving.")


def make_system(A, b, *, x0=None, M=None, rtol=1e-6, atol=0.0, maxiter=None, backend="auto",
                on_fail="raise", callback=None, block=False, own_loop_only=False,
                maxiter_factor=10) -> System:
    """Validate and convert every input of a solve.  No operator application happens here."""
    check_on_fail(on_fail)
    check_callback(callback)
    if backend not in BACKENDS:
        raise InvalidInputError(f"backend must be one of {BACKENDS}; got {backend!r}.")
    if backend == "cupy":
        require_cupy()
    op = as_operator(A, prefer_gpu=(backend == "cupy") or is_cupy_object(b))
    n = op.n
    xp = op.xp
    if backend == "cupy" and xp is np:  # CPU operator, GPU requested: move a dense matrix over
        raise InvalidInputError("backend='cupy' needs a GPU operator: a CuPy array, a cupyx LinearOperator "
                                "or an object with to_cupy().")
    bb = _to_array(b, "b", xp)
    if block:
        if bb.ndim == 1:
            bb = bb.reshape(-1, 1)
        if bb.ndim != 2 or bb.shape[0] != n:
            raise ShapeError(f"B must have shape ({n}, k) to match the operator ({n}, {n}); got {tuple(bb.shape)}.")
        if bb.shape[1] == 0:
            raise ShapeError("B has no columns.")
    else:
        if bb.ndim == 2 and bb.shape[1] == 1:
            bb = bb.reshape(-1)
        if bb.ndim != 1 or bb.shape[0] != n:
            raise ShapeError(f"b must have shape ({n},) to match the operator ({n}, {n}); got {tuple(bb.shape)}."
                             + (" Use block_cg for several right-hand sides." if bb.ndim == 2 else ""))
    _check_finite(bb, "b", xp)
    rtol, atol, maxiter = check_tolerances(rtol, atol, maxiter, n, maxiter_factor)
    dt = result_dtype(op.dtype, bb.dtype)
    bb = bb.astype(dt, copy=False)
    if x0 is not None:
        xx = _to_array(x0, "x0", xp)
        if block:
            if xx.ndim == 1:
                xx = xx.reshape(-1, 1)
            if tuple(xx.shape) != tuple(bb.shape):
                raise ShapeError(f"X0 has shape {tuple(xx.shape)}, expected {tuple(bb.shape)}.")
        else:
            if xx.ndim == 2 and xx.shape[1] == 1:
                xx = xx.reshape(-1)
            if tuple(xx.shape) != (n,):
                raise ShapeError(f"x0 has shape {tuple(xx.shape)}, expected ({n},).")
        _check_finite(xx, "x0", xp)
        xx = xx.astype(dt, copy=True)
    else:
        xx = None
    Mop = as_preconditioner(M, n, xp)
    be, reason = resolve_backend(backend, A, b, n, own_loop_only=own_loop_only)
    if block:
        bnorm = xp.linalg.norm(bb, axis=0)
        bnorm_h = np.asarray(bnorm.get() if xp is not np else bnorm, dtype=np.float64)
        tol = np.maximum(rtol * bnorm_h, atol)
        bnorm = bnorm_h
    else:
        bnorm = float(xp.linalg.norm(bb))
        tol = max(rtol * bnorm, atol)
    return System(op, bb, xx, Mop, rtol, atol, maxiter, be, reason, xp, dt, bnorm, tol)
