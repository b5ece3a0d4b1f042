"""The torch LinearOperator base class and its SciPy / CuPy adapters.

Every operator derives all products from one primitive, ``_matmat(X)`` with
``X`` of shape ``(shape[1], k)``.  ``matvec``, ``matmat``, ``@``, ``to_scipy()``
and ``to_cupy()`` all route through it after one input check (shape, dtype,
device -> typed errors from :mod:`fastntk.errors`).

The solvers of :mod:`fastntk.solvers` take these operators directly: with a torch right-hand side
(CPU or CUDA) ``cg(op, b)`` applies ``op.matmat`` to torch tensors on the operator's device (array
API loop, no host copy); with a NumPy right-hand side they go through ``to_scipy()``.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import BackendUnavailableError, DeviceError, DTypeError, NoDiagonalError, ShapeError

__all__ = ["TorchLinearOperator"]

_NP_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


class TorchLinearOperator:
    """A linear map ``R^{shape[1]} -> R^{shape[0]}`` on torch tensors.

    Subclasses implement ``_matmat`` (and ``_rmatmat`` for the adjoint).
    """

    shape: tuple[int, int]
    dtype: torch.dtype
    device: torch.device
    symmetric: bool = False
    #: tells :mod:`fastntk.solvers` to apply the operator to torch tensors directly (no import of this module there)
    is_torch_operator: bool = True

    def __init__(self, shape, dtype, device):
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = dtype
        self.device = torch.device(device)
        self.matvecs = 0  # number of vectors the operator has been applied to

    # ---------------------------------------------------------------- primitives
    def _matmat(self, X: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _rmatmat(self, X: torch.Tensor) -> torch.Tensor:
        if self.symmetric:
            return self._matmat(X)
        raise NotImplementedError(f"{type(self).__name__} has no adjoint")

    # ---------------------------------------------------------------- checks
    def _check(self, X, n: int, what: str) -> torch.Tensor:
        if not isinstance(X, torch.Tensor):
            raise DTypeError(f"{type(self).__name__}.{what} expects a torch.Tensor, got {type(X).__name__}; use to_scipy() for NumPy")
        if X.ndim not in (1, 2) or X.shape[0] != n:
            raise ShapeError(f"{type(self).__name__} of shape {self.shape}: {what} input must have {n} rows, got shape {tuple(X.shape)}")
        if X.dtype != self.dtype:
            raise DTypeError(f"{type(self).__name__} works in {self.dtype}, got {X.dtype}; convert with .to({self.dtype})")
        if X.device != self.device:
            raise DeviceError(f"{type(self).__name__} lives on {self.device}, input on {X.device}; move it with .to('{self.device}')")
        return X

    # ---------------------------------------------------------------- public products
    def matmat(self, X: torch.Tensor) -> torch.Tensor:
        """``A X`` for ``X`` of shape (shape[1], k)."""
        X = self._check(X, self.shape[1], "matmat")
        if X.ndim == 1:
            return self.matvec(X)
        self.matvecs += X.shape[1]
        return self._matmat(X)

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        """``A x`` for ``x`` of shape (shape[1],) (or (shape[1], 1))."""
        x = self._check(x, self.shape[1], "matvec")
        self.matvecs += 1
        y = self._matmat(x.reshape(-1, 1))
        return y.reshape(-1) if x.ndim == 1 else y

    def rmatmat(self, X: torch.Tensor) -> torch.Tensor:
        """``Aᵀ X`` for ``X`` of shape (shape[0], k)."""
        X = self._check(X, self.shape[0], "rmatmat")
        x2 = X.reshape(X.shape[0], -1)
        self.matvecs += x2.shape[1]
        y = self._rmatmat(x2)
        return y.reshape(-1) if X.ndim == 1 else y

    def rmatvec(self, x):
        return self.rmatmat(x)

    def __matmul__(self, X):
        return self.matvec(X) if isinstance(X, torch.Tensor) and X.ndim == 1 else self.matmat(X)

    @property
    def T(self) -> "TorchLinearOperator":
        if self.symmetric:
            return self
        return _Adjoint(self)

    def to_dense(self) -> torch.Tensor:
        """Materialize the operator (tests and tiny problems only)."""
        return self.matmat(torch.eye(self.shape[1], dtype=self.dtype, device=self.device))

    @property
    def has_diagonal(self) -> bool:
        """Whether :meth:`diagonal` is cheap and available (checked before building a Jacobi preconditioner)."""
        return type(self).diagonal is not TorchLinearOperator.diagonal

    def diagonal(self) -> torch.Tensor:
        """``diag(A)`` where it is cheap; else :class:`fastntk.errors.NoDiagonalError` (also a
        ``NotImplementedError``), before any work, so a Jacobi preconditioner fails early."""
        raise NoDiagonalError(f"{type(self).__name__} has no cheap diagonal")

    # ---------------------------------------------------------------- adapters
    def to_scipy(self):
        """A ``scipy.sparse.linalg.LinearOperator`` on NumPy arrays (CPU operators only).

        NumPy inputs are viewed as torch tensors without a copy
        (``torch.from_numpy``) when dtypes match.  ``matmat`` keeps the shared
        forward pass of the torch operator; ``diagonal()`` is forwarded.
        """
        from scipy.sparse.linalg import LinearOperator

        if self.device.type != "cpu":
            raise DeviceError(f"to_scipy() needs a CPU operator, this one lives on {self.device}; use to_cupy()")
        op = self
        np_dtype = _NP_DTYPES.get(self.dtype, np.float64)

        def to_t(x):
            return torch.from_numpy(np.ascontiguousarray(x, dtype=np_dtype))

        class _ScipyOp(LinearOperator):
            def __init__(self):
                super().__init__(dtype=np.dtype(np_dtype), shape=op.shape)
                self.torch_operator = op

            def _matvec(self, x):
                return op.matvec(to_t(x).reshape(-1)).numpy()

            def _matmat(self, X):
                return op.matmat(to_t(X)).numpy()

            def _rmatvec(self, x):
                return op.rmatvec(to_t(x).reshape(-1)).numpy()

            def _rmatmat(self, X):
                return op.rmatmat(to_t(X)).numpy()

            def diagonal(self):
                return op.diagonal().numpy()

        return _ScipyOp()

    def to_cupy(self):
        """A ``cupyx.scipy.sparse.linalg.LinearOperator``, zero-copy through DLPack.

        CuPy is imported lazily; the operator must live on a CUDA device.
        """
        try:
            import cupy
            from cupyx.scipy.sparse.linalg import LinearOperator
        except Exception as e:  # ImportError or CUDA driver errors
            raise BackendUnavailableError(
                "CuPy is not available (" + str(e).splitlines()[0] + "); install the GPU extra: "
                "pip install 'fastntk[gpu]' (cupy-cuda12x) or, for CUDA 13, pip install cupy-cuda13x"
            ) from None
        if self.device.type != "cuda":
            raise DeviceError(f"to_cupy() needs an operator on a CUDA device, this one lives on {self.device}")
        op = self

        def to_t(x):
            return torch.from_dlpack(cupy.ascontiguousarray(x))

        class _CupyOp(LinearOperator):
            def __init__(self):
                super().__init__(dtype=_NP_DTYPES.get(op.dtype, np.float64), shape=op.shape)
                self.torch_operator = op

            def _matvec(self, x):
                return cupy.from_dlpack(op.matvec(to_t(x).reshape(-1)))

            def _matmat(self, X):
                return cupy.from_dlpack(op.matmat(to_t(X)).contiguous())

            def _rmatvec(self, x):
                return cupy.from_dlpack(op.rmatvec(to_t(x).reshape(-1)))

            def diagonal(self):
                return cupy.from_dlpack(op.diagonal())

        return _CupyOp()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype}, device={self.device})"


class _Adjoint(TorchLinearOperator):
    def __init__(self, A: TorchLinearOperator):
        super().__init__((A.shape[1], A.shape[0]), A.dtype, A.device)
        self.A = A

    def _matmat(self, X):
        return self.A._rmatmat(X)

    def _rmatmat(self, X):
        return self.A._matmat(X)

    @property
    def T(self):
        return self.A
