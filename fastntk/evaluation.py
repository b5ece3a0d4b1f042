"""Is an unlearned model *distributed like* retrained models?  KLoM and the NeurIPS 2023 challenge score.

Both statistics compare two ensembles: ``N_u`` unlearned models (one per original model, e.g. one per
fine-tuning seed) and ``N_o`` oracles (models retrained without ``D_f``, one per seed).  Every function
takes arrays of per-model outputs -- logits ``(N_models, n_points, C)`` or one scalar per model and point
``(N_models, n_points)`` -- so any unlearning method, fastntk's or not, can be scored.  Nothing here runs a
model.

KLoM (Georgiev et al., "Attribute-to-Delete: Machine Unlearning via Datamodel Matching", 2024; reference
code ``compute_binned_KL_div`` / ``kl_from_margins`` in RoyRin/data-unlearning-bench)
    For every point ``x`` with label ``y`` and every model, the margin
    ``m = z_y − logsumexp_{c≠y} z_c`` (:func:`margins`).  Per point: clip both samples of margins to
    ``[clip_min, clip_max]`` (default ``±100``), cut the joint range ``[min, max]`` of the two samples into
    ``bins = 20`` equal bins (``max = min + 1`` when all values are equal), histogram each sample into
    probabilities ``p`` (unlearned) and ``q`` (oracle), replace ``q_b`` by ``max(q_b, ε)`` on the bins where
    ``p_b > 0`` (``ε = 1e-5``), renormalise ``q`` and return ``KL(p ‖ q) = Σ_b p_b log(p_b / q_b)``
    (:func:`binned_kl`, :func:`klom`).  0 when both histograms agree; the largest value is
    ``log(1 + 1/ε) ≈ 11.51`` (all unlearned margins in one bin where no oracle margin is).  The
    distribution over forget, retain and held-out points is summarised by its median and 95th percentile
    (:func:`summarize`, :func:`klom_by_split`).

    **Departure from the reference code**: the reference bins with ``np.digitize`` against the 21 bin
    edges and counts indices ``1..20`` only, so every sample equal to the joint maximum (at least one per
    point) is silently dropped from its histogram.  Here the last bin is closed (``np.histogram``
    semantics) and every sample counts; ``drop_max=True`` reproduces the reference exactly.

Forgetting score of the NeurIPS 2023 Machine Unlearning Challenge (Triantafillou et al., "Are we making
progress in unlearning? Findings from the first NeurIPS unlearning competition", 2024; scoring code of the
challenge's Kaggle evaluation notebook: ``best_threshold_attack``, ``compute_epsilon_s``, ``bin_index_fn``,
``F``)
    Per forget example: a scalar statistic per model (the kit uses the cross-entropy of the logits with
    respect to the model's own arg-max, :func:`challenge_statistic`), ``N`` unlearned values labelled
    positive (1) vs ``N`` oracle values labelled negative (0).  Every threshold ``t`` among the pooled
    values is an attack "predict unlearned when value > t" with rates ``FPR = #(oracle > t) / N_o`` and
    ``FNR = #(unlearned ≤ t) / N_u`` (:func:`threshold_attack_rates`).  Per attack
    (:func:`epsilon_from_rates`): ``FPR = FNR = 0`` → ``ε = ∞``; exactly one of them 0 → the attack is
    discarded; otherwise ``ε = nanmax(log(1 − δ − FPR) − log FNR, log(1 − δ − FNR) − log FPR)`` (a NaN
    pair, i.e. both ``1 − δ − rate < 0``, → ``∞``); the example's ``ε`` is the max over its attacks and
    ``0``, ``δ = 0.01`` (:func:`per_example_epsilon`).  ``ε = 0`` exactly when no threshold has
    ``FPR + FNR < 1 − δ``.  Each example is scored ``h = 2 / 2^k`` with ``k = digitize(ε, [0, 0.5, …, 6])``
    (13 edges, width 0.5: ``ε < 0.5`` → 1, ``ε ≥ 6`` or ``∞`` → ``2^-12``), and
    ``F = mean over D_f of h`` (:func:`forget_quality`, in ``[2^-12, 1]``, higher is better).  The final
    score is ``F · (RA_u / RA_r) · (TA_u / TA_r)`` with the mean retain / test accuracies of the unlearned
    and retrained models (:func:`final_score`).

    **Departures**: (1) the kit also runs a 3-fold cross-validated logistic-regression attack on the same
    1-D values; it is a single-threshold classifier scored out of sample, whose (FPR, FNR) is, up to
    sampling, among the in-sample threshold attacks already scanned, so it is left out (``attacks`` is the
    threshold family only).  (2) ``two_sided=True`` adds the complementary attacks "predict unlearned when
    value ≤ t" (``FPR' = 1 − FPR``, ``FNR' = 1 − FNR``); the kit scans one side only (default here too), so an
    unlearned ensemble whose values sit *below* the oracles' is caught only through the NaN → ∞ rule of
    full separation.  (3) The kit replaces an all-NaN logit row by zeros; here non-finite input is refused.
    (4) The leaderboard used ``N = 512`` models; with fewer models the in-sample maximum over thresholds
    inflates ``ε`` for identical distributions, so compare a method with the oracle-vs-oracle floor at the
    same ``N`` (``benchmarks/bench_indistinguishable.py`` does).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from .errors import InvalidInputError, ShapeError

__all__ = [
    "margins",
    "binned_kl",
    "klom",
    "summarize",
    "klom_by_split",
    "challenge_statistic",
    "threshold_attack_rates",
    "epsilon_from_rates",
    "per_example_epsilon",
    "forget_quality",
    "final_score",
    "challenge_score",
    "KLOM_BINS",
    "KLOM_EPS",
    "CHALLENGE_DELTA",
]

KLOM_BINS = 20
KLOM_EPS = 1e-5
KLOM_CLIP = (-100.0, 100.0)
CHALLENGE_DELTA = 0.01
CHALLENGE_BIN_WIDTH = 0.5
CHALLENGE_N_BINS = 13


# ------------------------------------------------------------------------------------------ input checks


def _array(x, name: str, ndim: Sequence[int]) -> np.ndarray:
    """``x`` as a finite float64 array with one of the allowed ``ndim`` (typed errors before any work)."""
    try:
        a = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name} must be a numeric array, got {type(x).__name__}") from None
    if a.ndim not in ndim:
        raise ShapeError(f"{name} must have {' or '.join(map(str, ndim))} dimensions, got shape {a.shape}")
    if a.size == 0:
        raise InvalidInputError(f"{name} is empty (shape {a.shape}); give at least one model and one point")
    if not np.isfinite(a).all():
        raise InvalidInputError(f"{name} holds NaN or infinite values; score only models whose outputs are finite")
    return a


def _labels(y, n: int, C: int) -> np.ndarray:
    try:
        a = np.asarray(y.detach().cpu().numpy() if hasattr(y, "detach") else y)
    except (TypeError, ValueError):
        raise InvalidInputError(f"labels must be an integer array, got {type(y).__name__}") from None
    if a.ndim != 1 or a.shape[0] != n:
        raise ShapeError(f"labels must have shape ({n},) to match the points, got {a.shape}")
    if a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
        raise InvalidInputError(f"labels must be integers, got dtype {a.dtype}")
    if n and (a.min() < 0 or a.max() >= C):
        raise InvalidInputError(f"labels must lie in [0, {C}), got min {a.min()}, max {a.max()}")
    return a.astype(np.int64)


def _pair(u, o, name_u: str, name_o: str) -> tuple[np.ndarray, np.ndarray]:
    """Two ``(N, n)`` per-model statistics over the same points (the model counts may differ)."""
    a, b = _array(u, name_u, (2,)), _array(o, name_o, (2,))
    if a.shape[1] != b.shape[1]:
        raise ShapeError(f"{name_u} and {name_o} must score the same points: {a.shape[1]} vs {b.shape[1]} columns")
    return a, b


def _positive_int(v, name: str, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < minimum:
        raise InvalidInputError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return int(v)


# ------------------------------------------------------------------------------------------ margins, KLoM


def margins(logits, labels) -> np.ndarray:
    """Margins ``z_y − logsumexp_{c≠y} z_c`` (float64), logits ``(..., n, C)`` with ``C ≥ 2``, labels ``(n,)``.

    ``m = log p_y − log(1 − p_y)``: the log-odds of the true-class probability (``m > 0`` ⇔ ``p_y > ½``).
    Shape ``(..., n)``.
    """
    z = _array(logits, "logits", (2, 3))
    n, C = z.shape[-2], z.shape[-1]
    if C < 2:
        raise ShapeError(f"margins need at least 2 classes, got logits of shape {z.shape}")
    y = _labels(labels, n, C)
    idx = np.broadcast_to(y.reshape((1,) * (z.ndim - 2) + (n, 1)), z.shape[:-1] + (1,))
    zy = np.take_along_axis(z, idx, axis=-1)[..., 0]
    other = z.copy()
    np.put_along_axis(other, idx, -np.inf, axis=-1)
    mx = other.max(-1)
    lse = mx + np.log(np.exp(other - mx[..., None]).sum(-1))
    return zy - lse


def _histograms(values: np.ndarray, lo: np.ndarray, hi: np.ndarray, bins: int, drop_max: bool) -> np.ndarray:
    """Per column, counts of ``values (N, n)`` in ``bins`` equal bins over ``[lo, hi]``: ``(bins, n)``."""
    edges = np.linspace(lo, hi, bins + 1, axis=0)  # (bins+1, n), the reference's np.linspace edges
    # bin index = number of inner edges <= value (np.digitize, right=False), in 0..bins-1; value == hi -> last bin
    k = (values[:, None, :] >= edges[None, 1:-1, :]).sum(1)
    keep = np.ones_like(k, dtype=bool)
    if drop_max:  # the reference: digitize gives bins+1 for value >= the last edge, which is never counted
        keep = values < edges[-1][None, :]
    counts = np.zeros((bins, values.shape[1]))
    cols = np.broadcast_to(np.arange(values.shape[1]), k.shape)
    np.add.at(counts, (k[keep], cols[keep]), 1.0)
    return counts


def binned_kl(p_samples, q_samples, *, bins: int = KLOM_BINS, eps: float = KLOM_EPS,
              clip: tuple[float, float] | None = KLOM_CLIP, drop_max: bool = False, chunk: int = 2048) -> np.ndarray:
    """Per column ``j``, ``KL(p ‖ q)`` of the binned samples ``p_samples[:, j]`` and ``q_samples[:, j]``.

    ``p_samples (N_p, n)``, ``q_samples (N_q, n)`` (model counts may differ).  The binning, the smoothing
    ``q_b ← max(q_b, eps)`` where ``p_b > 0`` (then ``q`` renormalised, as ``scipy.stats.entropy`` does) and
    the clip are those of the module docstring; ``drop_max=True`` reproduces the reference's dropped
    maximum.  Returns float64 ``(n,)`` in ``[0, log(1 + 1/eps)]``.
    """
    p, q = _pair(p_samples, q_samples, "p_samples", "q_samples")
    bins = _positive_int(bins, "bins")
    if not (isinstance(eps, (int, float)) and 0 < float(eps) < 1):
        raise InvalidInputError(f"eps must lie in (0, 1), got {eps!r}")
    if clip is not None:
        lo_c, hi_c = (float(c) for c in clip)
        if not lo_c < hi_c:
            raise InvalidInputError(f"clip must be (min, max) with min < max, got {clip!r}")
        p, q = np.clip(p, lo_c, hi_c), np.clip(q, lo_c, hi_c)
    chunk = _positive_int(chunk, "chunk")
    out = np.empty(p.shape[1])
    for s in range(0, p.shape[1], chunk):
        ps, qs = p[:, s : s + chunk], q[:, s : s + chunk]
        lo = np.minimum(ps.min(0), qs.min(0))
        hi = np.maximum(ps.max(0), qs.max(0))
        hi = np.where(lo >= hi, lo + 1.0, hi)
        cp, cq = _histograms(ps, lo, hi, bins, drop_max), _histograms(qs, lo, hi, bins, drop_max)
        tp, tq = cp.sum(0), cq.sum(0)
        pp = np.divide(cp, tp, out=np.zeros_like(cp), where=tp > 0)
        qq = np.divide(cq, tq, out=np.zeros_like(cq), where=tq > 0)
        qq = np.where(pp > 0, np.maximum(qq, float(eps)), qq)
        qq = qq / qq.sum(0, keepdims=True).clip(min=np.finfo(float).tiny)
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(pp > 0, pp * (np.log(pp) - np.log(qq)), 0.0)
        out[s : s + chunk] = np.where(tp > 0, terms.sum(0), 0.0)
    return out


def klom(unlearned, oracle, labels=None, **kw) -> np.ndarray:
    """KLoM per point: :func:`binned_kl` of the unlearned models' margins against the oracles'.

    ``unlearned (N_u, n, C)`` and ``oracle (N_o, n, C)`` logits with ``labels (n,)``, or margins
    ``(N_u, n)`` / ``(N_o, n)`` already computed (then ``labels`` must be ``None``).  Keyword arguments go to
    :func:`binned_kl`.  Lower is better; 0 = the unlearned margins are binned like the oracles'.
    """
    u = _array(unlearned, "unlearned", (2, 3))
    o = _array(oracle, "oracle", (2, 3))
    if u.ndim != o.ndim:
        raise ShapeError(f"unlearned and oracle must both be logits (3-D) or margins (2-D), got {u.shape} and {o.shape}")
    if u.ndim == 3:
        if labels is None:
            raise InvalidInputError("logits need labels (n,) to compute margins; pass labels= or give margins (2-D)")
        if u.shape[1:] != o.shape[1:]:
            raise ShapeError(f"unlearned and oracle logits must cover the same points and classes: {u.shape} vs {o.shape}")
        y = _labels(labels, u.shape[1], u.shape[2])
        u, o = margins(u, y), margins(o, y)
    elif labels is not None:
        raise InvalidInputError("labels are only used with logits (3-D); margins (2-D) need none")
    return binned_kl(u, o, **kw)


def summarize(values, *, quantiles: Sequence[float] = (0.5, 0.95)) -> dict:
    """``{"n", "mean", "median", "p95", "max"}`` of a per-point statistic (``p<q>`` for every quantile)."""
    v = _array(values, "values", (1,))
    out = {"n": int(v.size), "mean": float(v.mean()), "max": float(v.max())}
    for qt in quantiles:
        if not 0 <= float(qt) <= 1:
            raise InvalidInputError(f"quantiles must lie in [0, 1], got {qt!r}")
        key = "median" if float(qt) == 0.5 else f"p{100 * float(qt):g}"
        out[key] = float(np.quantile(v, float(qt)))
    return out


def klom_by_split(unlearned, oracle, labels, splits: Mapping[str, object], **kw) -> dict:
    """KLoM over each named split of the points: ``{name: {"values": (n_s,), **summarize(values)}}``.

    ``splits`` maps a name (``"forget"``, ``"retain"``, ``"held-out"``...) to indices of the points
    (columns) of ``unlearned`` / ``oracle``.
    """
    values = klom(unlearned, oracle, labels, **kw)
    out = {}
    for name, idx in splits.items():
        ii = np.asarray(idx)
        if ii.dtype == bool or not np.issubdtype(ii.dtype, np.integer) or ii.ndim != 1 or ii.size == 0:
            raise InvalidInputError(f"split {name!r} must be a non-empty 1-D integer index array")
        if ii.min() < 0 or ii.max() >= values.size:
            raise InvalidInputError(f"split {name!r} has indices outside [0, {values.size})")
        out[name] = {"values": values[ii], **summarize(values[ii])}
    return out


# ------------------------------------------------------------------------------------------ challenge score


def challenge_statistic(logits, labels=None) -> np.ndarray:
    """The kit's per-example statistic: cross-entropy of each model's logits ``(..., n, C)``.

    With ``labels=None`` (the kit's ``cross_entropy_f``) the target is the model's own arg-max, i.e.
    ``−log max_c softmax(z)_c``; with ``labels (n,)`` the ordinary CE of the true label.  Shape ``(..., n)``.
    """
    z = _array(logits, "logits", (2, 3))
    n, C = z.shape[-2], z.shape[-1]
    tgt = z.argmax(-1) if labels is None else np.broadcast_to(_labels(labels, n, C), z.shape[:-1])
    mx = z.max(-1)
    lse = mx + np.log(np.exp(z - mx[..., None]).sum(-1))
    return lse - np.take_along_axis(z, tgt[..., None], axis=-1)[..., 0]


def threshold_attack_rates(unlearned, oracle, *, two_sided: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FPR, FNR, valid) of every single-threshold attack, per column: arrays ``(M, n)``.

    ``unlearned (N_u, n)`` positives, ``oracle (N_o, n)`` negatives.  The thresholds are the pooled sorted
    values (the kit's ``sorted(samples)``); ``valid`` is False at the repeated copies of a tied value (they
    are the same attack).  ``two_sided`` appends the complementary attacks (``M`` doubles).
    """
    u, o = _pair(unlearned, oracle, "unlearned", "oracle")
    nu, no = u.shape[0], o.shape[0]
    z = np.concatenate([o, u], 0)
    lab = np.concatenate([np.zeros(no), np.ones(nu)])
    order = np.argsort(z, axis=0, kind="stable")
    zs = np.take_along_axis(z, order, 0)
    cu = np.cumsum(lab[order], 0)  # unlearned values <= t: predicted 0 -> false negatives
    co = np.arange(1, nu + no + 1)[:, None] - cu  # oracle values <= t: true negatives
    fnr, fpr = cu / nu, (no - co) / no
    valid = np.ones(zs.shape, dtype=bool)
    valid[:-1] = zs[1:] != zs[:-1]  # only the last copy of a tied threshold has the rates of "value > t"
    if two_sided:
        fpr, fnr, valid = np.concatenate([fpr, 1 - fpr]), np.concatenate([fnr, 1 - fnr]), np.concatenate([valid, valid])
    return fpr, fnr, valid


def epsilon_from_rates(fpr, fnr, *, delta: float = CHALLENGE_DELTA, valid=None) -> np.ndarray:
    """The kit's ``compute_epsilon_s`` over axis 0 (attacks) of ``fpr``/``fnr`` ``(M, ...)``: ``ε`` per column.

    ``max(0, max over kept attacks)``: both rates 0 → ``∞``; one of them 0 → discarded; otherwise
    ``nanmax(log(1 − δ − FPR) − log FNR, log(1 − δ − FNR) − log FPR)``, both NaN → ``∞``.
    """
    a, b = np.asarray(fpr, dtype=np.float64), np.asarray(fnr, dtype=np.float64)
    if a.shape != b.shape or a.ndim < 1 or a.shape[0] == 0:
        raise ShapeError(f"fpr and fnr must have one shape (M, ...) with M >= 1 attacks, got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()) or a.min() < 0 or b.min() < 0 or a.max() > 1 or b.max() > 1:
        raise InvalidInputError("fpr and fnr must be rates in [0, 1]")
    if not (isinstance(delta, (int, float)) and 0 <= float(delta) < 1):
        raise InvalidInputError(f"delta must lie in [0, 1), got {delta!r}")
    keep = np.ones(a.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    if keep.shape != a.shape:
        raise ShapeError(f"valid must have the shape of fpr {a.shape}, got {keep.shape}")
    d = float(delta)
    with np.errstate(divide="ignore", invalid="ignore"):
        e1 = np.log(1.0 - d - a) - np.log(b)
        e2 = np.log(1.0 - d - b) - np.log(a)
    both_nan = np.isnan(e1) & np.isnan(e2)
    eps = np.where(both_nan, np.inf, np.fmax(e1, e2))  # fmax = nanmax of the pair
    eps = np.where((a == 0) & (b == 0), np.inf, eps)
    eps = np.where(((a == 0) ^ (b == 0)) | ~keep, -np.inf, eps)  # discarded attacks
    return np.maximum(eps.max(0), 0.0)


def per_example_epsilon(unlearned, oracle, *, delta: float = CHALLENGE_DELTA, two_sided: bool = False) -> np.ndarray:
    """The challenge's privacy degree ``ε`` of every example (column) of ``unlearned`` vs ``oracle``.

    ``unlearned (N_u, n)``, ``oracle (N_o, n)``: one scalar per model and example (e.g.
    :func:`challenge_statistic` of the logits).  ``(n,)`` values in ``[0, ∞]``; lower is better.
    """
    fpr, fnr, valid = threshold_attack_rates(unlearned, oracle, two_sided=two_sided)
    return epsilon_from_rates(fpr, fnr, delta=delta, valid=valid)


def forget_quality(epsilons, *, bin_width: float = CHALLENGE_BIN_WIDTH, n_bins: int = CHALLENGE_N_BINS) -> float:
    """``F = mean_i 2 / 2^k_i`` with ``k_i = digitize(ε_i, [0, w, 2w, …, (n_bins − 1)·w])`` (kit: ``w = 0.5``, 13 edges)."""
    e = np.asarray(epsilons, dtype=np.float64).reshape(-1)
    if e.size == 0:
        raise InvalidInputError("forget_quality needs at least one epsilon")
    if np.isnan(e).any() or (e < 0).any():
        raise InvalidInputError("epsilons must be >= 0 (inf allowed), without NaN")
    if not (isinstance(bin_width, (int, float)) and bin_width > 0 and math.isfinite(bin_width)):
        raise InvalidInputError(f"bin_width must be a positive number, got {bin_width!r}")
    n_bins = _positive_int(n_bins, "n_bins")
    k = np.digitize(e, np.arange(n_bins) * float(bin_width))
    return float(np.mean(2.0 / 2.0 ** k))


def final_score(F: float, ra_unlearned: float, ra_retrained: float, ta_unlearned: float, ta_retrained: float) -> float:
    """The challenge's final score ``F · (RA_u / RA_r) · (TA_u / TA_r)`` (mean accuracies over each ensemble)."""
    vals = dict(F=F, ra_unlearned=ra_unlearned, ra_retrained=ra_retrained, ta_unlearned=ta_unlearned, ta_retrained=ta_retrained)
    for k, v in vals.items():
        if not (isinstance(v, (int, float, np.floating)) and math.isfinite(float(v)) and 0 <= float(v) <= 1):
            raise InvalidInputError(f"{k} must be a number in [0, 1], got {v!r}")
    if ra_retrained == 0 or ta_retrained == 0:
        raise InvalidInputError("the retrained accuracies must be positive (they are divisors)")
    return float(F) * float(ra_unlearned) / float(ra_retrained) * float(ta_unlearned) / float(ta_retrained)


def challenge_score(unlearned, oracle, *, ra: tuple[float, float] | None = None, ta: tuple[float, float] | None = None,
                    delta: float = CHALLENGE_DELTA, two_sided: bool = False) -> dict:
    """Per-example ``ε``, ``F`` and (with ``ra=(RA_u, RA_r)``, ``ta=(TA_u, TA_r)``) the final score.

    ``unlearned`` / ``oracle``: per-model statistics ``(N, n_forget)`` or logits ``(N, n_forget, C)`` (then
    :func:`challenge_statistic` is applied, as the kit does).
    """
    u = _array(unlearned, "unlearned", (2, 3))
    o = _array(oracle, "oracle", (2, 3))
    if u.ndim != o.ndim:
        raise ShapeError(f"unlearned and oracle must both be logits (3-D) or statistics (2-D), got {u.shape} and {o.shape}")
    if u.ndim == 3:
        u, o = challenge_statistic(u), challenge_statistic(o)
    eps = per_example_epsilon(u, o, delta=delta, two_sided=two_sided)
    out = {"epsilon": eps, "F": forget_quality(eps)}
    if ra is not None and ta is not None:
        out["score"] = final_score(out["F"], ra[0], ra[1], ta[0], ta[1])
    elif (ra is None) != (ta is None):
        raise InvalidInputError("give both ra=(RA_u, RA_r) and ta=(TA_u, TA_r) for the final score, or neither")
    return out
