"""Groundedness detectors over attribution-graph scores (statistic ``groundedness``: Gctx, RS,
CS of each trace, stored by ``hallugraph groundedness RUN``; see
:mod:`hallugraph.features.groundedness` and :mod:`hallugraph.attribution.scores`).

* ``groundedness``: the Groundedness score ``G = Gctx · (α·RS + (1 − α)·CS)``; an answer is
  grounded when its answer logits are driven by the context (Gctx) *and* the graph explains
  that computation (RS, CS). ``fit`` chooses α (and a threshold T, kept for reference) on the
  traces it is given with :func:`fit_groundedness`; ``predict_proba`` is ``1 − G``. Only α is
  learned from the labels (one number), so the detector is listed as unsupervised.
* ``groundedness_lr``: a standardized logistic regression on ``[Gctx, RS, CS]``.

The formula and its fit live here (not in :mod:`hallugraph.attribution`, which comes after the
detectors in the package's stage order); :mod:`hallugraph.attribution.scores` re-exports them.

Traces never scored (no stored record) make both detectors refuse: :class:`NotApplicable` when
none of the traces is scored (``evaluate`` then skips the detector on that run), a
``ValueError`` naming the command to run when only some are. A scored trace whose scores are
NaN (an empty graph) counts as ungrounded: G = 0, and 0 for the regression's inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hallugraph.detectors.base import Detector, NotApplicable, register
from hallugraph.features import FeatureTable

__all__ = [
    "GroundednessDetector",
    "GroundednessFit",
    "GroundednessLR",
    "fit_groundedness",
    "groundedness",
    "scored_values",
]

PAPER = "Groundedness = Gctx · (α·RS + (1 − α)·CS) from (circuit-tracer's) attribution graphs"
STAT = "groundedness"


def groundedness(
    gctx: float | np.ndarray, rs: float | np.ndarray, cs: float | np.ndarray, alpha: float
) -> float | np.ndarray:
    """``G = Gctx · (α·RS + (1 − α)·CS)``; in [0, 1] when its inputs are."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    g = np.asarray(gctx, dtype=np.float64) * (
        alpha * np.asarray(rs, dtype=np.float64) + (1.0 - alpha) * np.asarray(cs, dtype=np.float64)
    )
    return float(g) if g.ndim == 0 else g


