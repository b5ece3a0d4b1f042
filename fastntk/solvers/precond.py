"""Preconditioners M ≈ (A + ridge·I)⁻¹ for the Krylov solvers (docs/theory.md §8).

**Ridge convention (one for all):** a preconditioner is built from an operator ``A`` and a
``ridge`` μ and approximates ``(A + μI)⁻¹``.  So if you solve ``(A + μI) x = b`` and pass the
operator *without* the ridge, give ``ridge=μ``; if your operator already includes the ridge
(``A_λ = A + λI``), build from ``A_λ`` with ``ridge=0``.  Both are tested.

Every preconditioner has ``.shape``, ``.dtype``, ``.matvec(x)``, ``.matmat(X)`` and
``build_matvecs`` (operator matvecs spent building it; a block matmat on r columns counts r).
They work on NumPy and CuPy arrays and torch tensors (array API code, see
:mod:`fastntk.solvers._xp`): stored factors are moved to the array library and device of ``x`` on
first use and cached.  A preconditioner that cannot be built from its arguments (no cheap diagonal,
a bad rank, a diagonal that is not positive) raises :class:`fastntk.errors.PreconditionerError`
before any operator application; a Nyström sketch that fails numerically raises ``NumericalError``.  A built preconditioner can be reused for later solves with the same
operator, a different ridge (``with_ridge``) or a low-rank update of the operator (it stays an
SPD approximation, so PCG still converges; only the speed-up can shrink).
"""
from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError, NoDiagonalError, NumericalError, PreconditionerError, ShapeError
from . import _xp
from ._linop import as_operator, get_xp


def _cholqr2(G):
    """Orthonormal basis of a tall Gaussian matrix by CholeskyQR2 (two Cholesky–QR passes)."""
    import scipy.linalg as sla  # noqa: PLC0415

    for _ in range(2):
        R = np.linalg.cholesky(G.T @ G).T
        G = sla.solve_triangular(R, G.T, trans="T", lower=False).T
    return np.ascontiguousarray(G)


def _eigvalsh(xp, C):
    return np.asarray(_xp.to_numpy(xp.linalg.eigvalsh(0.5 * (C + C.T))))


class _Cache:
    """Stored arrays, mirrored lazily into the array library and device of the input."""

    def __init__(self):
        self._copies = {}

    def get(self, name, arr, like):
        xp = get_xp(like)
        src_xp = get_xp(arr) if _xp.is_array(arr) else _xp.numpy_namespace()
        if _xp.kind(src_xp) == _xp.kind(xp) and (_xp.is_numpy(xp) or str(_xp.device(arr)) == str(_xp.device(like))):
            return arr
        key = (name, id(arr), _xp.kind(xp), str(_xp.device(like)))
        if key not in self._copies:
            self._copies[key] = _xp.from_numpy(xp, _xp.to_numpy(arr), like)
        return self._copies[key]


def _as(xp, x, like):
    """``x`` (a cached factor) in the dtype of ``like``."""
    return xp.astype(x, like.dtype, copy=False)


class _Base:
    build_matvecs = 0
    dtype = np.dtype(np.float64)

    def matmat(self, X):
        return self._apply(X, two_d=True)

    def matvec(self, x):
        return self._apply(x, two_d=False)

    def __matmul__(self, x):
        return self._apply(x, two_d=(x.ndim == 2))

    def _check(self, x, two_d):
        n = self.shape[0]
        if x.shape[0] != n or (two_d and x.ndim != 2) or (not two_d and x.ndim != 1):
            raise ShapeError(f"{type(self).__name__} of size {n} applied to an array of shape {tuple(x.shape)}.")
        return get_xp(x)


class IdentityPreconditioner(_Base):
    """M = I (name "none")."""

    def __init__(self, n: int):
        self.shape = (int(n), int(n))

    def _apply(self, x, two_d):
        return _xp.copy(self._check(x, two_d), x)


