"""The README's "adding a detector" example (examples/answer_words.py): one file with a statistic
(named outputs, a parameter) and a detector, registered, computed, evaluated and saved like a
built-in."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from hallugraph.detectors import DETECTORS, detector_from_state
from hallugraph.evaluation import evaluate
from hallugraph.features import FeatureTable, get_statistic
from hallugraph.features.base import STATISTICS

EXAMPLE = Path(__file__).parents[1] / "examples" / "answer_words.py"


@pytest.fixture
def example():
    spec = importlib.util.spec_from_file_location("answer_words_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # registers the statistic and the detector
    yield module
    STATISTICS.pop("answer_words", None)
    DETECTORS.pop("answer_words", None)


def test_the_example_is_short_and_the_readme_shows_it():
    text = EXAMPLE.read_text()
    assert len(text.splitlines()) <= 50
    code = text.split('"""\n\n', 1)[1]  # after the module docstring
    assert code in (EXAMPLE.parents[1] / "README.md").read_text()


def test_the_example_detector_runs_like_a_builtin(example, tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    X = FeatureTable.from_run(run)
    counts = [len(r["generated_answer_clean"].split()) for r in X.rows]
    np.testing.assert_array_equal(X.stat("answer_words.count"), counts)  # by name, cached
    assert (run / "stats" / "answer_words").is_dir()
    assert get_statistic("answer_words").params() == {"min_length": 1}
    longer = example.AnswerWords(min_length=4).values(X.rows[0], {})
    assert longer[0] == sum(len(w) >= 4 for w in X.rows[0]["generated_answer_clean"].split())

    det = example.ManyWords().fit(X, X.labels)
    p = det.predict_proba(X)
    assert p.shape == (len(X),) and ((p >= 0) & (p <= 1)).all()
    assert np.argmax(p) == int(np.argmax(counts))
    again = detector_from_state(*det.get_state())  # saved and restored without pickle
    np.testing.assert_array_equal(again.predict_proba(X), p)

    report = evaluate([run], ["answer_words", "answer_length"], out_dir=tmp_path / "e", bootstrap=0)
    rows = json.loads((tmp_path / "e" / "results.json").read_text())["results"]
    assert {r["detector"] for r in rows} == {"answer_words", "answer_length"}
    assert all("error" not in r or not r["error"] for r in rows), rows
    assert report is not None
