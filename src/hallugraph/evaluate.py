"""Benchmark detectors on labeled runs: grouped splits, metrics with bootstrap CIs, transfer.

Protocol (one run = one dataset):

* **Split** (:func:`split_groups`): the traces of a run are split 60/20/20 into train /
  validation / test *by question* (``FeatureTable.groups``), so no question is on two sides,
  approximately stratified by label (each question's share of hallucinated traces), and
  deterministic for a seed.
* **Fit** every detector on the train split only. Detectors that choose hyper-parameters do so
  inside ``fit``, on the train split (the validation split is never shown to ``fit``).
* **Threshold**: the validation split only picks the decision threshold (predict
  "hallucinated" when ``score >= threshold``), the one that maximizes *balanced accuracy* on
  validation (:func:`choose_threshold`; robust to the class imbalance, which differs between
  datasets). The threshold is then applied unchanged to the test split.
* **Metrics on test** (:func:`metrics_with_ci`): AUROC and AUPR (average precision; hallucinated =
  positive class) from the scores, accuracy and F1 at the validation threshold, each with a 95 %
  percentile bootstrap CI over test items (``bootstrap`` resamples, fixed seed, the same
  resamples for every detector of a dataset; resamples with a single class are skipped).
  A metric that is undefined (a test split with one class) is NaN with a note, never a crash.
* **Length-matched AUROC** (:func:`length_matched_auroc`): AUROC over the (hallucinated,
  correct) test pairs whose answers differ by at most ``LENGTH_TOL`` tokens, with its CI over the
  same resamples and the number of pairs: what a detector knows beyond the answer's length.
* **Transfer** (several runs): a detector fitted on run A's train split, with A's validation
  threshold, scores run B's test split: one AUROC [CI] matrix per detector (the diagonal is the
  in-dataset result).

A detector that raises (in ``fit``, ``predict_proba`` or a statistic it needs) gets a row with
its error and the evaluation goes on. One that raises
:class:`~hallugraph.detectors.NotApplicable` (e.g. attribution scores never computed for the run)
is skipped on that run: no row, listed under "skipped" in the config and below the table.

Outputs in ``out_dir`` (default ``RUN/../eval`` of the first run): ``results.md`` (the table),
``results.csv``, ``results.json`` (everything, including splits and transfer),
``transfer.csv`` and one ROC plot per dataset, ``roc_<dataset>.png``.
"""

from __future__ import annotations

import copy
import csv
import importlib
import io
import json
import logging
import math
import os
import pkgutil
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import rankdata
from tqdm.auto import tqdm

from hallugraph.detectors import NotApplicable
from hallugraph.features import FeatureTable
from hallugraph.features.logits import answer_content
from hallugraph.integrity import IntegrityError
from hallugraph.io import atomic_write_bytes, atomic_write_text, jsonable

log = logging.getLogger(__name__)

__all__ = [
    "EvalReport",
    "PeakRSS",
    "average_precision",
    "balanced_accuracy",
    "bootstrap_indices",
    "choose_threshold",
    "evaluate",
    "roc_auc",
    "split_groups",
    "metrics_with_ci",
]

METRICS = ("auroc", "aupr", "acc", "f1")
_METRIC_TITLES = {"auroc": "AUROC", "aupr": "AUPR", "acc": "Acc", "f1": "F1"}
SPLITS = ("train", "val", "test")
MIN_CLASS_TEST = 10
"""A test split with fewer answers of a class than this gets a warning: its metrics are
noise (their CIs say how much)."""
LENGTH_TOL = 2
"""Answers within this many tokens of each other count as length-matched."""


# --------------------------------------------------------------------------------------------
# splits


