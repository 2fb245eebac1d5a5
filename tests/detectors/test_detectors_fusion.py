"""The fused detector: nested stacking (base detectors and meta-learner see only the rows given
to fit), robust to a family that cannot run, family weights, per-run rank normalization."""

from __future__ import annotations

import subprocess
import sys
import zlib

import numpy as np
import pytest

from hallugraph.detectors import DETECTORS, Detector, NotApplicable, get_detector
from hallugraph.features import FeatureTable


def _noise(rows, salt):
    return np.array([zlib.crc32(f"{r['question_id']}{salt}".encode()) % 1000 / 1000 for r in rows])


class SpySignal(Detector):
    """Reads the label (a strong family); records the rows it is fitted on."""

    name = "spy_signal"
    family = "logits"
    fits: list[tuple[str, set[str]]] = []

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def fit(self, X, y):
        SpySignal.fits.append((self.name, {r["question_id"] for r in X.rows}))
        self.fitted_ = True
        return self

    def predict_proba(self, X):
        y = np.array([r["label"] for r in X.rows], dtype=float)
        return 1 / (1 + np.exp(-(2.5 * (y - 0.5) + 2 * (_noise(X.rows, 1) - 0.5))))


class SpyNoise(SpySignal):
    name = "spy_noise"
    family = "attention"

    def predict_proba(self, X):
        return _noise(X.rows, 2) * 0.98 + 0.01


class SpyAbsent(SpySignal):
    name = "spy_absent"
    family = "attribution"

    def fit(self, X, y):
        raise NotApplicable("no attribution scores in this run")


class SpyLost(SpyNoise):
    """Fits, but cannot score the traces it meets later."""

    name = "spy_lost"
    family = "graph"
    lost = False

    def predict_proba(self, X):
        if SpyLost.lost:
            raise NotApplicable("gone")
        return super().predict_proba(X)


@pytest.fixture()
def spies(monkeypatch):
    for cls in (SpySignal, SpyNoise, SpyAbsent, SpyLost):
        monkeypatch.setitem(DETECTORS, cls.name, cls)
    SpySignal.fits.clear()
    SpyLost.lost = False
    yield ("spy_signal", "spy_noise", "spy_absent", "spy_lost")


def test_fusion_is_nested_and_weighs_the_informative_family(tiny_run, spies):
    X = FeatureTable.from_run(tiny_run)
    y = X.labels
    train, test = np.arange(18), np.arange(18, 24)
    det = get_detector("fusion", bases=spies, inner_folds=3).fit(X[train], y[train])
    train_ids = {r["question_id"] for r in X[train].rows}
    # every base fit (3 inner folds, cross-fitted: no refit) saw training rows only, each
    # holding a fold out, and the held-out folds cover the training rows
    fits = [f for name, f in SpySignal.fits if name == "spy_signal"]
    assert len(fits) == 3 and len(SpySignal.fits) == 9
    assert all(f < train_ids for _, f in SpySignal.fits)
    assert set().union(*(train_ids - f for f in fits)) == train_ids
    assert "spy_absent" in det.dropped_ and det.kept_ == ("spy_signal", "spy_noise", "spy_lost")
    w = det.family_weights_
    assert set(w) == {"logits", "attention", "graph"} and sum(w.values()) == pytest.approx(1)
    assert w["logits"] > 0.5
    s = det.predict_proba(X[test])
    assert s.shape == (6,) and ((s >= 0) & (s <= 1)).all()
    assert s[y[test] == 1].min() > s[y[test] == 0].max()
    # a family that cannot score new traces contributes nothing instead of failing
    SpyLost.lost = True
    s2 = det.predict_proba(X[test])
    assert np.isfinite(s2).all() and s2[y[test] == 1].min() > s2[y[test] == 0].max()


def test_fusion_with_no_usable_family_is_not_applicable(tiny_run, spies):
    X = FeatureTable.from_run(tiny_run)
    with pytest.raises(NotApplicable, match="no base detector"):
        get_detector("fusion", bases=("spy_absent",)).fit(X, X.labels)
    with pytest.raises(ValueError, match="normalize"):
        get_detector("fusion", normalize="zscore").fit(X, X.labels)


def test_an_unknown_base_name_is_an_error_not_a_dropped_family(tiny_run, spies):
    X = FeatureTable.from_run(tiny_run)
    det = get_detector("fusion", bases=("spy_signal", "spy_nosie"))
    with pytest.raises(ValueError, match="unknown base detector.*'spy_nosie'"):
        det.fit(X, X.labels)
    with pytest.raises(ValueError, match="'spy_nosie'"):
        det.stats_read()


