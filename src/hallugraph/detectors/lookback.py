"""Lookback Lens (Chuang et al., EMNLP 2024, "Lookback Lens: Detecting and Mitigating
Contextual Hallucinations in Large Language Models Using Only Attention Maps"): a logistic
regression over the lookback ratio of every layer and head, averaged over the answer
(statistic ``lookback`` / ``lookback_prompt`` ``[L, heads]``, see
:mod:`hallugraph.features.attention`), flattened layer-major as the reference's
``lookback-mean-L{l}-H{h}`` features.

The reference classifier (``voidism/Lookback-Lens``, ``step03_lookback_lens.py``) is a plain
``LogisticRegression(max_iter=1000)``: C = 1, no scaling (the ratios all lie in [0, 1]), no
class weights. That is what is fitted here, with a fixed ``random_state``. Its labels are 1 =
factual span; ours are 1 = hallucinated, which only flips the sign of the weights.

``context`` picks the statistic: ``"span"`` (``lookback``: the trace's retrieved-context span,
the whole prompt when there is none) or ``"prompt"`` (``lookback_prompt``: always the whole
prompt, closest to the reference, whose context is everything before the response header).
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression

from hallugraph.detectors.base import Detector, register
from hallugraph.detectors.probes import fit_quiet
from hallugraph.features import FeatureTable

PAPER = (
    "Chuang et al., EMNLP 2024, Lookback Lens: Detecting and Mitigating Contextual "
    "Hallucinations in Large Language Models Using Only Attention Maps"
)

_STATS = {"span": "lookback", "prompt": "lookback_prompt"}


@register
class LookbackLens(Detector):
    """Logistic regression over the ``L x heads`` mean lookback ratios."""

    name = "lookback_lens"
    family = "attention"
    paper = PAPER
    stats = ("lookback", "lookback_prompt")
    """``context`` selects which one is read."""

    def __init__(
        self, context: str = "span", C: float = 1.0, seed: int = 0, max_iter: int = 1000
    ) -> None:
        self.context = context
        self.C = C
        self.seed = seed
        self.max_iter = max_iter

    _choices = {"context": tuple(_STATS)}

    def stats_read(self) -> tuple[str, ...]:
        self.check_params()
        return (_STATS[self.context],)

    def _features(self, X: FeatureTable) -> np.ndarray:
        r = X.stat(_STATS[self.context])
        return r.reshape(len(r), -1).astype(np.float64)

    def fit(self, X: FeatureTable, y: np.ndarray) -> LookbackLens:
        self.check_params()
        y = np.asarray(y).astype(np.int64)
        model = LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=self.seed)
        self.model_ = fit_quiet(model, self._features(X), y)
        return self

    def predict_proba(self, X: FeatureTable) -> np.ndarray:
        return self.model_.predict_proba(self._features(X))[:, 1]
