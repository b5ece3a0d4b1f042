"""The options of :func:`fastntk.unlearn`: small frozen dataclasses, validated when they are built.

* :class:`UnlearnOptions` -- what update to compute (linearization point, anchor, kernel, form, steps, scale, ridge
  convention, targets, checks) and, nested, how: :class:`SolverOptions` (linear solves),
  :class:`~fastntk.update.tilted.JacobianOptions` (how Jacobians are built), :class:`~fastntk.update.guard.HarmTolerance`
  (the do-no-harm check) and :class:`~fastntk.update.newton.NewtonOptions` (the CE Newton iteration).
* :func:`build_options` applies keyword fields (``unlearn(..., form="primal", rtol=1e-12, strategy="cached")``) to
  the right nested dataclass with :func:`dataclasses.replace`; an unknown name is an :class:`InvalidInputError`.

``"auto"`` values stay ``"auto"`` here: :mod:`fastntk.update.plan` resolves them, once, each with its reason.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Callable

from ..errors import InvalidInputError
from .guard import HarmTolerance
from .newton import NewtonOptions
from .tilted import JacobianOptions

#: the CG tolerance of every entry point (unlearn, Unlearner, the distributed step, the pipeline); float32 operators
#: floor it at 1e-4 (plan.rtol_floor: float32 matvecs cannot certify less)
DEFAULT_RTOL = 1e-8

__all__ = ["FORMS", "SolverOptions", "UnlearnOptions", "JacobianOptions", "HarmTolerance", "NewtonOptions",
           "build_options", "option_defaults"]

FORMS = ("auto", "dual", "primal", "woodbury", "dense")
PRECONDITIONERS = (None, "none", "auto", "jacobi", "nystrom")
BACKENDS = ("auto", "scipy", "numba", "cupy", "torch")
#: the fields of JacobianOptions that SolverOptions owns (kept equal in UnlearnOptions)
SHARED = ("solver", "direct_limit")


def _one_of(name, value, allowed):
    if value not in allowed:
        raise InvalidInputError(f"{name} must be one of {allowed}, got {value!r}")


def _number(name, value, *, positive=False, nonneg=False) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise InvalidInputError(f"{name} must be a finite number, got {value!r}")
    if (positive and value <= 0) or (nonneg and value < 0):
        raise InvalidInputError(f"{name} must be {'> 0' if positive else '>= 0'}, got {value!r}")


def _integer(name, value, *, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
        raise InvalidInputError(f"{name} must be an integer >= {least}, got {value!r}")


@dataclass(frozen=True)
class SolverOptions:
    """Linear solves.  solver : ``"auto" | "cg" | "direct"`` (float64 Cholesky in the smaller space, needs the cached
    ``J``; auto: direct when cached and ``min(p, n_r·C) ≤ direct_limit``).  rtol / maxiter / preconditioner
    (``"auto" | "none" | "jacobi" | "nystrom"``, rank ``precond_rank``) / backend / on_fail / callback go to
    :func:`fastntk.solvers.cg`; ``backend="auto"`` runs CG on the operators' torch tensors (their device).
    ``preconditioner="auto"`` (default): a Nyström preconditioner (rank ``fastntk.operators.sketch.NYSTROM_RANK``)
    where the cross-entropy route runs CG on a curvature whose rows are in memory (its build is one GEMM over them), none
    elsewhere (measured: docs/guide.md §4)."""

    solver: str = "auto"
    rtol: float = DEFAULT_RTOL
    maxiter: int | None = None
    preconditioner: str | None = "auto"
    precond_rank: int = 50
    backend: str = "auto"
    on_fail: str = "raise"
    callback: Callable | None = None
    direct_limit: int = 4096

    def __post_init__(self):
        _one_of("solver", self.solver, ("auto", "cg", "direct"))
        _number("rtol", self.rtol, positive=True)
        if self.maxiter is not None:
            _integer("maxiter", self.maxiter, least=1)
        _one_of("preconditioner", self.preconditioner, PRECONDITIONERS)
        _integer("precond_rank", self.precond_rank, least=1)
        _one_of("backend", self.backend, BACKENDS)
        _one_of("on_fail", self.on_fail, ("raise", "warn"))
        if self.callback is not None and not callable(self.callback):
            raise InvalidInputError(f"callback must be callable or None, got {type(self.callback).__name__}")
        _integer("direct_limit", self.direct_limit, least=0)


def _check_nested(name, value, cls):
    if not isinstance(value, cls):
        raise InvalidInputError(f"{name} must be a fastntk {cls.__name__}, got {type(value).__name__}")


@dataclass(frozen=True)
class UnlearnOptions:
    """What :func:`fastntk.unlearn` computes (docs/guide.md says which for which model; ``"auto"``: the plan decides).

    linearize_at : ``"auto" | "w0" | "trained"``.  anchor : ``"auto" | "fit" | "trained" | "retain" | "by-request"``.
    loss : the kernel, ``"auto" | "mse" | "ce"``.  form : one of :data:`FORMS`.  steps : ``"auto"`` or an integer ≥ 1.
    scale : ``None``, a number or ``"trapezium"``.  ridge_convention : ``"sum"`` or ``"mean"`` (retain fit ``n_r·λ``,
    full fit ``n·λ``: the primal form only).  target_scale : MSE targets ``target_scale·one_hot``.
    check_overlap : refuse forget inputs repeated or also in the retain set.  line_search : Armijo on the steps.
    """

    linearize_at: str = "auto"
    anchor: str = "auto"
    loss: str = "auto"
    form: str = "auto"
    steps: int | str = "auto"
    scale: float | str | None = None
    ridge_convention: str = "sum"
    target_scale: float = 1.0
    check_overlap: bool = True
    line_search: bool = True
    solve: SolverOptions = field(default_factory=SolverOptions)
    jacobian: JacobianOptions = field(default_factory=JacobianOptions)
    harm: HarmTolerance = field(default_factory=HarmTolerance)
    newton: NewtonOptions | None = None

    def __post_init__(self):
        _one_of("linearize_at", self.linearize_at, ("auto", "w0", "trained"))
        _one_of("anchor", self.anchor, ("auto", "fit", "trained", "retain", "by-request"))
        _one_of("loss", self.loss, ("auto", "mse", "ce"))
        _one_of("form", self.form, FORMS)
        if self.steps != "auto":
            _integer("steps", self.steps, least=1)
        if isinstance(self.scale, str):
            _one_of("scale", self.scale, ("trapezium",))
        elif self.scale is not None:
            _number("scale", self.scale)
        _one_of("ridge_convention", self.ridge_convention, ("sum", "mean"))
        _number("target_scale", self.target_scale, positive=True)
        for name in ("check_overlap", "line_search"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidInputError(f"{name} must be True or False, got {getattr(self, name)!r}")
        _check_nested("solve", self.solve, SolverOptions)
        _check_nested("jacobian", self.jacobian, JacobianOptions)
        _check_nested("harm", self.harm, HarmTolerance)
        if self.newton is not None:
            _check_nested("newton", self.newton, NewtonOptions)
            if self.steps != "auto":
                raise InvalidInputError("pass either steps= or newton=, not both")
        self._sync_jacobian()

    def _sync_jacobian(self):
        """``solver`` and ``direct_limit`` live in :class:`SolverOptions`; the Jacobian options follow them."""
        default = JacobianOptions()
        for k in SHARED:
            mine, theirs = getattr(self.solve, k), getattr(self.jacobian, k)
            if theirs != getattr(default, k) and theirs != mine:
                raise InvalidInputError(f"{k} is a solver option: set it in SolverOptions ({k}={theirs!r}), not in JacobianOptions")
        object.__setattr__(self, "jacobian", dataclasses.replace(self.jacobian, **{k: getattr(self.solve, k) for k in SHARED}))


_NESTED = {"solve": SolverOptions, "jacobian": JacobianOptions}
_TOP = {f.name for f in dataclasses.fields(UnlearnOptions)}


def _route(name: str) -> str | None:
    """Which part of :class:`UnlearnOptions` a keyword field belongs to (``None``: the top level)."""
    if name in _TOP:
        return None
    for part, cls in _NESTED.items():
        if name in {f.name for f in dataclasses.fields(cls)} and name != "progress":
            return part
    raise InvalidInputError(f"unknown option {name!r}; the options are {sorted(option_defaults())}")


def build_options(options: UnlearnOptions | None = None, **fields) -> UnlearnOptions:
    """``options`` (default :class:`UnlearnOptions`) with ``fields`` applied, each to the dataclass that owns it."""
    opts = UnlearnOptions() if options is None else options
    _check_nested("options", opts, UnlearnOptions)
    if not fields:
        return opts
    top, nested = {}, {part: {} for part in _NESTED}
    for name, value in fields.items():
        part = _route(name)
        (top if part is None else nested[part])[name] = value
    if nested["solve"]:
        top["solve"] = dataclasses.replace(top.get("solve", opts.solve), **nested["solve"])
    jac = dict(nested["jacobian"], **{k: getattr(top.get("solve", opts.solve), k) for k in SHARED})
    top["jacobian"] = dataclasses.replace(top.get("jacobian", opts.jacobian), **jac)
    return dataclasses.replace(opts, **top)


def option_defaults() -> dict:
    """Every keyword field :func:`build_options` takes, with its default (the nested dataclasses flattened)."""
    out = {}
    for cls in (JacobianOptions, SolverOptions, UnlearnOptions):
        inst = cls()
        out.update({f.name: getattr(inst, f.name) for f in dataclasses.fields(cls) if f.name != "progress"})
    return out
