"""Metrics on scores and labels (hallucinated = 1 = positive class): AUROC, average precision,
balanced accuracy and the validation threshold. Plain numpy, shared by the detectors (which
select on them) and the evaluation."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def roc_auc(y: np.ndarray, s: np.ndarray) -> np.ndarray | float:
    """AUROC (Mann-Whitney, ties count 1/2) of scores ``s`` for labels ``y`` (1 = positive).

    1-D inputs give a float, 2-D ``[B, n]`` one value per row; NaN where a row has one class.
    """
    y = np.asarray(y, dtype=np.float64)
    s = np.asarray(s, dtype=np.float64)
    one = y.ndim == 1
    y2, s2 = np.atleast_2d(y), np.atleast_2d(s)
    ranks = rankdata(s2, axis=1)
    n1 = y2.sum(1)
    n0 = y2.shape[1] - n1
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * y2).sum(1) - n1 * (n1 + 1) / 2) / (n1 * n0)
    auc = np.where((n1 > 0) & (n0 > 0), auc, np.nan)
    return float(auc[0]) if one else auc


def average_precision(y: np.ndarray, s: np.ndarray) -> np.ndarray | float:
    """Average precision (area under the precision-recall curve, step-wise, as scikit-learn's
    ``average_precision_score``; tied scores form one threshold). NaN without positives."""
    y = np.asarray(y, dtype=np.float64)
    s = np.asarray(s, dtype=np.float64)
    one = y.ndim == 1
    y2, s2 = np.atleast_2d(y), np.atleast_2d(s)
    B, n = y2.shape
    if n == 0:
        return float("nan") if one else np.full(B, np.nan)
    order = np.argsort(-s2, axis=1, kind="stable")
    ss = np.take_along_axis(s2, order, axis=1)
    ys = np.take_along_axis(y2, order, axis=1)
    tp = np.cumsum(ys, axis=1)
    precision = tp / np.arange(1, n + 1)
    # precision is read at the end of each block of tied scores
    is_end = np.ones((B, n), dtype=bool)
    is_end[:, :-1] = ss[:, :-1] != ss[:, 1:]
    ends = np.where(is_end, np.arange(n), n - 1)
    block_end = np.minimum.accumulate(ends[:, ::-1], axis=1)[:, ::-1]
    prec_at_end = np.take_along_axis(precision, block_end, axis=1)
    n1 = ys.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (ys * prec_at_end).sum(1) / n1
    ap = np.where(n1 > 0, ap, np.nan)
    return float(ap[0]) if one else ap


def confusion(y: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, ...]:
    y = np.atleast_2d(np.asarray(y, dtype=bool))
    pred = np.atleast_2d(np.asarray(pred, dtype=bool))
    tp = (y & pred).sum(1)
    fp = (~y & pred).sum(1)
    fn = (y & ~pred).sum(1)
    tn = (~y & ~pred).sum(1)
    return tp, fp, fn, tn


def accuracy(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    tp, fp, fn, tn = confusion(y, pred)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (tp + tn) / (tp + fp + fn + tn)


def f1(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """F1 of the positive class; NaN when there is neither a positive nor a positive guess."""
    tp, fp, fn, _ = confusion(y, pred)
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), np.nan)


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean of the recalls of both classes (NaN when a class is absent)."""
    tp, fp, fn, tn = (float(v[0]) for v in confusion(y, pred))
    if tp + fn == 0 or tn + fp == 0:
        return float("nan")
    return 0.5 * (tp / (tp + fn) + tn / (tn + fp))


def choose_threshold(y_val: np.ndarray, s_val: np.ndarray) -> tuple[float, str]:
    """Threshold ``t`` (predict hallucinated when ``score >= t``) maximizing balanced accuracy
    on the validation split; returns ``(t, note)``.

    Candidates are the midpoints between consecutive distinct validation scores, plus the
    lowest score (everything positive) and just above the highest (everything negative). Among
    equally good candidates the middle one is taken. Without both classes in validation the
    threshold falls back to 0.5 (scores are probabilities) and ``note`` says so.
    """
    y = np.asarray(y_val).astype(np.int64).reshape(-1)
    s = np.asarray(s_val, dtype=np.float64).reshape(-1)
    if len(y) == 0:
        return 0.5, "empty validation split: threshold 0.5"
    if len(np.unique(y)) < 2:
        return 0.5, "validation split has one class: threshold 0.5"
    u = np.unique(s)
    cands = np.concatenate([[u[0]], (u[:-1] + u[1:]) / 2, [np.nextafter(u[-1], np.inf)]])
    pred = s[None, :] >= cands[:, None]
    yy = np.broadcast_to(y.astype(bool), pred.shape)
    tp, fp, fn, tn = confusion(yy, pred)
    bacc = 0.5 * (tp / (tp + fn) + tn / (tn + fp))
    best = np.flatnonzero(bacc >= bacc.max() - 1e-12)
    return float(cands[best[len(best) // 2]]), ""