def test_the_fusion_alone_knows_every_default_base():
    """A fresh interpreter that imports only the fusion module (a spawned worker unpickling a
    fusion task) still resolves every default base: the registry's loader runs on lookup."""
    code = (
        "from hallugraph.detectors.fusion import DEFAULT_BASES, Fusion, _registered\n"
        "missing = [b for b in DEFAULT_BASES if b not in _registered()]\n"
        "assert not missing, missing\n"
        "print(','.join(Fusion().stats_read()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().split(",") == list(get_detector("fusion").stats_read())


def test_rank_normalization_ignores_a_monotone_rescaling():
    det = get_detector("fusion", normalize="run")
    rng = np.random.default_rng(0)
    S = rng.random((50, 3))
    runs = np.repeat([0, 1], 25)
    Z = det._transform(S, runs, fit=True)
    warped = S.copy()
    warped[runs == 1] = warped[runs == 1] ** 4  # another domain: the same order, other scale
    np.testing.assert_allclose(det._transform(warped, runs, fit=False), Z)
    assert abs(Z[runs == 0].mean()) < 1e-9 and Z.std() == pytest.approx(1, abs=0.05)


class SpyShift(SpySignal):
    """A label-free score whose level says which rows its model was fitted on: every fold
    model is different, so the mean of the fold models is testable."""

    name = "spy_shift"
    family = "shift"

    def fit(self, X, y):
        super().fit(X, y)
        self.offset_ = float(np.mean(_noise(X.rows, 3)))
        return self

    def predict_proba(self, X):
        return np.clip(_noise(X.rows, 4) * 0.5 + self.offset_ * 0.4, 0.01, 0.99)


def test_crossfitted_bases_predict_the_mean_of_their_fold_models(tiny_run, spies, monkeypatch):
    monkeypatch.setitem(DETECTORS, SpyShift.name, SpyShift)
    X = FeatureTable.from_run(tiny_run)
    y = X.labels
    train, test = np.arange(18), np.arange(18, 24)
    det = get_detector("fusion", bases=("spy_signal", "spy_shift"), inner_folds=3)
    det.fit(X[train], y[train])
    models = det.bases_["spy_shift"]
    assert len(models) == 3 and len({m.offset_ for m in models}) == 3
    # the fold models were fitted on training rows only, none on all of them
    train_ids = {r["question_id"] for r in X[train].rows}
    assert all(f < train_ids for name, f in SpySignal.fits if name == "spy_shift")
    # the fused score is the meta-learner on the mean of the fold models' probabilities
    S = np.stack(
        [np.mean([m.predict_proba(X[test]) for m in det.bases_[b]], axis=0) for b in det.kept_],
        axis=1,
    )
    Z = det._transform(S, np.zeros(len(test), dtype=np.int64), fit=False)
    np.testing.assert_allclose(det.predict_proba(X[test]), det.meta_.predict_proba(Z)[:, 1])
    # the refit variant: the same meta-learner (same out-of-fold scores), one base refitted on
    # every training row, and a different base score
    SpySignal.fits.clear()
    ref = get_detector("fusion", bases=("spy_signal", "spy_shift"), bases_fit="refit")
    ref.fit(X[train], y[train])
    np.testing.assert_allclose(ref.meta_.coef_, det.meta_.coef_)
    assert [f == train_ids for name, f in SpySignal.fits if name == "spy_shift"] == [0, 0, 0, 1]
    (single,) = ref.bases_["spy_shift"]
    assert single.offset_ not in {m.offset_ for m in models}
    with pytest.raises(ValueError, match="bases_fit"):
        get_detector("fusion", bases_fit="bagged").fit(X, y)


def test_a_fold_with_one_class_is_a_constant_fold_model(tiny_run, spies):
    X = FeatureTable.from_run(tiny_run)
    y = X.labels
    # one correct answer among the hallucinated ones: the inner fold that holds it out trains
    # on hallucinations only, and its model is their rate (1.0), a constant
    rows = np.concatenate([np.flatnonzero(y == 1), np.flatnonzero(y == 0)[:1]])
    det = get_detector("fusion", bases=("spy_signal", "spy_noise"), inner_folds=3)
    det.fit(X[rows], y[rows])
    for name in det.kept_:
        models = det.bases_[name]
        assert len(models) == 3 and [m for m in models if isinstance(m, float)] == [1.0]
    s = det.predict_proba(X)
    assert s.shape == (len(X),) and np.isfinite(s).all()
