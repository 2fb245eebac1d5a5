"""Hallucination detectors: scikit-learn-style estimators over a :class:`FeatureTable`.

Every detector has ``fit(X, y)``, ``predict_proba(X)`` (probability that each answer is
hallucinated, label 1) and ``score(X, y)`` (AUROC), reads only the shared statistics it names
in ``stats``, and serializes to JSON + safetensors (never pickle) through ``get_state`` /
``set_state``.

Adding a detector: one new module in this package with a :class:`Detector` subclass decorated
with :func:`register`, and one import line in :func:`_load_builtin`.

A detector that cannot run on some data at all (its statistic was never computed for that run,
e.g. attribution scores) raises :class:`NotApplicable`; ``evaluate`` then skips it on that run
instead of reporting an error.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from hallugraph.features import FeatureTable


class NotApplicable(ValueError):
    """The detector cannot run on these traces at all (e.g. the statistic it reads was never
    computed for this run); :func:`hallugraph.evaluate.evaluate` skips it on that run."""


class Detector:
    """Base class. Subclasses set ``name``, ``family``, ``stats`` and implement the two methods."""

    name: ClassVar[str]
    family: ClassVar[str]
    """Signal family: logits, hidden, attention, graph, attribution."""
    paper: ClassVar[str] = ""
    stats: ClassVar[tuple[str, ...]] = ()
    supervised: ClassVar[bool] = True
    """Unsupervised scores (e.g. perplexity) ignore ``y`` in ``fit``, except to orient the sign."""

    def fit(self, X: FeatureTable, y: np.ndarray) -> Detector:
        raise NotImplementedError

    def predict_proba(self, X: FeatureTable) -> np.ndarray:
        """``[n]`` scores in [0, 1], higher = more likely hallucinated."""
        raise NotImplementedError

    def score(self, X: FeatureTable, y: np.ndarray) -> float:
        from sklearn.metrics import roc_auc_score

        return float(roc_auc_score(np.asarray(y), self.predict_proba(X)))

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.endswith("_")}


DETECTORS: dict[str, type[Detector]] = {}


def register(cls: type[Detector]) -> type[Detector]:
    """Class decorator: make a detector available by its ``name``."""
    if cls.name in DETECTORS and DETECTORS[cls.name] is not cls:
        raise ValueError(f"detector {cls.name!r} registered twice")
    DETECTORS[cls.name] = cls
    return cls


def _load_builtin() -> None:
    # one line per detector module
    from hallugraph.detectors import (  # noqa: F401
        charm,
        groundedness,
        hallushift,
        lapeigvals,
        llm_check,
        logit,
        lookback,
        probes,
        topology,
    )


def get_detector(name: str, **params: Any) -> Detector:
    _load_builtin()
    if name not in DETECTORS:
        raise KeyError(f"unknown detector {name!r}; known: {', '.join(sorted(DETECTORS))}")
    return DETECTORS[name](**params)


def all_detectors() -> dict[str, type[Detector]]:
    _load_builtin()
    return dict(DETECTORS)
