"""The trace store: a run directory of safetensors shards plus a JSON-lines manifest.

Layout of a run directory::

    run.json                      what produced the run (model, dataset, settings, shapes)
    manifest.jsonl                one row per trace: metadata + where its tensors live
    shared.safetensors            rows of the prompt prefix common to every trace (written once)
    shards/{model}_{dataset}_batch_{num:04d}.safetensors
    errors.jsonl                  examples that failed (retried on resume)

What is stored, and what is not (it is redundant):

* the causal upper triangle of every attention map (all zeros): maps are packed row-major as
  their lower triangle, ``[layers, heads, S*(S+1)/2]``;
* the rows of the prompt prefix that every trace shares (chat header + instruction): under a
  causal mask they are the same for every trace, so they are kept once in
  ``shared.safetensors`` and each trace keeps only its rows ``p..S-1``;
* tensors are fp16 by default (``float32`` on request).

No pickle anywhere: tensors are safetensors, metadata is JSON. A shard becomes visible only
by an atomic rename, and the manifest is rewritten atomically after each shard, so an
interrupted run never shows a half-written shard and resumes where it stopped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

MANIFEST = "manifest.jsonl"
RUN_INFO = "run.json"
SHARED = "shared.safetensors"
ERRORS = "errors.jsonl"
SHARD_DIR = "shards"
FORMAT_VERSION = 1

TENSOR_FIELDS = ("hidden_states", "attentions")


class StoreError(RuntimeError):
    """A run directory is missing, corrupt or does not match the requested run."""


def _atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file (own name per process), fsync, rename over ``path``."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _atomic_save(
    tensors: dict[str, np.ndarray], path: Path, metadata: dict[str, str] | None = None
) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def tril_size(n: int) -> int:
    """Number of entries of an ``n x n`` lower triangle (diagonal included)."""
    return n * (n + 1) // 2


def pack_tril(attn: np.ndarray, start_row: int = 0) -> np.ndarray:
    """Rows ``start_row..S-1`` of the lower triangle of ``[..., S, S]``, flattened row-major."""
    S = attn.shape[-1]
    r, c = np.tril_indices(S)
    keep = r >= start_row
    return attn[..., r[keep], c[keep]]


def unpack_tril(flat: np.ndarray, S: int) -> np.ndarray:
    """Inverse of :func:`pack_tril` with ``start_row=0``: ``[..., S*(S+1)/2] -> [..., S, S]``."""
    out = np.zeros(flat.shape[:-1] + (S, S), dtype=flat.dtype)
    r, c = np.tril_indices(S)
    out[..., r, c] = flat
    return out


class TraceWriter:
    """Append traces to a run directory, one shard at a time; resumable.

    ``run_info`` describes the run; re-opening an existing directory with a different
    description raises :class:`StoreError` (only ``num_samples`` may differ, so a run can be
    extended). ``prefix_tokens`` are the prompt tokens every trace starts with.
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
    ) -> None:
        if shard_size < 1:
            raise StoreError("--shard-size must be at least 1")
        if dtype not in ("float16", "float32"):
            raise StoreError(f"--dtype must be float16 or float32, not {dtype!r}")
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
        )
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / SHARD_DIR).mkdir(exist_ok=True)
        info_path = self.dir / RUN_INFO
        if info_path.exists():
            old = json.loads(info_path.read_text(encoding="utf-8"))
            diff = [
                k
                for k in set(old) | set(info)
                if k not in ("num_samples", "created") and old.get(k) != info.get(k)
            ]
            if diff:
                raise StoreError(
                    f"{self.dir} holds a run made with other arguments ({', '.join(sorted(diff))} "
                    "differ); re-run with the same arguments to resume, or choose a new --out."
                )
            info["created"] = old.get("created")
        _atomic_write_text(info_path, json.dumps(info, indent=2, sort_keys=True) + "\n")
        self.info = info
        self.rows: list[dict[str, Any]] = _read_manifest(self.dir)
        self.done_ids = {r["question_id"] for r in self.rows}
        self.shards_done = sorted({r["shard"] for r in self.rows})
        self.shards_written: list[str] = []
        self._buffer: list[tuple[dict[str, Any], dict[str, np.ndarray]]] = []
        self._shared_ready = (self.dir / SHARED).exists()
        self.errors = 0

    @property
    def next_shard(self) -> str:
        return f"{self.shard_name}_batch_{len(self.shards_done):04d}.safetensors"

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
            _atomic_save(
                {
                    "prefix.hidden_states": self._cast(hidden_states[:, :p]),
                    "prefix.attentions": self._cast(attentions[..., : tril_size(p)]),
                    "prefix.tokens": np.asarray(self.prefix_tokens, dtype=np.int64),
                },
                self.dir / SHARED,
            )
            self._shared_ready = True
        tensors = {
            "hidden_states": self._cast(hidden_states[:, p - row_start :]),
            "attentions": self._cast(attentions[..., tril_size(p) - tril_size(row_start) :]),
        }
        return dict(meta), tensors

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
        with open(self.dir / ERRORS, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"question_id": question_id, "error": message}) + "\n")

    def flush(self) -> None:
        """Write the buffered traces as one shard, then publish them in the manifest."""
        if not self._buffer:
            return
        name = self.next_shard
        tensors = {}
        new_rows = []
        base = len(self.rows)
        for j, (meta, t) in enumerate(self._buffer):
            key = f"{j:05d}"
            for field, arr in t.items():
                tensors[f"{key}.{field}"] = arr
            row = dict(meta)
            row.update(index=base + j, shard=name, key=key)
            new_rows.append(row)
        _atomic_save(
            tensors, self.dir / SHARD_DIR / name, metadata={"format_version": str(FORMAT_VERSION)}
        )
        self.rows.extend(new_rows)
        _atomic_write_text(self.dir / MANIFEST, "".join(json.dumps(r) + "\n" for r in self.rows))
        self.done_ids.update(r["question_id"] for r in new_rows)
        self.shards_done.append(name)
        self.shards_written.append(name)
        self._buffer = []

    def close(self) -> None:
        self.flush()


