"""Metrics with 95 % percentile bootstrap CIs over test items, and the length-matched AUROC (what a
detector knows beyond the answer's length)."""

from __future__ import annotations

import numpy as np

from hallugraph.metrics import accuracy, average_precision, f1, roc_auc

METRICS = ("auroc", "aupr", "acc", "f1")
_METRIC_TITLES = {"auroc": "AUROC", "aupr": "AUPR", "acc": "Acc", "f1": "F1"}


MIN_CLASS_TEST = 10
"""A test split with fewer answers of a class than this gets a warning: its metrics are
noise (their CIs say how much)."""
LENGTH_TOL = 2
"""Answers within this many tokens of each other count as length-matched."""


# --------------------------------------------------------------------------------------------
# splits


def bootstrap_indices(n: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """``[n_boot, n]`` indices resampled with replacement (fixed ``seed``)."""
    if n_boot <= 0 or n == 0:
        return np.zeros((0, n), dtype=np.int64)
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _metric_values(y: np.ndarray, s: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    pred = s >= threshold
    return {
        "auroc": np.atleast_1d(roc_auc(y, s)),
        "aupr": np.atleast_1d(average_precision(y, s)),
        "acc": accuracy(y, pred),
        "f1": f1(y, pred),
    }


def metrics_with_ci(
    y: np.ndarray,
    s: np.ndarray,
    threshold: float,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    idx: np.ndarray | None = None,
    alpha: float = 0.05,
) -> tuple[dict[str, float], list[str]]:
    """Point estimates and percentile bootstrap CIs of AUROC, AUPR, accuracy and F1.

    Returns ``({"auroc": .., "auroc_lo": .., "auroc_hi": .., ...}, notes)``. ``idx`` are the
    resample indices (default :func:`bootstrap_indices` with ``seed``); resamples with a single
    class are skipped for every metric. A metric that is undefined is NaN and explained in
    ``notes``; a CI needs at least 10 usable resamples.
    """
    y = np.asarray(y).astype(np.int64).reshape(-1)
    s = np.asarray(s, dtype=np.float64).reshape(-1)
    notes: list[str] = []
    out: dict[str, float] = {}
    if len(y) == 0:
        notes.append("empty test split: metrics undefined")
        for m in METRICS:
            out[m] = out[f"{m}_lo"] = out[f"{m}_hi"] = float("nan")
        return out, notes
    point = {k: float(v[0]) for k, v in _metric_values(y, s, threshold).items()}
    if len(np.unique(y)) < 2:
        # AUROC is undefined; AUPR, accuracy and F1 exist but only say which class the run
        # has (an all-hallucinated split gives AUPR 1.000 to any detector): not applicable
        notes.append(
            f"test split has one class ({'all hallucinated' if y[0] else 'none hallucinated'}): "
            "AUROC/AUPR/Acc/F1 not applicable"
        )
        point = {m: float("nan") for m in METRICS}
    if idx is None:
        idx = bootstrap_indices(len(y), n_boot, seed)
    lo = {m: float("nan") for m in METRICS}
    hi = dict(lo)
    if len(idx):
        yb = y[idx]
        keep = (yb.min(1) == 0) & (yb.max(1) == 1)
        if keep.sum() >= 10:
            vals = _metric_values(yb[keep], s[idx[keep]], threshold)
            q = [100 * alpha / 2, 100 * (1 - alpha / 2)]
            for m, v in vals.items():
                v = v[~np.isnan(v)]
                if len(v) >= 10:
                    lo[m], hi[m] = (float(x) for x in np.percentile(v, q))
        elif len(np.unique(y)) == 2:
            notes.append(f"only {int(keep.sum())} bootstrap resamples with both classes: no CI")
    for m in METRICS:
        out[m], out[f"{m}_lo"], out[f"{m}_hi"] = point[m], lo[m], hi[m]
    return out, notes


def length_matched_auroc(
    y: np.ndarray,
    s: np.ndarray,
    lengths: np.ndarray,
    *,
    tol: int = LENGTH_TOL,
    idx: np.ndarray | None = None,
    alpha: float = 0.05,
) -> dict[str, float]:
    """AUROC over length-matched pairs only: the share of (hallucinated, correct) pairs whose
    answers differ by at most ``tol`` tokens in which the hallucinated one scores higher (ties
    count half). A detector that reads nothing but length scores 0.5 on it (up to ``tol``).

    Returns ``auroc_lm`` with its percentile-bootstrap CI (``idx``: the same resamples as the
    other metrics; a resample counts its items with their multiplicity) and ``n_pairs_lm``, the
    number of matched pairs (NaN metric when there is none).
    """
    y = np.asarray(y).astype(np.int64).reshape(-1)
    s = np.asarray(s, dtype=np.float64).reshape(-1)
    n_len = np.asarray(lengths, dtype=np.float64).reshape(-1)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    matched = np.abs(n_len[pos][:, None] - n_len[neg][None, :]) <= tol
    wins = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
    out = {
        "auroc_lm": float("nan"),
        "auroc_lm_lo": float("nan"),
        "auroc_lm_hi": float("nan"),
        "n_pairs_lm": int(matched.sum()),
    }
    if not matched.any():
        return out
    out["auroc_lm"] = float((wins * matched).sum() / matched.sum())
    if idx is not None and len(idx):
        counts = np.zeros((len(idx), len(y)))
        np.add.at(counts, (np.repeat(np.arange(len(idx)), idx.shape[1]), idx.reshape(-1)), 1.0)
        wp, wn = counts[:, pos], counts[:, neg]
        den = np.einsum("bp,pn,bn->b", wp, matched.astype(np.float64), wn)
        num = np.einsum("bp,pn,bn->b", wp, wins * matched, wn)
        ok = den > 0
        if ok.sum() >= 10:
            vals = num[ok] / den[ok]
            out["auroc_lm_lo"] = float(np.quantile(vals, alpha / 2))
            out["auroc_lm_hi"] = float(np.quantile(vals, 1 - alpha / 2))
    return out


def percent_positive(y: np.ndarray) -> float:
    return float(100 * np.mean(y)) if len(y) else float("nan")
