"""Early stopping by question (issue 18): SAPLMA-MLP and HalluShift hold out questions, not
answers, to choose their stopping epoch."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.neural_network import MLPClassifier

import hallugraph.detectors.mlp as mlp_mod
from hallugraph.detectors import get_detector
from hallugraph.detectors.mlp import fit_mlp_grouped, validation_split


class Table:
    """Statistics in memory with three answers per question."""

    def __init__(self, arrays, labels, groups):
        self.arrays, self.labels, self.groups = arrays, np.asarray(labels), np.asarray(groups)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, idx):
        return Table(
            {k: v[idx] for k, v in self.arrays.items()}, self.labels[idx], self.groups[idx]
        )

    def stat(self, name):
        return self.arrays[name]


def _table(n=300, seed=0):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n // 3), 3)
    y = rng.integers(0, 2, n)
    h = rng.normal(size=(n, 3, 16)).astype(np.float32)
    h[:, 1, 0] += 1.5 * (2 * y - 1)
    shift = rng.normal(size=(n, 67)).astype(np.float32)
    shift[:, 5] += 1.5 * (2 * y - 1)
    return Table({"hidden_last": h, "hidden_mean": h, "hallushift": shift}, y, groups)


@pytest.fixture()
def splits(monkeypatch):
    seen = []
    real = mlp_mod.validation_split

    def spy(groups, y, val_size=0.2, seed=0, tries=20):
        out = real(groups, y, val_size, seed, tries)
        seen.append((np.asarray(groups), out))
        return out

    monkeypatch.setattr(mlp_mod, "validation_split", spy)
    return seen


@pytest.mark.parametrize("name", ["saplma_mlp", "hallushift"])
def test_early_stopping_holds_out_whole_questions(name, splits):
    X = _table()
    det = get_detector(name, max_iter=40).fit(X, X.labels)
    assert len(splits) == 1  # the network's early stopping went through the grouped split
    groups, (tr, va) = splits[0]
    np.testing.assert_array_equal(groups, X.groups)
    assert not set(groups[tr]) & set(groups[va])
    mlp = det.model_.steps[-1][1] if hasattr(det.model_, "steps") else det.model_
    assert mlp.early_stopping is False  # scikit-learn's random split is not used
    assert np.isfinite(mlp.best_validation_score_)
    s = det.predict_proba(X)
    assert np.corrcoef(s, X.labels)[0, 1] > 0.3


def test_fit_mlp_grouped_keeps_the_best_epoch():
    rng = np.random.default_rng(1)
    n = 240
    groups = np.repeat(np.arange(n // 2), 2)
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, 8)) + (2 * y - 1)[:, None] * np.r_[1.0, np.zeros(7)]
    net = MLPClassifier(hidden_layer_sizes=(8,), max_iter=200, random_state=0)
    fit_mlp_grouped(net, X, y, groups, patience=5, seed=0)
    tr, va = validation_split(groups, y, val_size=0.25, seed=0)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y[va], net.predict_proba(X[va])[:, 1]) == pytest.approx(
        net.best_validation_score_
    )
    assert net.n_iter_ < 200  # stopped early
    # one question only: no split, plain training
    net2 = MLPClassifier(hidden_layer_sizes=(4,), max_iter=5, random_state=0)
    fit_mlp_grouped(net2, X, y, np.zeros(n), seed=0)
    assert net2.n_iter_ == 5
