"""Logit baselines: perplexity, mean and min answer-token log-prob, mean entropy.

Unsupervised scores with a fixed orientation (higher perplexity / entropy, lower log-prob =
more likely hallucinated); ``fit`` only learns a monotone squashing to [0, 1] (centre and
scale on the training scores), so AUROC is the raw score's.
"""

from __future__ import annotations

import numpy as np

from hallugraph.detectors.base import Detector, register
from hallugraph.features import FeatureTable

# column of the "logit" statistic, sign so that higher = more hallucinated
_COLUMNS = {"log_perplexity": (0, 1.0), "min_logprob": (2, -1.0), "mean_entropy": (3, 1.0)}


class _LogitScore(Detector):
    family = "logits"
    stats = ("logit",)
    supervised = False
    column: int
    sign: float

    def _raw(self, X: FeatureTable) -> np.ndarray:
        return self.sign * X.stat(self.stats[0])[:, self.column].astype(np.float64)

    def fit(self, X: FeatureTable, y: np.ndarray) -> _LogitScore:
        s = self._raw(X)
        self.center_ = float(np.median(s))
        self.scale_ = float(s.std() + 1e-12)
        return self

    def predict_proba(self, X: FeatureTable) -> np.ndarray:
        z = (self._raw(X) - self.center_) / self.scale_
        return 1.0 / (1.0 + np.exp(-z))


@register
class Perplexity(_LogitScore):
    """exp(-mean log p) of the answer's tokens (its log, which ranks the same)."""

    name = "perplexity"
    column, sign = _COLUMNS["log_perplexity"]


@register
class MinLogProb(_LogitScore):
    """The least likely answer token: low = suspicious."""

    name = "min_logprob"
    column, sign = _COLUMNS["min_logprob"]


@register
class MeanEntropy(_LogitScore):
    """Mean entropy of the next-token distributions over the answer."""

    name = "mean_entropy"
    column, sign = _COLUMNS["mean_entropy"]


@register
class AnswerLength(_LogitScore):
    """Control, not a detector: the answer's length in tokens (longer = more suspicious).

    A detector that does no better than this on a dataset may be reading the answers' length.
    """

    name = "answer_length"
    family = "control"
    stats = ("answer_length",)
    column, sign = 0, 1.0
