"""HalluShift (Dasgupta et al., IJCNN 2025): an MLP over distribution-shift features.

Reads the ``hallushift`` statistic (:mod:`hallugraph.features.hallushift`): Wasserstein
distance and cosine similarity between consecutive sampled layers (every second layer) of the
softmaxed hidden states and attention rows, plus 11 token-probability features.

The reference classifier (``classifier.py`` of ``sharanya-dasgupta001/hallushift``,
``CombinedNN``) standardizes the features; each of the four blocks of 15 shift features goes
through its own embedding (LayerNorm(15), dropout 0.2, linear 15 -> 8); the four 8-unit
embeddings (32 units) are concatenated with the 11 probability features (43), then LayerNorm,
dropout 0.2, linear 43 -> 16, LayerNorm, dropout 0.2, linear 16 -> 1 logit. AdamW (learning
rate 1e-4, weight decay 1e-4, up to 1000 epochs, batches of 16, learning rate halved on a
plateau), loss weighted by inverse class frequency plus an accuracy penalty, early stopping
(patience 10) on the AUROC of a 25 % stratified validation split of the answers.

Here: a dense two-hidden-layer MLP (32, 16) (the reference's first layer is block-wise, 32
embedding units beside 11 passed-through features; this one is dense over all the features)
with scikit-learn's ``MLPClassifier`` (ReLU; Adam, learning rate 1e-3; batches of 16; L2
``alpha=1e-4``) on standardized features, with inverse-frequency sample weights, and early
stopping (patience 10) on the AUROC of a 25 % validation split **grouped by question**
(:func:`hallugraph.detectors.mlp.fit_mlp_grouped`: the answers of one question never sit on
both sides), keeping the best epoch. The reference's accuracy penalty, dropout, LayerNorms
and learning-rate schedule are left out. Early stopping is switched off when the validation
split would hold fewer than 2 traces of a class; with a single class in ``y`` the detector
predicts that class.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

from hallugraph.detectors.base import Detector, register
from hallugraph.detectors.mlp import fit_mlp_grouped
from hallugraph.features import FeatureTable


@register
class HalluShift(Detector):
    """Standardized HalluShift features -> MLP (32, 16) -> P(hallucinated)."""

    name = "hallushift"
    family = "shift"
    paper = (
        "Dasgupta et al., IJCNN 2025, HalluShift: Measuring Distribution Shifts towards "
        "Hallucination Detection in LLMs"
    )
    stats = ("hallushift",)

    def __init__(
        self,
        hidden: tuple[int, ...] = (32, 16),
        alpha: float = 1e-4,
        max_iter: int = 500,
        batch_size: int = 16,
        learning_rate: float = 1e-3,
        validation_fraction: float = 0.25,
        balanced: bool = True,
        seed: int = 0,
    ) -> None:
        self.hidden = hidden
        self.alpha = alpha
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.validation_fraction = validation_fraction
        self.balanced = balanced
        self.seed = seed

    @staticmethod
    def _features(X: FeatureTable) -> np.ndarray:
        f = np.asarray(X.stat("hallushift"), dtype=np.float64)
        return np.nan_to_num(f.reshape(len(f), -1), nan=0.0, posinf=0.0, neginf=0.0)

    def fit(self, X: FeatureTable, y: np.ndarray) -> HalluShift:
        y = np.asarray(y).astype(np.int64)
        feats = self._features(X)
        self.scaler_ = StandardScaler().fit(feats)
        classes, counts = np.unique(y, return_counts=True)
        if len(classes) < 2:  # nothing to learn: the base rate
            self.model_, self.constant_ = None, float(classes[0]) if len(classes) else 0.5
            return self
        # early stopping holds out a grouped validation fraction: it needs a few of each
        early = counts.min() * self.validation_fraction >= 2
        self.model_ = MLPClassifier(
            hidden_layer_sizes=tuple(self.hidden),
            alpha=self.alpha,
            max_iter=self.max_iter,
            batch_size=self.batch_size,
            learning_rate_init=self.learning_rate,
            random_state=self.seed,
        )
        weights = None
        if self.balanced:
            per_class = len(y) / (len(classes) * counts)
            weights = per_class[np.searchsorted(classes, y)]
        Z = self.scaler_.transform(feats)
        if early:
            fit_mlp_grouped(
                self.model_,
                Z,
                y,
                X.groups,
                sample_weight=weights,
                val_fraction=self.validation_fraction,
                patience=10,
                criterion="auroc",
                seed=self.seed,
            )
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                self.model_.fit(Z, y, sample_weight=weights)
        self.constant_ = None
        return self

    def predict_proba(self, X: FeatureTable) -> np.ndarray:
        feats = self._features(X)
        if self.model_ is None:
            return np.full(len(feats), self.constant_)
        proba = self.model_.predict_proba(self.scaler_.transform(feats))
        return proba[:, list(self.model_.classes_).index(1)]
