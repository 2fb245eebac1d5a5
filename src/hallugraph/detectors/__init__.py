"""Hallucination detectors: scikit-learn-style estimators over a :class:`FeatureTable`.

Every detector has ``fit(X, y)``, ``predict_proba(X)`` (probability that each answer is
hallucinated, label 1) and ``score(X, y)`` (AUROC), and reads only the shared statistics it
names in ``stats``. It follows scikit-learn's estimator contract: its parameters are the
arguments of ``__init__`` (``get_params`` / ``set_params`` read them from the signature, each
stored as an attribute of the same name), and ``fit`` stores what it learns in
attributes ending with ``_``. ``get_state()`` returns that fitted state as ``(arrays, meta)``:
numeric arrays for safetensors and JSON-able metadata (:mod:`hallugraph.detectors.state`;
never pickle); ``set_state(arrays, meta)`` / :func:`detector_from_state` restore it, and the
restored detector's ``predict_proba`` gives the same numbers. Saving to a folder
(``detector.json`` + ``weights.safetensors``) is :mod:`hallugraph.scoring.bundle`.

Adding a detector: one new module in this package with a :class:`Detector` subclass decorated
with :func:`register` (and, when it needs a signal no statistic computes yet, its own
:class:`~hallugraph.features.Statistic` in the same file), and one line in
:mod:`hallugraph.detectors.registry`. A detector asks for statistics by name, one output of a
statistic as ``"statistic.output"`` (``X.stat("logit.min_logprob")``), never by column index.
``examples/answer_words.py`` is a complete one, run by the tests.

A detector that cannot run on some data at all (its statistic was never computed for that run,
e.g. attribution scores) raises :class:`NotApplicable`; ``evaluate`` then skips it on that run
instead of reporting an error.
"""

from hallugraph.detectors.base import DETECTORS, Detector, NotApplicable, register
from hallugraph.detectors.registry import all_detectors, detector_from_state, get_detector

__all__ = [
    "DETECTORS",
    "Detector",
    "NotApplicable",
    "all_detectors",
    "detector_from_state",
    "get_detector",
    "register",
]
