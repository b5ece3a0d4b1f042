"""fastntk.evaluation (KLoM, the NeurIPS 2023 challenge score) and the MIA-efficacy of fastntk.metrics.

Known answers: identical ensembles -> KLoM 0 and eps 0 (exactly for equal samples; statistically, with a
bound derived from the sample size, for independent samples of one distribution); disjoint ensembles -> the
maximum; hand-computed small cases; and loop transcriptions of the reference code compared with the
vectorized functions on random inputs.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from fastntk.errors import InvalidInputError, ShapeError
from fastntk.evaluation import (
    CHALLENGE_DELTA,
    CHALLENGE_N_BINS,
    KLOM_BINS,
    KLOM_EPS,
    binned_kl,
    challenge_score,
    challenge_statistic,
    epsilon_from_rates,
    final_score,
    forget_quality,
    klom,
    klom_by_split,
    margins,
    per_example_epsilon,
    summarize,
    threshold_attack_rates,
)
from fastntk.metrics import mia_efficacy, per_sample_ce

KL_MAX = math.log1p(1.0 / KLOM_EPS)  # every unlearned margin in a bin without oracle margins
H_MIN = 2.0 / 2.0**CHALLENGE_N_BINS  # the score of an example with eps >= 6 or inf


# ------------------------------------------------------------------------------------------ reference transcriptions


def _ref_binned_kl(p, q, bins=KLOM_BINS, eps=KLOM_EPS, lo_c=-100.0, hi_c=100.0, drop_max=True):
    """compute_binned_KL_div of RoyRin/data-unlearning-bench, one column (drop_max=False: np.histogram counts)."""
    p, q = np.clip(p, lo_c, hi_c), np.clip(q, lo_c, hi_c)
    lo, hi = min(p.min(), q.min()), max(p.max(), q.max())
    if lo >= hi:
        hi = lo + 1
    edges = np.linspace(lo, hi, bins + 1)
    if drop_max:
        pc = np.array([np.sum(np.digitize(p, edges) == i) for i in range(1, bins + 1)])
        qc = np.array([np.sum(np.digitize(q, edges) == i) for i in range(1, bins + 1)])
    else:
        pc, qc = np.histogram(p, edges)[0], np.histogram(q, edges)[0]
    pp = pc / pc.sum() if pc.sum() > 0 else np.zeros(bins)
    qq = qc / qc.sum() if qc.sum() > 0 else np.zeros(bins)
    qq = np.where(pp > 0, np.maximum(qq, eps), qq)
    return stats.entropy(pk=pp, qk=qq) if pp.sum() > 0 else 0.0


def _ref_epsilon(u, r, delta=CHALLENGE_DELTA):
    """best_threshold_attack + compute_epsilon_s of the challenge's scoring notebook, one example."""
    samples = np.concatenate([r, u])
    labels = np.array([0] * len(r) + [1] * len(u))
    per_attack = [0.0]
    for t in sorted(samples):
        pred = (samples > t).astype(int)
        fpr = np.sum((pred == 1) & (labels == 0)) / np.sum(labels == 0)
        fnr = np.sum((pred == 0) & (labels == 1)) / np.sum(labels == 1)
        if fpr == 0 and fnr == 0:
            per_attack.append(np.inf)
        elif fpr == 0 or fnr == 0:
            continue
        else:
            with np.errstate(invalid="ignore"):
                e1 = np.log(1.0 - delta - fpr) - np.log(fnr)
                e2 = np.log(1.0 - delta - fnr) - np.log(fpr)
            per_attack.append(np.inf if np.isnan(e1) and np.isnan(e2) else np.nanmax([e1, e2]))
    return np.nanmax(per_attack)


def _eps_pair(fpr, fnr, delta=CHALLENGE_DELTA):
    return max(math.log(1 - delta - fpr) - math.log(fnr), math.log(1 - delta - fnr) - math.log(fpr))


# ------------------------------------------------------------------------------------------ margins


