"""Graph-topology detector: per-layer values + differences; learns a planted signal with both
models, not shuffled labels; runs end to end on the tiny run."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from tiny_models import split_train_test, table_rows

from hallugraph.detectors import all_detectors, get_detector
from hallugraph.detectors.topology import topology_design
from hallugraph.features import FeatureTable

REPEAT = 10  # the tiny run (24 traces) read 10 times: 240 rows
FAST = {"logreg": {}, "hgb": {"hgb_max_iter": 40, "hgb_learning_rate": 0.2}}


def test_design_is_values_then_layer_differences():
    v = np.arange(2 * 3 * 2, dtype=float).reshape(2, 3, 2) ** 2  # [n=2, L=3, F=2]
    d = topology_design(v)
    assert d.shape == (2, 3 * 2 + 2 * 2)
    np.testing.assert_array_equal(d[:, :6], v.reshape(2, 6))
    np.testing.assert_array_equal(d[:, 6:8], v[:, 1] - v[:, 0])
    np.testing.assert_array_equal(d[:, 8:], v[:, 2] - v[:, 1])


def _planted(monkeypatch, tiny_run, where: str):
    """Random topology ``[n, 2, 6]`` with a planted signal: ``"value"`` = hallucinated traces
    have a lower context share at layer 1; ``"change"`` = from layer 0 to layer 1 the context
    share rises by 0.1 on correct traces and falls by 0.1 on hallucinated ones."""
    X = FeatureTable([tiny_run] * REPEAT)
    y = X.labels
    rng = np.random.default_rng(0)
    arr = rng.uniform(0.3, 0.7, size=(len(X), 2, 6))
    if where == "value":
        arr[:, 1, 0] -= 0.25 * y
    else:
        base = rng.uniform(0.3, 0.7, size=len(X))
        arr[:, 0, 0] = base
        arr[:, 1, 0] = base + 0.1 * (1 - y) - 0.1 * y
    arr = arr.astype(np.float32)
    monkeypatch.setattr(FeatureTable, "stat", lambda self, name: arr[table_rows(self)])
    return X, y


@pytest.mark.parametrize("model", ["logreg", "hgb"])
def test_learns_a_planted_signal_and_not_shuffled_labels(monkeypatch, tiny_run, model):
    X, y = _planted(monkeypatch, tiny_run, "value")
    tr, te = split_train_test(len(X))
    det = get_detector("graph_topology", model=model, **FAST[model]).fit(X[tr], y[tr])
    p = det.predict_proba(X[te])
    assert p.shape == (len(te),) and ((p >= 0) & (p <= 1)).all()
    assert roc_auc_score(y[te], p) > 0.9
    if model == "logreg":
        coef = det.model_[-1].coef_[0]
        assert coef[1 * 6 + 0] < 0  # lower context share at layer 1 = hallucinated

    shuffled = np.random.default_rng(2).permutation(y)
    det = get_detector("graph_topology", model=model, **FAST[model])
    det = det.fit(X[tr], shuffled[tr])
    assert abs(det.score(X[te], shuffled[te]) - 0.5) < 0.15


def test_learns_a_planted_change_across_layers(monkeypatch, tiny_run):
    X, y = _planted(monkeypatch, tiny_run, "change")
    tr, te = split_train_test(len(X))
    det = get_detector("graph_topology").fit(X[tr], y[tr])
    assert det.score(X[te], y[te]) > 0.9
    coef = det.model_[-1].coef_[0]
    assert coef[12 + 0] < 0  # context share falls (or rises less) from layer 0 to 1


def test_graph_topology_on_the_tiny_run(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    X = FeatureTable.from_run(run)
    y = X.labels
    for model in ("logreg", "hgb"):
        det = get_detector("graph_topology", model=model, **FAST[model]).fit(X, y)
        p = det.predict_proba(X)
        assert p.shape == (24,) and np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()
    assert det.family == "graph" and det.stats == ("graph_topology",)
    assert "graph_topology" in all_detectors()
    with pytest.raises(ValueError, match="model must be one of"):
        get_detector("graph_topology", model="svm").fit(X, y)
