"""Question-level bootstrap: metrics of pooled out-of-fold scores with 95 % percentile CIs, the
paired comparison of two detectors, and the length-matched AUROC (what a detector knows beyond
the answer's length).

A resample draws *questions* with replacement (all answers of a drawn question come along,
as often as it is drawn), not answers: three correlated answers of one HaluEval question are
one unit of evidence, and a bootstrap over answers makes the CI too narrow. A resample is a
row of integer weights ``W[b, i]`` = how often trace ``i``'s question was drawn; every metric
here is computed from such weights (a weight 2 counts the trace twice), vectorized over rows.
Scores come as ``S [R, n]``: one out-of-fold score per trace and cross-validation repeat; a
metric is computed per repeat and averaged over the repeats, the same resamples for every
repeat and every detector of a run (so differences are paired).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

METRICS = ("auroc", "aupr", "acc", "f1")
_METRIC_TITLES = {"auroc": "AUROC", "aupr": "AUPR", "acc": "Acc", "f1": "F1"}

MIN_CLASS_TEST = 10
"""A run with fewer answers of a class than this gets a warning: its metrics are noise (their
CIs say how much)."""
LENGTH_TOL = 2
"""Answers within this many tokens of each other count as length-matched."""
MIN_RESAMPLES = 10
"""A CI needs at least this many resamples in which the metric is defined."""
_CHUNK = 200


def question_weights(groups: Sequence[Any] | np.ndarray, n_boot: int, seed: int = 0) -> np.ndarray:
    """``[n_boot, n]`` resample weights: the questions (``groups``) are drawn with replacement,
    each trace weighted by how often its question was drawn (fixed ``seed``)."""
    groups = np.asarray(groups)
    if n_boot <= 0 or len(groups) == 0:
        return np.zeros((0, len(groups)))
    uniq, inverse = np.unique(groups, return_inverse=True)
    g = len(uniq)
    counts = np.random.default_rng(seed).multinomial(g, np.full(g, 1.0 / g), size=n_boot)
    return counts[:, inverse.reshape(-1)].astype(np.float64)


def _blocks(s: np.ndarray, descending: bool) -> tuple[np.ndarray, np.ndarray]:
    """Sort order of ``s`` and the start of each block of tied scores in that order."""
    order = np.argsort(-s if descending else s, kind="stable")
    ss = s[order]
    starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])
    return order, starts


def weighted_auroc(y: np.ndarray, s: np.ndarray, w: np.ndarray) -> np.ndarray:
    """AUROC (ties count 1/2) per row of weights ``w`` ``[B, n]``; NaN where a class has no
    weight. Equal to the Mann-Whitney AUROC of the sample that repeats each trace ``w`` times."""
    y = np.asarray(y, dtype=np.float64)
    order, starts = _blocks(np.asarray(s, dtype=np.float64), descending=False)
    wo = np.atleast_2d(w)[:, order]
    yo = y[order]
    pos = np.add.reduceat(wo * yo, starts, axis=1)
    neg = np.add.reduceat(wo * (1 - yo), starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    n1, n0 = pos.sum(1), neg.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (pos * (below + 0.5 * neg)).sum(1) / (n1 * n0)
    return np.where((n1 > 0) & (n0 > 0), auc, np.nan)


def weighted_aupr(y: np.ndarray, s: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Average precision (step-wise, tied scores one threshold, as scikit-learn's
    ``average_precision_score`` with ``sample_weight``) per row of ``w``; NaN without
    positives."""
    y = np.asarray(y, dtype=np.float64)
    order, starts = _blocks(np.asarray(s, dtype=np.float64), descending=True)
    wo = np.atleast_2d(w)[:, order]
    pos = np.add.reduceat(wo * y[order], starts, axis=1)
    tot = np.add.reduceat(wo, starts, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.cumsum(pos, axis=1) / np.cumsum(tot, axis=1)
        ap = np.nansum(pos * precision, axis=1) / pos.sum(1)
    return np.where(pos.sum(1) > 0, ap, np.nan)


def _weighted_confusion(y: np.ndarray, pred: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, ...]:
    y = np.asarray(y, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    w = np.atleast_2d(w)
    return w @ (y & pred), w @ (~y & pred), w @ (y & ~pred), w @ (~y & ~pred)


def _metric_rows(y: np.ndarray, s: np.ndarray, pred: np.ndarray, w: np.ndarray) -> dict:
    tp, fp, fn, tn = _weighted_confusion(y, pred, w)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = (tp + tn) / (tp + fp + fn + tn)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
    return {
        "auroc": weighted_auroc(y, s, w),
        "aupr": weighted_aupr(y, s, w),
        "acc": acc,
        "f1": f1,
    }


def metric_rows(
    y: np.ndarray, S: np.ndarray, P: np.ndarray | None, w: np.ndarray
) -> dict[str, np.ndarray]:
    """Each metric per row of ``w``, averaged over the repeats (rows of ``S`` scores and ``P``
    0/1 predictions at each fold's threshold; without ``P`` only AUROC and AUPR)."""
    S = np.atleast_2d(S)
    w = np.atleast_2d(w)
    keys = METRICS if P is not None else ("auroc", "aupr")
    out = {m: np.zeros(len(w)) for m in keys}
    for r in range(len(S)):
        pred = np.atleast_2d(P)[r] if P is not None else np.zeros(S.shape[1], dtype=bool)
        for k0 in range(0, len(w), _CHUNK):
            vals = _metric_rows(y, S[r], pred, w[k0 : k0 + _CHUNK])
            for m in keys:
                out[m][k0 : k0 + _CHUNK] += vals[m] / len(S)
    return out


def _ci(v: np.ndarray, alpha: float) -> tuple[float, float]:
    v = v[np.isfinite(v)]
    if len(v) < MIN_RESAMPLES:
        return float("nan"), float("nan")
    lo, hi = np.percentile(v, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def metrics_with_ci(
    y: np.ndarray,
    S: np.ndarray,
    P: np.ndarray | None,
    W: np.ndarray,
    alpha: float = 0.05,
) -> tuple[dict[str, float], list[str]]:
    """Point estimates (mean over repeats) and question-bootstrap percentile CIs of AUROC,
    AUPR, accuracy and F1 (the last two only with predictions ``P``).

    Returns ``({"auroc": .., "auroc_lo": .., "auroc_hi": .., ...}, notes)``. A metric that is
    undefined (one class) is NaN and explained in ``notes``; resamples with one class are left
    out of the CI, which needs :data:`MIN_RESAMPLES` usable resamples.
    """
    y = np.asarray(y).astype(np.int64).reshape(-1)
    keys = METRICS if P is not None else ("auroc", "aupr")
    out: dict[str, float] = {}
    notes: list[str] = []
    nan = float("nan")
    if len(y) == 0:
        notes.append("no test answers: metrics undefined")
        return {f"{m}{x}": nan for m in keys for x in ("", "_lo", "_hi")}, notes
    if len(np.unique(y)) < 2:
        notes.append(
            f"one class ({'all hallucinated' if y[0] else 'none hallucinated'}): "
            "AUROC/AUPR/Acc/F1 not applicable"
        )
        return {f"{m}{x}": nan for m in keys for x in ("", "_lo", "_hi")}, notes
    point = metric_rows(y, S, P, np.ones((1, len(y))))
    if len(W):  # resamples with a single class are left out, for every metric
        W = W[(W @ y > 0) & (W @ (1 - y) > 0)]
    boot = metric_rows(y, S, P, W) if len(W) else {m: np.zeros(0) for m in keys}
    for m in keys:
        out[m] = float(point[m][0])
        out[f"{m}_lo"], out[f"{m}_hi"] = _ci(boot[m], alpha)
    if len(W) and np.isnan(out["auroc_lo"]):
        notes.append("too few bootstrap resamples with both classes: no CI")
    return out, notes


def paired_comparison(
    y: np.ndarray,
    S_a: np.ndarray,
    S_b: np.ndarray,
    W: np.ndarray,
    alpha: float = 0.05,
) -> dict[str, float]:
    """AUROC of A minus AUROC of B (each averaged over repeats) with its paired
    question-bootstrap percentile CI and a two-sided bootstrap p-value
    ``min(1, 2 * min(P*(d <= 0), P*(d >= 0)))`` over the resamples (resolution ``1 / B``;
    0 means below it). Same traces, same resamples for both: the comparison is paired."""
    y = np.asarray(y).astype(np.int64).reshape(-1)
    a = metric_rows(y, S_a, None, np.ones((1, len(y))))["auroc"][0]
    b = metric_rows(y, S_b, None, np.ones((1, len(y))))["auroc"][0]
    out = {"diff": float(a - b), "diff_lo": float("nan"), "diff_hi": float("nan")}
    out["p"] = float("nan")
    out["n_boot"] = 0
    if len(W) and np.isfinite(a - b):
        d = metric_rows(y, S_a, None, W)["auroc"] - metric_rows(y, S_b, None, W)["auroc"]
        d = d[np.isfinite(d)]
        out["diff_lo"], out["diff_hi"] = _ci(d, alpha)
        out["n_boot"] = len(d)
        if len(d) >= MIN_RESAMPLES:
            out["p"] = float(min(1.0, 2 * min((d <= 0).mean(), (d >= 0).mean())))
    return out


def length_matched_auroc(
    y: np.ndarray,
    S: np.ndarray,
    lengths: np.ndarray,
    W: np.ndarray,
    *,
    tol: int = LENGTH_TOL,
    alpha: float = 0.05,
) -> dict[str, float]:
    """AUROC over length-matched pairs only: the share of (hallucinated, correct) pairs whose
    answers differ by at most ``tol`` tokens in which the hallucinated one scores higher (ties
    count half), averaged over the repeats (rows of ``S``). A detector that reads nothing but
    length scores 0.5 on it (up to ``tol``).

    Returns ``auroc_lm`` with its question-bootstrap CI (``W``: the resample weights of the
    other metrics; a pair counts the product of its traces' weights) and ``n_pairs_lm``, the
    number of matched pairs (NaN metric when there is none).
    """
    y = np.asarray(y).astype(np.int64).reshape(-1)
    S = np.atleast_2d(np.asarray(S, dtype=np.float64))
    n_len = np.asarray(lengths, dtype=np.float64).reshape(-1)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    matched = (np.abs(n_len[pos][:, None] - n_len[neg][None, :]) <= tol).astype(np.float64)
    out = {
        "auroc_lm": float("nan"),
        "auroc_lm_lo": float("nan"),
        "auroc_lm_hi": float("nan"),
        "n_pairs_lm": int(matched.sum()),
    }
    if not matched.any():
        return out
    point, boot = 0.0, np.zeros(len(W))
    for s in S:
        wins = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
        point += float((wins * matched).sum() / matched.sum()) / len(S)
        if len(W):
            wp, wn = W[:, pos], W[:, neg]
            den = ((wp @ matched) * wn).sum(1)
            num = ((wp @ (wins * matched)) * wn).sum(1)
            with np.errstate(invalid="ignore", divide="ignore"):
                boot += np.where(den > 0, num / den, np.nan) / len(S)
    out["auroc_lm"] = point
    if len(W):
        out["auroc_lm_lo"], out["auroc_lm_hi"] = _ci(boot, alpha)
    return out


def percent_positive(y: np.ndarray) -> float:
    return float(100 * np.mean(y)) if len(y) else float("nan")
