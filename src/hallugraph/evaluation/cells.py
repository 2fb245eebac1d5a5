"""Checkpoints of the evaluation: one JSON file per unit of work (a *cell*), so that an
interrupted ``hallugraph evaluate`` continues where it stopped and ends with the same files.

Cells (under ``OUT/cells/``; ``<ds>`` and ``<det>`` are file-name-safe dataset and detector
names):

* ``cv/<ds>/<det>/r<R>_f<K>.json``: one detector on one fold of one repeat of a run's
  cross-validation: its out-of-fold scores of the fold's test answers, its threshold (set on
  the inner validation answers) and note, fit and predict seconds, peak memory of the fit,
  the fusion's family weights;
* ``transfer/<det>/<ds>.json``: the detector fitted on all of run ``<ds>``, its scores on the
  unseen answers of every other run;
* ``lodo/<det>/<ds>.json``: the detector fitted on the other runs, its scores on run ``<ds>``.

A cell holds *scores*, never metrics: the metrics, CIs and comparisons are computed from the
cells every time (so ``--bootstrap`` changes no cell). A file is ``{"format", "key",
"key_parts", "checksum", "result"}``: ``key`` is the SHA-256 of ``key_parts``, which name
everything the result depends on (:data:`CELL_FORMAT`, the code (the evaluation's and the
detector's own: :func:`~hallugraph.evaluation.sources.code_digest`) and library versions, the
detector's class and ``get_params()``, the seed, folds and repeats, the identity of each run
involved — :func:`run_identity`: its traces without their labels, and its labels where it is
trained on — and the cell's train and test rows); ``checksum`` is the SHA-256 of ``result``. A
cell whose key differs is recomputed (and the log says which part changed); a damaged one (not
JSON, truncated, checksum or shape wrong) is recomputed with a warning naming the file. Only
successful cells are written: a detector's error or ``NotApplicable`` is met again on the next
run. A freshly computed result goes through the same JSON text as one read back, so a resumed
evaluation writes the same bytes as an uninterrupted one (the cost columns excepted where they
are measured again: each cell keeps the seconds and megabytes measured when it was computed).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from hallugraph.io import atomic_write_text, jsonable

log = logging.getLogger(__name__)

CELL_FORMAT = 2
"""Version of the cells' layout and content; a change recomputes every cell. 2: every cell
computed single-threaded (:func:`single_threaded`)."""
CELL_DIR = "cells"
LABEL_FIELDS = ("label", "label_rule", "label_details")
"""Manifest fields written by ``hallugraph label``: a run's data identity leaves them out."""
T = TypeVar("T")


class CellError(ValueError):
    """A cell file that cannot be used (damaged, or of another shape than its key says)."""


