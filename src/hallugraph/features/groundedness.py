"""Attribution-graph scores of each trace (Gctx, RS, CS), as stored by ``hallugraph
groundedness RUN`` (:mod:`hallugraph.attribution.run`), read as a statistic.

The scores live beside the run, not in its traces, in ``RUN/attribution/groundedness.json``::

    {"format_version": 1,
     "settings": {...how the graphs were built: transcoders, node budget, targets...},
     "scores": {"<question_id>": {"index": 3, "gctx": 0.41, "rs": 0.12, "cs": 0.55,
                                  "n_features": 64, "n_context": 27, "n_graphs": 1,
                                  "target_prob": 0.8, "seconds": 12.3}, ...}}

keyed by trace id (``question_id``, unique within a run); NaN is stored as ``null``. The file is
only ever replaced whole, atomically (:func:`write_scores`), so a reader never sees half of it.

Statistic ``groundedness`` ``[4]``: ``(Gctx, RS, CS, scored)``, ``scored`` = 1 when the trace
has a stored record (its values may still be NaN: an empty graph), else 0 with NaN values. Its
cache key follows the file's content (:meth:`Statistic.prepare`), so scoring more traces
refreshes it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hallugraph.features.base import Statistic, register
from hallugraph.io import atomic_write_text
from hallugraph.store import TraceStore

SCORES_DIR = "attribution"
SCORES_FILE = "groundedness.json"
FORMAT_VERSION = 1
COLUMNS = ("gctx", "rs", "cs", "scored")


def scores_path(run_dir: str | os.PathLike[str], name: str = SCORES_FILE) -> Path:
    """``RUN/attribution/groundedness.json`` (``name``: a shard's file, see ``score_run``)."""
    return Path(run_dir) / SCORES_DIR / name


def empty_scores() -> dict[str, Any]:
    """The payload of a run with nothing scored yet."""
    return {"format_version": FORMAT_VERSION, "settings": None, "scores": {}}


def read_scores(run_dir: str | os.PathLike[str], name: str = SCORES_FILE) -> dict[str, Any]:
    """The stored payload of a run (:func:`empty_scores` when there is none); ``null`` values
    come back as NaN."""
    path = scores_path(run_dir, name)
    if not path.is_file():
        return empty_scores()
    return _parse(path.read_bytes(), path)


def _parse(data: bytes, path: Path) -> dict[str, Any]:
    payload = json.loads(data.decode("utf-8"))
    if payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} has format version {payload.get('format_version')}, expected {FORMAT_VERSION}"
        )
    payload["scores"] = {
        qid: {k: (float("nan") if v is None else v) for k, v in rec.items()}
        for qid, rec in payload.get("scores", {}).items()
    }
    return payload


def _null_nan(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _null_nan(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_null_nan(x) for x in v]
    return v


def write_scores(
    run_dir: str | os.PathLike[str], payload: Mapping[str, Any], name: str = SCORES_FILE
) -> Path:
    """Replace the run's scores file with ``payload`` atomically (temporary file, fsync,
    rename); NaN is written as ``null``."""
    path = scores_path(run_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_null_nan(dict(payload)), indent=1, sort_keys=True, allow_nan=False)
    atomic_write_text(path, text + "\n")
    return path


@register
class GroundednessScores(Statistic):
    """``[Gctx, RS, CS, scored]`` from ``RUN/attribution/groundedness.json`` (NaN, 0 when the
    trace was not scored)."""

    name = "groundedness"
    outputs = COLUMNS

    def __init__(self) -> None:
        self._scores: dict[str, dict[str, Any]] = {}

    def prepare(self, store: TraceStore) -> str | None:
        path = scores_path(store.dir)
        if not path.is_file():
            self._scores = {}
            return "none"
        data = path.read_bytes()  # one read: the digest and the scores agree
        self._scores = _parse(data, path)["scores"]
        return hashlib.sha256(data).hexdigest()[:16]

    def compute(self, trace: Mapping[str, Any], run_info: Mapping[str, Any]) -> dict[str, float]:
        rec = self._scores.get(trace["question_id"])
        if rec is None:
            return {"gctx": np.nan, "rs": np.nan, "cs": np.nan, "scored": 0.0}
        return {**{k: float(rec.get(k, np.nan)) for k in COLUMNS[:3]}, "scored": 1.0}
