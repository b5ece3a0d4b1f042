"""The prepared ``Unlearner`` for classifiers fine-tuned with cross-entropy.

``prepare()`` caches, once, the loss-weighted Jacobian ``J̃_D`` at the trained weights (``J̃_i = L_iᵀ J_i``,
``L_i L_iᵀ = diag p_i − p_i p_iᵀ``) and its float64 Gram ``G_D = J̃_Dᵀ J̃_D`` (p × p).  A request then runs the
same Newton iteration as the one-shot :func:`fastntk.unlearn` with ``trained_with="ce"`` (anchor by request,
relative ridge, stopping rule, do-no-harm check), with the curvature frozen at the prepared weights:
``G_r = G_D − J̃_Fᵀ J̃_F`` from the cached rows of every sample forgotten so far (no Jacobian of ``D_r``).  Its
gradients are the network's: one pass over ``D_f`` and, for every step after the first (or the plain anchor),
one over ``D_r``.  The first step equals the one-shot update's (the same ``G_r(w_t)``, ``λ`` and gradient);
later steps differ only by the curvature (frozen instead of relinearized).
"""
from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch

from ..operators.linearization import DEFAULT_MEMORY_BUDGET
from ..errors import InvalidInputError
from ..operators import make_jacobian
from .options import DEFAULT_RTOL
from .backoff import run_backoff
from .guard import HarmTolerance, check_update, record_forget, retain_sample
from .newton import NewtonOptions
from .objective import NetworkObjective
from .policy import auto_newton, ce_anchor
from .requests import RequestStream, check_request
from .result import UnlearnResult
from .dense import gram64
from .solve import SolveContext
from .tilted import FrozenCurvature, JacobianOptions, tilted_newton

log = logging.getLogger("fastntk")

__all__ = ["CEUnlearner", "check_request"]


