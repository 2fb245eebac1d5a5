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
* tensors are fp16 by default (``float32`` on request);
* with ``codec="predictive"`` (``--codec predictive``, fp16 only) each tensor is stored as
  its exact difference from what the model computes from the previous stored layer
  (:mod:`hallugraph.codec`): lossless, several times smaller, but reading needs the model's
  weights (checked by fingerprint) and the same machine type and torch build.

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
CODECS = ("fp16", "predictive")
_INFO_DEFAULTS = {"codec": "fp16"}  # keys older runs lack, with the value they imply
_LOADED: dict[tuple[Any, ...], Any] = {}  # the last predictor loaded by name (stores share it)


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


def check_codec(codec: str, dtype: str) -> None:
    """Raise :class:`StoreError` unless ``codec`` is known and fits ``dtype``."""
    if codec not in CODECS:
        raise StoreError(f"--codec must be one of {', '.join(CODECS)}, not {codec!r}")
    if codec == "predictive" and dtype != "float16":
        raise StoreError(
            "--codec predictive stores exact fp16 values: use it with --dtype float16 "
            f"(not {dtype})"
        )


class TraceWriter:
    """Append traces to a run directory, one shard at a time; resumable.

    ``run_info`` describes the run; re-opening an existing directory with a different
    description raises :class:`StoreError` (only ``num_samples`` may differ, so a run can be
    extended). ``prefix_tokens`` are the prompt tokens every trace starts with.
    ``codec="predictive"`` stores fp16 tensors as residuals of ``predictor`` (a
    :class:`hallugraph.codec.Predictor` of the model that produced the traces).
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
    ) -> None:
        if shard_size < 1:
            raise StoreError("--shard-size must be at least 1")
        if dtype not in ("float16", "float32"):
            raise StoreError(f"--dtype must be float16 or float32, not {dtype!r}")
        check_codec(codec, dtype)
        if codec == "predictive" and predictor is None:
            raise StoreError("the predictive codec needs a predictor (hallugraph.codec.Predictor)")
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
            from hallugraph.codec import CODEC_VERSION

            info.update(
                codec_version=CODEC_VERSION,
                codec_fingerprint=self.predictor.fingerprint,
                codec_kernel=self.predictor.kernel,
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / SHARD_DIR).mkdir(exist_ok=True)
        info_path = self.dir / RUN_INFO
        if info_path.exists():
            old = json.loads(info_path.read_text(encoding="utf-8"))
            diff = [
                k
                for k in set(old) | set(info)
                if k not in ("num_samples", "created")
                and old.get(k, _INFO_DEFAULTS.get(k)) != info.get(k)
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
        self._prefix_hidden: np.ndarray | None = None
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
            self._prefix_hidden = self._cast(hidden_states[:, :p])
            _atomic_save(
                {
                    "prefix.hidden_states": self._prefix_hidden,
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
        if self.predictor is not None:
            from hallugraph.codec import encode_trace

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
                with safe_open(str(self.dir / SHARED), framework="np") as fh:
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

    Runs written with ``codec="predictive"`` are decoded on read, which needs the model that
    wrote them: ``model`` (a :class:`hallugraph.models.LoadedModel`, a transformers model or a
    :class:`hallugraph.codec.Predictor`), else the run's model is loaded on first use (CPU,
    the run's ``model_dtype``). Its weights must match the fingerprint in ``run.json``. A
    decode whose checksum differs from the encoder's (another machine type or torch build)
    raises :class:`StoreError`; ``verify=False`` returns it anyway.
    """

    def __init__(
        self, run_dir: str | os.PathLike[str], model: Any = None, verify: bool = True
    ) -> None:
        self.dir = Path(run_dir)
        info_path = self.dir / RUN_INFO
        if not info_path.exists():
            raise StoreError(f"{self.dir} is not a hallugraph run (no {RUN_INFO})")
        self.info: dict[str, Any] = json.loads(info_path.read_text(encoding="utf-8"))
        self.rows = _read_manifest(self.dir)
        self._shared: dict[str, np.ndarray] | None = None
        self.codec = self.info.get("codec", "fp16")
        if self.codec not in CODECS:
            raise StoreError(f"{self.dir} uses codec {self.codec!r}, unknown to this version")
        self._model = model
        self.verify = verify
        self._predictor: Any = None

    @property
    def predictor(self) -> Any:
        """The :class:`hallugraph.codec.Predictor` that decodes a predictive run (lazy)."""
        if self._predictor is None:
            from hallugraph.codec import CODEC_VERSION, as_predictor

            if self.info.get("codec_version") != CODEC_VERSION:
                raise StoreError(
                    f"{self.dir} uses predictive codec version {self.info.get('codec_version')}; "
                    f"this version of hallugraph reads version {CODEC_VERSION}"
                )
            want = self.info.get("codec_fingerprint")
            kernel = self.info.get("codec_kernel", "aten")
            key = (self.info.get("model"), self.info.get("model_dtype"), want, kernel)
            if self._model is None and key in _LOADED:
                self._predictor = _LOADED[key]
                return self._predictor
            model = self._model if self._model is not None else self._load_model()
            pred = as_predictor(model, kernel)
            if pred.fingerprint != want:
                raise StoreError(
                    f"{self.dir} was encoded with the predictive codec by a model with weights "
                    f"fingerprint {want}; the model given to read it has {pred.fingerprint}. "
                    "Decoding needs exactly the same weights (same model and model_dtype)."
                )
            self._predictor = pred
            if self._model is None:
                _LOADED.clear()
                _LOADED[key] = pred
        return self._predictor

    def _load_model(self) -> Any:
        from hallugraph.models import ModelError, load_model

        name = self.info.get("model")
        try:
            return load_model(name, dtype=self.info.get("model_dtype", "float32"), device="cpu")
        except (ModelError, OSError, ValueError) as err:
            raise StoreError(
                f"{self.dir} is stored with the predictive codec: reading its tensors needs the "
                f"model {name!r}, which could not be loaded ({err}). Pass it: "
                "TraceStore(run, model=...)."
            ) from err

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
        decoded = self._decode(row, fh, fields) if self.codec == "predictive" and fields else {}
        for field in fields:
            own = decoded[field] if decoded else fh.get_tensor(f"{row['key']}.{field}")
            if field == "hidden_states":
                out[field] = (
                    np.concatenate([shared["prefix.hidden_states"], own], axis=1) if p else own
                )
            elif field == "attentions":
                flat = np.concatenate([shared["prefix.attentions"], own], axis=-1) if p else own
                out[field] = unpack_tril(flat, S)
        return out

    def _decode(self, row: Mapping[str, Any], fh: Any, fields: Sequence[str]) -> dict[str, Any]:
        """Own rows of a predictive trace's tensors (hidden states are always decoded)."""
        from hallugraph.codec import decode_trace

        pred = self.predictor
        key = row["key"]
        blocks = {f: fh.get_tensor(f"{key}.{f}") for f in TENSOR_FIELDS if f in fields}
        if "hidden_states" not in blocks:
            blocks["hidden_states"] = fh.get_tensor(f"{key}.hidden_states")
        p = int(self.info.get("prefix_len", 0))
        if p:
            prefix = self._prefix()["prefix.hidden_states"]
        else:
            prefix = np.zeros((pred.num_layers + 1, 0, pred.hidden_size), np.float16)
        hidden, attn = decode_trace(
            pred,
            row["tokens"],
            prefix,
            blocks,
            attentions="attentions" in fields,
            verify=self.verify,
        )
        return {"hidden_states": hidden, "attentions": attn}

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
