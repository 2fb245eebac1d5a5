"""SAPLMA-style probes (Azaria & Mitchell 2023, "The Internal State of an LLM Knows When It's
Lying"): a classifier over ONE layer's hidden state of the answer.

SAPLMA reads the hidden state of the last token at a fixed layer and trains a feed-forward
network (ReLU hidden layers 256, 128, 64, sigmoid output, Adam). Here the layer is not fixed:
``fit`` holds out a grouped validation split (no question on both sides), scores every layer
with a standardized logistic regression, keeps the best by validation AUROC (``layer_``,
``val_auroc_``) and refits the final probe on all the training data at that layer. Both
variants select the layer with logistic regression (seconds for 30 layers x 600 traces x 576
dims); ``saplma_mlp`` then trains the MLP at the chosen layer.

``pool="last"`` reads ``hidden_last`` (last answer content token, as SAPLMA); ``pool="mean"``
reads ``hidden_mean`` (mean over the answer content tokens).

The helpers :func:`validation_split`, :func:`select_layer_lr` and :func:`select_scalar` are shared
with the LLM-Check detectors.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from hallugraph.detectors.base import Detector, register
from hallugraph.detectors.mlp import fit_mlp_grouped, validation_split
from hallugraph.features import FeatureTable

_POOLS = {"last": "hidden_last", "mean": "hidden_mean"}


def lr_pipeline(C: float, seed: int = 0) -> Pipeline:
    """Standardize, then L2 logistic regression."""
    return make_pipeline(
        StandardScaler(), LogisticRegression(C=C, max_iter=2000, random_state=seed)
    )


def fit_quiet(model, X: np.ndarray, y: np.ndarray):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(X, y)


def select_layer_lr(
    feats: np.ndarray, y: np.ndarray, groups: np.ndarray, C: float, seed: int = 0
) -> tuple[int, np.ndarray]:
    """Layer of ``feats`` ``[n, L, d]`` whose standardized logistic regression has the best
    AUROC on a grouped validation split; returns ``(layer, validation AUROC per layer)``.

    Without a usable split (tiny data) the AUROC is measured on the training data itself.
    Ties go to the shallowest layer.
    """
    split = validation_split(groups, y, seed=seed)
    tr, va = split if split is not None else (np.arange(len(y)), np.arange(len(y)))
    aucs = np.full(feats.shape[1], 0.5)
    for layer in range(feats.shape[1]):
        Xl = feats[:, layer].astype(np.float64)
        model = fit_quiet(lr_pipeline(C, seed), Xl[tr], y[tr])
        aucs[layer] = roc_auc_score(y[va], model.predict_proba(Xl[va])[:, 1])
    return int(np.argmax(aucs)), aucs


def select_scalar(scores: np.ndarray, y: np.ndarray) -> tuple[int, float, np.ndarray]:
    """Column and sign of ``scores`` ``[n, k]`` that best rank ``y`` (AUROC of ``sign * score``).

    Returns ``(column, sign, AUROC per column with sign +1)``; ties go to the first column.
    """
    aucs = np.array([roc_auc_score(y, np.nan_to_num(scores[:, j])) for j in range(scores.shape[1])])
    col = int(np.argmax(np.abs(aucs - 0.5)))
    return col, (1.0 if aucs[col] >= 0.5 else -1.0), aucs


class _LayerProbe(Detector):
    family = "hidden"
    paper = "Azaria & Mitchell 2023, The Internal State of an LLM Knows When It's Lying (SAPLMA)"
    stats = ("hidden_last", "hidden_mean")
    """``pool`` selects which one is read."""

    def __init__(self, pool: str = "last", C: float = 0.1, seed: int = 0) -> None:
        self.pool = pool
        self.C = C
        self.seed = seed

    _choices = {"pool": tuple(_POOLS)}

    def stats_read(self) -> tuple[str, ...]:
        self.check_params()
        return (_POOLS[self.pool],)

    def _features(self, X: FeatureTable) -> np.ndarray:
        return X.stat(_POOLS[self.pool])

    def _final_model(self, n: int):
        raise NotImplementedError

    def _fit_final(self, Xl: np.ndarray, y: np.ndarray, groups: np.ndarray):
        return fit_quiet(self._final_model(len(y)), Xl, y)

    def fit(self, X: FeatureTable, y: np.ndarray) -> _LayerProbe:
        self.check_params()
        y = np.asarray(y).astype(np.int64)
        feats = self._features(X)
        self.layer_, self.val_auroc_ = select_layer_lr(feats, y, X.groups, self.C, self.seed)
        self.model_ = self._fit_final(feats[:, self.layer_].astype(np.float64), y, X.groups)
        return self

    def predict_proba(self, X: FeatureTable) -> np.ndarray:
        Xl = self._features(X)[:, self.layer_].astype(np.float64)
        return self.model_.predict_proba(Xl)[:, 1]


@register
class SaplmaLR(_LayerProbe):
    """Standardized L2 logistic regression on one layer's answer hidden state."""

    name = "saplma_lr"

    def _final_model(self, n: int):
        return lr_pipeline(self.C, self.seed)


@register
class SaplmaMLP(_LayerProbe):
    """SAPLMA's MLP (ReLU 256-128-64, Adam, early stopping on 10 % of the questions) on the
    standardized hidden state of the layer that logistic regression picks."""

    name = "saplma_mlp"

    def __init__(
        self,
        pool: str = "last",
        C: float = 0.1,
        seed: int = 0,
        hidden: tuple[int, ...] = (256, 128, 64),
        alpha: float = 1e-3,
        max_iter: int = 300,
    ) -> None:
        super().__init__(pool=pool, C=C, seed=seed)
        self.hidden = hidden
        self.alpha = alpha
        self.max_iter = max_iter

    def _final_model(self, n: int):
        mlp = MLPClassifier(
            hidden_layer_sizes=tuple(self.hidden),
            alpha=self.alpha,
            max_iter=self.max_iter,
            random_state=self.seed,
        )
        return make_pipeline(StandardScaler(), mlp)

    def _fit_final(self, Xl: np.ndarray, y: np.ndarray, groups: np.ndarray):
        """Early stopping (patience 10, validation accuracy) on 10 % of the questions, not of
        the answers; none below 50 answers."""
        model = self._final_model(len(y))
        scaler, mlp = model.steps[0][1], model.steps[1][1]
        Z = scaler.fit_transform(Xl)
        if len(y) >= 50:
            fit_mlp_grouped(
                mlp, Z, y, groups, val_fraction=0.1, criterion="accuracy", seed=self.seed
            )
        else:
            fit_quiet(mlp, Z, y)
        return model
