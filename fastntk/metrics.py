"""Unlearning metrics (SalUn / Unlearn-Sparse conventions) and a Markdown table.

All accuracies are fractions in ``[0, 1]``; gaps are in percentage points.
"Better" for an unlearning method means *closer to the retrained model*: the
gold standard is retraining on ``D_r``, not the extreme value of a metric.

=========  ==============================================  =========================
key        meaning                                          direction
=========  ==============================================  =========================
RA         accuracy on the retain set D_r                   higher is better (≈ retrain)
FA         accuracy on the forget set D_f                   closer to retrain's
UA         1 − FA (unlearning accuracy)                     closer to retrain's (higher = more forgotten)
TA         accuracy on the test set                         higher is better (≈ retrain)
MIA        MIA-efficacy: fraction of D_f that a confidence  closer to retrain's (higher = D_f looks
           SVC calls non-member                             more like unseen data)
MIA_LR     CV accuracy of a logistic regression telling     closer to 0.5 / retrain's (0.5 = D_f
           D_f losses from test losses (NeurIPS'23 kit)     indistinguishable from test)
AD_*       activation distance to the retrained model       lower is better (0 = same outputs)
avg_gap    mean |metric − retrain| over UA, RA, TA, MIA, pp lower is better
=========  ==============================================  =========================
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .data import ImageData
from .errors import InvalidInputError, ShapeError

__all__ = [
    "accuracy",
    "true_class_confidence",
    "per_sample_ce",
    "mia_efficacy",
    "mia_loss_lr",
    "activation_distance",
    "evaluate",
    "avg_gap",
    "MetricsTable",
]


def _t(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def accuracy(logits, y) -> float:
    """Fraction of samples whose arg-max logit is the label (higher is better). NaN for an empty set."""
    logits, y = _t(logits), _t(y)
    if logits.ndim != 2 or y.ndim != 1 or logits.shape[0] != y.shape[0]:
        raise ShapeError(f"accuracy needs logits (n, C) and labels (n,), got {tuple(logits.shape)} and {tuple(y.shape)}")
    if y.numel() == 0:
        return float("nan")
    return float((logits.argmax(-1).cpu() == y.cpu()).double().mean())


def true_class_confidence(logits, y) -> np.ndarray:
    """Softmax probability of the true class, ``p_{y_i}(x_i)``, as float64 ``(n,)``."""
    logits, y = _t(logits).double().cpu(), _t(y).long().cpu()
    return F.softmax(logits, -1).gather(1, y.view(-1, 1)).view(-1).numpy()


def per_sample_ce(logits, y) -> np.ndarray:
    """Per-sample cross-entropy ``−log p_{y_i}(x_i)``, float64 ``(n,)``."""
    logits, y = _t(logits).double().cpu(), _t(y).long().cpu()
    return F.cross_entropy(logits, y, reduction="none").numpy()


def _balanced(a: np.ndarray, b: np.ndarray, max_per_class: int, rng: np.random.Generator):
    k = min(len(a), len(b), int(max_per_class))
    ia = np.sort(rng.choice(len(a), size=k, replace=False))
    ib = np.sort(rng.choice(len(b), size=k, replace=False))
    return a[ia], b[ib]


def mia_efficacy(conf_retain, conf_test, conf_forget, *, max_per_class: int = 2000, seed: int = 0) -> float:
    """MIA-efficacy (SalUn / Unlearn-Sparse): fraction of D_f predicted *non-member*.

    An ``SVC(C=3, gamma="auto", kernel="rbf")`` is fit on the true-class
    confidences of retain samples (member, 1) vs test samples (non-member, 0),
    balanced by subsampling at most ``max_per_class`` of each, then applied to
    D_f.  Direction: closer to the retrained model's value; higher means D_f
    looks more like unseen data.
    """
    from sklearn.svm import SVC

    r, t, f = (np.asarray(v, dtype=np.float64).reshape(-1) for v in (conf_retain, conf_test, conf_forget))
    if len(f) == 0 or len(r) == 0 or len(t) == 0:
        return float("nan")
    rng = np.random.default_rng(int(seed))
    r, t = _balanced(r, t, max_per_class, rng)
    Xs = np.concatenate([r, t]).reshape(-1, 1)
    ys = np.concatenate([np.ones(len(r)), np.zeros(len(t))])
    clf = SVC(C=3, gamma="auto", kernel="rbf")
    clf.fit(Xs, ys)
    return float((clf.predict(f.reshape(-1, 1)) == 0).mean())


def mia_loss_lr(loss_forget, loss_test, *, n_splits: int = 10, seed: int = 0, max_per_class: int = 5000) -> float:
    """Loss-based MIA of the NeurIPS 2023 unlearning starting kit.

    Cross-validated accuracy (``StratifiedShuffleSplit``, ``n_splits``) of a
    ``LogisticRegression`` telling per-sample CE losses of D_f (member, 1) from
    test (0), balanced by subsampling.  Direction: 0.5 means indistinguishable;
    closer to the retrained model's value is better.  NaN when either set has
    fewer than 5 samples.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedShuffleSplit, cross_val_score

    a = np.asarray(loss_forget, dtype=np.float64).reshape(-1)
    b = np.asarray(loss_test, dtype=np.float64).reshape(-1)
    if min(len(a), len(b)) < 5:
        return float("nan")
    rng = np.random.default_rng(int(seed))
    a, b = _balanced(a, b, max_per_class, rng)
    X = np.concatenate([a, b]).reshape(-1, 1)
    y = np.concatenate([np.ones(len(a)), np.zeros(len(b))])
    cv = StratifiedShuffleSplit(n_splits=int(n_splits), random_state=int(seed))
    return float(cross_val_score(LogisticRegression(), X, y, cv=cv, scoring="accuracy").mean())


