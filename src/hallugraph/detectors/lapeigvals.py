"""LapEigvals (Binkowski et al., EMNLP 2025, "Hallucination Detection in LLMs Using Spectral
Features of Attention Maps"): a logistic-regression probe over the top-k Laplacian eigenvalues
of every attention map (statistic ``lapeig`` ``[L, heads, k]``, see
:mod:`hallugraph.features.attention`), all layers and heads concatenated.

The reference probe (``graphml-lab-pwr/lapeigvals``, ``probe_models/lr.py``) is
``LogisticRegression(max_iter=2000, class_weight="balanced", random_state=42)`` (C = 1), with
``PCA(n_components=min(pca_dim, n_features, n_train))`` in front for the PCA variant; its main
experiment uses ``pca_dim=512``. Here:

* ``k`` — the first ``k`` columns of the cached ``lapeig`` statistic (its eigenvalues are sorted
  in descending order, so these are the top-``k``); ``None`` keeps all of them (100 by default).
  As the reference, the detector never reads past the shortest training sequence: it keeps
  ``k_ = min(k, min S')`` (``S'`` = a training trace's number of eigenvalues; the statistic
  pads shorter sequences with NaN), so no feature says how long a sequence is. A sequence
  shorter than ``k_`` met at prediction time gets the training mean for its missing
  eigenvalues (``fill_``).
* ``pca`` — components of the PCA variant (clipped as the reference does); ``None`` = plain
  logistic regression. Default 512, the paper's main setting.
* The features are standardized before the PCA / regression (the reference feeds raw
  eigenvalues; the eigenvalues of different heads live on different scales, and an unscaled
  L-BFGS fit over thousands of features converges slowly).
* ``class_weight="balanced"`` as the reference (hallucination rates are far from 50 %).
"""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from hallugraph.detectors.base import Detector, register
from hallugraph.detectors.probes import fit_quiet
from hallugraph.features import FeatureTable

PAPER = (
    "Binkowski et al., EMNLP 2025, Hallucination Detection in LLMs Using Spectral Features of "
    "Attention Maps (LapEigvals)"
)


@register
class LapEigvals(Detector):
    """Standardized (PCA +) balanced logistic regression over the flattened ``lapeig``."""

    name = "lapeigvals"
    family = "attention"
    paper = PAPER
    stats = ("lapeig",)

    def __init__(
        self,
        k: int | None = None,
        pca: int | None = 512,
        C: float = 1.0,
        seed: int = 0,
        max_iter: int = 2000,
    ) -> None:
        self.k = k
        self.pca = pca
        self.C = C
        self.seed = seed
        self.max_iter = max_iter

    def _eig(self, X: FeatureTable) -> np.ndarray:
        eig = X.stat("lapeig")
        if self.k is not None and self.k > eig.shape[-1]:
            raise ValueError(f"k={self.k} but the lapeig statistic holds {eig.shape[-1]}")
        return eig

    def _features(self, X: FeatureTable) -> np.ndarray:
        eig = self._eig(X)[..., : self.k_]
        feats = eig.reshape(len(eig), -1).astype(np.float64)
        missing = ~np.isfinite(feats)
        if missing.any():  # shorter than every training sequence: the training mean
            feats[missing] = np.broadcast_to(self.fill_, feats.shape)[missing]
        return feats

    def fit(self, X: FeatureTable, y: np.ndarray) -> LapEigvals:
        y = np.asarray(y).astype(np.int64)
        eig = self._eig(X)
        n_valid = np.isfinite(eig).all(axis=tuple(range(1, eig.ndim - 1))).sum(-1)
        k = eig.shape[-1] if self.k is None else self.k
        self.k_ = int(min(k, n_valid.min())) if len(n_valid) else int(k)
        if self.k_ < 1:
            raise ValueError("a training trace has no Laplacian eigenvalue")
        feats = eig[..., : self.k_].reshape(len(eig), -1).astype(np.float64)
        self.fill_ = feats.mean(0)
        steps: list = [StandardScaler()]
        self.pca_dim_ = None
        if self.pca is not None:
            self.pca_dim_ = int(min(self.pca, feats.shape[1], feats.shape[0]))
            steps.append(PCA(n_components=self.pca_dim_, random_state=self.seed))
        steps.append(
            LogisticRegression(
                C=self.C,
                class_weight="balanced",
                max_iter=self.max_iter,
                random_state=self.seed,
            )
        )
        self.model_ = fit_quiet(make_pipeline(*steps), feats, y)
        return self

    def predict_proba(self, X: FeatureTable) -> np.ndarray:
        return self.model_.predict_proba(self._features(X))[:, 1]
