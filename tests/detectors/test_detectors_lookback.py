"""Lookback Lens detector: learns a planted lookback-ratio signal, not shuffled labels; runs end
to end."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from tiny_models import split_train_test, table_rows

from hallugraph.detectors import get_detector
from hallugraph.features import FeatureTable

REPEAT = 10  # the tiny run (24 traces) read 10 times: 240 rows for planted-signal tests


def _planted_table(monkeypatch, tiny_run, where: str):
    """Ratios in [0.4, 0.6]; in the ``where`` statistic, head (1, 2) drops by 0.2 on
    hallucinated traces (less lookback at the context)."""
    X = FeatureTable([tiny_run] * REPEAT)
    y = X.labels
    rng = np.random.default_rng(0)
    arrays = {
        s: rng.uniform(0.4, 0.6, size=(len(X), 2, 4)) for s in ("lookback", "lookback_prompt")
    }
    arrays[where][:, 1, 2] -= 0.2 * y
    arrays = {k: v.astype(np.float32) for k, v in arrays.items()}
    monkeypatch.setattr(FeatureTable, "stat", lambda self, name: arrays[name][table_rows(self)])
    return X, y


@pytest.mark.parametrize("context", ["span", "prompt"])
def test_lookback_lens_learns_a_planted_signal(monkeypatch, tiny_run, context):
    stat = {"span": "lookback", "prompt": "lookback_prompt"}[context]
    X, y = _planted_table(monkeypatch, tiny_run, where=stat)
    tr, te = split_train_test(len(X))
    det = get_detector("lookback_lens", context=context).fit(X[tr], y[tr])
    p = det.predict_proba(X[te])
    assert p.shape == (len(te),) and ((p >= 0) & (p <= 1)).all()
    assert roc_auc_score(y[te], p) > 0.9
    assert det.model_.coef_[0].reshape(2, 4)[1, 2] < 0  # less lookback = hallucinated

    other = "prompt" if context == "span" else "span"  # reads the other statistic: no signal
    det = get_detector("lookback_lens", context=other).fit(X[tr], y[tr])
    assert abs(det.score(X[te], y[te]) - 0.5) < 0.15

    # shuffled labels carry no signal: nothing to learn that holds on held-out traces
    shuffled = np.random.default_rng(2).permutation(y)
    det = get_detector("lookback_lens", context=context).fit(X[tr], shuffled[tr])
    assert abs(det.score(X[te], shuffled[te]) - 0.5) < 0.15


def test_lookback_lens_on_the_tiny_run(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    X = FeatureTable.from_run(run)
    y = X.labels
    for context in ("span", "prompt"):
        det = get_detector("lookback_lens", context=context).fit(X, y)
        p = det.predict_proba(X)
        assert p.shape == (24,) and np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()
    assert det.family == "attention" and "Lookback Lens" in det.paper
    with pytest.raises(ValueError, match="context must be one of"):
        get_detector("lookback_lens", context="answer").fit(X, y)  # checked in fit, not __init__
