"""The prepared ``Unlearner``: state built once on the training set ``D``, then a stream of deletion requests.

``prepare()`` builds, once, the Jacobian of ``D`` (cached when it fits the memory budget) and the Cholesky factor of
``H = G_D + λI`` (p × p).  Each :meth:`Unlearner.forget` then costs work in the size of the (cumulative) forget set:
the Woodbury form ``H_r⁻¹ = H⁻¹ + H⁻¹J_fᵀ(I − J_f H⁻¹ J_fᵀ)⁻¹J_f H⁻¹`` with ``J_f`` the rows of every sample
forgotten so far (or, when the forget space is the larger one, a Cholesky factor of the downdated ``H − J_fᵀJ_f``).
For ``trained_with="ce"`` the constructor returns the prepared CE route (:class:`fastntk.update.prepared_ce.CEUnlearner`).
"""
from __future__ import annotations

import inspect
import logging
import time

import numpy as np
import torch

from ..operators.linearization import DEFAULT_MEMORY_BUDGET
from ..errors import InvalidInputError, NumericalError
from ..operators import make_jacobian
from ..precision import with_strict_precision
from .options import DEFAULT_RTOL
from .dense import DenseFactor, cholesky64, direct_solve, gram64, jtv64, jv64, woodbury_solve
from .forms import FIT_D, ridge_fit
from .inputs import check_labels, check_model, check_scalar, check_source, linearization_point, targets, xy
from .plan import rtol_floor
from .policy import resolve_variant
from .prepared_ce import CEUnlearner
from .requests import RequestStream
from .result import UnlearnResult
from .solve import SolveContext, check_norm_bound, record_direct

log = logging.getLogger("fastntk")

__all__ = ["Unlearner"]

CE_KEYS = {"w0", "ridge", "newton", "harm", "memory_budget", "batch_size", "rtol", "progress"}


class _Downdated:
    """``H_r = H − J_fᵀJ_f`` factored directly (p × p), for when the forget space is the larger one."""

    space = "parameter (downdated)"

    def __init__(self, H, Jf):
        self.H = H - gram64(Jf)
        self.L = cholesky64(self.H, "the downdated G_r + λI")

    def solve(self, B):
        return torch.cholesky_solve(B.double(), self.L)

    def residual(self, x, b) -> float:
        return float((self.H @ x - b).norm())


