"""LLM-Check detectors: find the planted layer and sign, stay at chance on shuffled labels,
run end to end on the tiny run."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from tiny_models import FakeTable

from hallugraph.detectors import all_detectors, get_detector
from hallugraph.features import FeatureTable


def planted(n=600, seed=0, shuffle=False):
    """llmcheck_hidden ``[n, 4]``: layer 2 is LOWER for hallucinations; llmcheck_attn
    ``[n, 3, 4]``: every head of layer 1 is HIGHER for hallucinations, one head of layer 0 is
    weakly informative."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    hid = rng.normal(size=(n, 4))
    hid[:, 2] -= 2.0 * y
    attn = rng.normal(size=(n, 3, 4)) - 3.0
    attn[:, 1, :] += 0.8 * y[:, None]
    attn[:, 0, 0] += 0.3 * y
    if shuffle:
        y = rng.permutation(y)
    arrays = {"llmcheck_hidden": hid.astype(np.float32), "llmcheck_attn": attn.astype(np.float32)}
    return FakeTable(arrays, y, np.arange(n))


def halves(X):
    n = len(X) // 2
    return X[np.arange(n)], X[np.arange(n, len(X))]


def test_llmcheck_hidden_finds_layer_and_sign():
    tr, te = halves(planted())
    det = get_detector("llmcheck_hidden").fit(tr, tr.labels)
    assert (det.layer_, det.sign_) == (2, -1.0)
    p = det.predict_proba(te)
    assert p.shape == (300,) and ((p >= 0) & (p <= 1)).all()
    # a monotone squashing of the raw score: same AUROC as -score
    raw = -te.stat("llmcheck_hidden")[:, 2]
    assert roc_auc_score(te.labels, p) == pytest.approx(roc_auc_score(te.labels, raw))
    assert roc_auc_score(te.labels, p) > 0.85


def test_llmcheck_attn_sums_heads_of_the_chosen_layer():
    tr, te = halves(planted())
    det = get_detector("llmcheck_attn").fit(tr, tr.labels)
    assert (det.layer_, det.sign_) == (1, 1.0)
    raw = te.stat("llmcheck_attn")[:, 1].sum(-1)
    assert det.score(te, te.labels) == pytest.approx(roc_auc_score(te.labels, raw))
    assert det.score(te, te.labels) > 0.85


def test_llmcheck_attn_lr_learns_the_planted_heads():
    tr, te = halves(planted())
    det = get_detector("llmcheck_attn_lr").fit(tr, tr.labels)
    assert det.score(te, te.labels) > 0.85
    # the summed score at the planted layer is no better than the learned combination
    assert (
        det.score(te, te.labels)
        >= get_detector("llmcheck_attn").fit(tr, tr.labels).score(te, te.labels) - 0.03
    )


@pytest.mark.parametrize("name", ["llmcheck_hidden", "llmcheck_attn", "llmcheck_attn_lr"])
def test_at_chance_on_shuffled_labels(name):
    tr, te = halves(planted(shuffle=True, seed=3))
    det = get_detector(name).fit(tr, tr.labels)
    assert abs(det.score(te, te.labels) - 0.5) < 0.1


@pytest.fixture(scope="module")
def tiny_table(tiny_run, tmp_path_factory):
    dst = tmp_path_factory.mktemp("llm_check") / "run"
    shutil.copytree(tiny_run, dst)
    return FeatureTable.from_run(dst)


NAMES = ["llmcheck_hidden", "llmcheck_attn", "llmcheck_attn_lr", "saplma_lr", "saplma_mlp"]


def test_registered_with_metadata():
    dets = all_detectors()
    for name in NAMES:
        cls = dets[name]
        assert cls.name == name and cls.paper and cls.stats
        assert cls.family == ("hidden" if "hidden" in name or "saplma" in name else "attention")


@pytest.mark.parametrize("name", NAMES)
def test_end_to_end_on_the_tiny_run(tiny_table, name):
    X = tiny_table
    det = get_detector(name)
    assert det.fit(X, X.labels) is det
    p = det.predict_proba(X)
    assert p.shape == (24,) and np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()
    # held-out traces too
    p2 = get_detector(name).fit(X[np.arange(16)], X.labels[:16]).predict_proba(X[np.arange(16, 24)])
    assert p2.shape == (8,) and ((p2 >= 0) & (p2 <= 1)).all()