class JacobiPreconditioner(_Base):
    """M = diag(d + μ)⁻¹, with d the diagonal of A (e.g. per-sample squared Jacobian norms for the NTK)."""

    def __init__(self, diag, ridge: float = 0.0):
        xp = get_xp(diag) if _xp.is_array(diag) else _xp.numpy_namespace()
        d = xp.reshape(_xp.astype(xp, xp.asarray(diag), np.float64), (-1,))
        if d.shape[0] == 0:
            raise ShapeError("JacobiPreconditioner: empty diagonal.")
        if ridge < 0 or not np.isfinite(ridge):
            raise InvalidInputError(f"ridge must be finite and >= 0; got {ridge}.")
        dd = d + ridge
        if not bool(xp.all(xp.isfinite(dd))) or not bool(xp.all(dd > 0)):
            raise PreconditionerError("JacobiPreconditioner: diagonal + ridge must be finite and > 0 (A SPD); "
                                      "add a ridge or use another preconditioner.")
        self.dinv = 1.0 / dd
        self.ridge = float(ridge)
        self.shape = (int(d.shape[0]), int(d.shape[0]))
        self._cache = _Cache()

    @classmethod
    def from_operator(cls, A, ridge: float = 0.0) -> "JacobiPreconditioner":
        """Build from ``A.diagonal()`` (or the diagonal of a dense array).

        :class:`fastntk.errors.PreconditionerError` (a ``NoDiagonalError`` when A has no cheap
        diagonal) before any operator application if it cannot be built."""
        if _xp.is_array(A):
            xp = get_xp(A)
            if A.ndim != 2 or A.shape[0] != A.shape[1]:
                raise ShapeError(f"A must be square; got {tuple(A.shape)}.")
            return cls(xp.linalg.diagonal(A), ridge)
        diag = getattr(A, "diagonal", None)
        if not callable(diag):
            raise NoDiagonalError(f"{type(A).__name__} has no diagonal(); compute the diagonal of the operator "
                                  f"(for the NTK: per-sample squared Jacobian norms) and pass it to "
                                  f"JacobiPreconditioner(diag), or use preconditioner='nystrom'.")
        try:
            d = diag()
        except NotImplementedError as exc:  # an operator without a cheap diagonal
            if isinstance(exc, PreconditionerError):
                raise
            raise NoDiagonalError(f"{type(A).__name__}: {exc}; use preconditioner='nystrom' or 'none'.") from exc
        return cls(d, ridge)

    def dinv_for(self, like):
        return self._cache.get("dinv", self.dinv, like)

    def _apply(self, x, two_d):
        xp = self._check(x, two_d)
        d = _as(xp, self.dinv_for(x), x)
        return d[:, None] * x if two_d else d * x


class _LowRankInverse(_Base):
    """y = x + U (coef ⊙ Uᵀx):  P⁻¹ = θ U (Λ + μI)⁻¹ Uᵀ + (I − UUᵀ), coef = θ/(λ+μ) − 1."""

    def _set(self, U, lam, ridge, theta=None):
        lam = np.asarray(lam, dtype=np.float64)
        if theta is None:
            theta = float(lam[-1] + ridge) if lam.size else 1.0
        self.U, self.lam, self.ridge, self.theta = U, lam, float(ridge), float(theta)
        self.coef = theta / (lam + ridge) - 1.0 if lam.size else np.zeros(0)
        n = U.shape[0]
        self.shape = (int(n), int(n))
        self._cache = _Cache()

    @property
    def rank(self) -> int:
        return int(self.lam.size)

    def _apply(self, x, two_d):
        xp = self._check(x, two_d)
        if self.rank == 0:
            return _xp.copy(xp, x)
        U = _as(xp, self._cache.get("U", self.U, x), x)
        c = _as(xp, self._cache.get("coef", self.coef, x), x)
        if two_d:
            return x + U @ (c[:, None] * (U.T @ x))
        return x + U @ (c * (U.T @ x))

    def inverse_apply(self, x):
        """The approximation of A + μI itself (P x), for diagnostics: θ⁻¹ U (Λ+μ) Uᵀ x + (I − UUᵀ)x."""
        xp = get_xp(x)
        U = _as(xp, self._cache.get("U", self.U, x), x)
        if not hasattr(self, "_c_inv"):
            self._c_inv = (self.lam + self.ridge) / self.theta - 1.0
        return x + U @ (_as(xp, self._cache.get("c_inv", self._c_inv, x), x) * (U.T @ x))