def digest(obj: Any) -> str:
    """SHA-256 (hex) of ``obj`` as canonical JSON (:func:`~hallugraph.io.jsonable`, sorted keys)."""
    text = json.dumps(jsonable(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def run_identity(path: Path, y: np.ndarray, labeled: np.ndarray) -> dict[str, str]:
    """``{"data", "labels"}``: SHA-256 of a run's manifest rows without the label fields plus
    its ``run.json`` and attribution scores (what a detector reads; the statistics' cache is
    derived from these), and of its labels (which traces are labeled, and how)."""
    from hallugraph.store.layout import read_manifest

    rows = [{k: v for k, v in r.items() if k not in LABEL_FIELDS} for r in read_manifest(path)]
    extra = {}
    for name in ("run.json", "attribution/groundedness.json"):
        f = path / name
        if f.is_file():
            extra[name] = hashlib.sha256(f.read_bytes()).hexdigest()
    return {
        "data": digest({"rows": rows, "files": extra}),
        "labels": digest({"labeled": labeled, "y": np.asarray(y).astype(np.int64)}),
    }


def detector_identity(name: str, det: Any) -> dict[str, Any]:
    """A detector's name, class and parameters (``get_params()``; values JSON cannot hold
    by their ``repr``)."""
    get = getattr(det, "get_params", None)
    params = (
        get()
        if callable(get)
        else {k: v for k, v in vars(det).items() if not k.endswith("_") and not k.startswith("_")}
    )

    def plain(v: Any) -> Any:
        v = jsonable(v)
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list):
            return [plain(x) for x in v]
        return v if v is None or isinstance(v, str | int | float | bool) else repr(v)

    cls = type(det)
    return {"name": name, "class": f"{cls.__module__}.{cls.__qualname__}", "params": plain(params)}


def rows_id(index: np.ndarray, rows: Sequence[dict[str, Any]]) -> str:
    """Digest of a cell's rows: their positions and question ids."""
    ids = [str(r.get("question_id", "")) for r in rows]
    return digest({"index": np.asarray(index, dtype=np.int64), "ids": ids})


def seed_globals(seed: int) -> None:
    """Seed Python's, numpy's and (if loaded) torch's global generators before a cell, so a
    cell's result does not depend on which cells ran before it in the process."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """One torch thread and one BLAS / OpenMP thread (threadpoolctl) inside; the previous
    settings restored after. Every cell is computed so, in one process or in workers
    (:mod:`hallugraph.evaluation.parallel`): a cell's numbers never depend on the thread
    count it was computed with (a sum over threads may round differently), so cells computed
    with any ``--processes`` are the same and can be mixed."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(before)


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "x"


def floats(values: Any, n: int, what: str) -> np.ndarray:
    """``n`` finite floats from a cell, else :class:`CellError`."""
    if not isinstance(values, list) or len(values) != n:
        got = len(values) if isinstance(values, list) else type(values).__name__
        raise CellError(f"{what}: {n} values expected, got {got}")
    a = np.asarray(values, dtype=np.float64)
    if not np.isfinite(a).all():
        raise CellError(f"{what}: non-finite values")
    return a


def number(v: Any) -> float:
    """A float field of a cell (``null`` is NaN)."""
    if v is None:
        return float("nan")
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise CellError(f"a number expected, got {v!r}")
    return float(v)


class CellStore:
    """The cells of one evaluation under ``root`` (``OUT/cells``); ``root=None`` keeps
    nothing. Counts what it read, computed, found stale or damaged (:meth:`summary`) and
    advances a progress bar for each cell done that was not ready at the start."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self.counts = {"read": 0, "computed": 0, "failed": 0, "stale": 0, "damaged": 0}
        self.ready: set[Path] = set()
        self.finished: set[Path] = set()
        self.bar: Any = None
        self.elsewhere: set[Path] = set()

    def path(self, *parts: str) -> Path | None:
        if self.root is None:
            return None
        *dirs, last = [slug(p) for p in parts]
        return self.root.joinpath(*dirs, last + ".json")

    def _parse(self, path: Path, key_parts: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
        """``(result, "")``, or ``(None, why)``: ``"missing"``, ``"stale: ..."`` or
        ``"damaged: ..."``."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None, "missing"
        except (OSError, UnicodeDecodeError) as err:
            return None, f"damaged: {err}"
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("format") != CELL_FORMAT:
                raise CellError(f"not a cell of format {CELL_FORMAT}")
            result = data["result"]
            if data.get("checksum") != digest(result):
                raise CellError("checksum mismatch (the file was changed)")
        except (ValueError, KeyError, TypeError) as err:
            return None, f"damaged: {err}"
        if data.get("key") != digest(key_parts):
            return None, "stale: " + ", ".join(_changed(data.get("key_parts"), key_parts))
        return result, ""

    def peek(self, path: Path | None, key_parts: dict[str, Any]) -> bool:
        """Whether the cell at ``path`` is there, intact and of this key (remembered as ready)."""
        if path is None:
            return False
        ok = self._parse(path, key_parts)[0] is not None
        if ok:
            self.ready.add(path)
        return ok

    def get(
        self,
        path: Path | None,
        key_parts: dict[str, Any],
        compute: Callable[[], dict[str, Any]],
        decode: Callable[[dict[str, Any]], T],
    ) -> T:
        """The cell's decoded result: read from ``path`` when its key matches and it decodes,
        else ``compute()``-d, written atomically, and decoded from the written text. A result
        marked ``"partial"`` (something in it failed) is not written: it is tried again next
        time."""
        key = digest(key_parts)
        if path is not None:
            result, why = self._parse(path, key_parts)
            if result is not None:
                try:
                    out = decode(result)
                except (CellError, ValueError, KeyError, TypeError) as err:
                    why = f"damaged: {err}"
                else:
                    self.counts["read" if path not in self.elsewhere else "computed"] += 1
                    self.elsewhere.discard(path)
                    self.done(path)
                    return out
            if why.startswith("damaged"):
                self.counts["damaged"] += 1
                log.warning("cell %s is %s; recomputing it", path, why)
            elif why.startswith("stale"):
                self.counts["stale"] += 1
                log.info("cell %s is %s changed; recomputing it", path, why)
        with single_threaded():
            result = compute()
        payload = {
            "format": CELL_FORMAT,
            "key": key,
            "key_parts": key_parts,
            "checksum": digest(result),
            "result": result,
        }
        text = json.dumps(jsonable(payload), indent=1, allow_nan=False) + "\n"
        if path is not None and not result.get("partial"):
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, text)
        self.counts["computed"] += 1
        if result.get("partial"):
            self.counts["computed"] -= 1
            self.counts["failed"] += 1
        self.done(path)
        return decode(json.loads(text)["result"])

    def computed_elsewhere(self, path: Path, counts: dict[str, int]) -> None:
        """A worker process computed and wrote the cell at ``path`` (it found it ``counts``
        stale or damaged): done, and counted as computed when it is read."""
        self.elsewhere.add(path)
        for k in ("stale", "damaged"):
            self.counts[k] += int(counts.get(k, 0))
        self.done(path)

    def done(self, path: Path | None) -> None:
        """A cell is finished (read, computed, or given up with its detector)."""
        key = path if path is not None else Path(f"#{len(self.finished)}")
        if key in self.finished:
            return
        self.finished.add(key)
        if self.bar is not None and key not in self.ready:
            self.bar.update(1)

    def give_up(self, paths: Iterable[Path | None]) -> None:
        for p in paths:
            self.done(p)

    def summary(self) -> str:
        c = self.counts
        where = f" in {self.root}" if self.root is not None else ""
        return (
            f"cells{where}: {c['read']} read, {c['computed']} computed "
            f"({c['stale']} stale, {c['damaged']} damaged), {c['failed']} not kept (failed)"
        )


def _changed(old: Any, new: dict[str, Any]) -> list[str]:
    if not isinstance(old, dict):
        return ["key"]
    diff = [k for k in sorted(set(old) | set(new)) if digest(old.get(k)) != digest(new.get(k))]
    return diff or ["key"]
