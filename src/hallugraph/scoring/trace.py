"""One new answer as a trace in memory and its statistics.

The benchmark path computes a statistic as ``stat.values(trace, run_info)`` (its ``compute``,
cast to its ``dtype``) over traces read from a run (:func:`hallugraph.features.compute_stats`),
with tensors stored in the run's dtype (fp16 by default). Here the trace comes from the same
capture (:func:`hallugraph.extract.capture_batch`), its tensors are cast to the run's dtype and
laid out as :class:`hallugraph.store.TraceStore` returns them (prefix rows + own rows, the
packed lower triangle unpacked with :func:`hallugraph.store.unpack_tril`), and the statistic is
computed by the same ``values``: the numbers are those a run would hold.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from hallugraph.features import get_statistic
from hallugraph.features.registry import named_output


def assemble(trace: Any, fields: Iterable[str], dtype: str = "float16") -> dict[str, Any]:
    """The dict :class:`~hallugraph.store.TraceStore` would return for ``trace`` (an
    :class:`hallugraph.extract.Trace`), with only the tensor ``fields`` asked for."""
    import torch

    from hallugraph.store import unpack_tril

    tdtype = getattr(torch, dtype)
    out = dict(trace.meta)
    fields = set(fields)
    S = int(out["seq_len"])
    if "hidden_states" in fields:
        parts = [trace.hidden_states.to(tdtype)]
        if trace.row_start:
            parts.insert(0, trace.prefix_hidden.to(tdtype))
        out["hidden_states"] = torch.cat(parts, dim=1).numpy()
    if "attentions" in fields:
        parts = [trace.attentions.to(tdtype)]
        if trace.row_start:
            parts.insert(0, trace.prefix_attentions.to(tdtype))
        out["attentions"] = unpack_tril(torch.cat(parts, dim=-1).numpy(), S)
    return out


def fields_of(stat_names: Iterable[str]) -> set[str]:
    """Tensor fields the named statistics read."""
    return {f for n in stat_names for f in get_statistic(n).fields}


def trace_statistics(
    traces: Sequence[Mapping[str, Any]], names: Iterable[str], run_info: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """``{name: [n, ...]}``: each statistic of each trace, computed and cast exactly as the
    benchmark path's cache holds it."""
    out = {}
    for n in dict.fromkeys(names):
        st = get_statistic(n)
        out[n] = np.stack([st.values(t, run_info) for t in traces])
    return out


class StatTable:
    """The :class:`~hallugraph.features.FeatureTable` interface detectors read (``stat``,
    ``len``, indexing, ``rows``, ``groups``) over statistics held in memory."""

    def __init__(self, stats: Mapping[str, np.ndarray], rows: Sequence[Mapping[str, Any]]) -> None:
        self._stats = dict(stats)
        self._rows = list(rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, idx: Any) -> StatTable:
        sel = np.arange(len(self))[idx].reshape(-1)
        return StatTable({k: v[sel] for k, v in self._stats.items()}, [self._rows[i] for i in sel])

    @property
    def rows(self) -> list[Mapping[str, Any]]:
        return list(self._rows)

    @property
    def groups(self) -> np.ndarray:
        return np.array([str(r.get("question_id", i)) for i, r in enumerate(self._rows)])

    def stat(self, name: str) -> np.ndarray:
        if "." in name:
            return named_output(name, self.stat)
        if name not in self._stats:
            raise KeyError(f"statistic {name!r} was not computed for these answers")
        return self._stats[name]
