"""Attention-graph topology detector: a classifier over the per-layer topology of the answer's
attention graph (statistic ``graph_topology`` ``[L, 6]``, :mod:`hallugraph.features.topology`:
context/prompt share of the answer's attention, PageRank, in-degree centrality and clustering of
the answer tokens, attention entropy).

The idea combines Lookback Lens (Chuang et al., EMNLP 2024: how much the answer looks back at the
context, per layer) with graph views of attention (LapEigvals, Binkowski et al., EMNLP 2025;
CHARM): hallucinated answers are expected to read less from the context and to sit differently
in the attention graph, and *where in depth* that changes matters, so the features are the
``L x 6`` per-layer values plus their ``(L - 1) x 6`` layer-to-layer differences
(``value[l + 1] - value[l]``), standardized (mean 0, variance 1 on the training traces).

``model`` picks the classifier:

* ``"logreg"`` (default) — L2 logistic regression (``C``, default 0.1). The reasoning, not the
  tiny run, picks it: a benchmark run has a few hundred labeled traces and ``11 L`` (330 for
  SmolLM2) strongly correlated features (neighbouring layers, and the differences are linear in
  the values); a regularized linear model is the low-variance choice there, its scores are
  smooth (AUROC and thresholds behave), and its weights read directly as "which layer's context
  share matters, with which sign". ``C = 0.1`` rather than 1 because the differences make the
  design collinear by construction.
* ``"hgb"`` — ``HistGradientBoostingClassifier`` (shallow trees, early stopping off, fixed
  seed): captures thresholds and interactions (e.g. low context share *and* high entropy) when
  runs hold thousands of traces; it overfits at a few hundred.

Both fit and predict in one thread (``threadpoolctl``): the data are small, and OpenMP/BLAS
thread pools on a machine busy with extraction were 10-15x slower than one thread.
"""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from hallugraph.detectors.base import Detector, register
from hallugraph.detectors.probes import fit_quiet
from hallugraph.features import FeatureTable

PAPER = (
    "attention-graph topology (after Chuang et al., EMNLP 2024, Lookback Lens; Binkowski et al., "
    "EMNLP 2025, LapEigvals)"
)

MODELS = ("logreg", "hgb")


def topology_design(values: np.ndarray) -> np.ndarray:
    """``[n, L, F]`` statistic -> ``[n, L*F + (L-1)*F]``: the values, then the layer-to-layer
    differences, each flattened layer-major."""
    v = np.asarray(values, dtype=np.float64)
    diffs = np.diff(v, axis=1)
    return np.concatenate([v.reshape(len(v), -1), diffs.reshape(len(v), -1)], axis=1)


@register
class GraphTopologyDetector(Detector):
    """Standardized per-layer topology features + their layer differences -> ``model``."""

    name = "graph_topology"
    family = "graph"
    paper = PAPER
    stats = ("graph_topology",)

    def __init__(
        self,
        model: str = "logreg",
        C: float = 0.1,
        seed: int = 0,
        max_iter: int = 2000,
        hgb_max_depth: int = 3,
        hgb_max_iter: int = 200,
        hgb_learning_rate: float = 0.05,
    ) -> None:
        self.model = model
        self.C = C
        self.seed = seed
        self.max_iter = max_iter
        self.hgb_max_depth = hgb_max_depth
        self.hgb_max_iter = hgb_max_iter
        self.hgb_learning_rate = hgb_learning_rate

    _choices = {"model": MODELS}

    def _features(self, X: FeatureTable) -> np.ndarray:
        feats = topology_design(X.stat("graph_topology"))
        return np.nan_to_num(feats, nan=0.0, posinf=0.0, neginf=0.0)

    def fit(self, X: FeatureTable, y: np.ndarray) -> GraphTopologyDetector:
        self.check_params()
        y = np.asarray(y).astype(np.int64)
        if self.model == "logreg":
            clf = LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=self.seed)
        else:
            clf = HistGradientBoostingClassifier(
                max_depth=self.hgb_max_depth,
                max_iter=self.hgb_max_iter,
                learning_rate=self.hgb_learning_rate,
                early_stopping=False,
                random_state=self.seed,
            )
        feats = self._features(X)
        with threadpool_limits(limits=1):
            self.model_ = fit_quiet(make_pipeline(StandardScaler(), clf), feats, y)
        return self

    def predict_proba(self, X: FeatureTable) -> np.ndarray:
        feats = self._features(X)
        with threadpool_limits(limits=1):
            return self.model_.predict_proba(feats)[:, 1]
