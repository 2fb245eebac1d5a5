"""LapEigvals detector: learns a planted eigenvalue signal, not shuffled labels; runs end to end."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from tiny_models import split_train_test, table_rows

from hallugraph.detectors import get_detector
from hallugraph.features import FeatureTable

REPEAT = 10  # the tiny run (24 traces) read 10 times: 240 rows for planted-signal tests


def _plant(monkeypatch, arrays: dict[str, np.ndarray]) -> None:
    def fake_stat(self, name):
        return arrays[name][table_rows(self)]

    monkeypatch.setattr(FeatureTable, "stat", fake_stat)


def _planted_table(monkeypatch, tiny_run, column: int, k: int = 10):
    """Noise ``[n, L=2, heads=4, k]``; one head's eigenvalue of rank ``column`` carries the
    label (+4 standard deviations on hallucinated traces)."""
    X = FeatureTable([tiny_run] * REPEAT)
    y = X.labels
    rng = np.random.default_rng(0)
    eig = rng.normal(size=(len(X), 2, 4, k))
    eig[:, 1, 2, column] += 4.0 * y
    _plant(monkeypatch, {"lapeig": eig.astype(np.float32)})
    return X, y


@pytest.mark.parametrize("pca", [512, None])
def test_lapeigvals_learns_a_planted_signal(monkeypatch, tiny_run, pca):
    X, y = _planted_table(monkeypatch, tiny_run, column=3)
    tr, te = split_train_test(len(X))
    det = get_detector("lapeigvals", pca=pca).fit(X[tr], y[tr])
    p = det.predict_proba(X[te])
    assert p.shape == (len(te),) and ((p >= 0) & (p <= 1)).all()
    assert roc_auc_score(y[te], p) > 0.9
    if pca is not None:
        assert det.pca_dim_ == min(512, 2 * 4 * 10, len(tr)) == 80

    # shuffled labels carry no signal: nothing to learn that holds on held-out traces
    shuffled = np.random.default_rng(2).permutation(y)
    det = get_detector("lapeigvals", pca=pca).fit(X[tr], shuffled[tr])
    assert abs(det.score(X[te], shuffled[te]) - 0.5) < 0.15


def test_lapeigvals_k_keeps_the_top_columns(monkeypatch, tiny_run):
    X, y = _planted_table(monkeypatch, tiny_run, column=7, k=10)  # the 8th largest eigenvalue
    tr, te = split_train_test(len(X))
    top5 = get_detector("lapeigvals", k=5, pca=None).fit(X[tr], y[tr])
    top8 = get_detector("lapeigvals", k=8, pca=None).fit(X[tr], y[tr])
    assert top5._features(X).shape == (len(X), 2 * 4 * 5)
    assert abs(top5.score(X[te], y[te]) - 0.5) < 0.15  # the signal is beyond its top 5
    assert top8.score(X[te], y[te]) > 0.9
    with pytest.raises(ValueError):
        get_detector("lapeigvals", k=11).fit(X[tr], y[tr])


def test_lapeigvals_on_the_tiny_run(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    X = FeatureTable.from_run(run)
    y = X.labels
    for params in ({}, {"pca": None, "k": 5}):
        det = get_detector("lapeigvals", **params).fit(X, y)
        p = det.predict_proba(X)
        assert p.shape == (24,) and np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()
    assert det.family == "attention" and det.stats == ("lapeig",) and "LapEigvals" in det.paper


def test_lapeigvals_reads_no_length_signal(monkeypatch, tiny_run):
    """Issue 18: equal-content sequences of different lengths. Hallucinated answers here are
    short sequences (5 eigenvalues, the rest padding), correct ones long (10); the eigenvalues
    themselves are drawn from one distribution. Zero padding let a probe separate them by where
    the zeros start; the detector keeps k <= the shortest training sequence (as the
    reference) and sees only content: chance."""
    X = FeatureTable([tiny_run] * REPEAT)
    y = X.labels
    rng = np.random.default_rng(0)
    eig = -np.sort(-rng.normal(size=(len(X), 2, 4, 10)), axis=-1)
    eig[y == 1, ..., 5:] = np.nan  # the statistic's padding of a short sequence
    _plant(monkeypatch, {"lapeig": eig.astype(np.float32)})
    tr, te = split_train_test(len(X))
    det = get_detector("lapeigvals", pca=None).fit(X[tr], y[tr])
    assert det.k_ == 5 and det._features(X).shape == (len(X), 2 * 4 * 5)
    assert np.isfinite(det._features(X)).all()
    assert abs(det.score(X[te], y[te]) - 0.5) < 0.15
    # trained on long sequences only, a shorter one gets the training mean where it has none
    long = np.flatnonzero(y == 0)
    det = get_detector("lapeigvals", pca=None).fit(X[long], (long // 2) % 2)
    assert det.k_ == 10
    short = det._features(X[np.flatnonzero(y == 1)])
    np.testing.assert_allclose(
        short.reshape(-1, 2, 4, 10)[..., 5:],
        det.fill_.reshape(2, 4, 10)[None, ..., 5:].repeat(len(short), 0),
    )
