"""Ridge selection for MSE models: the matched (effective) ridge of an early-stopped fine-tuning."""
from __future__ import annotations

import logging

import numpy as np
import torch

from ..operators import make_jacobian
from ..operators.linearization import DEFAULT_MEMORY_BUDGET
from ..precision import with_strict_precision
from .dense import gram64, jtv64, jv64
from .inputs import check_source, targets, xy

log = logging.getLogger("fastntk")

__all__ = ["match_ridge"]


@with_strict_precision
def match_ridge(peft, train, *, w_trained: torch.Tensor, w0: torch.Tensor, grid=None, target_scale: float = 1.0,
                memory_budget: float | None = DEFAULT_MEMORY_BUDGET, batch_size: int = 128, source=None,
                curvature=None) -> tuple[float, dict]:
    """The ridge whose linearized fit on ``D`` best reproduces the trained model: the *effective* ridge.

    Fine-tuning stops early, so the trained weights are not the ridge fit of the training ridge; the unlearning
    update ``Δ = w*_{D_r}(λ) − w*_D(λ)`` should use the λ at which the fit matches what training produced.
    With ``J_D`` cached and ``K = J_D J_Dᵀ = U diag(s) Uᵀ`` (one ``eigh``), every λ of ``grid`` costs O((nC)²)::

        f_lin(X_D; w*_D(λ)) = f̄ + K (K + λI)⁻¹ z,     score(λ) = ‖f_lin(X_D; w*_D(λ)) − f_lin(X_D; w_trained)‖

    (in parameter space when ``p < nC``: ``G = V diag(s) Vᵀ``, ``w*_D(λ) − w̄ = V (diag(s) + λ)⁻¹ Vᵀ J_Dᵀ z``).
    ``source``: a cached Jacobian source of ``D`` at ``w0`` (``make_jacobian(peft, X_D, w=w0, strategy="cached")``)
    to share with :class:`Unlearner` (``Unlearner(..., source=src)``), so that ``J_D`` is built once.
    ``curvature``: a :class:`~fastntk.operators.SketchedJacobian` of ``D`` at ``w0`` (when ``J_D`` does not fit): the
    fit in parameter space with ``G̃ = V diag(s) Vᵀ`` (one ``eigh``, p × p), the right-hand side ``J_Dᵀ z`` exact (one
    VJP pass) and ``score(λ)² = (x(λ) − d)ᵀ G̃ (x(λ) − d)``, ``x(λ) = w*_D(λ) − w̄``, ``d = w_trained − w̄`` — the same
    ``‖J_D(x(λ) − d)‖²`` with ``G`` replaced by its unbiased sketch (equal to it for an orthogonal ``k = C`` sketch).
    Returns ``(λ*, {"grid", "scores"})``; ``λ*`` minimizes the score.
    """
    X, y = xy(train, "training")
    if curvature is not None:
        return _match_sketched(peft, X, y, curvature, w_trained=w_trained, w0=w0, grid=grid, target_scale=target_scale,
                               batch_size=batch_size)
    if source is not None:
        check_source(source, X.shape[0], peft, "match_ridge", need_cached=True)
        src = source
    else:
        src = make_jacobian(peft, X, w=w0, strategy="cached", memory_budget=memory_budget, batch_size=batch_size)
    J = src.J.double()
    C = src.C
    z = (targets(y, C, target_scale, torch.float64, src.device) - src.outputs().reshape(-1).double())
    target = jv64(src.J, (w_trained - w0).double())  # J (w_trained − w̄): the trained model's linear part on D
    m, p = J.shape
    if m <= p:
        s_, U = torch.linalg.eigh(gram64(src.J, side="samples"))
        uz, ut = U.T @ z, U.T @ target
        s_ = s_.clamp_min(0)
        fit = lambda lam: (s_ / (s_ + lam)) * uz  # noqa: E731  (coordinates of K (K+λ)⁻¹ z)
    else:
        s_, V = torch.linalg.eigh(gram64(src.J))
        vb = V.T @ jtv64(src.J, z)
        s_ = s_.clamp_min(0)
        JV = jv64(src.J, V)  # (m, p)
        ut = target
        fit = lambda lam: JV @ (vb / (s_ + lam))  # noqa: E731
    if grid is None:
        top = float(s_.max())
        grid = top * np.logspace(-8, 0, 33)
    scores = [float((fit(float(l)) - ut).norm()) for l in grid]
    return _pick(grid, scores)


def _pick(grid, scores) -> tuple[float, dict]:
    best = float(grid[int(np.argmin(scores))])
    log.info("fastntk: matched ridge λ = %.4g (grid %.2g … %.2g)", best, float(grid[0]), float(grid[-1]))
    return best, {"grid": [float(g) for g in grid], "scores": scores}


def _match_sketched(peft, X, y, sk, *, w_trained, w0, grid, target_scale, batch_size) -> tuple[float, dict]:
    """:func:`match_ridge` with the sketched curvature ``sk`` of ``D`` at ``w0`` (its docstring)."""
    from ..errors import InvalidInputError
    from ..operators import StreamingJacobian

    if getattr(sk, "strategy", "") != "sketch" or sk.n_total != X.shape[0] or sk.p != peft.p:
        raise InvalidInputError("match_ridge(curvature=) takes a SketchedJacobian of the training set (same n and p)")
    ex = StreamingJacobian(peft, X, w=w0, batch_size=batch_size)
    z = targets(y, ex.C, target_scale, ex.dtype, ex.device) - ex.outputs().reshape(-1)
    b = ex.jtmat(z.unsqueeze(1))[:, 0].double()  # J_Dᵀ z, exact
    s_, V = torch.linalg.eigh(gram64(sk.J))
    s_ = s_.clamp_min(0)
    vb, vd = V.T @ b, V.T @ (w_trained - w0).double()
    if grid is None:
        grid = float(s_.max()) * np.logspace(-8, 0, 33)
    # score(λ)² = Σ_j s_j (vb_j/(s_j + λ) − vd_j)² in the eigenbasis of G̃
    scores = [float(torch.sqrt((s_ * (vb / (s_ + float(l)) - vd) ** 2).sum())) for l in grid]
    return _pick(grid, scores)
