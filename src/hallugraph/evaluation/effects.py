"""Effect sizes and multiple-comparison corrections for the hypothesis tests: Cliff's delta, Cohen's
d, Holm and Benjamini-Hochberg adjusted p-values, a mean with its CI."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as sst

CORRECTIONS = ("holm", "bh")


def cliffs_delta(h: np.ndarray, c: np.ndarray) -> float:
    """``P(h > c) - P(h < c)`` over all pairs (= rank-biserial correlation); NaN if a group is
    empty."""
    h, c = np.asarray(h, dtype=np.float64), np.asarray(c, dtype=np.float64)
    if not len(h) or not len(c):
        return float("nan")
    cs = np.sort(c)
    greater = np.searchsorted(cs, h, side="left").sum()  # pairs with c < h
    less = (len(cs) - np.searchsorted(cs, h, side="right")).sum()  # pairs with c > h
    return float((greater - less) / (len(h) * len(c)))


def cohens_d(h: np.ndarray, c: np.ndarray) -> float:
    """``(mean_h - mean_c) / pooled sd``; 0 when both groups are constant and equal, NaN when
    undefined."""
    h, c = np.asarray(h, dtype=np.float64), np.asarray(c, dtype=np.float64)
    nh, nc = len(h), len(c)
    if nh < 2 or nc < 2:
        return float("nan")
    diff = h.mean() - c.mean()
    pooled = math.sqrt(((nh - 1) * h.var(ddof=1) + (nc - 1) * c.var(ddof=1)) / (nh + nc - 2))
    if pooled == 0:
        return 0.0 if diff == 0 else float("nan")
    return float(diff / pooled)


def adjust_pvalues(p: Sequence[float], method: str = "holm") -> np.ndarray:
    """Holm step-down or Benjamini-Hochberg adjusted p-values; NaNs are left out and kept."""
    if method not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS}, not {method!r}")
    p = np.asarray(p, dtype=np.float64)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if not m:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    ps = p[order]
    if method == "holm":
        adj = np.maximum.accumulate(ps * (m - np.arange(m)))
    else:
        adj = np.minimum.accumulate((ps * m / np.arange(1, m + 1))[::-1])[::-1]
    out[order] = np.minimum(adj, 1.0)
    return out


def mean_ci(x: np.ndarray) -> tuple[float, float, float]:
    if not len(x):
        return float("nan"), float("nan"), float("nan")
    m = float(x.mean())
    if len(x) < 2:
        return m, float("nan"), float("nan")
    half = float(sst.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return m, m - half, m + half
