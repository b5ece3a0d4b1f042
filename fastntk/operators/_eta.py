"""ETA log lines for the long phases of the operators (INFO on the ``fastntk`` logger; the CLI shows them).

* :class:`PhaseEta` -- a pass over the data in pieces (the per-sample Jacobian build): after the first
  piece, ``elapsed / done × remaining``.
* :func:`log_product_eta` -- a streamed Krylov solve: after the first product of a Gauss-Newton or NTK
  operator, seconds per product × the number of CG iterations to expect.  The operator does not know the
  solver's tolerance, so the estimate is stated for ``rtol`` (1e-4 in float32 -- the floor ``unlearn`` uses --
  else 1e-6) with the classical bound ``k ≤ ½ √κ ln(2/rtol)``, ``κ ≈ q/λ`` from the Rayleigh quotient
  ``q`` of ``A + λI`` at the first vector (a lower estimate of ``λmax + λ``, so the expected count can be low),
  and capped by the dimension (the exact-arithmetic bound).

Lines are logged only when the predicted (remaining, resp. expected) time is at least :data:`ETA_MIN_SECONDS`
(short phases stay quiet; set it to 0 to see every one).
"""
from __future__ import annotations

import logging
import math
import time

import torch

log = logging.getLogger("fastntk")

ETA_MIN_SECONDS = 1.0

__all__ = ["ETA_MIN_SECONDS", "PhaseEta", "fmt_seconds", "timed_product", "log_product_eta", "cg_iterations_expected"]


def fmt_seconds(s: float) -> str:
    """``3.2 s``, ``4 min 05 s``, ``1 h 02 min``."""
    if not math.isfinite(s):
        return "?"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


class PhaseEta:
    """``eta = PhaseEta("jacobian build", total=n, unit="samples")``; ``eta.update(done)`` after each piece.

    Logs one ETA line after the first piece that leaves work to do, and a closing line from :meth:`done`
    when an ETA was announced (so that the two can be compared in the log).
    """

    def __init__(self, what: str, total: int, *, unit: str = "samples", detail: str = ""):
        self.what, self.total, self.unit, self.detail = what, int(total), unit, detail
        self.t0 = time.perf_counter()
        self.announced = False
        self.eta = None

    def update(self, done: int) -> None:
        if self.announced or done <= 0 or done >= self.total:
            return
        elapsed = time.perf_counter() - self.t0
        remaining = elapsed / done * (self.total - done)
        self.announced = True
        if remaining >= ETA_MIN_SECONDS:
            self.eta = remaining
            log.info("fastntk: %s%s: %d/%d %s in %s, ETA %s (total ≈ %s)", self.what, self.detail, done, self.total, self.unit,
                     fmt_seconds(elapsed), fmt_seconds(remaining), fmt_seconds(elapsed + remaining))

    def done(self) -> float:
        elapsed = time.perf_counter() - self.t0
        if self.eta is not None:
            log.info("fastntk: %s done in %s", self.what, fmt_seconds(elapsed))
        return elapsed


def cg_iterations_expected(kappa: float, rtol: float, dim: int) -> int:
    """``min(dim, ⌈½ √κ ln(2/rtol)⌉)``: CG iterations to reduce the error by ``rtol`` at condition number κ."""
    if not math.isfinite(kappa) or kappa <= 0:
        return int(dim)
    return int(min(dim, max(1, math.ceil(0.5 * math.sqrt(kappa) * math.log(2.0 / rtol)))))


def timed_product(op, X: torch.Tensor, product) -> torch.Tensor:
    """``product(X)``; on the operator's first product also :func:`log_product_eta`."""
    if getattr(op, "_eta_logged", False):
        return product(X)
    t = time.perf_counter()
    Y = product(X)
    op._eta_logged = True
    log_product_eta(op, time.perf_counter() - t, X, Y)
    return Y


def log_product_eta(op, seconds: float, X: torch.Tensor, Y: torch.Tensor) -> None:
    """After the first product ``Y = (A + λI) X`` of a symmetric operator: the ETA of a CG solve with it."""
    ridge = float(getattr(op, "ridge", 0.0))
    dim = int(op.shape[0])
    x, y = X[:, 0].double(), Y[:, 0].double()
    xx = float(x @ x)
    q = float(x @ y) / xx if xx > 0 else float("nan")
    kappa = q / ridge if ridge > 0 and q > 0 else float("inf")
    rtol = 1e-4 if op.dtype == torch.float32 else 1e-6
    k = cg_iterations_expected(kappa, rtol, dim)
    per = seconds / max(1, X.shape[1])
    eta, worst = per * k, per * dim
    if eta < ETA_MIN_SECONDS:
        return
    src = getattr(op, "source", None)
    strategy = getattr(src, "strategy", "?")
    n = getattr(src, "n", "?")
    log.info("fastntk: %s %d×%d (%s J, n=%s): one product %s; CG ETA ≈ %s (%d iterations to rtol %g at κ ≈ %.3g from the "
             "first vector), at most %s (%d iterations, the dimension)", type(op).__name__, dim, dim, strategy, n, fmt_seconds(per),
             fmt_seconds(eta), k, rtol, kappa, fmt_seconds(worst), dim)
