"""The statistic contract (lm-polygraph's stat calculators): a :class:`Statistic` turns one trace
into a fixed-shape array, names what it produces and declares what it reads; :func:`register`
makes it available by name.

**Named outputs.** A statistic of several values declares them in ``outputs`` and returns them
from ``compute`` as a dict by name; the cache keeps them as the columns of the last axis, in the
declared order, and a detector asks for one by its full name: ``X.stat("logit.min_logprob")``
(:func:`output_of`), never by a column index. A statistic with no ``outputs`` is one array,
named by ``name``.

**Dependencies.** ``fields`` names the tensors of the trace it reads (only those are loaded);
the manifest row is always there. **Parameters** are the arguments of ``__init__`` (stored
as attributes of the same name, scikit-learn's rule); those that change the result are part of
the cache key through :meth:`Statistic.params`.
"""

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
    outputs: ClassVar[tuple[str, ...]] = ()
    """Names of the values the statistic produces, the columns of its last axis in this order
    (``compute`` returns them as a dict); empty: one output, the whole array."""

    def params(self) -> dict[str, Any]:
        """Parameters that change the result (part of the cache key)."""
        return {}

    def prepare(self, store: TraceStore) -> str | None:
        """Called once per run before :meth:`compute`, for statistics that read data kept beside
        the run rather than in its traces (e.g. attribution scores): load it, and return a digest
        of it, which joins the cache key so that the cache follows changes to that data.
        ``None`` (the default): the statistic reads the traces only."""
        return None

    def compute(
        self, trace: Mapping[str, Any], run_info: Mapping[str, Any]
    ) -> np.ndarray | Mapping[str, Any]:
        """The statistic of one trace: an array whose shape is the same for every trace of a
        run, or, for a statistic with ``outputs``, ``{output name: value}`` (values of one
        shape, stacked along a new last axis)."""
        raise NotImplementedError

    def values(self, trace: Mapping[str, Any], run_info: Mapping[str, Any]) -> np.ndarray:
        """:meth:`compute` as the array the cache stores (named outputs in declared order, cast
        to ``dtype``)."""
        out = self.compute(trace, run_info)
        if isinstance(out, Mapping):
            if set(out) != set(self.outputs):
                raise ValueError(
                    f"statistic {self.name!r} returned {sorted(out)}; it declares the outputs "
                    f"{list(self.outputs)}"
                )
            out = np.stack([np.asarray(out[k]) for k in self.outputs], axis=-1)
        elif self.outputs and np.shape(out)[-1:] != (len(self.outputs),):
            raise ValueError(
                f"statistic {self.name!r} returned shape {np.shape(out)}; its last axis must be "
                f"its {len(self.outputs)} outputs {list(self.outputs)}"
            )
        return np.asarray(out, dtype=self.dtype)


def output_of(name: str, outputs: tuple[str, ...], values: np.ndarray) -> np.ndarray:
    """The values of output ``name`` (``"statistic.output"``) from the statistic's array
    ``values`` ``[n, ..., len(outputs)]``."""
    stat, _, out = name.partition(".")
    if out not in outputs:
        raise KeyError(
            f"statistic {stat!r} has no output {out!r}; its outputs: "
            f"{', '.join(f'{stat}.{o}' for o in outputs) or '(one, named ' + repr(stat) + ')'}"
        )
    return values[..., outputs.index(out)]


STATISTICS: dict[str, type[Statistic]] = {}


def register(cls: type[Statistic]) -> type[Statistic]:
    """Class decorator: make a statistic available by its ``name``."""
    if cls.name in STATISTICS and STATISTICS[cls.name] is not cls:
        raise ValueError(f"statistic {cls.name!r} registered twice")
    STATISTICS[cls.name] = cls
    return cls