class NystromPreconditioner(_LowRankInverse):
    """Randomized Nyström preconditioner (Frangella, Tropp & Udell 2023, SIAM J. Matrix Anal. Appl.).

    From a rank-r Nyström approximation Â = U Λ̂ Uᵀ of A (PSD), for the system (A + μI) x = b:

        P⁻¹ = (λ̂_r + μ) U (Λ̂ + μI)⁻¹ Uᵀ + (I − UUᵀ)

    Built from ONE block product Y = A Ω (``A.matmat``, so an operator can share its forward
    passes across the ℓ = r + oversample columns): stable shift ν = √n·eps·‖Y‖₂, Y_ν = Y + νΩ,
    C = chol(ΩᵀY_ν), B = Y_ν C⁻¹, B = U Σ Vᵀ (thin SVD), Λ̂ = max(Σ² − ν, 0), keep the top r.
    ``build_matvecs = ℓ``.
    """

    @classmethod
    def build(cls, A, rank: int, *, ridge: float = 0.0, seed=0, oversample: int = 0) -> "NystromPreconditioner":
        if isinstance(rank, bool) or int(rank) != rank or rank < 1:
            raise PreconditionerError(f"rank must be a positive integer; got {rank!r}.")
        if ridge < 0 or not np.isfinite(ridge):
            raise PreconditionerError(f"ridge must be finite and >= 0; got {ridge}.")
        if oversample < 0:
            raise PreconditionerError(f"oversample must be >= 0; got {oversample}.")
        op = as_operator(A)
        n = op.n
        ell = min(int(rank) + int(oversample), n)
        xp = op.xp
        rng = np.random.default_rng(seed)
        Om = xp.asarray(_cholqr2(rng.standard_normal((n, ell))), device=op.device)
        Y = _xp.astype(xp, op.matmat(Om), np.float64)
        if not bool(xp.all(xp.isfinite(Y))):
            raise NumericalError("Nyström sketch A·Ω has NaN/Inf; check the operator.")
        # only ℓ×ℓ dense factorizations below (Gram matrices, BLAS-3): tall QR/SVD of LAPACK were
        # 20–50× slower here at n = 1e4, ℓ = 100 (see the benchmark notes)
        ynorm = float(np.sqrt(max(_eigvalsh(xp, Y.T @ Y).max(), 0.0)))
        nu = float(np.sqrt(n) * np.finfo(np.float64).eps * ynorm)
        nu = max(nu, np.finfo(np.float64).tiny)
        for _ in range(8):
            Ynu = Y + nu * Om
            Cm = Om.T @ Ynu
            Cm = 0.5 * (Cm + Cm.T)
            try:
                Lc = xp.linalg.cholesky(Cm)
                if bool(xp.all(xp.isfinite(Lc))):
                    break
            except Exception:  # noqa: BLE001
                pass
            nu *= 100.0
        else:
            raise NumericalError("Nyström: Cholesky of Ωᵀ(AΩ + νΩ) failed; is A symmetric positive semidefinite?")
        Bm = _xp.solve_triangular(xp, Lc, Ynu.T, lower=True).T
        # thin SVD of B through the eigendecomposition of BᵀB (ℓ×ℓ): B = U Σ Vᵀ, U = B V Σ⁻¹
        # (the small ℓ-vectors are handled on the host)
        s2, Vb = xp.linalg.eigh(0.5 * (Bm.T @ Bm + (Bm.T @ Bm).T))
        s2 = np.maximum(_xp.to_numpy(s2)[::-1], 0.0)
        Vb = xp.flip(Vb, axis=1)
        sig = np.sqrt(s2)
        good = sig > 1e-12 * float(sig.max() if sig.size else 0.0)
        U = (Bm @ Vb) / _xp.from_numpy(xp, np.where(good, sig, 1.0), Bm)[None, :]
        U = _xp.take_columns(xp, U, good)
        sig = sig[good]
        lam_h = np.maximum(sig ** 2 - nu, 0.0)
        r = min(int(rank), ell)
        r = min(r, int(lam_h.size))
        keep = np.zeros(U.shape[1], bool)
        keep[:r] = lam_h[:r] > 0 if ridge == 0 else True
        U = _xp.take_columns(xp, U, keep)
        if _xp.is_numpy(xp):
            U = np.ascontiguousarray(U)
        self = cls.__new__(cls)
        self._set(U, lam_h[keep[: lam_h.size]], ridge)
        self.build_matvecs = op.n_matvecs
        self.nu = nu
        self.seed = seed
        return self

    def with_ridge(self, ridge: float) -> "NystromPreconditioner":
        """Same sketch (no new matvecs), preconditioner for A + ridge·I."""
        new = type(self).__new__(type(self))
        new._set(self.U, self.lam, ridge)
        new.build_matvecs = 0
        new.nu, new.seed = self.nu, self.seed
        return new


