"""The statistic contract: a :class:`Statistic` turns one trace into a fixed-shape array;
:func:`register` makes it available by name."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from hallugraph.store import TraceStore

log = logging.getLogger(__name__)


STATS_DIR = "stats"


class Statistic:
    """One per-trace statistic. Subclasses set ``name``, ``fields`` and implement ``compute``."""

    name: ClassVar[str]
    fields: ClassVar[tuple[str, ...]] = ()
    """Tensor fields the statistic reads (``hidden_states``, ``attentions``); empty when the
    manifest row is enough."""
    version: ClassVar[int] = 1
    """Bump when the computation changes, so caches are recomputed."""
    dtype: ClassVar[Any] = np.float32
    """Storage dtype of the cached array. float32 unless a statistic is large enough that a
    compact dtype (``float16``, ``uint8`` codes) matters for the cache's size on disk."""

    def params(self) -> dict[str, Any]:
        """Parameters that change the result (part of the cache key)."""
        return {}

    def prepare(self, store: TraceStore) -> str | None:
        """Called once per run before :meth:`compute`, for statistics that read data kept beside
        the run rather than in its traces (e.g. attribution scores): load it, and return a digest
        of it, which joins the cache key so that the cache follows changes to that data.
        ``None`` (the default): the statistic reads the traces only."""
        return None

    def compute(self, trace: Mapping[str, Any], run_info: Mapping[str, Any]) -> np.ndarray:
        """The statistic of one trace: an array whose shape is the same for every trace of a
        run (cast to ``dtype`` for the cache)."""
        raise NotImplementedError


STATISTICS: dict[str, type[Statistic]] = {}


def register(cls: type[Statistic]) -> type[Statistic]:
    """Class decorator: make a statistic available by its ``name``."""
    if cls.name in STATISTICS and STATISTICS[cls.name] is not cls:
        raise ValueError(f"statistic {cls.name!r} registered twice")
    STATISTICS[cls.name] = cls
    return cls