def test_margins_hand_case_and_log_odds():
    z = np.array([[[2.0, 0.0, 0.0], [0.0, 1.0, -1.0]]])  # (1 model, 2 points, 3 classes)
    y = np.array([0, 2])
    m = margins(z, y)
    assert m.shape == (1, 2)
    assert m[0, 0] == pytest.approx(2.0 - math.log(2.0), rel=1e-14)
    assert m[0, 1] == pytest.approx(-1.0 - math.log(math.exp(0.0) + math.exp(1.0)), rel=1e-14)
    p = torch.softmax(torch.tensor(z[0]), -1).numpy()[np.arange(2), y]
    np.testing.assert_allclose(m[0], np.log(p) - np.log1p(-p), rtol=1e-12)


@given(st.integers(1, 4), st.integers(1, 6), st.integers(2, 5), st.integers(0, 2**31 - 1))
def test_margins_shapes_and_stability(N, n, C, seed):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(N, n, C)) * 50  # large logits: a naive exp would overflow in float32, not here
    y = rng.integers(0, C, n)
    m = margins(z, y)
    assert m.shape == (N, n) and np.isfinite(m).all()
    # a margin is invariant to adding a constant to every logit of a point
    np.testing.assert_allclose(margins(z + rng.normal(size=(N, n, 1)), y), m, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(margins(z[0], y), m[0])


def test_margins_bad_input():
    z = np.zeros((2, 3, 4))
    with pytest.raises(ShapeError):
        margins(z, np.zeros(2, dtype=int))
    with pytest.raises(InvalidInputError):
        margins(z, np.array([0, 1, 4]))
    with pytest.raises(InvalidInputError):
        margins(z, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ShapeError):
        margins(np.zeros((2, 3, 1)), np.zeros(3, dtype=int))
    with pytest.raises(InvalidInputError):
        margins(np.full((2, 3, 4), np.nan), np.zeros(3, dtype=int))
    with pytest.raises(ShapeError):
        margins(np.zeros(4), np.zeros(1, dtype=int))


# ------------------------------------------------------------------------------------------ KLoM


def test_klom_identical_samples_is_zero_and_disjoint_is_the_maximum():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(16, 7))
    np.testing.assert_array_equal(binned_kl(a, a), np.zeros(7))
    np.testing.assert_array_equal(binned_kl(a, a[rng.permutation(16)]), np.zeros(7))  # model order is irrelevant
    # every unlearned margin at one value, every oracle margin far below: one bin against smoothed emptiness
    np.testing.assert_allclose(binned_kl(np.full((16, 3), 5.0), np.zeros((16, 3))), KL_MAX, rtol=1e-12)
    # disjoint but spread: unlearned in several bins -> below the one-bin maximum, above half of it
    kl = binned_kl(np.linspace(10, 11, 16)[:, None], rng.normal(size=(16, 1)))
    assert KL_MAX / 2 < kl[0] < KL_MAX


def test_klom_hand_case():
    # joint range [0, 1]: 0 in the first bin, 1 in the (closed) last bin
    p = np.array([[0.0], [0.0], [1.0], [1.0]])  # p = (1/2, 1/2)
    q = np.array([[0.0], [1.0], [1.0], [1.0]])  # q = (1/4, 3/4)
    want = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert binned_kl(p, q)[0] == pytest.approx(want, rel=1e-14)
    # the reference drops every sample at the joint maximum: only the 0s remain, p = q = (1) -> 0
    assert binned_kl(p, q, drop_max=True)[0] == 0.0
    # smoothing: p = (1/2, 1/2) against q = (1, 0): q -> (1, eps) / (1 + eps)
    q2 = np.array([[0.0], [0.0], [0.0], [0.01]])  # all in the first bin of [0, 1]
    want2 = 0.5 * math.log(0.5 / (1 / (1 + KLOM_EPS))) + 0.5 * math.log(0.5 / (KLOM_EPS / (1 + KLOM_EPS)))
    assert binned_kl(p, q2)[0] == pytest.approx(want2, rel=1e-12)


def test_klom_clip():
    p = np.array([[1e6], [1e6]])
    q = np.array([[200.0], [150.0]])
    assert binned_kl(p, q)[0] == 0.0  # both clipped to 100
    assert binned_kl(p, q, clip=None)[0] == pytest.approx(KL_MAX)