class Unlearner(RequestStream):
    """Prepared state for many deletion requests against one training set ``D`` (module docstring).

    Each request takes a Newton step from the current linearized fit (``anchor="fit"``: ``Δ_k = w*_{D∖F_k} −
    w*_{D∖F_{k−1}}``, which telescopes, so a sequence of requests equals one request with their union whatever the
    fine-tuning did) or from the current weights (``anchor="trained"``; exact when they are the fit).
    ``anchor="retain"``: the Newton step of the full retain objective from the current weights,
    ``Δ = −(G_r + λI)⁻¹∇L_r(w)`` with ``∇L_r(w) = J_rᵀ(f_lin(X_r; w) − Y_r) + λ(w − w̄)``: every request lands on the
    linearized ridge fit of the data not forgotten so far (around ``w̄``), whatever came before.
    """

    def __new__(cls, model, peft, train, *, trained_with: str, **kwargs):
        if trained_with == "ce":  # the prepared CE route (fastntk.update.prepared_ce)
            other = {k: v for k, v in kwargs.items() if k not in CE_KEYS and not (k in ("linearize_at", "anchor") and v == "auto")}
            if other:
                raise InvalidInputError(f"Unlearner(trained_with='ce') does not take {sorted(other)} (its curvature is the CE "
                                        "Gauss-Newton at the trained weights and its anchor follows each request)")
            check_model(model, peft)
            X, y = xy(train, "training")
            return CEUnlearner(model, peft, X, y, **{k: v for k, v in kwargs.items() if k in CE_KEYS})
        unknown = set(kwargs) - set(inspect.signature(cls.__init__).parameters)
        if unknown:
            raise InvalidInputError(f"Unlearner does not take {sorted(unknown)}")
        return super().__new__(cls)

    def __init__(self, model, peft, train, *, trained_with: str, ridge: float, w0=None, linearize_at="auto", target_scale=1.0,
                 anchor="auto", strategy="auto", memory_budget: float | None = DEFAULT_MEMORY_BUDGET, batch_size=128, rtol=DEFAULT_RTOL, progress=False,
                 source=None, curvature_source: str = "auto", sketch_k: int = 2, sketch_kind: str = "rademacher",
                 sketch_seed: int = 0, sketch_error: bool = True):
        variant, self.reasons = resolve_variant(trained_with, linearize_at=linearize_at, anchor=anchor, loss="mse", steps=1)
        linearize_at, self.anchor, self.trained_with = variant["linearize_at"], variant["anchor"], trained_with
        if self.anchor not in ("fit", "trained", "retain"):
            raise InvalidInputError(f"anchor must be 'fit', 'trained' or 'retain', got {self.anchor!r}")
        self.lam = check_scalar("ridge", ridge, positive=True)
        check_model(model, peft)
        self.model, self.peft = model, peft
        self.X, self.y = xy(train, "training")
        self.n = self.X.shape[0]
        self.w_bar = linearization_point(peft, linearize_at, w0, peft.vector())
        self.target_scale = check_scalar("target_scale", target_scale, positive=True)
        self.strategy, self.memory_budget, self.batch_size = strategy, memory_budget, batch_size
        self.rtol, why = rtol_floor(check_scalar("rtol", rtol, positive=True), peft.dtype)
        if why:
            self.reasons["rtol"] = why
        self.progress = progress
        if source is not None:
            if linearize_at != "w0":
                raise InvalidInputError("Unlearner(source=...) needs linearize_at='w0' (the source is built at w0)")
            check_source(source, self.n, peft, "Unlearner")
        self._source = source
        self._plan_curvature(curvature_source, sketch_k, sketch_kind, sketch_seed, sketch_error, source)
        self.forgotten = np.zeros(0, dtype=np.int64)
        self.w = peft.vector()  # current (unlearned) weights; the model is touched only by apply()
        self.prepared = False
        self.history: list[dict] = []  # summaries only: the state does not grow with requests beyond the forgotten ids

    def _plan_curvature(self, use, k, kind, seed, estimate, source) -> None:
        """``G_D`` of the factor: the exact ``J_D`` or a sketch of it (``k`` rows per sample, every sample, so that the
        rows of a forgotten sample can be downdated: ``G̃_D − J̃_Fᵀ J̃_F`` is the sketch of ``G_r``).  ``"auto"``: the sketch
        when ``J_D`` does not fit ``memory_budget`` (and neither ``strategy`` nor ``source`` was given)."""
        from ..operators import jacobian_bytes
        from ..operators.sketch import KINDS

        if use not in ("auto", "exact", "sketch"):
            raise InvalidInputError(f"curvature_source must be 'auto', 'exact' or 'sketch', got {use!r}")
        if kind not in KINDS or kind == "fisher":
            raise InvalidInputError(f"sketch_kind must be one of {tuple(k_ for k_ in KINDS if k_ != 'fisher')} for MSE, got {kind!r}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InvalidInputError(f"sketch_k must be an integer >= 1, got {k!r}")
        if use == "sketch" and source is not None:
            raise InvalidInputError("Unlearner(source=...) is an exact J_D; curvature_source='sketch' builds its own sketch")
        if use == "auto":
            with torch.no_grad():
                C = int(self.peft.functional()(self.w_bar, self.X[:1].to(self.peft.device, self.peft.dtype)).shape[1])
            need = jacobian_bytes(self.n, C, self.peft.p, self.peft.dtype)
            budget = float("inf") if self.memory_budget is None else float(self.memory_budget)
            use = "sketch" if (need > budget and self.strategy == "auto" and source is None) else "exact"
            why = (f"curvature_source='auto': J_D needs {need / 1e6:.0f} MB "
                   f"{'>' if use == 'sketch' else '≤'} memory_budget {budget / 1e6:.0f} MB" if source is None and self.strategy == "auto"
                   else "curvature_source='auto': " + ("source= given (exact J_D)" if source is not None else f"strategy={self.strategy!r} given"))
        else:
            why = f"curvature_source={use!r} requested"
        if use == "sketch":
            why += (f": G̃_D from kind={kind!r}, k = {k} rows per sample of all n = {self.n} samples; right-hand sides and "
                    "residuals exact (streamed VJP/JVP passes over the forget samples)")
        self.curvature, self.sketch_opts, self.sketch_estimate = use, dict(k=k, kind=kind, seed=int(seed)), bool(estimate)
        self.reasons["curvature_source"] = why

    def _context(self) -> SolveContext:
        return SolveContext(rtol=self.rtol)

    @with_strict_precision
    def prepare(self) -> "Unlearner":
        """Build the Jacobian source of ``D``, ``f̄_D``, the factor of ``H = G_D + λI`` and the fit ``w*_D``."""
        t = time.perf_counter()
        self.sketch = None
        if self.curvature == "sketch":  # exact products streamed; G_D from the sketch's rows
            from ..operators import SketchedJacobian

            self.src = make_jacobian(self.peft, self.X, w=self.w_bar, strategy="stream", batch_size=self.batch_size)
            o = self.sketch_opts
            self.sketch = SketchedJacobian(self.peft, self.X, k=o["k"], kind=o["kind"], loss="mse", seed=o["seed"], w=self.w_bar,
                                           batch_size=self.batch_size, engine=self.src.per_sample_engine())
        else:
            self.src = self._source if self._source is not None else make_jacobian(  # shared with match_ridge: J_D built once
                self.peft, self.X, w=self.w_bar, strategy=self.strategy, memory_budget=self.memory_budget,
                batch_size=self.batch_size, progress=self.progress)
        self.C = int(self.src.C)
        check_labels(self.y, self.C, "training")
        self.factor = DenseFactor.from_source(self.src if self.sketch is None else self.sketch, self.lam)
        self.outputs = self.src.outputs() if self.sketch is None else self.sketch.sample_outputs()
        Y = targets(self.y, self.C, self.target_scale, self.peft.dtype, self.peft.device)
        self.z_D = (Y - self.outputs.reshape(-1)).double()  # Y_D − f̄_D (anchor="retain" masks forgotten rows)
        # the linearized ridge fit on D (the anchor of "fit" requests)
        self.w_fit = self.w_bar.double() + ridge_fit([(self.src, Y)], self.lam, self._context(), FIT_D, factor=self.factor)
        self.prepare_seconds = time.perf_counter() - t
        self.prepared = True
        log.info("fastntk: Unlearner prepared (n=%d, p=%d, strategy=%s, curvature %s, factor %.2fs, total %.2fs)", self.n,
                 self.src.p, self.src.strategy, self.curvature, self.factor.seconds, self.prepare_seconds)
        return self

    def _rows(self, idx: np.ndarray) -> np.ndarray:
        return (idx[:, None] * self.C + np.arange(self.C)[None, :]).reshape(-1)

    def _gradient_sketched(self, all_f, new_f) -> torch.Tensor:
        """:meth:`_gradient` with the sketched curvature: every product with ``J`` exact, by streamed passes
        (``anchor="retain"``: a JVP and a VJP pass over the retained samples; else over the new forget samples)."""
        d = ((self.w_fit if self.anchor == "fit" else self.w.double()) - self.w_bar.double()).to(self.peft.dtype).unsqueeze(1)
        if self.anchor == "retain":  # −∇L_r(w) = J_rᵀ(Y_r − f̄_r − J_r d) − λd
            keep = np.setdiff1d(np.arange(self.n), all_f)
            src_r = self.src.subset(keep)
            rows = torch.as_tensor(self._rows(keep), device=self.z_D.device)
            z = self.z_D[rows].to(self.peft.dtype) - src_r.jmat(d)[:, 0]
            return src_r.jtmat(z.unsqueeze(1))[:, 0].double() - self.lam * d[:, 0].double()
        src_f = self.src.subset(new_f)
        Y_f = targets(torch.as_tensor(self.y[new_f]), self.C, self.target_scale, self.peft.dtype, self.peft.device)
        r_f = self.outputs[torch.as_tensor(new_f)].reshape(-1) + src_f.jmat(d)[:, 0] - Y_f
        return src_f.jtmat(r_f.unsqueeze(1))[:, 0].double()

    def _gradient(self, all_f, new_f, Jf_all) -> torch.Tensor:
        """The right-hand side ``g`` of ``H_r Δ = g`` for this request (float64)."""
        if self.sketch is not None:
            return self._gradient_sketched(all_f, new_f)
        if self.anchor == "retain":
            # −∇L_r(w) = J_rᵀ(Y_r − f̄_r − J_r d) − λd = J_Dᵀ(z_D, forgotten rows zeroed) − (H d − J_allᵀ J_all d)
            z = self.z_D.clone()
            z[torch.as_tensor(self._rows(all_f), device=z.device)] = 0
            d = self.w.double() - self.w_bar.double()
            JDz = jtv64(self.src.J, z) if hasattr(self.src, "J") else self.src.jtmat(z.to(self.peft.dtype).unsqueeze(1))[:, 0].double()
            return JDz - self.factor.H @ d + jtv64(Jf_all, jv64(Jf_all, d))
        # residual of the NEW forget samples at the anchor, f_lin(X_f; w) − Y_f, placed in the rows of all forgotten
        Y_f = targets(torch.as_tensor(self.y[new_f]), self.C, self.target_scale, self.peft.dtype, self.peft.device)
        anchor_w = self.w_fit if self.anchor == "fit" else self.w
        d = (anchor_w.to(self.peft.dtype) - self.w_bar).unsqueeze(1)
        r_f = self.outputs[torch.as_tensor(new_f)].reshape(-1) + self.src.subset(new_f).jmat(d)[:, 0] - Y_f
        r_all = torch.zeros(all_f.size * self.C, dtype=torch.float64, device=self.peft.device)
        r_all[torch.as_tensor(self._rows(np.searchsorted(all_f, new_f)))] = r_f.double()
        return jtv64(Jf_all, r_all)  # J_newᵀ r_new (rows of earlier requests carry zeros)

    def _solve(self, Jf_all, g, ctx) -> tuple[torch.Tensor, str]:
        """``Δ = (H − J_fᵀJ_f)⁻¹ g``: by downdating ``H`` when ``p ≤ n_f·C``, else through Woodbury."""
        name, p, m = "H_r Δ = J_fᵀ r_f", self.src.p, Jf_all.shape[0]
        if p <= m:
            return direct_solve(_Downdated(self.factor.H, Jf_all), g, self.rtol, ctx.solves, name, check=False), \
                f"downdate (p = {p} ≤ n_f·C = {m})"
        t = time.perf_counter()
        delta = woodbury_solve(self.factor, Jf_all, g, ctx)
        res = float((self.factor.H @ delta - jtv64(Jf_all, jv64(Jf_all, delta)) - g).norm())  # certified: H_r = H − J_fᵀJ_f
        record_direct(ctx.solves, name, delta, residual=res, rhs_norm=float(g.norm()), tolerance=self.rtol * float(g.norm()),
                      t0=t, method="Woodbury through the prepared factor of H")
        return delta, f"Woodbury (n_f·C = {m} < p = {p})"

    @with_strict_precision
    def forget(self, indices, *, apply: bool = False) -> UnlearnResult:
        """Forget the training samples ``indices`` (Newton/Woodbury step from the current weights)."""
        idx, all_f, t0 = self._begin(indices)
        ctx = self._context()
        t = time.perf_counter()
        # the rows downdated from H: the exact J_F, or the sketch's rows of every sample forgotten so far
        Jf_all = self.src.subset(all_f).dense() if self.sketch is None else self.sketch.subset(all_f).J.double()
        timings = {"jacobian": time.perf_counter() - t}
        t = time.perf_counter()
        g = self._gradient(all_f, idx, Jf_all)
        delta, route = self._solve(Jf_all, g, ctx)
        check_norm_bound(delta, g, self.lam, ctx.solves["H_r Δ = J_fᵀ r_f"], "request")
        delta = delta.to(self.peft.dtype)
        timings["solve"] = time.perf_counter() - t
        sketch_info = None
        if self.sketch is not None:
            sketch_info = {"curvature": self.reasons["curvature_source"], "reason": self.sketch.reason}
            if self.sketch_estimate:  # two half-sketches of G̃_r (the retained samples' rows)
                from .tilted import sketch_error

                t = time.perf_counter()
                sketch_info.update(sketch_error(self.sketch.subset(np.setdiff1d(np.arange(self.n), all_f)), g, self.lam) or {})
                timings["error estimate"] = time.perf_counter() - t
        if not torch.isfinite(delta).all():
            raise NumericalError("the update Δ has NaN/Inf entries; nothing was changed")
        timings["total"] = time.perf_counter() - t0
        plan = {"form": {"value": "woodbury", "reason": f"Unlearner: prepared H = G_D + λI; {route}"},
                "anchor": {"value": self.anchor, "reason": self.reasons["anchor"]},
                "curvature_source": {"value": self.curvature, "reason": self.reasons["curvature_source"]}}
        res = UnlearnResult(delta=delta, w_new=self.w + delta, w_old=self.w.clone(), form="woodbury", strategy=self.src.strategy,
                            space="forget", loss="mse", scale=1.0, solves=ctx.solves, timings=timings, plan=plan,
                            info={"n_forget_request": int(idx.size), "n_forgotten_total": int(all_f.size), "n": self.n, "p": self.peft.p,
                                  "sketch": sketch_info})
        self.w_fit = self.w_fit + delta.double()
        return self._commit(all_f, res, apply)  # the state changes only now
