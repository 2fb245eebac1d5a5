"""Early stopping on a validation split *grouped by question* for scikit-learn's
``MLPClassifier`` (its own ``early_stopping`` holds out answers at random, so the answers of one
question sit on both sides and the stopping epoch is chosen on near-copies of the training
rows). Shared by SAPLMA-MLP and HalluShift."""

from __future__ import annotations

import copy
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from hallugraph.metrics import accuracy, roc_auc


def validation_split(
    groups: np.ndarray, y: np.ndarray, val_size: float = 0.2, seed: int = 0, tries: int = 20
) -> tuple[np.ndarray, np.ndarray] | None:
    """Grouped train/validation indices with both labels on each side, or None when no such
    split is found (too few traces or groups)."""
    from sklearn.model_selection import GroupShuffleSplit

    if len(np.unique(groups)) < 2:
        return None
    for k in range(tries):
        gss = GroupShuffleSplit(n_splits=1, test_size=val_size, random_state=seed + k)
        tr, va = next(gss.split(np.zeros(len(y)), y, groups))
        if len(np.unique(y[tr])) == 2 and len(np.unique(y[va])) == 2:
            return tr, va
    return None


def fit_mlp_grouped(
    mlp: MLPClassifier,
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    *,
    sample_weight: np.ndarray | None = None,
    val_fraction: float = 0.25,
    patience: int = 10,
    criterion: str = "auroc",
    seed: int = 0,
) -> MLPClassifier:
    """Train ``mlp`` one epoch at a time (``partial_fit``, at most ``mlp.max_iter`` epochs) on
    the training part of a grouped validation split (:func:`validation_split`), score the
    validation part after each epoch (``criterion``: ``"auroc"`` or ``"accuracy"``), stop after
    ``patience`` epochs without improvement and keep the best epoch's weights (as
    scikit-learn's early stopping does, but grouped). Without a usable split (too few questions
    or answers of a class) the network is trained on everything for ``max_iter`` epochs."""
    y = np.asarray(y).astype(np.int64)
    mlp.set_params(early_stopping=False)
    split = validation_split(np.asarray(groups), y, val_size=val_fraction, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", message=".*batch_size.*")
        if split is None:
            return mlp.fit(X, y, sample_weight=sample_weight)
        tr, va = split
        w = sample_weight[tr] if sample_weight is not None else None
        classes = np.unique(y)
        best, best_state, since = -np.inf, None, 0
        for _ in range(int(mlp.max_iter)):
            mlp.partial_fit(X[tr], y[tr], sample_weight=w, classes=classes)
            p = mlp.predict_proba(X[va])[:, list(mlp.classes_).index(1)]
            score = (
                float(roc_auc(y[va], p))
                if criterion == "auroc"
                else float(accuracy(y[va], p >= 0.5)[0])
            )
            if score > best + 1e-4:
                best, since = score, 0
                best_state = (copy.deepcopy(mlp.coefs_), copy.deepcopy(mlp.intercepts_))
            else:
                since += 1
                if since >= patience:
                    break
    if best_state is not None:
        mlp.coefs_, mlp.intercepts_ = best_state
    mlp.best_validation_score_ = best
    return mlp
