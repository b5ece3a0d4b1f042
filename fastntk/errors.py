"""Typed errors of fastntk.

Every error raised on bad input derives from :class:`FastNTKError` and from the
matching builtin (``ValueError``, ``TypeError``, ``RuntimeError``...), so callers
can catch either.  Messages say what was wrong *and what to do*.
"""
from __future__ import annotations


class FastNTKError(Exception):
    """Base class of every fastntk error."""


class InvalidInputError(FastNTKError, ValueError):
    """An argument has a bad value (range, emptiness, NaN...)."""


class ShapeError(InvalidInputError):
    """Shapes do not match (vector length, non-square operator, ...)."""


class DTypeError(FastNTKError, TypeError):
    """A tensor/array has the wrong dtype."""


class DeviceError(FastNTKError, ValueError):
    """Tensors live on different devices, or a requested device is absent."""


class BackendUnavailableError(FastNTKError, RuntimeError):
    """A requested backend (CuPy, CUDA, Numba) cannot be used here."""


class PeftError(InvalidInputError):
    """The PEFT parameter set does not fit the model (no BatchNorm, not a ViT...)."""


class ModelStateError(InvalidInputError):
    """The model is in a state fastntk cannot work with (e.g. BatchNorm in train mode)."""


class DataError(InvalidInputError):
    """A dataset is empty, missing, malformed, or has labels out of range."""


class ForgetSetError(InvalidInputError):
    """Bad forget/retain specification (empty, whole set, overlap, duplicates, out of range)."""


class PreconditionerError(InvalidInputError):
    """A preconditioner cannot be built for this operator (bad rank or ridge, a diagonal that is not
    positive, no cheap diagonal); raised before any solver work."""


class NoDiagonalError(PreconditionerError, NotImplementedError):
    """The operator has no cheap ``diagonal()`` (Jacobi needs one): use Nyström or no preconditioner.

    Also a ``NotImplementedError``, which ``TorchLinearOperator.diagonal`` raised before."""


class ConfigError(InvalidInputError):
    """A configuration file or CLI option is invalid (unknown key, bad value)."""


class CheckpointError(FastNTKError, OSError):
    """A checkpoint cannot be read (missing, truncated, wrong content)."""


class NumericalError(FastNTKError, ArithmeticError):
    """A computation produced non-finite or exploding values."""


class HarmfulUpdateError(FastNTKError, RuntimeError):
    """An unlearning update made the model worse on its own retain objective than doing nothing.

    Raised by the do-no-harm check (:func:`fastntk.update.guard.check_no_harm`) after damping did not
    help; the model was not changed.  The check's figures are attached as ``.check``.
    """

    def __init__(self, message: str, check=None):
        super().__init__(message)
        self.check = check


class ConvergenceError(FastNTKError, RuntimeError):
    """An iterative solver did not reach its tolerance.

    The (unconverged) solve result is attached as ``.result``.
    """

    def __init__(self, message: str, result=None):
        super().__init__(message)
        self.result = result


__all__ = [
    "FastNTKError",
    "InvalidInputError",
    "ShapeError",
    "DTypeError",
    "DeviceError",
    "BackendUnavailableError",
    "PeftError",
    "ModelStateError",
    "DataError",
    "ForgetSetError",
    "ConfigError",
    "PreconditionerError",
    "NoDiagonalError",
    "CheckpointError",
    "NumericalError",
    "HarmfulUpdateError",
    "ConvergenceError",
]
