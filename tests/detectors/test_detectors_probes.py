"""SAPLMA probes: learn a signal planted at one layer, choose that layer, and stay at chance on
shuffled labels; end to end on the tiny run."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from tiny_models import FakeTable

from hallugraph.detectors import get_detector
from hallugraph.detectors.probes import select_scalar, validation_split
from hallugraph.features import FeatureTable


def planted(n=400, layers=5, dim=24, layer=3, strength=1.5, seed=0, shuffle=False):
    """Hidden states ``[n, layers, dim]`` of noise; at ``layer`` the label shifts one random
    direction. Two traces per question (group)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    feats = rng.normal(size=(n, layers, dim)).astype(np.float32)
    direction = rng.normal(size=dim)
    direction /= np.linalg.norm(direction)
    feats[:, layer] += (strength * (2 * y - 1))[:, None] * direction
    groups = np.repeat(np.arange(n // 2), 2)
    if shuffle:
        y = rng.permutation(y)
    arrays = {"hidden_last": feats, "hidden_mean": feats[:, ::-1].copy()}  # mean: reversed layers
    return FakeTable(arrays, y, groups)


def split(X: FakeTable, n_train: int):
    return X[np.arange(n_train)], X[np.arange(n_train, len(X))]


@pytest.mark.parametrize("name", ["saplma_lr", "saplma_mlp"])
def test_probe_learns_the_planted_layer(name):
    tr, te = split(planted(n=600), 400)
    det = get_detector(name).fit(tr, tr.labels)
    assert det.layer_ == 3
    p = det.predict_proba(te)
    assert p.shape == (200,) and ((p >= 0) & (p <= 1)).all()
    assert roc_auc_score(te.labels, p) > 0.9


def test_pool_mean_reads_hidden_mean():
    tr, te = split(planted(n=600), 400)
    det = get_detector("saplma_lr", pool="mean").fit(tr, tr.labels)
    assert det.layer_ == 1  # hidden_mean holds the layers reversed: 3 -> 5 - 1 - 3
    assert det.score(te, te.labels) > 0.9
    with pytest.raises(ValueError, match="pool must be one of"):
        get_detector("saplma_lr", pool="max").fit(tr, tr.labels)


@pytest.mark.parametrize("name", ["saplma_lr", "saplma_mlp"])
def test_probe_is_at_chance_on_shuffled_labels(name):
    tr, te = split(planted(n=600, shuffle=True, seed=1), 400)
    det = get_detector(name).fit(tr, tr.labels)
    assert abs(det.score(te, te.labels) - 0.5) < 0.12


def test_validation_split_keeps_groups_apart_and_both_labels():
    X = planted(n=100)
    tr, va = validation_split(X.groups, X.labels, seed=0)
    assert not set(X.groups[tr]) & set(X.groups[va])
    assert len(va) == pytest.approx(20, abs=2)
    assert set(X.labels[tr]) == set(X.labels[va]) == {0, 1}
    assert validation_split(np.zeros(10), np.arange(10) % 2) is None  # one group: no split


def test_select_scalar_finds_column_and_sign():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    scores = rng.normal(size=(300, 4))
    scores[:, 2] -= 2 * y  # hallucinated -> lower
    col, sign, aucs = select_scalar(scores, y)
    assert (col, sign) == (2, -1.0) and aucs[2] < 0.2


def test_layer_selection_is_fast_at_real_size():
    # 31 hidden-state indices x 600 traces x 576 dims (SmolLM2-135M): seconds, not minutes
    rng = np.random.default_rng(0)
    n, layers, dim = 600, 31, 576
    y = rng.integers(0, 2, n)
    feats = rng.normal(size=(n, layers, dim)).astype(np.float32)
    feats[:, 20, :8] += y[:, None]
    X = FakeTable({"hidden_last": feats}, y, np.arange(n))
    t0 = time.perf_counter()
    det = get_detector("saplma_lr").fit(X, y)
    assert det.layer_ == 20
    assert time.perf_counter() - t0 < 60


@pytest.fixture(scope="module")
def tiny_table(tiny_run, tmp_path_factory):
    dst = tmp_path_factory.mktemp("probes") / "run"
    shutil.copytree(tiny_run, dst)
    return FeatureTable.from_run(dst)


@pytest.mark.parametrize("name", ["saplma_lr", "saplma_mlp"])
@pytest.mark.parametrize("pool", ["last", "mean"])
def test_probes_end_to_end_on_the_tiny_run(tiny_table, name, pool):
    X = tiny_table
    det = get_detector(name, pool=pool)
    assert det.fit(X, X.labels) is det
    assert det.family == "hidden" and det.paper and set(det.stats) >= {"hidden_last"}
    assert 0 <= det.layer_ < 3
    p = det.predict_proba(X)
    assert p.shape == (24,) and np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()
