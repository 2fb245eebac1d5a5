"""hallugraph: hallucination detection from a language model's own computation.

The names a user needs, imported on first use (``import hallugraph`` loads no torch)::

    lm = hallugraph.load_model("smollm2_135M")
    examples = hallugraph.load_dataset("triviaqa", num_samples=100)
    hallugraph.run_extract(...)                      # answers + hidden states + attention maps
    hallugraph.label_run("runs/triviaqa")            # 1 = hallucinated
    X = hallugraph.FeatureTable.from_run("runs/triviaqa")
    detector = hallugraph.get_detector("lookback_lens").fit(X, X.labels)
    report = hallugraph.evaluate(["runs/triviaqa"])  # the benchmark protocol
    scorer = hallugraph.Scorer.train("lookback_lens", ["runs/triviaqa"])  # score new answers

The package reads as the data's path: :mod:`~hallugraph.data` -> :mod:`~hallugraph.extract`
-> :mod:`~hallugraph.store` -> :mod:`~hallugraph.labels` -> :mod:`~hallugraph.features` ->
:mod:`~hallugraph.detectors` -> :mod:`~hallugraph.evaluation` (README, "Layout").
"""

from __future__ import annotations

import importlib
from typing import Any

from hallugraph.config import __version__

#: public name -> the module that defines it
_API = {
    "Example": "hallugraph.data",
    "load_dataset": "hallugraph.data",
    "load_model": "hallugraph.models",
    "run_extract": "hallugraph.pipeline",
    "TraceStore": "hallugraph.store",
    "label_run": "hallugraph.labels",
    "FeatureTable": "hallugraph.features",
    "Statistic": "hallugraph.features",
    "compute_stats": "hallugraph.features",
    "Detector": "hallugraph.detectors",
    "get_detector": "hallugraph.detectors",
    "all_detectors": "hallugraph.detectors",
    "evaluate": "hallugraph.evaluation",
    "Scorer": "hallugraph.scoring",
}

__all__ = ["__version__", *sorted(_API)]


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hallugraph' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
