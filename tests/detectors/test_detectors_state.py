"""The estimator contract of every registered detector, and its state: get_state -> JSON +
safetensors bytes -> a fresh detector with set_state -> the same predict_proba, bit for bit."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
from safetensors.numpy import load, save

from hallugraph.detectors import Detector, all_detectors, detector_from_state, get_detector
from hallugraph.detectors.state import StateError, decode, encode
from hallugraph.features import FeatureTable, all_statistics, compute_stats
from hallugraph.scoring.trace import StatTable

# small settings so that every detector fits in seconds on the tiny run
FAST = {
    "charm": {"epochs": 3, "n_seeds": 2},
    "saplma_mlp": {"max_iter": 30},
    "hallushift": {"max_iter": 30},
    "lapeigvals": {"pca": 8},
    "fusion": {"bases": ("perplexity", "saplma_lr", "lookback_lens", "groundedness_lr")},
}
VARIANTS = [(name, FAST.get(name, {})) for name in sorted(all_detectors())] + [
    ("graph_topology", {"model": "hgb", "hgb_max_iter": 10}),  # trees: structured node arrays
    ("lookback_lens", {"context": "prompt"}),
    ("saplma_lr", {"pool": "mean"}),
]


@pytest.fixture(scope="module")
def table(tiny_run):
    """Every statistic of the tiny run, plus planted attribution scores (the tiny run has
    none), in memory."""
    X = FeatureTable.from_run(tiny_run)
    names = [n for n in all_statistics() if n != "groundedness"]
    stats = compute_stats(tiny_run, names, progress=False)
    rng = np.random.default_rng(0)
    y = X.labels
    g = rng.uniform(0.2, 0.8, size=(len(y), 4)).astype(np.float32)
    g[:, 0] -= 0.15 * y
    g[:, 3] = 1.0  # scored
    g[0, 1] = np.nan  # an empty graph
    stats["groundedness"] = g
    return StatTable(stats, X.rows), y


def _roundtrip(det: Detector) -> Detector:
    """Through the bytes a bundle holds: strict JSON and a safetensors file."""
    arrays, meta = det.get_state()
    text = json.dumps(meta, allow_nan=False)
    restored = load(save(arrays))
    fresh = type(det)()  # default parameters: set_state must restore the real ones
    return fresh.set_state(restored, json.loads(text))


@pytest.mark.parametrize(("name", "params"), VARIANTS, ids=lambda v: str(v))
def test_save_load_predicts_the_same(table, name, params):
    X, y = table
    det = get_detector(name, **params).fit(X, y)
    before = det.predict_proba(X)
    back = _roundtrip(det)
    assert back.get_params() == det.get_params()
    assert back.fitted_attributes() == det.fitted_attributes()
    after = back.predict_proba(X)
    np.testing.assert_array_equal(after, before)  # bit-equal
    again = detector_from_state(*det.get_state())
    np.testing.assert_array_equal(again.predict_proba(X), before)


@pytest.mark.parametrize("name", sorted(all_detectors()))
def test_estimator_contract(name):
    cls = all_detectors()[name]
    det = cls()
    sig = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    if cls.__init__ is object.__init__:
        sig = []
    assert sorted(det.get_params()) == sorted(sig)
    assert not det.fitted_attributes()  # nothing learned before fit
    same = get_detector(name, **det.get_params())
    assert same.get_params() == det.get_params()
    with pytest.raises(ValueError, match="no parameter"):
        det.set_params(not_a_parameter=1)
    if "seed" in sig:
        assert det.set_params(seed=7) is det and det.get_params()["seed"] == 7
    assert type(det).__name__ in repr(det)


def test_fitted_attributes_end_with_underscore(table):
    X, y = table
    det = get_detector("lapeigvals", pca=4).fit(X, y)
    assert det.fitted_attributes() == ["fill_", "k_", "model_", "pca_dim_"]
    assert det.get_params()["pca"] == 4  # params untouched by fit


def test_state_rejects_foreign_classes_and_keeps_odd_floats():
    arrays: dict[str, np.ndarray] = {}
    node = encode({"a": float("nan"), "b": (1, np.float32(2.5)), "c": -np.inf}, arrays, "x")
    back = decode(json.loads(json.dumps(node, allow_nan=False)), arrays)
    assert np.isnan(back["a"]) and back["c"] == -np.inf
    assert back["b"] == (1, np.float32(2.5)) and isinstance(back["b"][1], np.float32)
    with pytest.raises(StateError, match="only scikit-learn and hallugraph"):
        decode({"__object__": "os:system", "state": {}}, {})
    with pytest.raises(StateError, match="cannot be stored"):
        encode(object(), {}, "x")
    with pytest.raises(StateError, match="without pickle"):
        encode(np.array([object()]), {}, "x")


def test_set_state_refuses_another_detector(table):
    X, y = table
    arrays, meta = get_detector("perplexity").fit(X, y).get_state()
    with pytest.raises(StateError, match="perplexity"):
        get_detector("mean_entropy").set_state(arrays, meta)
    with pytest.raises(StateError, match="format"):
        get_detector("perplexity").set_state(arrays, {**meta, "state_format": 99})


@pytest.mark.parametrize("name", sorted(all_detectors()))
def test_init_only_stores_its_arguments(name):
    """scikit-learn's rule: ``__init__`` stores each argument as given (no check, no
    conversion; checks happen in ``fit``), so get_params returns the very objects passed."""
    cls = all_detectors()[name]
    given = {k: object() for k in cls._get_param_names()}
    det = cls(**given)
    assert all(det.get_params()[k] is v for k, v in given.items())
    assert det.set_params(**{k: 1 for k in given}).get_params() == {k: 1 for k in given}
