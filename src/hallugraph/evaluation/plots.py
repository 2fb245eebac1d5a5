"""Per-run plots of an evaluation: ROC curves of the pooled out-of-fold scores, AUROC by answer
length for the top detectors, and the fused detector's weight per signal family."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from hallugraph.evaluation.bootstrap import weighted_auroc
from hallugraph.io import save_png

TOP = 4
"""Detectors drawn in the length plot (the run's best by AUROC, plus the fusion)."""
LENGTH_BINS = 4


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    import matplotlib.pyplot as plt

    try:
        return save_png(fig, path)
    finally:
        plt.close(fig)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _title(report: Any, dataset: str) -> str:
    r = report.runs[dataset]
    return f"{dataset}: {r['n']} answers, {r['pct_halluc']:.1f}% hallucinated"


def plot_roc(report: Any, dataset: str, path: str | os.PathLike[str]) -> Path:
    """ROC curves (first repeat's pooled out-of-fold scores) of every detector of ``dataset``."""
    from sklearn.metrics import roc_curve

    plt = _plt()
    y = report.labels.get(dataset, np.zeros(0))
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.plot([0, 1], [0, 1], ls=(0, (1, 3)), color="grey", lw=1, label="chance")
    styles = ("-", "--", "-.", ":")
    if len(np.unique(y)) == 2:
        for i, (det, S) in enumerate(report.oof.get(dataset, {}).items()):
            fpr, tpr, _ = roc_curve(y, S[0])
            auc = report.row(dataset, det)["auroc"]
            ax.plot(
                fpr,
                tpr,
                lw=1.5,
                color=f"C{i % 10}",
                ls=styles[(i // 10) % len(styles)],
                label=f"{det} (AUROC {auc:.3f})",
            )
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate (hallucinated)")
    ax.set_title(_title(report, dataset) + " (out-of-fold)", fontsize=9)
    ax.legend(loc="lower right", fontsize=7)
    return _save(fig, path)


def length_bins(lengths: np.ndarray, n_bins: int = LENGTH_BINS) -> np.ndarray:
    """Bin of every answer by its length (quantile edges, merged where lengths tie)."""
    edges = np.unique(np.quantile(lengths, np.linspace(0, 1, n_bins + 1)[1:-1]))
    return np.searchsorted(edges, lengths, side="right")


def auroc_by_length(
    y: np.ndarray, S: np.ndarray, lengths: np.ndarray, n_bins: int = LENGTH_BINS
) -> list[tuple[int, int, int, float]]:
    """``(min length, max length, answers, AUROC averaged over repeats)`` per length bin
    (NaN where a bin holds one class)."""
    bins = length_bins(lengths, n_bins)
    out = []
    for b in np.unique(bins):
        m = bins == b
        w = np.ones((1, int(m.sum())))
        auc = float(np.mean([weighted_auroc(y[m], s[m], w)[0] for s in np.atleast_2d(S)]))
        out.append((int(lengths[m].min()), int(lengths[m].max()), int(m.sum()), auc))
    return out


def plot_length_bins(report: Any, dataset: str, path: str | os.PathLike[str]) -> Path:
    """AUROC by answer-length bin of the run's top detectors (and the fusion)."""
    plt = _plt()
    y = report.labels.get(dataset, np.zeros(0))
    lengths = report.lengths.get(dataset, np.zeros(0))
    rows = [
        r
        for r in report.results
        if r["dataset"] == dataset
        and r["detector"] in report.oof.get(dataset, {})
        and np.isfinite(r["auroc"])
    ]
    rows.sort(key=lambda r: -r["auroc"])
    top = [r["detector"] for r in rows[:TOP]]
    top += [r["detector"] for r in rows if r["detector"] == "fusion" and "fusion" not in top]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels: list[str] = []
    for i, det in enumerate(top):
        bins = auroc_by_length(y, report.oof[dataset][det], lengths)
        labels = [f"{lo}-{hi} tok\n(n={n})" for lo, hi, n, _ in bins]
        ax.plot(range(len(bins)), [b[3] for b in bins], "o-", color=f"C{i}", label=det)
    ax.axhline(0.5, color="grey", ls=":", lw=1)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_xlabel("answer length (content tokens), quantile bins")
    ax.set_ylabel("AUROC within the bin (out-of-fold)")
    ax.set_title(_title(report, dataset), fontsize=9)
    if top:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_family_weights(report: Any, dataset: str, path: str | os.PathLike[str]) -> Path:
    """The fusion's share of weight per signal family on ``dataset`` (mean over folds)."""
    plt = _plt()
    fw = report.family_weights.get(dataset, {})
    fams = sorted(fw, key=lambda f: -fw[f])
    fig, ax = plt.subplots(figsize=(6, 0.5 * max(len(fams), 2) + 1.2))
    ax.barh(range(len(fams)), [fw[f] for f in fams], color="C0")
    ax.set_yticks(range(len(fams)), fams)
    ax.invert_yaxis()
    ax.set_xlabel("share of the meta-learner's |weight| (standardized inputs)")
    ax.set_title(f"fusion on {_title(report, dataset)}", fontsize=9)
    return _save(fig, path)