@dataclass(frozen=True)
class GroundednessFit:
    """α and T chosen on validation; an answer is hallucinated when ``G ≤ threshold``."""

    alpha: float
    threshold: float
    balanced_accuracy: float
    """On the validation data the fit was chosen on."""
    grid: tuple[tuple[float, float, float], ...] = ()
    """``(alpha, threshold, balanced accuracy)`` for every α tried."""

    def score(
        self, gctx: float | np.ndarray, rs: float | np.ndarray, cs: float | np.ndarray
    ) -> float | np.ndarray:
        return groundedness(gctx, rs, cs, self.alpha)

    def predict(
        self, gctx: float | np.ndarray, rs: float | np.ndarray, cs: float | np.ndarray
    ) -> np.ndarray:
        """1 = hallucinated (not grounded enough), 0 = grounded; a NaN score counts as G = 0."""
        g = np.nan_to_num(np.asarray(self.score(gctx, rs, cs), dtype=np.float64), nan=0.0)
        return (g <= self.threshold).astype(np.int64)

    def to_dict(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "threshold": self.threshold,
            "balanced_accuracy": self.balanced_accuracy,
            "grid": [list(g) for g in self.grid],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GroundednessFit:
        return cls(
            alpha=float(d["alpha"]),
            threshold=float(d["threshold"]),
            balanced_accuracy=float(d["balanced_accuracy"]),
            grid=tuple(tuple(float(v) for v in g) for g in d.get("grid", ())),
        )


def fit_groundedness(
    gctx: Sequence[float] | np.ndarray,
    rs: Sequence[float] | np.ndarray,
    cs: Sequence[float] | np.ndarray,
    y: Sequence[int] | np.ndarray,
    alphas: Sequence[float] | np.ndarray | None = None,
) -> GroundednessFit:
    """Choose α (grid, default 0, 0.05, …, 1) and T on validation data (``y``: 1 = hallucinated).

    For each α the threshold is the one of maximal balanced accuracy
    (:func:`hallugraph.metrics.choose_threshold` on the hallucination score −G); the α with
    the best balanced accuracy wins (ties: the smallest α). NaN scores (an empty graph) count
    as G = 0, i.e. ungrounded.
    """
    from hallugraph.metrics import balanced_accuracy, choose_threshold

    y_arr = np.asarray(y, dtype=np.int64).reshape(-1)
    if len(np.unique(y_arr)) < 2:
        raise ValueError("fit_groundedness needs both grounded (0) and hallucinated (1) examples")
    grid_alphas = np.linspace(0.0, 1.0, 21) if alphas is None else np.asarray(alphas, float)
    rows: list[tuple[float, float, float]] = []
    for a in grid_alphas:
        g = np.nan_to_num(np.asarray(groundedness(gctx, rs, cs, float(a))).reshape(-1), nan=0.0)
        if len(g) != len(y_arr):
            raise ValueError(f"{len(g)} scores for {len(y_arr)} labels")
        t, _ = choose_threshold(y_arr, -g)  # hallucinated when -G >= t, i.e. G <= -t
        bacc = balanced_accuracy(y_arr, (g <= -t).astype(np.int64))
        rows.append((float(a), float(-t), float(bacc)))
    best = max(range(len(rows)), key=lambda i: (rows[i][2], -rows[i][0]))
    a, t, b = rows[best]
    return GroundednessFit(alpha=a, threshold=t, balanced_accuracy=b, grid=tuple(rows))


def scored_values(X: FeatureTable) -> np.ndarray:
    """``[n, 3]`` float64 ``(Gctx, RS, CS)`` of every trace of ``X``, NaN kept.

    Raises :class:`NotApplicable` when no trace of ``X`` was scored, ``ValueError`` when some
    were not (the detectors need every trace scored).
    """
    scored = np.asarray(X.stat(f"{STAT}.scored")).reshape(len(X)) > 0
    how = "run `hallugraph groundedness RUN` (attribution graphs, needs a transcoder set) first"
    if not scored.any():
        raise NotApplicable(f"no trace has attribution scores: {how}")
    if not scored.all():
        raise ValueError(
            f"{int((~scored).sum())} of {len(scored)} traces have no attribution scores: {how}, "
            "without --limit"
        )
    return np.stack(
        [
            np.asarray(X.stat(f"{STAT}.{k}"), np.float64).reshape(len(X))
            for k in ("gctx", "rs", "cs")
        ],
        axis=1,
    )


class _GroundednessBase(Detector):
    family = "attribution"
    paper = PAPER
    stats = (STAT,)


@register
class GroundednessDetector(_GroundednessBase):
    """``1 − G`` with α chosen on the training traces (:func:`fit_groundedness`)."""

    name = "groundedness"
    supervised = False

    def __init__(self, alphas: Sequence[float] | None = None) -> None:
        self.alphas = alphas

    def fit(self, X: FeatureTable, y: np.ndarray) -> GroundednessDetector:
        v = scored_values(X)
        alphas = None if self.alphas is None else tuple(float(a) for a in self.alphas)
        self.fit_ = fit_groundedness(v[:, 0], v[:, 1], v[:, 2], y, alphas=alphas)
        self.alpha_ = self.fit_.alpha
        return self

    def predict_proba(self, X: FeatureTable) -> np.ndarray:
        v = scored_values(X)
        g = np.nan_to_num(np.asarray(self.fit_.score(v[:, 0], v[:, 1], v[:, 2])), nan=0.0)
        return np.clip(1.0 - g.reshape(-1), 0.0, 1.0)


@register
class GroundednessLR(_GroundednessBase):
    """Standardized L2 logistic regression on ``[Gctx, RS, CS]`` (NaN read as 0)."""

    name = "groundedness_lr"

    def __init__(self, C: float = 1.0, seed: int = 0) -> None:
        self.C = C
        self.seed = seed

    def fit(self, X: FeatureTable, y: np.ndarray) -> GroundednessLR:
        from hallugraph.detectors.probes import fit_quiet, lr_pipeline

        y = np.asarray(y).astype(np.int64)
        if len(np.unique(y)) < 2:
            raise ValueError("groundedness_lr needs both classes in its training traces")
        feats = np.nan_to_num(scored_values(X), nan=0.0)
        self.model_ = fit_quiet(lr_pipeline(self.C, self.seed), feats, y)
        return self

    def predict_proba(self, X: FeatureTable) -> np.ndarray:
        feats = np.nan_to_num(scored_values(X), nan=0.0)
        return self.model_.predict_proba(feats)[:, 1]
