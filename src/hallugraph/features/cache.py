"""Statistics are computed in ONE streaming pass over a run (one shard in memory at a time), for all
requested statistics together, and cached beside the run in ``RUN/stats/<name>/<shard>`` with a
checksum; a detector only ever sees the cached arrays."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save
from tqdm.auto import tqdm

from hallugraph.features.base import STATS_DIR, Statistic
from hallugraph.features.registry import get_statistic
from hallugraph.io import atomic_write_bytes
from hallugraph.store import TraceStore
from hallugraph.store.integrity import IntegrityError, array_digest, open_safetensors

log = logging.getLogger(__name__)


def _cache_key(stat: Statistic, rows: Sequence[Mapping[str, Any]], extra: str | None = None) -> str:
    payload = {
        "name": stat.name,
        "version": stat.version,
        "params": stat.params(),
        "traces": hashlib.sha256("\n".join(r["question_id"] for r in rows).encode()).hexdigest(),
    }
    if extra is not None:  # only statistics with a prepare() digest: other keys stay as they were
        payload["run"] = extra
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _cache_path(run_dir: Path, stat: Statistic, shard: str) -> Path:
    return run_dir / STATS_DIR / stat.name / shard


def _read_cache(path: Path, key: str | None) -> tuple[np.ndarray | None, str | None]:
    """``(values, problem)``: the cached array when the file exists, is sound and was made for
    ``key`` (any key when ``None``); ``problem`` says why a file that exists is damaged
    (truncated, unreadable, checksum mismatch). A stale key is no problem, just no values.
    Files of older versions carry no checksum and are read unchecked."""
    if not path.exists():
        return None, None
    try:
        with open_safetensors(path) as fh:
            meta = fh.metadata() or {}
            if key is not None and meta.get("key") != key:
                return None, None
            values = fh.get_tensor("values")
    except Exception as err:  # noqa: BLE001 - IntegrityError or a failing read: damaged
        return None, str(err) if isinstance(err, IntegrityError) else f"{path}: {err}"
    want = meta.get("checksum")
    if want is not None and array_digest(values) != want:
        return None, f"{path}: checksum mismatch (recorded {want}): the cache file is corrupt"
    return values, None


def _write_cache(path: Path, values: np.ndarray, key: str, name: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"key": key, "name": name, "checksum": array_digest(values), "rows": str(len(values))}
    atomic_write_bytes(path, save({"values": values}, metadata=meta))


def check_cache_file(path: Path, rows: int | None = None) -> str | None:
    """Why a statistics cache file is damaged (unreadable, checksum mismatch, not ``rows``
    rows), or ``None`` when it is sound (files of older versions: readable is sound)."""
    values, problem = _read_cache(path, None)
    if problem:
        return problem
    if values is not None and rows is not None and len(values) != rows:
        return f"{path}: {len(values)} rows for the shard's {rows} traces"
    return None


def cache_problem(store: TraceStore, name: str, shard: str) -> str | None:
    """Why the cached statistic ``name`` of ``shard`` is unusable (missing, damaged, made for
    other traces or of the wrong length), or ``None`` when it is sound."""
    stat = get_statistic(name)
    rows = [r for r in store.manifest if r["shard"] == shard]
    path = _cache_path(store.dir, stat, shard)
    if not path.exists():
        return f"{path}: missing"
    values, problem = _read_cache(path, _cache_key(stat, rows, stat.prepare(store)))
    if problem:
        return problem
    if values is None:
        return f"{path}: made for other traces or another version of {name!r} (stale)"
    if len(values) != len(rows):
        return f"{path}: {len(values)} rows for the shard's {len(rows)} traces"
    return None


def compute_stats(
    run: str | os.PathLike[str] | TraceStore,
    names: Iterable[str],
    *,
    progress: bool = True,
    shards: Iterable[str] | None = None,
) -> dict[str, np.ndarray]:
    """Arrays ``[n_traces, ...]`` for each named statistic of a run, from cache when fresh.

    The cache lives in ``RUN/stats/<name>/<shard>``, one file per shard, so the raw tensors of
    a shard can be deleted once its statistics exist (``--keep-tensors no``). Missing
    statistics are computed together, one pass per shard, reading only the tensor fields they
    need. ``shards`` restricts the work to those shards (and returns their rows only).
    """
    store = run if isinstance(run, TraceStore) else TraceStore(run)
    stats = [get_statistic(n) for n in dict.fromkeys(names)]
    extra = {st.name: st.prepare(store) for st in stats}
    wanted = set(shards) if shards is not None else None
    by_shard: dict[str, list[dict[str, Any]]] = {}
    for row in store.manifest:
        if wanted is None or row["shard"] in wanted:
            by_shard.setdefault(row["shard"], []).append(row)
    parts: dict[str, list[np.ndarray]] = {st.name: [] for st in stats}
    bar = tqdm(total=sum(map(len, by_shard.values())), desc="statistics", disable=not progress)
    for shard, rows in by_shard.items():
        todo = []
        for st in stats:
            key = _cache_key(st, rows, extra[st.name])
            path = _cache_path(store.dir, st, shard)
            cached, problem = _read_cache(path, key)
            if problem:
                if st.fields and not store.shard_path(shard).exists():
                    raise IntegrityError(
                        f"{problem}. The raw tensors of {shard} were not kept, so it cannot be "
                        "recomputed: re-extract the run (`hallugraph verify RUN` lists the damage)"
                    )
                log.warning("%s; recomputing it", problem)
            if cached is not None and len(cached) == len(rows):
                parts[st.name].append(cached)
            else:
                todo.append((st, key))
        if todo:
            computed = _compute_shard(store, shard, rows, todo, bar)
            for st, _ in todo:
                parts[st.name].append(computed[st.name])
        else:
            bar.update(len(rows))
    bar.close()
    return {
        st.name: (np.concatenate(parts[st.name]) if parts[st.name] else np.zeros((0,), np.float32))
        for st in stats
    }


def _compute_shard(store, shard, rows, todo, bar) -> dict[str, np.ndarray]:
    fields = sorted({f for st, _ in todo for f in st.fields})
    if fields and not store.shard_path(shard).exists() and not store.tensors_expected():
        missing = ", ".join(st.name for st, _ in todo)
        raise FileNotFoundError(
            f"statistics {missing} need the raw tensors of {store.dir / shard}, which were not "
            "kept; re-extract the run with --keep-tensors yes to compute new statistics"
        )
    values: dict[str, list[np.ndarray]] = {st.name: [] for st, _ in todo}
    traces = store.iter(fields=fields, shards=[shard]) if fields else iter(rows)
    for trace in traces:
        for st, _ in todo:
            values[st.name].append(st.values(trace, store.info))
        bar.update(1)
    out = {}
    for st, key in todo:
        arr = np.stack(values[st.name])
        _write_cache(_cache_path(store.dir, st, shard), arr, key, st.name)
        out[st.name] = arr
    return out