@given(st.integers(2, 12), st.integers(2, 12), st.integers(1, 5), st.integers(0, 2**31 - 1), st.booleans(), st.booleans())
def test_klom_matches_the_reference_transcription(Np, Nq, n, seed, ties, drop_max):
    rng = np.random.default_rng(seed)
    p, q = rng.normal(size=(Np, n)) * 3, rng.normal(size=(Nq, n)) * 3 + rng.normal()
    if ties:
        p, q = np.round(p), np.round(q)
    got = binned_kl(p, q, drop_max=drop_max)
    want = [_ref_binned_kl(p[:, j], q[:, j], drop_max=drop_max) for j in range(n)]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    assert (got >= 0).all() and (got <= KL_MAX * (1 + 1e-12)).all()


def test_klom_independent_samples_of_one_distribution_are_near_zero():
    """Two-sample plug-in KL: 2·m·KL ≈ χ²(bins − 1), m = N_p N_q / (N_p + N_q); a 1e-6 tail bound."""
    rng = np.random.default_rng(1)
    N, n = 4000, 3
    p, q = rng.normal(size=(N, n)), rng.normal(size=(N, n))
    m = N * N / (2 * N)
    bound = stats.chi2.ppf(1 - 1e-6, KLOM_BINS - 1) / (2 * m)
    kl = binned_kl(p, q)
    assert (kl < bound).all(), (kl, bound)
    assert (binned_kl(p + 3.0, q) > bound).all()  # a shift is detected (the test can fail)


def test_klom_from_logits_equals_klom_from_margins_and_splits():
    rng = np.random.default_rng(2)
    zu, zo = rng.normal(size=(6, 10, 4)), rng.normal(size=(5, 10, 4))
    y = rng.integers(0, 4, 10)
    np.testing.assert_allclose(klom(zu, zo, y), binned_kl(margins(zu, y), margins(zo, y)))
    np.testing.assert_allclose(klom(margins(zu, y), margins(zo, y)), klom(zu, zo, y))
    rep = klom_by_split(zu, zo, y, {"forget": np.arange(3), "retain": np.arange(3, 10)})
    vals = klom(zu, zo, y)
    assert rep["forget"]["median"] == pytest.approx(np.median(vals[:3]))
    assert rep["retain"]["p95"] == pytest.approx(np.quantile(vals[3:], 0.95))
    assert rep["retain"]["n"] == 7


def test_summarize():
    s = summarize(np.arange(101.0))
    assert s["median"] == 50.0 and s["p95"] == 95.0 and s["max"] == 100.0 and s["mean"] == 50.0 and s["n"] == 101


def test_klom_bad_input():
    a = np.zeros((4, 3))
    with pytest.raises(ShapeError):
        binned_kl(a, np.zeros((4, 2)))
    with pytest.raises(ShapeError):
        klom(np.zeros((4, 3, 2)), a)
    with pytest.raises(InvalidInputError):
        klom(np.zeros((4, 3, 2)), np.zeros((4, 3, 2)))  # logits without labels
    with pytest.raises(InvalidInputError):
        klom(a, a, np.zeros(3, dtype=int))  # margins with labels
    with pytest.raises(InvalidInputError):
        binned_kl(a, a, eps=0.0)
    with pytest.raises(InvalidInputError):
        binned_kl(a, a, bins=0)
    with pytest.raises(InvalidInputError):
        binned_kl(a, a, clip=(1.0, -1.0))
    with pytest.raises(InvalidInputError):
        binned_kl(np.zeros((0, 3)), a)
    with pytest.raises(InvalidInputError):
        binned_kl(a + np.inf, a)
    with pytest.raises(InvalidInputError):
        klom_by_split(a, a, None, {"forget": np.array([5])})
    with pytest.raises(InvalidInputError):
        summarize(np.arange(3.0), quantiles=(1.5,))


# ------------------------------------------------------------------------------------------ challenge epsilon and F


