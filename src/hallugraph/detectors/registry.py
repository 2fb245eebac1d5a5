"""The detectors by name: one import line per built-in detector module."""

from __future__ import annotations

from typing import Any

import numpy as np

from hallugraph.detectors.base import DETECTORS, Detector, add_loader, registered_detectors


def _load_builtin() -> None:
    # one line per detector module
    from hallugraph.detectors import (  # noqa: F401
        charm,
        fusion,
        groundedness,
        hallushift,
        lapeigvals,
        llm_check,
        logit,
        lookback,
        probes,
        topology,
    )


add_loader(_load_builtin)


def get_detector(name: str, **params: Any) -> Detector:
    _load_builtin()
    if name not in DETECTORS:
        raise KeyError(f"unknown detector {name!r}; known: {', '.join(sorted(DETECTORS))}")
    return DETECTORS[name](**params)


def all_detectors() -> dict[str, type[Detector]]:
    """Every registered detector by name, the built-in ones loaded first."""
    return registered_detectors()


def detector_from_state(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Detector:
    """A new detector of the registered class ``meta["detector"]`` with the state saved by
    :meth:`Detector.get_state`."""
    return get_detector(str(meta.get("detector"))).set_state(arrays, meta)


def detector_statistics() -> list[str]:
    """Every statistic a run may need: the built-in families and those defined beside a
    detector (imported with the detectors)."""
    from hallugraph.features import all_statistics

    _load_builtin()
    return all_statistics()