class DeflationPreconditioner(_LowRankInverse):
    """Spectral deflation from eigenpairs (λ_i, u_i), i = 1..k, of A (e.g. from Lanczos):

        P⁻¹ = θ U (Λ + μI)⁻¹ Uᵀ + (I − UUᵀ),   θ = λ_k + μ (smallest deflated) by default,

    which maps the k deflated eigenvalues of A + μI to θ and leaves the rest unchanged.
    """

    @classmethod
    def from_eigpairs(cls, vals, vecs, ridge: float = 0.0, *, theta=None, build_matvecs: int = 0):
        xp = get_xp(vecs)
        vals_h = np.asarray(_xp.to_numpy(vals), dtype=np.float64).reshape(-1)
        if vecs.ndim != 2 or vecs.shape[1] != vals_h.size:
            raise ShapeError(f"vecs must have shape (n, {vals_h.size}); got {tuple(vecs.shape)}.")
        if ridge < 0 or not np.isfinite(ridge):
            raise InvalidInputError(f"ridge must be finite and >= 0; got {ridge}.")
        if np.any(vals_h + ridge <= 0):
            raise InvalidInputError("deflation needs λ_i + ridge > 0 for every eigenpair given.")
        order = np.argsort(-vals_h)
        U = xp.take(xp.asarray(vecs), xp.asarray(order, device=_xp.device(vecs)), axis=1)
        self = cls.__new__(cls)
        self._set(U, vals_h[order], ridge, theta)
        self.build_matvecs = int(build_matvecs)
        return self

    @classmethod
    def from_operator(cls, A, k: int, *, ridge: float = 0.0, seed=0, maxiter=None):
        """Top-k eigenpairs by fastntk's Lanczos (full reorthogonalisation); matvecs counted."""
        from .lanczos import lanczos  # noqa: PLC0415

        vals, vecs, info = lanczos(A, k, which="LA", seed=seed, maxiter=maxiter, return_info=True)
        return cls.from_eigpairs(vals, vecs, ridge, build_matvecs=info["matvecs"])

    def with_ridge(self, ridge: float):
        return DeflationPreconditioner.from_eigpairs(self.lam, self.U, ridge)


PRECONDITIONERS = ("none", "jacobi", "nystrom", "deflation")


def check_preconditioner(name: str, A, **kw) -> None:
    """Raise :class:`~fastntk.errors.PreconditionerError` if ``make_preconditioner(name, A, **kw)``
    cannot work, without applying A (for plans that refuse a combination before any work).

    Checks the name, that A has a cheap diagonal for "jacobi" (an array, or an operator whose
    ``has_diagonal`` is true / that has ``diagonal()``), rank / k ≥ 1 for "nystrom" / "deflation",
    and ridge ≥ 0."""
    if name not in PRECONDITIONERS:
        raise PreconditionerError(f"unknown preconditioner {name!r}; choose one of {PRECONDITIONERS}.")
    ridge = kw.get("ridge", 0.0)
    if not np.isfinite(ridge) or ridge < 0:
        raise PreconditionerError(f"ridge must be finite and >= 0; got {ridge}.")
    if name == "jacobi" and not _xp.is_array(A):
        has = getattr(A, "has_diagonal", None)
        if has is None:
            has = callable(getattr(A, "diagonal", None))
        if not has:
            raise NoDiagonalError(f"{type(A).__name__} has no cheap diagonal, so no Jacobi preconditioner: use "
                                  f"'nystrom' or 'none' (or pass JacobiPreconditioner(diag) with a diagonal you have).")
    if name in ("nystrom", "deflation"):
        r = kw.get("rank", kw.get("k", 1))
        if isinstance(r, bool) or int(r) != r or r < 1:
            raise PreconditionerError(f"rank must be a positive integer; got {r!r}.")


def make_preconditioner(name: str, A, **kw):
    """Build a preconditioner by name: "none", "jacobi" (ridge), "nystrom" (rank, ridge, seed,
    oversample), "deflation" (k, ridge, seed)."""
    check_preconditioner(name, A, **kw)
    if name == "none":
        op = as_operator(A)
        return IdentityPreconditioner(op.n)
    if name == "jacobi":
        return JacobiPreconditioner.from_operator(A, **kw)
    if name == "nystrom":
        kw = dict(kw)
        rank = kw.pop("rank", 50)
        return NystromPreconditioner.build(A, rank, **kw)
    if name == "deflation":
        kw = dict(kw)
        k = kw.pop("k", kw.pop("rank", 20))
        return DeflationPreconditioner.from_operator(A, k, **kw)
    raise PreconditionerError(f"unknown preconditioner {name!r}; choose one of {PRECONDITIONERS}.")  # pragma: no cover