def test_epsilon_hand_case():
    # unlearned 1,3,5,7 vs oracle 0,2,4,6; "unlearned when value > t" at each pooled value t:
    #   t=0: FNR 0 (discard); t=1: FPR 3/4 FNR 1/4 (sum 1: eps < 0); t=2: FPR 1/2 FNR 1/4; t=3: sum 1;
    #   t=4: FPR 1/4 FNR 1/2; t=5: sum 1; t=6, 7: FPR 0 (discard)
    u = np.array([[1.0], [3.0], [5.0], [7.0]])
    r = np.array([[0.0], [2.0], [4.0], [6.0]])
    want = max(0.0, _eps_pair(0.5, 0.25), _eps_pair(0.25, 0.5), _eps_pair(0.75, 0.25), _eps_pair(0.5, 0.5), _eps_pair(0.25, 0.75))
    assert per_example_epsilon(u, r)[0] == pytest.approx(want, rel=1e-14)
    assert want == pytest.approx(math.log((1 - CHALLENGE_DELTA - 0.5) / 0.25))
    # the complementary attacks "value <= t" see the same pairs with swapped rates: no change here
    assert per_example_epsilon(u, r, two_sided=True)[0] == pytest.approx(want)


def test_epsilon_identical_samples_zero_and_disjoint_inf():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(32, 5))
    np.testing.assert_array_equal(per_example_epsilon(a, a), np.zeros(5))  # FPR + FNR = 1 at every threshold
    np.testing.assert_array_equal(per_example_epsilon(a, a[rng.permutation(32)]), np.zeros(5))
    assert np.isinf(per_example_epsilon(a + 100, a)).all()  # unlearned above: a threshold with FPR = FNR = 0
    assert np.isinf(per_example_epsilon(a - 100, a)).all()  # below: FPR = FNR = 1, both logs NaN -> inf
    assert forget_quality(per_example_epsilon(a + 100, a)) == pytest.approx(H_MIN)
    assert forget_quality(per_example_epsilon(a, a)) == 1.0


def test_epsilon_independent_samples_of_one_distribution_are_zero():
    """eps = 0 iff no threshold has FPR + FNR < 1 − δ, i.e. iff sup_t (F_o(t) − F_u(t)) < δ (empirical CDFs).

    The two-sample one-sided bound P(sup (F_o − F_u) ≥ δ) ≤ exp(−2 m δ²), m = N_u N_o / (N_u + N_o), gives
    the number of models for a failure probability of 1e-9 per example.
    """
    m = math.log(1e9) / (2 * CHALLENGE_DELTA**2)
    N = int(math.ceil(2 * m))
    rng = np.random.default_rng(4)
    u, r = rng.normal(size=(N, 2)), rng.normal(size=(N, 2))
    np.testing.assert_array_equal(per_example_epsilon(u, r), np.zeros(2))
    assert (per_example_epsilon(u + 0.1, r) > 0).all()  # a small shift is detected (the test can fail)


