"""Adding a detector: one file with its statistic and its detector, and one registry line.

A built-in goes in ``src/hallugraph/detectors/`` and gets the line
``answer_words,`` in ``hallugraph/detectors/registry.py``; this example is imported by its test
(``tests/test_example_detector.py``), which registers it the same way.
"""

import numpy as np

from hallugraph.detectors.base import Detector, register
from hallugraph.features.base import Statistic
from hallugraph.features.base import register as register_statistic


@register_statistic
class AnswerWords(Statistic):
    """Words of the answer: how many, and their mean length in characters (manifest only)."""

    name = "answer_words"
    outputs = ("count", "mean_length")  # named outputs, in the cache's column order

    def __init__(self, min_length: int = 1) -> None:  # a parameter: stored, part of the key
        self.min_length = min_length

    def params(self) -> dict:
        return {"min_length": self.min_length}

    def compute(self, trace, run_info) -> dict:
        words = [w for w in trace["generated_answer_clean"].split() if len(w) >= self.min_length]
        return {"count": len(words), "mean_length": np.mean([len(w) for w in words] or [0.0])}


@register
class ManyWords(Detector):
    """More words = more likely hallucinated (a control, like ``answer_length``)."""

    name = "answer_words"
    family = "control"
    stats = ("answer_words",)  # what to compute; the detector reads one output by name
    supervised = False

    def fit(self, X, y) -> "ManyWords":
        self.scale_ = float(X.stat("answer_words.count").std() + 1e-12)
        return self

    def predict_proba(self, X) -> np.ndarray:
        return 1 - np.exp(-X.stat("answer_words.count").astype(np.float64) / self.scale_)
