"""HalluShift (Dasgupta et al., IJCNN 2025): an MLP over distribution-shift features.

Reads the ``hallushift`` statistic (:mod:`hallugraph.features.hallushift`): Wasserstein
distance and cosine similarity between consecutive sampled layers of the softmaxed hidden
states and attention rows, plus 11 token-probability features.

The reference classifier (``classifier.py`` of ``sharanya-dasgupta001/hallushift``) standardizes
the features, embeds each block of 15 shift features into 8 units (LayerNorm, dropout,
linear), concatenates the four embeddings with the probability features and maps them through
a 16-unit layer to one logit; AdamW (weight decay 1e-4), loss weighted by inverse class
frequency, early stopping on the AUROC of a 25 % stratified validation split. Here it is a
plain two-hidden-layer MLP of the same widths (32, 16) with scikit-learn's
``MLPClassifier`` (ReLU; Adam, learning rate 1e-3 where the reference uses 1e-4 with up to
1000 epochs; mini-batches of 16 as the reference; L2 ``alpha=1e-4``), on standardized
features, with inverse-frequency sample weights, early stopping (patience 10) on a 25 %
stratified validation split, judged by its accuracy (scikit-learn's criterion; the reference
uses AUROC), and a fixed ``random_state``.
The reference's extra accuracy penalty in the loss and its learning-rate schedule are left out.
Early stopping is switched off when the validation split would hold fewer than 2 traces of a
class; with a single class in ``y`` the detector predicts that class.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

from hallugraph.detectors.base import Detector, register
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
        # early stopping holds out a stratified validation fraction: it needs a few of each
        early = counts.min() * self.validation_fraction >= 2
        self.model_ = MLPClassifier(
            hidden_layer_sizes=tuple(self.hidden),
            alpha=self.alpha,
            max_iter=self.max_iter,
            batch_size=self.batch_size,
            learning_rate_init=self.learning_rate,
            early_stopping=bool(early),
            validation_fraction=self.validation_fraction,
            n_iter_no_change=10,
            random_state=self.seed,
        )
        weights = None
        if self.balanced:
            per_class = len(y) / (len(classes) * counts)
            weights = per_class[np.searchsorted(classes, y)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model_.fit(self.scaler_.transform(feats), y, sample_weight=weights)
        self.constant_ = None
        return self

    def predict_proba(self, X: FeatureTable) -> np.ndarray:
        feats = self._features(X)
        if self.model_ is None:
            return np.full(len(feats), self.constant_)
        proba = self.model_.predict_proba(self.scaler_.transform(feats))
        return proba[:, list(self.model_.classes_).index(1)]
