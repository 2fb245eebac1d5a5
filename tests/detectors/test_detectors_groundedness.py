"""Groundedness detectors: learn a planted Gctx/CS signal, not shuffled labels; refuse unscored
traces; evaluate skips them on runs without attribution scores. No circuit-tracer needed."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from tiny_models import split_train_test, table_rows

from hallugraph.detectors import NotApplicable, all_detectors, get_detector
from hallugraph.features import FeatureTable
from hallugraph.features.groundedness import write_scores
from hallugraph.features.registry import named_output
from hallugraph.store import TraceStore

REPEAT = 10  # the tiny run (24 traces) read 10 times: 240 rows


def _planted(y: np.ndarray, seed: int = 0) -> np.ndarray:
    """``[n, 4]`` (Gctx, RS, CS, scored): grounded answers (y = 0) draw more on the context and
    are better explained (higher CS); RS is noise."""
    rng = np.random.default_rng(seed)
    n = len(y)
    gctx = np.clip(0.6 - 0.3 * y + rng.normal(0, 0.08, n), 0, 1)
    rs = rng.uniform(0.2, 0.8, n)
    cs = np.clip(0.8 - 0.2 * y + rng.normal(0, 0.08, n), 0, 1)
    return np.column_stack([gctx, rs, cs, np.ones(n)]).astype(np.float32)


def _table(monkeypatch, tiny_run):
    X = FeatureTable([tiny_run] * REPEAT)
    y = X.labels
    arr = _planted(y)

    def stat(self, name):  # the planted array for "groundedness", by output name as the real one
        return named_output(name, stat.__get__(self)) if "." in name else arr[table_rows(self)]

    monkeypatch.setattr(FeatureTable, "stat", stat)
    return X, y


@pytest.mark.parametrize("name", ["groundedness", "groundedness_lr"])
def test_planted_signal_and_shuffled_labels(monkeypatch, tiny_run, name):
    X, y = _table(monkeypatch, tiny_run)
    tr, te = split_train_test(len(X))
    det = get_detector(name).fit(X[tr], y[tr])
    p = det.predict_proba(X[te])
    assert p.shape == (len(te),) and ((p >= 0) & (p <= 1)).all()
    assert roc_auc_score(y[te], p) > 0.95
    shuffled = np.random.default_rng(2).permutation(y)
    det = get_detector(name).fit(X[tr], shuffled[tr])
    assert abs(det.score(X[te], shuffled[te]) - 0.5) < 0.15


def test_groundedness_is_one_minus_g(monkeypatch, tiny_run):
    from hallugraph.detectors.groundedness import groundedness

    X, y = _table(monkeypatch, tiny_run)
    det = get_detector("groundedness").fit(X, y)
    v = X.stat("groundedness")
    g = groundedness(v[:, 0], v[:, 1], v[:, 2], det.alpha_)
    np.testing.assert_allclose(det.predict_proba(X), 1 - g, atol=1e-6)
    assert det.fit_.balanced_accuracy > 0.8 and len(det.fit_.grid) == 21
    assert det.supervised is False and det.family == "attribution"
    assert get_detector("groundedness_lr").supervised is True
    assert {"groundedness", "groundedness_lr"} <= set(all_detectors())


def test_scores_reexported_from_attribution():
    from hallugraph.attribution import scores
    from hallugraph.detectors import groundedness as det_mod

    assert scores.groundedness is det_mod.groundedness
    assert scores.fit_groundedness is det_mod.fit_groundedness
    assert scores.GroundednessFit is det_mod.GroundednessFit


def _write(run, values, rows=None):
    store = TraceStore(run)
    rows = store.manifest if rows is None else rows
    scores = {
        r["question_id"]: {"index": r["index"], "gctx": g, "rs": a, "cs": c}
        for r, (g, a, c) in zip(rows, values, strict=True)
    }
    write_scores(run, {"format_version": 1, "settings": {"targets": "first"}, "scores": scores})


def test_unscored_and_partly_scored_runs(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    X = FeatureTable.from_run(run)
    for name in ("groundedness", "groundedness_lr"):
        with pytest.raises(NotApplicable, match="hallugraph groundedness"):
            get_detector(name).fit(X, X.labels)
    _write(run, [(0.5, 0.5, 0.5)] * 5, TraceStore(run).manifest[:5])
    X = FeatureTable.from_run(run)
    with pytest.raises(ValueError, match="19 of 24 traces"):
        get_detector("groundedness").fit(X, X.labels)
    # NaN scores of a scored trace (an empty graph) count as ungrounded
    y = X.labels
    vals = [(np.nan, np.nan, np.nan) if i == 0 else (0.8 - 0.5 * y[i], 0.5, 0.7) for i in range(24)]
    _write(run, vals)
    X = FeatureTable.from_run(run)
    det = get_detector("groundedness").fit(X, y)
    p = det.predict_proba(X)
    assert p[0] == 1.0 and np.isfinite(p).all()
    assert np.isfinite(get_detector("groundedness_lr").fit(X, y).predict_proba(X)).all()


def test_evaluate_skips_unscored_runs(tiny_run, tmp_path):
    from hallugraph.evaluation import evaluate

    unscored, scored = tmp_path / "unscored", tmp_path / "scored"
    shutil.copytree(tiny_run, unscored)
    shutil.copytree(tiny_run, scored)
    y = FeatureTable.from_run(scored).labels
    rng = np.random.default_rng(0)
    _write(scored, [(0.7 - 0.4 * v + rng.normal(0, 0.05), 0.5, 0.8 - 0.2 * v) for v in y])
    names = ["perplexity", "groundedness", "groundedness_lr"]
    rep = evaluate([unscored], names, out_dir=tmp_path / "e1", bootstrap=0, progress=False)
    assert [r["detector"] for r in rep.results] == ["perplexity"]
    assert [s["detector"] for s in rep.config["skipped"]] == names[1:]
    assert "Skipped" in rep.to_markdown() and "hallugraph groundedness" in rep.to_markdown()

    rep = evaluate([scored, unscored], names, out_dir=tmp_path / "e2", bootstrap=0, progress=False)
    a, b = rep.config["datasets"]
    got = {(r["dataset"], r["detector"]): r for r in rep.results}
    assert set(got) == {
        (a, "perplexity"),
        (b, "perplexity"),
        (a, "groundedness"),
        (a, "groundedness_lr"),
    }
    for name in names[1:]:
        assert got[(a, name)]["error"] == "" and got[(a, name)]["auroc"] > 0.8
        cells = [r for r in rep.transfer if r["detector"] == name]
        # the copies share every question: nothing to transfer to, and no error either
        assert all(r["n_test"] == 0 and not r["error"] for r in cells)