def activation_distance(logits_a, logits_b) -> float:
    """Mean over samples of ``‖softmax(a_i) − softmax(b_i)‖₁`` (in [0, 2]; lower is better)."""
    a, b = _t(logits_a).double(), _t(logits_b).double()
    if a.shape != b.shape or a.ndim != 2:
        raise ShapeError(f"activation_distance needs two (n, C) logit arrays of one shape, got {tuple(a.shape)}, {tuple(b.shape)}")
    if a.shape[0] == 0:
        return float("nan")
    return float((F.softmax(a, -1) - F.softmax(b, -1)).abs().sum(-1).mean())


def evaluate(
    peft,
    w: torch.Tensor | None,
    retain: ImageData,
    forget: ImageData,
    test: ImageData,
    *,
    reference_w: torch.Tensor | None = None,
    linearize_at: torch.Tensor | None = None,
    batch_size: int = 512,
    mia_max_per_class: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """All metrics of the PEFT model at ``w`` (default: current): RA, FA, UA, TA, MIA, MIA_LR.

    With ``reference_w`` (e.g. the retrained vector) also ``AD_f``, ``AD_r``,
    ``AD_t``: activation distances to that model on D_f, D_r and test.
    With ``linearize_at=w̄`` every model (``w`` and ``reference_w``) is the
    linearized one, ``f(x; w̄) + J(x)(w − w̄)`` -- use it after linearized
    fine-tuning.  The model itself is not modified.
    """
    from .train import predict

    out: dict[str, float] = {}
    lr_, lf, lt = (predict(peft, d.X, batch_size, w=w, linearize_at=linearize_at) for d in (retain, forget, test))
    out["RA"] = accuracy(lr_, retain.y)
    out["FA"] = accuracy(lf, forget.y)
    out["UA"] = 1.0 - out["FA"]
    out["TA"] = accuracy(lt, test.y)
    out["MIA"] = mia_efficacy(
        true_class_confidence(lr_, retain.y), true_class_confidence(lt, test.y), true_class_confidence(lf, forget.y),
        max_per_class=mia_max_per_class, seed=seed,
    )
    out["MIA_LR"] = mia_loss_lr(per_sample_ce(lf, forget.y), per_sample_ce(lt, test.y), seed=seed)
    if reference_w is not None:
        for key, d, mine in (("AD_f", forget, lf), ("AD_r", retain, lr_), ("AD_t", test, lt)):
            out[key] = activation_distance(mine, predict(peft, d.X, batch_size, w=reference_w, linearize_at=linearize_at))
    return out


def avg_gap(metrics: Mapping[str, float], retrain_metrics: Mapping[str, float], keys: Sequence[str] = ("UA", "RA", "TA", "MIA")) -> float:
    """Mean ``|metrics[k] − retrain_metrics[k]|`` over ``keys``, in percentage points (lower is better)."""
    missing = [k for k in keys if k not in metrics or k not in retrain_metrics]
    if missing:
        raise InvalidInputError(f"avg_gap: metric(s) {missing} missing")
    return float(100.0 * np.mean([abs(float(metrics[k]) - float(retrain_metrics[k])) for k in keys]))


class MetricsTable:
    """Rows of metrics (one per method) rendered as a Markdown table.

    Fractions (keys in ``percent_keys``) are printed as percentages; other
    floats with ``digits`` decimals; missing values as ``–``.
    """

    DEFAULT_PERCENT = ("RA", "FA", "UA", "TA", "MIA", "MIA_LR")

    def __init__(self, columns: Sequence[str] | None = None, *, percent_keys: Iterable[str] = DEFAULT_PERCENT, digits: int = 2):
        self.columns = list(columns) if columns is not None else None
        self.percent_keys = set(percent_keys)
        self.digits = int(digits)
        self.rows: list[tuple[str, dict]] = []

    def add(self, name: str, metrics: Mapping[str, object]) -> "MetricsTable":
        self.rows.append((str(name), dict(metrics)))
        return self

    def _cols(self) -> list[str]:
        if self.columns is not None:
            return self.columns
        cols: list[str] = []
        for _, m in self.rows:
            cols += [k for k in m if k not in cols]
        return cols

    def _fmt(self, key: str, v) -> str:
        if v is None:
            return "–"
        if isinstance(v, (float, np.floating)):
            if math.isnan(v):
                return "–"
            if key in self.percent_keys:
                return f"{100 * float(v):.{self.digits}f}"
            return f"{float(v):.{self.digits}f}"
        return str(v)

    def to_markdown(self) -> str:
        cols = self._cols()
        head = ["method"] + [f"{c} (%)" if c in self.percent_keys else c for c in cols]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * len(cols)) + "|"]
        for name, m in self.rows:
            lines.append("| " + " | ".join([name] + [self._fmt(c, m.get(c)) for c in cols]) + " |")
        return "\n".join(lines) + "\n"

    def to_records(self) -> list[dict]:
        return [{"method": n, **m} for n, m in self.rows]

    __str__ = to_markdown