@given(st.integers(1, 10), st.integers(1, 10), st.integers(1, 4), st.integers(0, 2**31 - 1), st.booleans())
def test_epsilon_matches_the_reference_transcription(Nu, No, n, seed, ties):
    rng = np.random.default_rng(seed)
    u, r = rng.normal(size=(Nu, n)) + rng.normal(), rng.normal(size=(No, n))
    if ties:
        u, r = np.round(u), np.round(r)
    got = per_example_epsilon(u, r)
    want = [_ref_epsilon(u[:, j], r[:, j]) for j in range(n)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert (per_example_epsilon(u, r, two_sided=True) >= got).all()  # more attacks never lower eps


def test_threshold_rates_hand_case():
    fpr, fnr, valid = threshold_attack_rates(np.array([[1.0], [1.0]]), np.array([[0.0], [1.0]]))
    # pooled sorted values 0, 1, 1, 1: at t=0 FPR 1/2 FNR 0; at t=1 (last copy only) FPR 0, FNR 1
    np.testing.assert_array_equal(valid[:, 0], [True, False, False, True])
    assert (fpr[0, 0], fnr[0, 0]) == (0.5, 0.0) and (fpr[-1, 0], fnr[-1, 0]) == (0.0, 1.0)


def test_forget_quality_bins_and_final_score():
    eps = np.array([0.0, 0.49, 0.5, 0.99, 1.0, 6.0, np.inf])
    h = [1.0, 1.0, 0.5, 0.5, 0.25, H_MIN, H_MIN]
    assert forget_quality(eps) == pytest.approx(np.mean(h))
    assert final_score(0.5, 0.9, 0.95, 0.8, 0.85) == pytest.approx(0.5 * (0.9 / 0.95) * (0.8 / 0.85))
    out = challenge_score(np.zeros((4, 3)), np.zeros((4, 3)), ra=(0.9, 0.9), ta=(0.8, 1.0))
    assert out["F"] == 1.0 and out["score"] == pytest.approx(0.8)


def test_challenge_statistic_is_the_kits_cross_entropy():
    rng = np.random.default_rng(5)
    z = rng.normal(size=(3, 6, 4))
    s = challenge_statistic(z)
    p = torch.softmax(torch.tensor(z), -1).numpy()
    np.testing.assert_allclose(s, -np.log(p.max(-1)), rtol=1e-12)
    y = rng.integers(0, 4, 6)
    np.testing.assert_allclose(challenge_statistic(z[1], y), per_sample_ce(torch.tensor(z[1]), torch.tensor(y)), rtol=1e-12)
    np.testing.assert_allclose(challenge_score(z, z[::-1])["epsilon"], per_example_epsilon(s, s[::-1]))


def test_challenge_bad_input():
    a = np.zeros((4, 3))
    with pytest.raises(ShapeError):
        per_example_epsilon(a, np.zeros((4, 2)))
    with pytest.raises(InvalidInputError):
        per_example_epsilon(a, a + np.nan)
    with pytest.raises(InvalidInputError):
        epsilon_from_rates(np.array([1.5]), np.array([0.5]))
    with pytest.raises(InvalidInputError):
        epsilon_from_rates(np.array([0.5]), np.array([0.5]), delta=1.0)
    with pytest.raises(ShapeError):
        epsilon_from_rates(np.array([0.5]), np.array([0.5, 0.2]))
    with pytest.raises(InvalidInputError):
        forget_quality(np.array([-1.0]))
    with pytest.raises(InvalidInputError):
        forget_quality(np.array([]))
    with pytest.raises(InvalidInputError):
        final_score(0.5, 0.9, 0.0, 0.8, 0.9)
    with pytest.raises(InvalidInputError):
        final_score(1.5, 0.9, 0.9, 0.8, 0.9)
    with pytest.raises(InvalidInputError):
        challenge_score(a, a, ra=(0.9, 0.9))
    with pytest.raises(ShapeError):
        challenge_score(np.zeros((4, 3, 2)), a)


# ------------------------------------------------------------------------------------------ MIA-efficacy (fastntk.metrics)


def _svc_salun(shadow_train, shadow_test, target_test):
    """SalUn's SVC_fit_predict for MIA-efficacy: members (retain) 1, test 0; return 1 − mean(predict(forget))."""
    from sklearn.svm import SVC

    X = np.concatenate([shadow_train, shadow_test]).reshape(-1, 1)
    Y = np.concatenate([np.ones(len(shadow_train)), np.zeros(len(shadow_test))])
    clf = SVC(C=3, gamma="auto", kernel="rbf").fit(X, Y)
    return 1.0 - clf.predict(np.asarray(target_test).reshape(-1, 1)).mean()


def test_mia_efficacy_known_answers():
    """Separable member / non-member confidences: forget points like members -> 0, like test points -> 1."""
    rng = np.random.default_rng(6)
    members = rng.uniform(0.9, 1.0, 300)  # retain: confident (trained on)
    nonmembers = rng.uniform(0.0, 0.5, 300)  # test: not confident
    like_members = rng.uniform(0.92, 0.98, 50)
    like_test = rng.uniform(0.05, 0.45, 50)
    assert mia_efficacy(members, nonmembers, like_members) == 0.0
    assert mia_efficacy(members, nonmembers, like_test) == 1.0
    half = np.concatenate([like_members[:25], like_test[:25]])
    assert mia_efficacy(members, nonmembers, half) == 0.5


def test_mia_efficacy_matches_salun_protocol():
    """With |retain| = |test| <= max_per_class nothing is subsampled and fastntk equals SalUn's computation."""
    rng = np.random.default_rng(7)
    r, t, f = rng.beta(5, 1, 200), rng.beta(2, 2, 200), rng.beta(3, 1, 80)
    assert mia_efficacy(r, t, f, max_per_class=200) == pytest.approx(_svc_salun(r, t, f))
