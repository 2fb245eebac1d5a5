"""HalluShift detector: learns a signal planted in the hallushift features, stays at chance on
shuffled labels, and runs end to end on the tiny run."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from hallugraph.detectors import all_detectors, get_detector
from hallugraph.features import FeatureTable
from hallugraph.features.hallushift import num_features


def planted_arrays(n=480, dim=71, strength=1.0, seed=0, shuffle=False, p_pos=0.5):
    """Noise features; three columns (a shift, a cosine and a probability feature) move with
    the label."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < p_pos).astype(np.int64)
    feats = rng.normal(size=(n, dim)).astype(np.float32)
    for col in (3, 20, dim - 11):
        feats[:, col] += strength * (2 * y - 1)
    if shuffle:
        y = rng.permutation(y)
    return feats, y


@pytest.fixture()
def planted_table(tiny_run, monkeypatch):
    """A FeatureTable whose ``stat("hallushift")`` returns planted arrays (by row index)."""
    store = {}

    def fake_stat(self, name):
        assert name == "hallushift"
        return store["feats"][self._index[:, 1]]

    monkeypatch.setattr(FeatureTable, "stat", fake_stat)
    # three answers per question, as HaluEval's teacher-forced runs
    monkeypatch.setattr(FeatureTable, "groups", property(lambda self: self._index[:, 1] // 3))

    def make(feats):
        store["feats"] = feats
        table = FeatureTable.from_run(tiny_run)
        table._index = np.stack([np.zeros(len(feats), np.int64), np.arange(len(feats))], 1)
        return table

    return make


def test_registered_with_its_metadata():
    cls = all_detectors()["hallushift"]
    assert cls.family == "shift" and cls.stats == ("hallushift",) and "HalluShift" in cls.paper
    assert cls.supervised


def test_learns_the_planted_signal(planted_table):
    feats, y = planted_arrays()
    X = planted_table(feats)
    tr, te = np.arange(360), np.arange(360, 480)
    det = get_detector("hallushift")
    assert det.fit(X[tr], y[tr]) is det
    p = det.predict_proba(X[te])
    assert p.shape == (120,) and ((p >= 0) & (p <= 1)).all()
    assert roc_auc_score(y[te], p) > 0.9
    assert det.score(X[te], y[te]) == pytest.approx(roc_auc_score(y[te], p))


def test_is_at_chance_on_shuffled_labels(planted_table):
    feats, y = planted_arrays(n=800, shuffle=True, seed=1)
    X = planted_table(feats)
    tr, te = np.arange(500), np.arange(500, 800)
    det = get_detector("hallushift").fit(X[tr], y[tr])
    assert abs(det.score(X[te], y[te]) - 0.5) < 0.12


def test_is_deterministic_and_handles_imbalance_and_one_class(planted_table):
    feats, y = planted_arrays(n=300, seed=2, p_pos=0.1)
    assert 15 <= y.sum() <= 45
    X = planted_table(feats)
    a = get_detector("hallushift").fit(X, y).predict_proba(X)
    b = get_detector("hallushift").fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(a, b)
    assert roc_auc_score(y, a) > 0.9
    const = get_detector("hallushift").fit(X, np.ones(300, np.int64)).predict_proba(X)
    assert (const == 1.0).all()


def test_fits_and_predicts_on_the_tiny_run(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    X = FeatureTable.from_run(run)
    assert X.stat("hallushift").shape == (24, num_features(X.run_info[0]["num_layers"]))
    det = get_detector("hallushift").fit(X, X.labels)
    p = det.predict_proba(X)
    assert p.shape == (24,) and np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()
