""":class:`FeatureTable`: the traces a detector sees, manifest rows plus cached statistics, for one
or more runs."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from hallugraph.features.cache import compute_stats
from hallugraph.features.registry import named_output
from hallugraph.store import TraceStore

log = logging.getLogger(__name__)


class FeatureTable:
    """The traces a detector sees: manifest rows plus cached statistics, for one or more runs.

    ``X.stat(name)`` gives ``[n, ...]`` for the selected traces (computed and cached on first
    use); ``X.rows`` the manifest rows; ``X.labels`` the 0/1 labels (1 = hallucinated);
    ``X.groups`` the question ids (for grouped splits); ``X[idx]`` a subset.
    """

    def __init__(self, runs: Sequence[str | os.PathLike[str]], progress: bool = False) -> None:
        self.stores = [TraceStore(r) for r in runs]
        self.progress = progress
        self._index = np.array(
            [(k, i) for k, s in enumerate(self.stores) for i in range(len(s))], dtype=np.int64
        ).reshape(-1, 2)
        self._cache: dict[str, np.ndarray] = {}

    @classmethod
    def from_run(cls, run: str | os.PathLike[str], progress: bool = False) -> FeatureTable:
        return cls([run], progress=progress)

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, idx: Any) -> FeatureTable:
        sub = object.__new__(FeatureTable)
        sub.stores, sub.progress, sub._cache = self.stores, self.progress, self._cache
        if not isinstance(idx, slice):
            idx = np.asarray(idx)
        sub._index = self._index[idx].reshape(-1, 2)
        return sub

    @property
    def run_info(self) -> list[dict[str, Any]]:
        return [s.info for s in self.stores]

    @property
    def rows(self) -> list[dict[str, Any]]:
        return [self.stores[k].manifest[i] for k, i in self._index]

    @property
    def labels(self) -> np.ndarray:
        rows = self.rows
        missing = sum("label" not in r for r in rows)
        if missing:
            raise ValueError(f"{missing} traces have no label: run `hallugraph label RUN` first")
        return np.array([int(r["label"]) for r in rows], dtype=np.int64)

    @property
    def groups(self) -> np.ndarray:
        """Question ids: traces of one question (teacher-forced answers) share a group."""
        return np.array(
            [r.get("example_meta", {}).get("group", r["question_id"]) for r in self.rows]
        )

    def stat(self, name: str) -> np.ndarray:
        """``[n, ...]``: the statistic ``name``, or one of its outputs (``"logit.min_logprob"``)."""
        if "." in name:
            return named_output(name, self.stat)
        if name not in self._cache:
            parts = [compute_stats(s, [name], progress=self.progress)[name] for s in self.stores]
            shapes = {p.shape[1:] for p in parts if len(p)}
            if len(shapes) > 1:
                raise ValueError(
                    f"statistic {name!r} has different shapes across runs {shapes}: "
                    "runs of different models cannot share a detector"
                )
            self._cache[name] = np.concatenate(parts) if len(parts) > 1 else parts[0]
        full = self._cache[name]
        offsets = np.cumsum([0] + [len(s) for s in self.stores])
        return full[offsets[self._index[:, 0]] + self._index[:, 1]]
