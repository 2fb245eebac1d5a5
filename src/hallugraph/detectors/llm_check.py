"""LLM-Check (Sriramanan et al., NeurIPS 2024, "LLM-Check: Investigating Detection of
Hallucinations in Large Language Models"): scores of ONE teacher-forced response, no sampling.

* ``llmcheck_hidden`` — the hidden score (mean log singular value of the centered Gram matrix
  of the response's hidden states, statistic ``llmcheck_hidden`` ``[L+1]``) at one layer.
* ``llmcheck_attn`` — the attention score (mean log self-attention weight over the response,
  summed over the heads of one layer; statistic ``llmcheck_attn`` ``[L, heads]``).
* ``llmcheck_attn_lr`` — logistic regression over every layer x head attention score.

The paper reports each score per layer and thresholds it; it does not say which layer to use
on a new model. The two score detectors stay *unsupervised scores*: the labels are used only
to pick the layer and the sign (AUROC of ``sign * score`` on the training traces; the training
set is held-out data for a score with nothing else fitted, and all of it is used because a
split would only make the choice noisier). ``predict_proba`` is a monotone squashing of the
oriented raw score (median/std of the training scores), so AUROC is the raw score's.
"""

from __future__ import annotations

import numpy as np

from hallugraph.detectors.base import Detector, register
from hallugraph.detectors.probes import fit_quiet, lr_pipeline, select_scalar
from hallugraph.features import FeatureTable

PAPER = "Sriramanan et al., NeurIPS 2024, LLM-Check: Investigating Detection of Hallucinations"


class _LayerScore(Detector):
    """A per-layer scalar score; ``fit`` picks ``layer_`` and ``sign_`` by training AUROC."""

    paper = PAPER
    stat: str

    def _scores(self, X: FeatureTable) -> np.ndarray:
        """``[n, layers]`` raw scores."""
        raise NotImplementedError

    def fit(self, X: FeatureTable, y: np.ndarray) -> _LayerScore:
        scores = self._scores(X).astype(np.float64)
        self.layer_, self.sign_, self.train_auroc_ = select_scalar(scores, np.asarray(y))
        s = self.sign_ * scores[:, self.layer_]
        self.center_ = float(np.median(s))
        self.scale_ = float(s.std() + 1e-12)
        return self

    def predict_proba(self, X: FeatureTable) -> np.ndarray:
        s = self.sign_ * self._scores(X)[:, self.layer_].astype(np.float64)
        z = np.clip((np.nan_to_num(s) - self.center_) / self.scale_, -50, 50)
        return 1.0 / (1.0 + np.exp(-z))


@register
class LLMCheckHidden(_LayerScore):
    """Hidden score ``logdet(Z J Z^T + 1e-3 I) / n`` of the response at the chosen layer."""

    name = "llmcheck_hidden"
    family = "hidden"
    stats = ("llmcheck_hidden",)

    def _scores(self, X: FeatureTable) -> np.ndarray:
        return X.stat("llmcheck_hidden")


@register
class LLMCheckAttn(_LayerScore):
    """Attention score: sum over the heads of the chosen layer of the mean log self-attention
    weight over the response (the log-det of the response's attention kernel, per token)."""

    name = "llmcheck_attn"
    family = "attention"
    stats = ("llmcheck_attn",)

    def _scores(self, X: FeatureTable) -> np.ndarray:
        return X.stat("llmcheck_attn").sum(axis=-1)


@register
class LLMCheckAttnLR(Detector):
    """Standardized L2 logistic regression over all ``L x heads`` attention scores."""

    name = "llmcheck_attn_lr"
    family = "attention"
    paper = PAPER
    stats = ("llmcheck_attn",)

    def __init__(self, C: float = 0.1, seed: int = 0) -> None:
        self.C = C
        self.seed = seed

    @staticmethod
    def _features(X: FeatureTable) -> np.ndarray:
        a = X.stat("llmcheck_attn")
        return a.reshape(len(a), -1).astype(np.float64)

    def fit(self, X: FeatureTable, y: np.ndarray) -> LLMCheckAttnLR:
        y = np.asarray(y).astype(np.int64)
        self.model_ = fit_quiet(lr_pipeline(self.C, self.seed), self._features(X), y)
        return self

    def predict_proba(self, X: FeatureTable) -> np.ndarray:
        return self.model_.predict_proba(self._features(X))[:, 1]
