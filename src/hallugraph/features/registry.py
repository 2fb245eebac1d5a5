"""The statistics by name: the built-in families (one import line per module) and any registered by
modules already imported."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from hallugraph.features.base import STATISTICS, Statistic, output_of

log = logging.getLogger(__name__)


def _load_builtin() -> None:
    # importing the modules registers their statistics
    from hallugraph.features import (  # noqa: F401
        attention,
        charm,
        groundedness,
        hallushift,
        hidden,
        llm_check,
        logits,
        topology,
    )


def get_statistic(name: str) -> Statistic:
    _load_builtin()
    if name not in STATISTICS:
        raise KeyError(f"unknown statistic {name!r}; known: {', '.join(sorted(STATISTICS))}")
    return STATISTICS[name]()


def all_statistics() -> list[str]:
    """Names of every registered statistic."""
    _load_builtin()
    return sorted(STATISTICS)


def named_output(name: str, read: Callable[[str], np.ndarray]) -> np.ndarray:
    """``"statistic.output"``: that output of the statistic's array ``read(statistic)``, by the
    name the statistic declares (:attr:`Statistic.outputs`)."""
    stat = name.partition(".")[0]
    return output_of(name, get_statistic(stat).outputs, read(stat))
