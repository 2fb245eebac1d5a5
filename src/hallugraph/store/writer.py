"""Append traces to a run directory, one shard at a time; resumable (:class:`TraceWriter`)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hallugraph.io import atomic_write_text
from hallugraph.store.integrity import (
    ALGORITHM,
    CheckedFile,
    IntegrityError,
    StoreError,
    array_digest,
    row_digest,
)
from hallugraph.store.layout import (
    ERRORS,
    FORMAT_VERSION,
    GENERATION_UNRECORDED_BEFORE,
    INFO_DEFAULTS,
    MANIFEST,
    RUN_INFO,
    SHARD_DIR,
    SHARED,
    STATE_KEYS,
    UNRECORDED_BEFORE,
    atomic_save,
    check_codec,
    check_out_dir,
    clean_leftovers,
    pack_tril,
    read_json_file,
    read_manifest,
    tril_size,
    write_run_info,
)
from hallugraph.store.reader import TraceStore


def _recorded(value: Any, key: str, old: Mapping[str, Any] | None = None) -> Any:
    """``value`` of run.json's ``key`` as compared on resume: a ``generation`` setting that the
    old run (``old``) did not record yet is left out."""
    if key != "generation" or old is None or not isinstance(value, dict):
        return value
    before = old.get("generation")
    if not isinstance(before, dict):
        return value
    drop = GENERATION_UNRECORDED_BEFORE - set(before)
    return {k: v for k, v in value.items() if k not in drop}


class TraceWriter:
    """Append traces to a run directory, one shard at a time; resumable.

    ``run_info`` describes the run; re-opening an existing directory with a different
    description raises :class:`StoreError` (only ``num_samples`` may differ, so a run can be
    extended). ``prefix_tokens`` are the prompt tokens every trace starts with.
    ``codec="predictive"`` stores fp16 tensors as residuals of ``predictor`` (a
    :class:`hallugraph.store.codec.Predictor` of the model that produced the traces).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        run_info: Mapping[str, Any],
        *,
        shard_name: str,
        shard_size: int = 500,
        dtype: str = "float16",
        prefix_tokens: Sequence[int] = (),
        codec: str = "fp16",
        predictor: Any = None,
        clean: bool = True,
    ) -> None:
        if shard_size < 1:
            raise StoreError("--shard-size must be at least 1")
        if dtype not in ("float16", "float32"):
            raise StoreError(f"--dtype must be float16 or float32, not {dtype!r}")
        check_codec(codec, dtype)
        if codec == "predictive" and predictor is None:
            raise StoreError(
                "the predictive codec needs a predictor (hallugraph.store.predictor.Predictor)"
            )
        self.codec = codec
        self.predictor = predictor if codec == "predictive" else None
        self.dir = Path(run_dir)
        self.shard_size = shard_size
        self.dtype = np.dtype(dtype)
        self.shard_name = shard_name
        self.prefix_tokens = [int(t) for t in prefix_tokens]
        info = dict(run_info)
        info.update(
            format_version=FORMAT_VERSION,
            dtype=dtype,
            shard_size=shard_size,
            shard_name=shard_name,
            prefix_len=len(self.prefix_tokens),
            codec=codec,
        )
        if self.predictor is not None:
            from hallugraph.store.codec import CODEC_VERSION

            info.update(
                codec_version=CODEC_VERSION,
                codec_fingerprint=self.predictor.fingerprint,
                codec_kernel=self.predictor.kernel,
            )
        check_out_dir(self.dir)
        info_path = self.dir / RUN_INFO
        self.dir.mkdir(parents=True, exist_ok=True)
        # not while other processes write the run (``--part``): their temporary files live here
        self.cleaned = clean_leftovers(self.dir) if clean else []
        info["checksum"] = ALGORITHM
        if info_path.exists():
            old = read_json_file(info_path)
            diff = [
                k
                for k in set(old) | set(info)
                if k not in STATE_KEYS
                and not (k in UNRECORDED_BEFORE and k not in old)
                and _recorded(old.get(k, INFO_DEFAULTS.get(k)), k) != _recorded(info.get(k), k, old)
            ]
            if diff:
                raise StoreError(
                    f"{self.dir} holds a run made with other arguments ({', '.join(sorted(diff))} "
                    "differ); re-run with the same arguments to resume, or choose a new --out."
                )
            for k in ("created", "shared_checksums", "tensors_pruned"):
                if k in old:
                    info[k] = old[k]
        self.rows: list[dict[str, Any]] = read_manifest(self.dir)
        if info_path.exists() and "checksum" not in old and self.rows:
            # a run of an older version: it stays one (its old traces have no checksums; the
            # new ones get theirs all the same)
            del info["checksum"]
        if (self.dir / SHARED).exists() and "shared_checksums" not in info and not self.rows:
            (self.dir / SHARED).unlink()  # written just before a kill, checksum never recorded
        write_run_info(self.dir, info)
        # after run.json: another process of the run (``--part``) starting now must not find
        # shards/ without it (check_out_dir would refuse the folder)
        (self.dir / SHARD_DIR).mkdir(exist_ok=True)
        self.info = info
        self.done_ids = {r["question_id"] for r in self.rows}
        self.shards_done = list(dict.fromkeys(r["shard"] for r in self.rows))
        self.shards_written: list[str] = []
        self._buffer: list[tuple[dict[str, Any], dict[str, np.ndarray]]] = []
        self._shared_ready = (self.dir / SHARED).exists()
        self._prefix_hidden: np.ndarray | None = None
        self.errors = 0
        self.error_messages: list[str] = []
        self._error_lines: list[str] | None = None

    @classmethod
    def for_unit(
        cls, run_dir: str | os.PathLike[str], prefix_tokens: Sequence[int], predictor: Any = None
    ) -> TraceWriter:
        """A worker's writer: it encodes traces and writes shards (and the shared prefix file,
        :meth:`save_shared`) of a run whose ``run.json`` exists, and changes no other file."""
        self = cls.__new__(cls)
        self.dir = Path(run_dir)
        self.info = read_json_file(self.dir / RUN_INFO)
        self.codec = self.info.get("codec", "fp16")
        self.predictor = predictor if self.codec == "predictive" else None
        if self.codec == "predictive" and predictor is None:
            raise StoreError("the predictive codec needs a predictor")
        self.dtype = np.dtype(self.info["dtype"])
        self.shard_name = self.info["shard_name"]
        self.shard_size = int(self.info["shard_size"])
        self.prefix_tokens = [int(t) for t in prefix_tokens]
        if len(self.prefix_tokens) != int(self.info.get("prefix_len", 0)):
            raise StoreError(f"{self.dir}: the shared prefix differs from the run's")
        self._shared_ready = True
        self._prefix_hidden = None
        return self

    def save_shared(self, hidden: np.ndarray, attentions: np.ndarray) -> dict[str, str]:
        """Write the shared prefix file from its rows (``hidden [L+1, p, H]``, packed lower
        triangle ``attentions [L, heads, p(p+1)/2]``); returns its checksums, which the run's
        ``run.json`` must record (:meth:`record_shared`)."""
        shared = {
            "prefix.hidden_states": self._cast(hidden),
            "prefix.attentions": self._cast(attentions),
            "prefix.tokens": np.asarray(self.prefix_tokens, dtype=np.int64),
        }
        atomic_save(shared, self.dir / SHARED)
        return {k: array_digest(v) for k, v in shared.items()}

    def record_shared(self, checksums: dict[str, str]) -> None:
        """Record the shared prefix file's checksums in ``run.json``."""
        self.info["shared_checksums"] = dict(checksums)
        write_run_info(self.dir, self.info)
        self._shared_ready = True

    @property
    def next_shard(self) -> str:
        nums = [len(self.shards_done) - 1]
        for name in self.shards_done:
            tail = name.rsplit("_batch_", 1)[-1].split(".", 1)[0]
            if tail.isdigit():
                nums.append(int(tail))
        return f"{self.shard_name}_batch_{max(nums) + 1:04d}.safetensors"

    def damaged_shards(
        self,
        stat_names: Sequence[str] = (),
        cache_problem: Callable[[TraceStore, str, str], str | None] | None = None,
    ) -> dict[str, str]:
        """Shards of the manifest whose data is missing or corrupt: ``{shard: problem}``.

        A shard whose raw tensors were kept must exist and match every recorded checksum; one
        pruned (``keep_tensors`` no) must have a sound statistics cache for each of
        ``stat_names``, as ``cache_problem(store, stat_name, shard)`` says (the store does not
        read statistics: :func:`hallugraph.features.cache.cache_problem` is passed in).
        """
        store = TraceStore(self.dir, model=self.predictor, verify=False)
        bad: dict[str, str] = {}
        for shard in self.shards_done:
            path = store.shard_path(shard)
            if path.exists() or store.tensors_expected():
                try:
                    store.check_shard(shard)
                except (IntegrityError, StoreError) as err:
                    bad[shard] = str(err)
                continue
            for name in stat_names if cache_problem is not None else ():
                problem = cache_problem(store, name, shard)
                if problem:
                    bad[shard] = problem
                    break
        return bad

    def drop_shards(self, shards: Sequence[str]) -> None:
        """Forget the traces of ``shards`` (they become pending again): their manifest rows go,
        the shard files are renamed ``*.damaged``, their statistics caches are deleted."""
        gone = set(shards)
        if not gone:
            return
        for name in gone:
            path = self.dir / SHARD_DIR / name
            if path.exists():
                os.replace(path, path.with_name(path.name + ".damaged"))
            for cache in (self.dir / "stats").glob(f"*/{name}"):
                cache.unlink(missing_ok=True)
        self.rows = [r for r in self.rows if r["shard"] not in gone]
        for i, r in enumerate(self.rows):
            r["index"] = i
        self._write_manifest()
        self.done_ids = {r["question_id"] for r in self.rows}
        self.shards_done = [s for s in self.shards_done if s not in gone]

    def _write_manifest(self) -> None:
        atomic_write_text(self.dir / MANIFEST, "".join(json.dumps(r) + "\n" for r in self.rows))

    def add(
        self, meta: Mapping[str, Any], hidden_states: np.ndarray, attentions: np.ndarray
    ) -> None:
        """Buffer one trace given as full arrays ``[L+1, S, H]`` and ``[L, heads, S, S]``."""
        self.append(self.encode(meta, hidden_states, pack_tril(attentions)))

    def encode(
        self,
        meta: Mapping[str, Any],
        hidden_states: np.ndarray,
        attentions: np.ndarray,
        row_start: int = 0,
        prefix: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Compact one trace for storage: drop the shared prefix rows, cast.

        ``hidden_states [L+1, S-row_start, H]`` and packed lower-triangle ``attentions`` hold
        rows ``row_start..S-1``; ``prefix`` = (hidden, packed attention) of rows
        ``0..row_start-1``, needed when ``row_start`` is not the run's prefix length or the
        shared file is not written yet.
        """
        p = len(self.prefix_tokens)
        qid = meta["question_id"]
        if list(meta["tokens"])[:p] != self.prefix_tokens:
            raise StoreError(f"trace {qid} does not start with the run's shared prefix")
        if row_start and (row_start != p or not self._shared_ready):
            if prefix is None:
                raise StoreError(f"rows 0..{row_start - 1} of trace {qid} are missing")
            hidden_states = np.concatenate([prefix[0], hidden_states], axis=1)
            attentions = np.concatenate([prefix[1], attentions], axis=-1)
            row_start = 0
        if not self._shared_ready and p:
            self._prefix_hidden = self._cast(hidden_states[:, :p])
            shared = {
                "prefix.hidden_states": self._prefix_hidden,
                "prefix.attentions": self._cast(attentions[..., : tril_size(p)]),
                "prefix.tokens": np.asarray(self.prefix_tokens, dtype=np.int64),
            }
            atomic_save(shared, self.dir / SHARED)
            self.info["shared_checksums"] = {k: array_digest(v) for k, v in shared.items()}
            write_run_info(self.dir, self.info)
            self._shared_ready = True
        tensors = {
            "hidden_states": self._cast(hidden_states[:, p - row_start :]),
            "attentions": self._cast(attentions[..., tril_size(p) - tril_size(row_start) :]),
        }
        if self.predictor is not None:
            from hallugraph.store.codec import encode_trace

            tensors = encode_trace(
                self.predictor,
                meta["tokens"],
                self._shared_hidden(tensors["hidden_states"]),
                tensors["hidden_states"],
                tensors["attentions"],
            )
        return dict(meta), tensors

    def _shared_hidden(self, own: np.ndarray) -> np.ndarray:
        """The stored prefix rows of every layer (what a reader will use), ``[L+1, p, H]``."""
        if self._prefix_hidden is None:
            if self.prefix_tokens:
                path = self.dir / SHARED
                with CheckedFile(path, self.info.get("shared_checksums") or {}) as fh:
                    self._prefix_hidden = fh.get_tensor("prefix.hidden_states")
            else:
                self._prefix_hidden = np.zeros((own.shape[0], 0, own.shape[2]), own.dtype)
        return self._prefix_hidden

    def _cast(self, a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a.astype(self.dtype, copy=False))

    def append(self, encoded: tuple[dict[str, Any], dict[str, np.ndarray]]) -> None:
        """Buffer one encoded trace; a full buffer is written as a shard."""
        self._buffer.append(encoded)
        if len(self._buffer) >= self.shard_size:
            self.flush()

    def add_error(self, question_id: str, message: str) -> None:
        """Record a failed example (it stays pending and is retried on resume)."""
        self.errors += 1
        self.error_messages.append(f"{question_id}: {message}")
        if self._error_lines is None:
            path = self.dir / ERRORS
            text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
            self._error_lines = [ln + "\n" for ln in text.splitlines() if ln.strip()]
        self._error_lines.append(json.dumps({"question_id": question_id, "error": message}) + "\n")
        atomic_write_text(self.dir / ERRORS, "".join(self._error_lines))

    def write_shard(
        self, name: str, encoded: Sequence[tuple[dict[str, Any], dict[str, np.ndarray]]]
    ) -> list[dict[str, Any]]:
        """Write encoded traces as the shard ``name``; returns their manifest rows (not yet
        in their place in the manifest: ``index`` is set when they are published)."""
        tensors = {}
        rows = []
        for j, (meta, t) in enumerate(encoded):
            key = f"{j:05d}"
            for field, arr in t.items():
                tensors[f"{key}.{field}"] = arr
            row = dict(meta)
            row.update(index=j, shard=name, key=key)  # index: set by the manifest's order
            row["checksums"] = {field: array_digest(arr) for field, arr in t.items()}
            row["row_checksum"] = row_digest(row)
            rows.append(row)
        atomic_save(
            tensors, self.dir / SHARD_DIR / name, metadata={"format_version": str(FORMAT_VERSION)}
        )
        return rows

    def flush(self) -> None:
        """Write the buffered traces as one shard, then publish them in the manifest."""
        if not self._buffer:
            return
        name = self.next_shard
        new_rows = self.write_shard(name, self._buffer)
        base = len(self.rows)
        for j, row in enumerate(new_rows):
            row["index"] = base + j
        self.rows.extend(new_rows)
        self._write_manifest()
        self.done_ids.update(r["question_id"] for r in new_rows)
        self.shards_done.append(name)
        self.shards_written.append(name)
        self._buffer = []

    def close(self) -> None:
        self.flush()
