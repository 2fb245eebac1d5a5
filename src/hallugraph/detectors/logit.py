"""Logit baselines: perplexity, mean and min answer-token log-prob, mean entropy.

Unsupervised scores with a fixed orientation (higher perplexity / entropy, lower log-prob =
more likely hallucinated); ``fit`` only learns a monotone squashing to [0, 1] (centre and
scale on the training scores), so AUROC is the raw score's.
"""

from __future__ import annotations

import numpy as np

from hallugraph.detectors.base import Detector, register
from hallugraph.features import FeatureTable


class _LogitScore(Detector):
    family = "logits"
    stats = ("logit",)
    supervised = False
    output: str
    """The statistic's output read (``"logit.min_logprob"``)."""
    sign: float
    """+1 or -1, so that a higher score = more likely hallucinated."""

    def _raw(self, X: FeatureTable) -> np.ndarray:
        return self.sign * X.stat(self.output).reshape(-1).astype(np.float64)

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
    output, sign = "logit.log_perplexity", 1.0


@register
class MinLogProb(_LogitScore):
    """The least likely answer token: low = suspicious."""

    name = "min_logprob"
    output, sign = "logit.min_logprob", -1.0


@register
class MeanEntropy(_LogitScore):
    """Mean entropy of the next-token distributions over the answer."""

    name = "mean_entropy"
    output, sign = "logit.mean_entropy", 1.0


@register
class AnswerLength(_LogitScore):
    """Control, not a detector: the answer's length in tokens (longer = more suspicious).

    A detector that does no better than this on a dataset may be reading the answers' length.
    """

    name = "answer_length"
    family = "control"
    stats = ("answer_length",)
    output, sign = "answer_length", 1.0
