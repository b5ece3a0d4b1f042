"""One normaliser for every solver input (the analogue of SciPy's ``make_system``).

Every public solver calls :func:`make_system` (or :func:`as_operator`) first.  It

* turns the operator ``A`` into a :class:`Operator` (shape, dtype, array namespace ``xp``,
  ``matvec``/``matmat`` that count operator applications),
* picks the backend (``"scipy"``, ``"numba"``, ``"numpy"``, ``"cupy"``, ``"torch"``) and says why
  (``reason``),
* validates ``b``, ``x0``, ``M``, ``rtol``, ``atol``, ``maxiter``, ``on_fail``, ``callback``,

and raises the typed errors of :mod:`fastntk.errors` *before any matvec*.

Accepted operators: a NumPy array, anything :func:`scipy.sparse.linalg.aslinearoperator` accepts
(LinearOperator, sparse matrix), an object with ``to_scipy()`` (or ``to_cupy()`` on the CuPy
path), any object with ``.shape``, ``.dtype`` and ``.matvec`` (``.matmat`` optional), a CuPy
array or a ``cupyx.scipy.sparse.linalg.LinearOperator`` (then the CuPy backend is used), a torch
tensor, or a torch operator (``fastntk.operators.TorchLinearOperator``).

**Which array library runs the solve** (``xp``, an ``array-api-compat`` namespace, see
:mod:`fastntk.solvers._xp`): the right-hand side decides.  A torch ``b`` (CPU or CUDA) runs the solve
on torch tensors of its device — a torch operator is applied directly, with no host copy; a NumPy
``b`` with a CPU torch operator goes through its ``to_scipy()`` adapter, as before (with a CUDA
operator it is a ``DeviceError``: pass ``b`` as a tensor on that device).  A dense torch tensor ``A``
always runs on torch (``b`` is moved next to it), and without a right-hand side (Lanczos,
preconditioner builds) a torch operator or tensor runs on torch.
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
    DeviceError,
    DTypeError,
    InvalidInputError,
    ShapeError,
)
from . import _xp

BACKENDS = ("auto", "scipy", "numba", "cupy", "torch")
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


def is_torch_operator(obj: Any) -> bool:
    """True for a fastntk torch operator (``TorchLinearOperator`` sets ``is_torch_operator``)."""
    return bool(getattr(type(obj), "is_torch_operator", False))


def get_xp(x: Any):
    """The array-api-compat namespace of array ``x`` (NumPy for anything that is not a CuPy/torch array)."""
    if is_cupy_object(x) and not _xp.is_array(x):  # a cupyx LinearOperator
        require_cupy()
        import array_api_compat.cupy as acp  # noqa: PLC0415

        return acp
    return _xp.namespace(x)


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


def _to_array(x: Any, name: str, xp, dev=None) -> Any:
    """Convert a vector/matrix argument to an array of namespace xp on device ``dev`` (no torch import)."""
    k = _xp.kind(xp)
    if k == "torch":
        if not _xp.is_array(x) or is_cupy_object(x):
            x = _xp.to_numpy(x)
        else:
            x_dev = _xp.device(x)
            if dev is not None and x_dev != dev and _xp.kind(_xp.namespace(x)) == "torch":
                raise DeviceError(f"{name} lives on {x_dev} but the operator on {dev}; move it with .to('{dev}').")
        arr = xp.asarray(x, device=dev) if dev is not None else xp.asarray(x)
        _check_real(arr, name)
        return arr
    if _xp.is_numpy(xp):
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
    _check_real(arr, name)
    return arr


def _check_real(arr, name):
    try:
        knd = _xp.np_dtype(arr.dtype).kind
    except TypeError:  # e.g. torch.bfloat16, which NumPy has no dtype for
        knd = "?"
    if knd not in "fiub":
        raise DTypeError(f"{name} has dtype {arr.dtype}; fastntk solvers need real floating point "
                         f"(float32 or float64).")


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
                 kind: str, *, device=None, cast_input: bool = False):
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = _xp.np_dtype(dtype)
        self.xp = _xp.compat(xp)
        self.device = device  # None: the library's default device (NumPy: the host, CuPy: the current GPU)
        self._cast = cast_input  # a torch operator accepts only its own dtype
        self._mv = matvec
        self._mm = matmat
        self.source = source
        self.kind = kind
        self.n_matvecs = 0
        self.n_matmat_calls = 0

    @property
    def n(self) -> int:
        return self.shape[0]

    def _in(self, x):
        return _xp.astype(self.xp, x, self.dtype) if self._cast else x

    def matvec(self, x):
        self.n_matvecs += 1
        self.n_matmat_calls += 1
        y = self._mv(self._in(x))
        return self.xp.reshape(self.xp.asarray(y), (-1,))

    def matmat(self, X):
        k = X.shape[1]
        self.n_matvecs += k
        self.n_matmat_calls += 1
        xp = self.xp
        if self._mm is not None:
            Y = xp.asarray(self._mm(self._in(X)))
            return xp.reshape(Y, (self.shape[0], k))
        cols = [xp.reshape(xp.asarray(self._mv(self._in(X[:, j]))), (-1,)) for j in range(k)]
        return xp.stack(cols, axis=1) if cols else xp.zeros((self.shape[0], 0), dtype=X.dtype, device=self.device)

    __matmul__ = lambda self, x: self.matvec(x) if x.ndim == 1 else self.matmat(x)  # noqa: E731

    def diagonal(self):
        src = self.source
        if hasattr(src, "diagonal") and callable(src.diagonal):
            return self.xp.asarray(src.diagonal())
        raise InvalidInputError("the operator has no diagonal(); pass the diagonal explicitly "
                                "(JacobiPreconditioner(diag)) or use another preconditioner.")

    def to_scipy(self):
        """A SciPy LinearOperator that counts through this wrapper (NumPy operators only)."""
        import scipy.sparse.linalg as spla  # noqa: PLC0415

        if not _xp.is_numpy(self.xp):
            raise InvalidInputError(f"this operator runs on {_xp.kind(self.xp)} arrays; SciPy needs NumPy: "
                                    f"pass NumPy arrays (or the operator's own to_scipy()).")

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


def _dense_operator(M, xp, kind: str) -> Operator:
    """A dense square matrix of namespace ``xp`` as an Operator (checked: real, finite)."""
    _check_real(M, "operator A")
    _check_square(tuple(M.shape))
    dt = _xp.np_dtype(M.dtype)
    if dt.kind != "f":
        M = _xp.astype(xp, M, np.float64)
    if not bool(xp.all(xp.isfinite(M))):
        raise InvalidInputError("operator A contains NaN or Inf.")
    if _xp.kind(xp) == "torch":  # torch does not promote in matmul: promote like NumPy (one cached copy)
        copies = {}

        def mul(x):
            if x.dtype == M.dtype:
                return M @ x
            if x.dtype not in copies:
                copies[x.dtype] = xp.astype(M, xp.result_type(M, x))
            return copies[x.dtype] @ xp.astype(x, copies[x.dtype].dtype, copy=False)

        return Operator(M.shape, M.dtype, xp, mul, mul, M, kind, device=_xp.device(M))
    return Operator(M.shape, M.dtype, xp, lambda x: M @ x, lambda X: M @ X, M, kind, device=_xp.device(M))


def _torch_operator(A: Any, like: Any) -> Operator:
    """A torch tensor or torch operator, applied to torch tensors directly (no host copy)."""
    import array_api_compat.torch as atorch  # noqa: PLC0415

    if _xp.is_array(A):  # a dense torch matrix
        return _dense_operator(A, atorch, "torch-dense")
    shape = tuple(A.shape)
    _check_square(shape)
    dev = getattr(A, "device", None)
    if dev is None:
        dev = _xp.device(like) if like is not None else "cpu"
    mm = getattr(A, "matmat", None)
    return Operator(shape, getattr(A, "dtype", np.float64), atorch, A.matvec, mm if callable(mm) else None, A,
                    "torch-linop", device=dev, cast_input=True)


def as_operator(A: Any, *, prefer_gpu: bool = False, like: Any = None) -> Operator:
    """Wrap any accepted operator (see module doc) in a counting :class:`Operator`.

    ``like``: the right-hand side, when there is one; its array library decides where the solve runs
    (a torch ``like`` → torch, a NumPy ``like`` with a torch operator → the operator's ``to_scipy()``).
    """
    if isinstance(A, Operator):
        A.n_matvecs = 0
        A.n_matmat_calls = 0
        return A
    if A is None:
        raise InvalidInputError("operator A is None.")
    torch_like = like is not None and _xp.kind(_xp.namespace(like)) == "torch"
    a_is_array = _xp.is_array(A)
    if a_is_array and _xp.kind(_xp.namespace(A)) == "torch":
        return _torch_operator(A, like)
    if is_torch_operator(A) and (like is None or torch_like):
        return _torch_operator(A, like)
    if is_torch_operator(A) and getattr(getattr(A, "device", None), "type", "cpu") != "cpu" and not is_cupy_object(like):
        raise DeviceError(f"the operator lives on {A.device} but b is a {type(like).__name__}: pass b as a torch tensor on "
                          f"{A.device} (the solve then runs there, no host copy).")
    if torch_like:
        import array_api_compat.torch as atorch  # noqa: PLC0415

        if isinstance(A, (np.ndarray, list, tuple)):  # a dense host matrix, moved next to b once
            return _dense_operator(atorch.asarray(np.asarray(A), device=_xp.device(like)), atorch, "torch-dense")
        if hasattr(A, "shape") and hasattr(A, "matvec") and not hasattr(A, "to_scipy") and not _is_scipy(A):
            return _torch_operator(A, like)
        raise InvalidInputError(f"b is a torch tensor but the operator ({type(A).__name__}) works on NumPy arrays; "
                                f"pass b as a NumPy array, or a torch tensor / torch operator as A.")
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
        return _dense_operator(M, np, "dense")
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
        dt = _xp.np_dtype(getattr(A, "dtype", None) or np.float64)
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


def _is_scipy(A) -> bool:
    mod = type(A).__module__ or ""
    return mod.startswith("scipy") or any((c.__module__ or "").startswith("scipy") for c in type(A).__mro__[1:])


def as_preconditioner(M: Any, n: int, xp, like: Any = None) -> Optional[Operator]:
    """Wrap a preconditioner (applied as M ≈ A⁻¹); ShapeError if it is not (n, n).

    ``like``: an array of the solve (namespace and device the preconditioner is applied on)."""
    if M is None:
        return None
    dev = _xp.device(like) if like is not None else None
    if callable(M) and not hasattr(M, "shape"):
        return Operator((n, n), np.float64, xp, M, None, M, "callable", device=dev)
    shape = getattr(M, "shape", None)
    if shape is None:
        raise InvalidInputError(f"preconditioner M of type {type(M).__name__} has no shape.")
    shape = tuple(shape)
    if shape != (n, n):
        raise ShapeError(f"preconditioner M has shape {shape} but the operator is ({n}, {n}); build the "
                         f"preconditioner from the same operator.")
    if hasattr(M, "matvec") and hasattr(M, "build_matvecs"):  # fastntk preconditioner: array-generic
        mm = getattr(M, "matmat", None)
        return Operator(shape, getattr(M, "dtype", np.float64), xp, M.matvec, mm, M, "precond", device=dev)
    k = _xp.kind(_xp.compat(xp))
    if k == "cupy" and not is_cupy_object(M):
        raise InvalidInputError("preconditioner M lives on the CPU but the operator is on the GPU; use a "
                                "fastntk preconditioner (array-generic) or a CuPy operator.")
    if k == "torch" and not (is_torch_operator(M) or (_xp.is_array(M) and _xp.kind(_xp.namespace(M)) == "torch")):
        raise InvalidInputError("preconditioner M works on NumPy arrays but the solve runs on torch tensors; use a "
                                "fastntk preconditioner (array-generic), a torch tensor or a torch operator.")
    op = as_operator(M, like=like)
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
def resolve_backend(backend: str, A: Any, b: Any, n: int, *, own_loop_only: bool = False, xp=None):
    """Return (backend, reason).  ``own_loop_only``: the method has no SciPy version.

    ``xp``: the namespace the solve runs in; torch tensors always run fastntk's own loop
    (``"torch"``), on the tensors' device."""
    if backend not in BACKENDS:
        raise InvalidInputError(f"backend must be one of {BACKENDS}; got {backend!r}.")
    if xp is not None and _xp.kind(xp) == "torch":
        if backend not in ("auto", "torch"):
            raise InvalidInputError(f"backend={backend!r} needs NumPy or CuPy arrays but the solve runs on torch "
                                    f"tensors; use backend='auto' or 'torch', or pass NumPy arrays.")
        return "torch", "requested" if backend == "torch" else "auto: torch tensors (array API loop on their device)"
    if backend == "torch":
        raise InvalidInputError("backend='torch' needs a torch right-hand side (or a torch operator/tensor as A).")
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
    op = as_operator(A, prefer_gpu=(backend == "cupy") or is_cupy_object(b), like=b if _xp.is_array(b) else None)
    n = op.n
    xp = op.xp
    if backend == "cupy" and _xp.kind(xp) != "cupy":  # CPU operator, GPU requested: move a dense matrix over
        raise InvalidInputError("backend='cupy' needs a GPU operator: a CuPy array, a cupyx LinearOperator "
                                "or an object with to_cupy().")
    dev = op.device if _xp.kind(xp) == "torch" else None
    bb = _to_array(b, "b", xp, dev)
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
    dt = result_dtype(op.dtype, _xp.np_dtype(bb.dtype))
    bb = _xp.astype(xp, bb, dt)
    if x0 is not None:
        xx = _to_array(x0, "x0", xp, dev)
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
        xx = _xp.astype(xp, xx, dt, copy=True)
    else:
        xx = None
    Mop = as_preconditioner(M, n, xp, like=bb)
    be, reason = resolve_backend(backend, A, b, n, own_loop_only=own_loop_only, xp=xp)
    if block:
        bnorm = np.asarray(_xp.to_numpy(_xp.norm(xp, bb, axis=0)), dtype=np.float64)
        tol = np.maximum(rtol * bnorm, atol)
    else:
        bnorm = _xp.norm(xp, bb)
        tol = max(rtol * bnorm, atol)
    return System(op, bb, xx, Mop, rtol, atol, maxiter, be, reason, xp, dt, bnorm, tol)