class CEUnlearner(RequestStream):
    """Prepared deletion requests for a model fine-tuned with cross-entropy (module docstring).

    model, peft : the fine-tuned model and its PEFT set; train : ``(X, y)`` of the fine-tuning set ``D``;
    w0 : PEFT vector before fine-tuning (the ridge centre of the plain anchor); ridge : ``"auto"`` (relative) or λ;
    newton, harm : as :func:`fastntk.unlearn`; memory_budget : bytes for ``J̃_D`` (``n·C·p`` floats, must fit).
    """

    def __init__(self, model, peft, X, y, *, w0=None, ridge="auto", newton: NewtonOptions | None = None,
                 harm: HarmTolerance | None = None, memory_budget: float | None = DEFAULT_MEMORY_BUDGET, batch_size: int = 128,
                 rtol: float = DEFAULT_RTOL, progress: bool = False):
        if ridge not in ("auto", "relative", "per-sample") and not (isinstance(ridge, (int, float)) and not isinstance(ridge, bool) and ridge > 0):
            raise InvalidInputError(f"ridge must be 'auto', 'relative', 'per-sample' or a positive number, got {ridge!r}")
        if w0 is not None:
            peft.check_vector(w0, name="w0")
        self.model, self.peft, self.X, self.y = model, peft, X, y
        self.n = int(X.shape[0])
        self.w0 = None if w0 is None else w0.detach().clone()
        self.ridge, self.newton, self.harm = ridge, newton, harm or HarmTolerance()
        self.memory_budget, self.batch_size, self.rtol, self.progress = memory_budget, batch_size, rtol, progress
        self.forgotten = np.zeros(0, dtype=np.int64)
        self.w = peft.vector()
        self.prepared = False
        self.history: list[dict] = []

    def prepare(self) -> "CEUnlearner":
        t = time.perf_counter()
        self.src = make_jacobian(self.peft, self.X, w=self.w, loss="ce", strategy="cached", memory_budget=self.memory_budget,
                                 batch_size=self.batch_size, progress=self.progress)
        self.C = int(self.src.C)
        self.G_D = gram64(self.src.J)
        self.trace_D = float(self.G_D.diagonal().sum())
        self.prepare_seconds = time.perf_counter() - t
        self.prepared = True
        log.info("fastntk: CE Unlearner prepared (n=%d, p=%d, %.2fs)", self.n, self.src.p, self.prepare_seconds)
        return self

    def _rows(self, idx: np.ndarray) -> torch.Tensor:
        C = self.C
        rows = (idx[:, None] * C + np.arange(C)[None, :]).reshape(-1)
        return self.src.J[torch.as_tensor(rows, device=self.src.J.device)]

    def forget(self, indices, *, apply: bool = False) -> UnlearnResult:
        """Forget the training samples ``indices`` from the current weights (module docstring)."""
        idx, all_f, t0 = self._begin(indices)
        keep = np.setdiff1d(np.arange(self.n), all_f)
        ti, tk = torch.as_tensor(idx), torch.as_tensor(keep)
        X_r, y_r, X_f, y_f = self.X[tk], self.y[tk], self.X[ti], self.y[ti]
        anchor, why = ce_anchor(y_r, self.y[torch.as_tensor(all_f)])
        newton = self.newton or auto_newton(anchor)[0]
        ctx = SolveContext(rtol=self.rtol, maxiter=None, preconditioner="none", precond_rank=0, backend="auto", callback=None,
                           on_fail="raise", progress=False)
        curv = FrozenCurvature(self.G_D, self.trace_D, self._rows(all_f))
        s = torch.as_tensor(retain_sample(X_r.shape[0], self.harm.samples))
        check_memo = {}  # the check's evaluations on its sample (when it is not all of D_r)

        def run(lam, start=None):  # one tilted step scores its line search on the check's sample (tilted.one_step_sample)
            return tilted_newton(self.peft, (X_r, y_r), (X_f, y_f), w_trained=self.w, w0=self.w0, loss="ce", ridge=lam,
                                 newton=newton, jac=JacobianOptions(), ctx=ctx, tilt=anchor == "trained", curvature=curv,
                                 start=start, sample=(s.numpy(), check_memo))

        r0 = r = run(self.ridge)

        def check_objective(res):  # the whole retain set: the iteration's evaluations serve
            return NetworkObjective(self.peft, X_r[s], y_r[s], loss="ce",
                                    memo=res.memo if s.numel() == X_r.shape[0] else check_memo)

        r, backoff, t_back = run_backoff(r0, run, check_objective, w_old=self.w, harm=self.harm, anchor=anchor,
                                         ridge=self.ridge, C=self.C)  # fastntk.update.backoff
        t = time.perf_counter()
        delta, w_new, chk = check_update(check_objective(r), self.w, r.delta, self.harm, chance_loss=math.log(self.C))
        record_forget(self.peft, X_f, y_f, self.harm, self.w, w_new, chk, loss="ce")
        timings = dict(r0.timings, **({"ridge backoff": t_back} if t_back else {}),
                       **{"harm check": time.perf_counter() - t, "total": time.perf_counter() - t0})
        steps = backoff["steps"] if backoff["used"] else r.newton.steps
        reasons = {"anchor": why, "ridge": r0.ridge_info["rule"] + f": λ = {r0.ridge:.4g}" +
                   (f"; {backoff['why']}" if backoff["used"] else ""), "solver": r.solver,
                   "stop": f"{r.newton.steps} Newton step(s): {r.newton.stop_reason}", "line_search_sample": r0.line_search,
                   "form": "prepared CE Unlearner: Newton iteration with the curvature frozen at the prepared weights"}
        res = UnlearnResult(delta=delta, w_new=w_new, w_old=self.w.clone(), form="primal", strategy="cached",
                            space="primal", loss="ce", scale=chk.scale, reasons=reasons, solves=ctx.solves, timings=timings,
                            info={"n_forget_request": int(idx.size), "n_forgotten_total": int(all_f.size), "n": self.n,
                                  "p": self.peft.p, "ridge": r.ridge, "anchor": anchor, "steps": steps,
                                  "newton": r.newton.summary(), "harm_check": chk.summary(), "trained_with": "ce",
                                  "ridge_backoff": backoff})
        return self._commit(all_f, res, apply)  # the state changes only now