def split_groups(
    groups: Sequence[Any] | np.ndarray,
    seed: int = 0,
    frac: tuple[float, float, float] = (0.6, 0.2, 0.2),
    labels: Sequence[int] | np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train / validation / test indices (sorted) with every group on exactly one side.

    Groups (question ids) are shuffled with ``seed`` and dealt to the splits one at a time, each
    to the split furthest below its share ``frac`` of the traces dealt so far (largest deficit;
    ties go to the split furthest behind overall, then to train, val, test), so the trace counts
    follow ``frac`` as closely as whole groups allow. With ``labels`` the deficits are counted
    within each label stratum — a group's stratum is its share of hallucinated traces, binned
    into "mostly correct" (< 1/3), "mixed" and "mostly hallucinated" (> 2/3) — so each split
    gets approximately the run's hallucination rate. The result depends only on ``groups``,
    ``labels``, ``seed`` and ``frac``.
    """
    groups = np.asarray(groups)
    n = len(groups)
    f = np.asarray(frac, dtype=np.float64)
    if f.shape != (3,) or (f < 0).any() or f.sum() <= 0:
        raise ValueError(f"frac must be three non-negative fractions, not {frac!r}")
    f = f / f.sum()
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), empty.copy()
    uniq, inverse = np.unique(groups, return_inverse=True)
    inverse = inverse.reshape(-1)
    sizes = np.bincount(inverse, minlength=len(uniq)).astype(np.float64)
    if labels is None:
        strata = np.zeros(len(uniq), dtype=np.int64)
    else:
        y = np.asarray(labels, dtype=np.float64).reshape(-1)
        if len(y) != n:
            raise ValueError(f"{len(y)} labels for {n} groups entries")
        share = np.bincount(inverse, weights=y, minlength=len(uniq)) / sizes
        strata = np.where(share < 1 / 3, 0, np.where(share > 2 / 3, 2, 1))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(uniq))
    side = np.empty(len(uniq), dtype=np.int64)
    counts = np.zeros((3, 3))  # [stratum, split] traces dealt so far
    for g in order:
        c = counts[strata[g]]
        deficit = f * (c.sum() + sizes[g]) - c
        # ties (frequent: e.g. val and test at 20 %) go to the split furthest behind over all
        # strata, then to the first
        tied = deficit >= deficit.max() - 1e-9
        total = counts.sum(0)
        overall = np.where(tied, f * (total.sum() + sizes[g]) - total, -np.inf)
        k = int(np.argmax(overall))
        side[g] = k
        c[k] += sizes[g]
    trace_side = side[inverse]
    return tuple(np.flatnonzero(trace_side == k) for k in range(3))  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# metrics (numpy, vectorized over bootstrap resamples: rows of a 2-D array)


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


def _confusion(y: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, ...]:
    y = np.atleast_2d(np.asarray(y, dtype=bool))
    pred = np.atleast_2d(np.asarray(pred, dtype=bool))
    tp = (y & pred).sum(1)
    fp = (~y & pred).sum(1)
    fn = (y & ~pred).sum(1)
    tn = (~y & ~pred).sum(1)
    return tp, fp, fn, tn


def _accuracy(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    tp, fp, fn, tn = _confusion(y, pred)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (tp + tn) / (tp + fp + fn + tn)


def _f1(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """F1 of the positive class; NaN when there is neither a positive nor a positive guess."""
    tp, fp, fn, _ = _confusion(y, pred)
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), np.nan)


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean of the recalls of both classes (NaN when a class is absent)."""
    tp, fp, fn, tn = (float(v[0]) for v in _confusion(y, pred))
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
    tp, fp, fn, tn = _confusion(yy, pred)
    bacc = 0.5 * (tp / (tp + fn) + tn / (tn + fp))
    best = np.flatnonzero(bacc >= bacc.max() - 1e-12)
    return float(cands[best[len(best) // 2]]), ""


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
        "acc": _accuracy(y, pred),
        "f1": _f1(y, pred),
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


def _pct(y: np.ndarray) -> float:
    return float(100 * np.mean(y)) if len(y) else float("nan")


# --------------------------------------------------------------------------------------------
# detectors


def _registry() -> dict[str, type]:
    """Every registered detector; a detector module that fails to import is skipped (logged),
    so one broken module does not hide the others."""
    from hallugraph import detectors as pkg

    try:
        return pkg.all_detectors()
    except Exception as err:  # noqa: BLE001 - some module is broken: import the others one by one
        log.warning("loading the detector registry failed (%s); importing modules one by one", err)
        for mod in pkgutil.iter_modules(pkg.__path__):
            try:
                importlib.import_module(f"{pkg.__name__}.{mod.name}")
            except Exception as err2:  # noqa: BLE001
                log.warning("detector module %s failed to import: %s", mod.name, err2)
        return dict(pkg.DETECTORS)


def _resolve(detectors: Sequence[Any] | None) -> list[tuple[str, Any]]:
    """``(name, spec)`` pairs; spec is a Detector class or an (unfitted) instance."""
    if detectors is None:
        reg = _registry()
        return [
            (n, reg[n]) for n in sorted(reg, key=lambda n: (str(getattr(reg[n], "family", "")), n))
        ]
    out: list[tuple[str, Any]] = []
    reg: dict[str, type] | None = None
    for d in detectors:
        if isinstance(d, str):
            reg = reg if reg is not None else _registry()
            if d not in reg:
                raise ValueError(f"unknown detector {d!r}; known: {', '.join(sorted(reg))}")
            out.append((d, reg[d]))
        else:
            out.append((str(getattr(d, "name", type(d).__name__)), d))
    names = [n for n, _ in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"detectors given twice: {', '.join(dup)}")
    return out


def _instantiate(spec: Any, seed: int) -> Any:
    if isinstance(spec, type):
        det = spec()
        if hasattr(det, "seed"):
            det.seed = seed
        return det
    return copy.deepcopy(spec)


def _scores(det: Any, X: FeatureTable) -> np.ndarray:
    s = np.asarray(det.predict_proba(X), dtype=np.float64)
    if s.ndim == 2 and s.shape[1:] == (2,):
        s = s[:, 1]
    s = s.reshape(-1) if s.ndim > 1 and s.size == len(X) else s
    if s.shape != (len(X),):
        raise ValueError(f"predict_proba returned shape {s.shape} for {len(X)} traces")
    bad = int((~np.isfinite(s)).sum())
    if bad:
        raise ValueError(f"predict_proba returned {bad} non-finite scores")
    return s


def _err(e: BaseException) -> str:
    msg = f"{type(e).__name__}: {e}".strip()
    return msg if len(msg) <= 300 else msg[:297] + "..."


# --------------------------------------------------------------------------------------------
# report


def _fmt(v: Any, nd: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{nd}f}"


def _fmt_ci(row: Mapping[str, Any], m: str) -> str:
    v, lo, hi = row.get(m), row.get(f"{m}_lo"), row.get(f"{m}_hi")
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return _fmt(v)
    return f"{_fmt(v)} [{_fmt(lo)}, {_fmt(hi)}]"


RESULT_COLUMNS = [
    "dataset",
    "detector",
    "family",
    "supervised",
    "n_train",
    "n_val",
    "n_test",
    "pct_halluc_test",
    *[f"{m}{x}" for m in METRICS for x in ("", "_lo", "_hi")],
    "auroc_lm",
    "auroc_lm_lo",
    "auroc_lm_hi",
    "n_pairs_lm",
    "threshold",
    "fit_s",
    "fit_peak_mb",
    "predict_s",
    "error",
    "notes",
    "run",
]
TRANSFER_COLUMNS = [
    "detector",
    "train_dataset",
    "test_dataset",
    "n_test",
    "pct_halluc_test",
    *[f"{m}{x}" for m in ("auroc", "acc") for x in ("", "_lo", "_hi")],
    "threshold",
    "error",
    "notes",
]


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if jsonable(r.get(k)) is None else r.get(k)) for k in columns})
    atomic_write_text(path, buf.getvalue())


@dataclass
class EvalReport:
    """What :func:`evaluate` measured.

    ``results``: one dict per dataset x detector (columns :data:`RESULT_COLUMNS`);
    ``transfer``: one dict per detector x train dataset x test dataset;
    ``splits``: per dataset, ``n`` and ``pct_halluc`` of each split;
    ``curves``: per dataset, ``{detector: (y_test, scores)}`` (for the ROC plots; not saved);
    ``files``: what was written.
    """

    results: list[dict[str, Any]]
    transfer: list[dict[str, Any]]
    splits: dict[str, dict[str, dict[str, float]]]
    config: dict[str, Any] = field(default_factory=dict)
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = field(
        default_factory=dict, repr=False
    )
    out_dir: Path | None = None
    files: list[Path] = field(default_factory=list)

    def failed_everywhere(self) -> list[str]:
        """Detectors that have a result row on some run and an error on every one of them."""
        rows: dict[str, list[bool]] = {}
        for r in self.results:
            rows.setdefault(r["detector"], []).append(bool(r.get("error")))
        return [d for d, errs in rows.items() if errs and all(errs)]

    def row(self, dataset: str, detector: str) -> dict[str, Any]:
        for r in self.results:
            if r["dataset"] == dataset and r["detector"] == detector:
                return r
        raise KeyError((dataset, detector))

    def transfer_matrix(self, detector: str, metric: str = "auroc") -> dict[str, dict[str, float]]:
        """``{train_dataset: {test_dataset: value}}`` for one detector."""
        out: dict[str, dict[str, float]] = {}
        for r in self.transfer:
            if r["detector"] == detector:
                out.setdefault(r["train_dataset"], {})[r["test_dataset"]] = r.get(metric)
        return out

    def to_markdown(self) -> str:
        lines = ["| dataset | split | n | % hallucinated |", "|---|---|---:|---:|"]
        for ds, sp in self.splits.items():
            for k in SPLITS:
                lines.append(f"| {ds} | {k} | {sp[k]['n']} | {_fmt(sp[k]['pct_halluc'], 1)} |")
        lines += [
            "",
            "| dataset | detector | family | AUROC [95% CI] | AUPR [95% CI] | Acc [95% CI] "
            "| F1 [95% CI] | AUROC len-matched [95% CI] (pairs) | fit s | fit MB | notes |",
            "|---|---|---|---|---|---|---|---|---:|---:|---|",
        ]
        for r in self.results:
            note = f"error: {r['error']}" if r.get("error") else r.get("notes", "")
            note = str(note).replace("|", "\\|").replace("\n", " ")
            cells = [_fmt_ci(r, m) for m in METRICS]
            cells.append(f"{_fmt_ci(r, 'auroc_lm')} ({r.get('n_pairs_lm', '')})")
            lines.append(
                f"| {r['dataset']} | {r['detector']} | {r['family']} | "
                + " | ".join(cells)
                + f" | {_fmt(r.get('fit_s'), 2)} | {_fmt(r.get('fit_peak_mb'), 0)} | {note} |"
            )
        warns = self.config.get("warnings") or []
        if warns:
            lines += ["", "Warnings:"]
            lines += [f"* {w}" for w in warns]
        skipped = self.config.get("skipped") or []
        if skipped:
            lines += ["", "Skipped (not applicable to the run):"]
            lines += [f"* {s['detector']} on {s['dataset']}: {s['reason']}" for s in skipped]
        datasets = list(self.splits)
        if len(datasets) > 1 and self.transfer:
            lines += ["", "Transfer: AUROC [95% CI], rows = train dataset, columns = test dataset."]
            for det in dict.fromkeys(r["detector"] for r in self.transfer):
                cell = {
                    (r["train_dataset"], r["test_dataset"]): (
                        "error" if r.get("error") else _fmt_ci(r, "auroc")
                    )
                    for r in self.transfer
                    if r["detector"] == det
                }
                lines += [
                    "",
                    f"**{det}**",
                    "",
                    "| train \\ test | " + " | ".join(datasets) + " |",
                    "|---|" + "---|" * len(datasets),
                ]
                for a in datasets:
                    row = " | ".join(cell.get((a, b), "") for b in datasets)
                    lines.append(f"| {a} | {row} |")
        return "\n".join(lines) + "\n"

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        _write_csv(path, self.results, RESULT_COLUMNS)
        return path

    def transfer_to_csv(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        _write_csv(path, self.transfer, TRANSFER_COLUMNS)
        return path

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "config": self.config,
            "splits": self.splits,
            "results": self.results,
            "transfer": self.transfer,
        }
        atomic_write_text(path, json.dumps(jsonable(payload), indent=2, allow_nan=False) + "\n")
        return path

    def plot_roc(self, dataset: str, path: str | os.PathLike[str]) -> Path:
        """ROC curves of every detector that scored ``dataset``'s test split, on one axes."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from sklearn.metrics import roc_curve

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        sp = self.splits[dataset]["test"]
        fig, ax = plt.subplots(figsize=(6, 6))
        try:
            ax.plot([0, 1], [0, 1], ls=(0, (1, 3)), color="grey", lw=1, label="chance")
            styles = ("-", "--", "-.", ":")
            for i, (det, (y, s)) in enumerate(self.curves.get(dataset, {}).items()):
                if len(np.unique(y)) < 2:
                    continue
                fpr, tpr, _ = roc_curve(y, s)
                ax.plot(
                    fpr,
                    tpr,
                    lw=1.5,
                    color=f"C{i % 10}",
                    ls=styles[(i // 10) % len(styles)],
                    label=f"{det} (AUROC {roc_auc(y, s):.3f})",
                )
            ax.set_xlim(-0.01, 1.01)
            ax.set_ylim(-0.01, 1.01)
            ax.set_xlabel("false positive rate")
            ax.set_ylabel("true positive rate (hallucinated)")
            ax.set_title(f"{dataset}: test n={sp['n']}, {_fmt(sp['pct_halluc'], 1)}% hallucinated")
            ax.legend(loc="lower right", fontsize=8)
            fig.tight_layout()
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=120)
        finally:
            plt.close(fig)
        atomic_write_bytes(path, buf.getvalue())
        return path

    def save(self, out_dir: str | os.PathLike[str]) -> list[Path]:
        """Write ``results.md``, ``results.csv``, ``results.json``, ``transfer.csv`` and
        ``roc_<dataset>.png`` into ``out_dir``."""
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} is a file, not a directory")
        out.mkdir(parents=True, exist_ok=True)
        # every file is written atomically (temporary name, rename); results.json last: a
        # results.json newer than the other files means the whole set is from one evaluation
        md = atomic_write_text(out / "results.md", self.to_markdown())
        files = [md, self.to_csv(out / "results.csv")]
        files.append(self.transfer_to_csv(out / "transfer.csv"))
        for ds in self.splits:
            files.append(self.plot_roc(ds, out / f"roc_{_slug(ds)}.png"))
        files.append(self.to_json(out / "results.json"))
        self.out_dir, self.files = out, files
        return files


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "dataset"


# --------------------------------------------------------------------------------------------
# evaluation


@dataclass
class _Run:
    name: str
    path: Path
    table: FeatureTable
    y: np.ndarray
    idx: dict[str, np.ndarray]
    boot: np.ndarray
    lengths: np.ndarray
    """Answer content tokens per trace (for the length-matched AUROC)."""


def _dataset_names(tables: Sequence[FeatureTable], runs: Sequence[Path]) -> list[str]:
    base = [str(t.run_info[0].get("dataset") or p.name) for t, p in zip(tables, runs, strict=True)]
    names = []
    for b, p in zip(base, runs, strict=True):
        name = b if base.count(b) == 1 else f"{b} ({p.name})"
        k = 2
        while name in names:
            name, k = f"{b} ({p.name} {k})", k + 1
        names.append(name)
    return names


def _load_runs(
    runs: Sequence[str | os.PathLike[str]],
    seed: int,
    frac: tuple[float, float, float],
    boot: int,
    warnings: list[str] | None = None,
) -> list[_Run]:
    """Load and split each run. Traces that ``hallugraph label`` found unlabelable (a
    ``label_rule`` but no ``label``: no reference answer) are left out, with a warning; a test
    split with fewer than :data:`MIN_CLASS_TEST` answers of a class gets a warning."""
    warnings = warnings if warnings is not None else []
    paths = [Path(r) for r in runs]
    tables = [FeatureTable.from_run(p) for p in paths]
    out = []
    for p, t, name in zip(paths, tables, _dataset_names(tables, paths), strict=True):
        if len(t) == 0:
            raise ValueError(f"run {p} has no traces")
        rows = t.rows
        missing = sum("label" not in r and "label_rule" not in r for r in rows)
        if missing:
            raise ValueError(
                f"run {p} is not labeled ({missing} of {len(t)} traces have no label): "
                f"run `hallugraph label {p}` first"
            )
        labeled = np.flatnonzero(["label" in r for r in rows])
        if len(labeled) < len(t):
            warnings.append(
                f"{name}: {len(t) - len(labeled)} of {len(t)} traces could not be labeled "
                "(no reference answer) and are left out"
            )
            if not len(labeled):
                raise ValueError(f"run {p}: no trace has a label (no reference answers)")
            t = t[labeled]
        y = t.labels
        tr, va, te = split_groups(t.groups, seed=seed, frac=frac, labels=y)
        if len(tr) == 0 or len(te) == 0:
            raise ValueError(
                f"run {p} has {len(np.unique(t.groups))} questions: too few for a train/test split"
            )
        n_pos = int(y[te].sum())
        n_neg = int(len(te) - n_pos)
        if min(n_pos, n_neg) < MIN_CLASS_TEST:
            warnings.append(
                f"{name}: the test split has {n_pos} hallucinated and {n_neg} correct answers "
                f"(fewer than {MIN_CLASS_TEST} of a class): its metrics are unreliable "
                "(see the CIs), or not applicable with one class"
            )
        out.append(
            _Run(
                name,
                p,
                t,
                y,
                {"train": tr, "val": va, "test": te},
                bootstrap_indices(len(te), boot, seed),
                np.array([answer_content(r).stop for r in t.rows], dtype=np.int64),
            )
        )
    return out


class PeakRSS:
    """Context manager: the peak resident memory above the level at entry, in MB
    (``extra_mb``), sampled every ``interval`` seconds from ``/proc/self/statm`` by a thread.
    NaN where ``/proc`` is missing. Includes everything the process allocates meanwhile
    (torch, numpy, imported modules), which is what a user pays for a fit."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.extra_mb = float("nan")

    @staticmethod
    def _rss() -> int | None:
        try:
            with open("/proc/self/statm", encoding="ascii") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            now = self._rss()
            if now is not None:
                self._peak = max(self._peak, now)

    def __enter__(self) -> PeakRSS:
        import threading

        self._start = self._rss()
        self._peak = self._start or 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        end = self._rss()
        if self._start is not None and end is not None:
            self.extra_mb = (max(self._peak, end) - self._start) / 2**20


def _precompute_stats(run: _Run, specs: Sequence[tuple[str, Any]], progress: bool) -> None:
    """Compute every statistic the detectors name in one pass over the run (cached on disk),
    so fit times do not include it. Failures are left for the detectors to report."""
    from hallugraph.features import compute_stats

    names = sorted({s for _, spec in specs for s in getattr(spec, "stats", ()) or ()})
    if not names:
        return
    try:
        compute_stats(run.table.stores[0], names, progress=progress)
    except IntegrityError:
        raise  # a damaged file: no number may come out of this run
    except Exception as err:  # noqa: BLE001 - one statistic may be impossible (no tensors kept)
        log.info("statistics of %s in one pass failed (%s); detectors will report", run.path, err)


def evaluate(
    runs: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    detectors: Sequence[Any] | None = None,
    *,
    seed: int = 0,
    out_dir: str | os.PathLike[str] | None = None,
    bootstrap: int = 1000,
    transfer: bool = True,
    progress: bool = True,
    frac: tuple[float, float, float] = (0.6, 0.2, 0.2),
) -> EvalReport:
    """Benchmark ``detectors`` (names, Detector classes or unfitted instances; default: every
    registered detector) on labeled ``runs`` (one per dataset); see the module docstring for the
    protocol. Writes the table, CSV/JSON and ROC plots into ``out_dir`` (default
    ``RUN/../eval`` of the first run) and returns the :class:`EvalReport`.

    Raises ``ValueError`` for an unlabeled run (naming ``hallugraph label RUN``), an unknown
    detector name or a run too small to split.
    """
    if isinstance(runs, str | os.PathLike):
        runs = [runs]
    if not runs:
        raise ValueError("no runs to evaluate")
    specs = _resolve(detectors)
    warnings: list[str] = []
    loaded = _load_runs(runs, seed, frac, bootstrap, warnings)
    for w in warnings:
        log.warning("%s", w)
    splits = {
        r.name: {k: {"n": int(len(r.idx[k])), "pct_halluc": _pct(r.y[r.idx[k]])} for k in SPLITS}
        for r in loaded
    }
    results: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    transfer_rows: list[dict[str, Any]] = []
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {r.name: {} for r in loaded}
    do_transfer = transfer and len(loaded) > 0

    bar = tqdm(total=len(loaded) * len(specs), desc="evaluate", disable=not progress)
    try:
        for run in loaded:
            _precompute_stats(run, specs, progress)
            for name, spec in specs:
                bar.set_postfix_str(f"{run.name} / {name}")
                row, tr_rows = _evaluate_one(
                    run, name, spec, loaded if do_transfer else [], seed, bootstrap, curves
                )
                if row.get("skipped"):
                    skipped.append(
                        {"dataset": run.name, "detector": name, "reason": row["skipped"]}
                    )
                else:
                    results.append(row)
                transfer_rows.extend(tr_rows)
                bar.update(1)
    finally:
        bar.close()

    # transfer rows grouped by detector, then train, then test dataset (in run order)
    order = {r.name: i for i, r in enumerate(loaded)}
    det_order = {n: i for i, (n, _) in enumerate(specs)}
    transfer_rows.sort(
        key=lambda r: (
            det_order[r["detector"]],
            order[r["train_dataset"]],
            order[r["test_dataset"]],
        )
    )
    report = EvalReport(
        results=results,
        transfer=transfer_rows,
        splits=splits,
        config={
            "runs": [str(r.path) for r in loaded],
            "datasets": [r.name for r in loaded],
            "detectors": [n for n, _ in specs],
            "seed": seed,
            "bootstrap": bootstrap,
            "frac": list(frac),
            "threshold_rule": "max balanced accuracy on the validation split",
            "ci": "95% percentile bootstrap over test items",
            "skipped": skipped,
            "warnings": warnings,
        },
        curves=curves,
    )
    out = Path(out_dir) if out_dir is not None else Path(loaded[0].path).parent / "eval"
    report.save(out)
    return report


def _evaluate_one(
    run: _Run,
    name: str,
    spec: Any,
    others: Sequence[_Run],
    seed: int,
    n_boot: int,
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Fit one detector on one run's train split, score val/test (and the other runs' test
    splits for transfer); never raises."""
    tr, va, te = (run.idx[k] for k in SPLITS)
    y_te = run.y[te]
    row: dict[str, Any] = {
        "dataset": run.name,
        "detector": name,
        "family": str(getattr(spec, "family", "") or ""),
        "supervised": bool(getattr(spec, "supervised", True)),
        "n_train": int(len(tr)),
        "n_val": int(len(va)),
        "n_test": int(len(te)),
        "pct_halluc_test": _pct(y_te),
        **{f"{m}{x}": float("nan") for m in METRICS for x in ("", "_lo", "_hi")},
        **{f"auroc_lm{x}": float("nan") for x in ("", "_lo", "_hi")},
        "n_pairs_lm": 0,
        "threshold": float("nan"),
        "fit_s": float("nan"),
        "fit_peak_mb": float("nan"),
        "predict_s": float("nan"),
        "error": "",
        "notes": "",
        "run": str(run.path),
    }
    notes: list[str] = []
    det = None
    try:
        det = _instantiate(spec, seed)
        t0 = time.perf_counter()
        with PeakRSS() as peak:
            det.fit(run.table[tr], run.y[tr])
        row["fit_s"] = time.perf_counter() - t0
        row["fit_peak_mb"] = peak.extra_mb
        t0 = time.perf_counter()
        s_va = _scores(det, run.table[va]) if len(va) else np.zeros(0)
        s_te = _scores(det, run.table[te])
        row["predict_s"] = time.perf_counter() - t0
        threshold, note = choose_threshold(run.y[va], s_va)
        if note:
            notes.append(note)
        row["threshold"] = threshold
        metrics, mnotes = metrics_with_ci(y_te, s_te, threshold, idx=run.boot, n_boot=n_boot)
        row.update(metrics)
        row.update(length_matched_auroc(y_te, s_te, run.lengths[te], idx=run.boot))
        notes += mnotes
        curves[run.name][name] = (y_te, s_te)
    except NotApplicable as err:  # e.g. no attribution scores for this run: skip, no row
        log.info("detector %s skipped on %s: %s", name, run.name, err)
        return {**row, "skipped": str(err)}, []
    except IntegrityError:
        raise  # a damaged file stops the evaluation (exit 2 naming it), not one detector
    except Exception as err:  # noqa: BLE001 - one detector must not stop the evaluation
        log.warning("detector %s on %s failed: %s", name, run.name, err, exc_info=True)
        row["error"] = _err(err)
        det = None
    row["notes"] = "; ".join(notes)

    tr_rows = []
    for other in others:
        t_row: dict[str, Any] = {
            "detector": name,
            "train_dataset": run.name,
            "test_dataset": other.name,
            "n_test": int(len(other.idx["test"])),
            "pct_halluc_test": _pct(other.y[other.idx["test"]]),
            **{f"{m}{x}": float("nan") for m in ("auroc", "acc") for x in ("", "_lo", "_hi")},
            "threshold": row["threshold"],
            "error": "",
            "notes": "",
        }
        if other is run:
            if row["error"]:
                t_row["error"] = row["error"]
            for m in ("auroc", "acc"):
                for x in ("", "_lo", "_hi"):
                    t_row[f"{m}{x}"] = row[f"{m}{x}"]
            t_row["notes"] = row["notes"]
        elif det is None:
            t_row["error"] = f"not fitted on {run.name}: {row['error']}"
        else:
            try:
                te_o = other.idx["test"]
                s_o = _scores(det, other.table[te_o])
                metrics, mnotes = metrics_with_ci(
                    other.y[te_o], s_o, row["threshold"], idx=other.boot, n_boot=n_boot
                )
                for m in ("auroc", "acc"):
                    for x in ("", "_lo", "_hi"):
                        t_row[f"{m}{x}"] = metrics[f"{m}{x}"]
                t_row["notes"] = "; ".join(mnotes)
            except NotApplicable:  # the other run lacks what the detector reads: no cell
                continue
            except IntegrityError:
                raise
            except Exception as err:  # noqa: BLE001
                log.warning("transfer of %s %s -> %s failed: %s", name, run.name, other.name, err)
                t_row["error"] = _err(err)
        tr_rows.append(t_row)
    return row, tr_rows