def _read_manifest(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / MANIFEST
    if not path.exists():
        return []
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise StoreError(f"{path}:{n} is not valid JSON ({err})") from err
    return rows


class TraceStore:
    """Read a run directory.

    ``store[i]`` returns the original dict layout — ``question_id``, ``generated_answer_clean``,
    ``hidden_states [L+1, S, H]``, ``attentions [L, heads, S, S]``, ``tokens``,
    ``tokens_decoded`` — plus the rest of the metadata, with numpy arrays. Iterating streams
    shard by shard (one shard open at a time). ``fields`` limits which tensors are read.
    """

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(run_dir)
        info_path = self.dir / RUN_INFO
        if not info_path.exists():
            raise StoreError(f"{self.dir} is not a hallugraph run (no {RUN_INFO})")
        self.info: dict[str, Any] = json.loads(info_path.read_text(encoding="utf-8"))
        self.rows = _read_manifest(self.dir)
        self._shared: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def manifest(self) -> list[dict[str, Any]]:
        return self.rows

    @property
    def shards(self) -> list[str]:
        return list(dict.fromkeys(r["shard"] for r in self.rows))

    def shard_path(self, name: str) -> Path:
        return self.dir / SHARD_DIR / name

    def _prefix(self) -> dict[str, np.ndarray]:
        if self._shared is None:
            path = self.dir / SHARED
            self._shared = {}
            if path.exists():
                with safe_open(str(path), framework="np") as fh:
                    self._shared = {k: fh.get_tensor(k) for k in fh.keys()}
        return self._shared

    def _assemble(self, row: Mapping[str, Any], fh: Any, fields: Iterable[str]) -> dict[str, Any]:
        out = dict(row)
        out["model_id"] = self.info.get("model_id")
        out["generation"] = self.info.get("generation")
        p = int(self.info.get("prefix_len", 0))
        S = int(row["seq_len"])
        shared = self._prefix() if p else {}
        for field in fields:
            own = fh.get_tensor(f"{row['key']}.{field}")
            if field == "hidden_states":
                out[field] = (
                    np.concatenate([shared["prefix.hidden_states"], own], axis=1) if p else own
                )
            elif field == "attentions":
                flat = np.concatenate([shared["prefix.attentions"], own], axis=-1) if p else own
                out[field] = unpack_tril(flat, S)
        return out

    def get(self, i: int, fields: Iterable[str] = TENSOR_FIELDS) -> dict[str, Any]:
        row = self.rows[i]
        fields = tuple(fields)
        if not fields:
            return self._assemble(row, None, ())
        with self._open(row["shard"]) as fh:
            return self._assemble(row, fh, fields)

    def _open(self, shard: str) -> Any:
        path = self.shard_path(shard)
        if not path.exists():
            raise StoreError(
                f"the raw tensors of {path.name} were not kept (extracted with --keep-tensors no);"
                " its statistics are in stats/. Re-extract with --keep-tensors yes for tensors."
            )
        return safe_open(str(path), framework="np")

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"trace index {i} out of range for a run of {len(self)} traces")
        return self.get(i % len(self))

    def iter(
        self, fields: Iterable[str] = TENSOR_FIELDS, shards: Iterable[str] | None = None
    ) -> Iterator[dict[str, Any]]:
        """Stream every trace (of ``shards``, when given), one shard open at a time."""
        fields = tuple(fields)
        wanted = set(shards) if shards is not None else None
        by_shard: dict[str, list[dict[str, Any]]] = {}
        for row in self.rows:
            if wanted is None or row["shard"] in wanted:
                by_shard.setdefault(row["shard"], []).append(row)
        for name, rows in by_shard.items():
            if not fields:
                yield from (self._assemble(row, None, ()) for row in rows)
                continue
            with self._open(name) as fh:
                for row in rows:
                    yield self._assemble(row, fh, fields)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.iter()

    def disk_usage(self) -> dict[str, int]:
        """Bytes on disk per shard, plus ``shared`` and ``total`` (manifest included)."""
        sizes = {
            name: self.shard_path(name).stat().st_size
            for name in self.shards
            if self.shard_path(name).exists()
        }
        stats = sum(p.stat().st_size for p in (self.dir / "stats").rglob("*") if p.is_file())
        if stats:
            sizes["stats"] = stats
        extra = sum(
            (self.dir / f).stat().st_size
            for f in (SHARED, MANIFEST, RUN_INFO)
            if (self.dir / f).exists()
        )
        sizes_total = sum(sizes.values()) + extra
        return {**sizes, "shared+manifest": extra, "total": sizes_total}
