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

No pickle anywhere: tensors are safetensors, metadata is JSON. Every file is written by
:mod:`hallugraph.io` (temporary file, fsync, rename) and the manifest is rewritten after each
shard, so an interrupted run never shows a half-written shard and resumes where it stopped.
Every stored tensor has a checksum, checked when it is read (:mod:`hallugraph.integrity`);
``docs/RELIABILITY.md`` lists what is guaranteed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hallugraph.integrity import (
    ALGORITHM,
    CheckedFile,
    IntegrityError,
    StoreError,
    array_digest,
    row_digest,
)
from hallugraph.io import atomic_write_safetensors, atomic_write_text, clean_tmp

MANIFEST = "manifest.jsonl"
RUN_INFO = "run.json"
SHARED = "shared.safetensors"
ERRORS = "errors.jsonl"
SHARD_DIR = "shards"
FORMAT_VERSION = 1

TENSOR_FIELDS = ("hidden_states", "attentions")
CODECS = ("fp16", "predictive")
_INFO_DEFAULTS = {"codec": "fp16", "max_shard_mb": 4096.0}  # keys older runs lack: implied value
#: Settings older runs did not record: not compared on resume when the old run lacks them.
_UNRECORDED_BEFORE = frozenset({"device", "max_prompt_tokens", "on_long_prompt", "columns"})
#: Keys of run.json that a resume may change (they describe the state, not the settings).
_STATE_KEYS = frozenset(
    {"num_samples", "created", "checksum", "shared_checksums", "tensors_pruned"}
)
_LOADED: dict[tuple[Any, ...], Any] = {}  # the last predictor loaded by name (stores share it)


__all__ = [
    "IntegrityError",
    "StoreError",
    "TraceStore",
    "TraceWriter",
    "check_codec",
    "check_out_dir",
    "mark_pruned",
    "pack_tril",
    "tril_size",
    "unpack_tril",
]


def check_out_dir(run_dir: str | os.PathLike[str]) -> None:
    """Refuse an output folder that cannot take (or resume) a run: a file, or a folder with
    traces but no readable ``run.json`` (the settings they were made with are unknown)."""
    d = Path(run_dir)
    if d.exists() and not d.is_dir():
        raise StoreError(f"--out {d} is a file, not a directory: choose a folder")
    info_path = d / RUN_INFO
    if info_path.exists():
        read_json_file(info_path)
    elif any(p.exists() for p in (d / MANIFEST, d / SHARED, d / SHARD_DIR)):
        raise StoreError(
            f"{d} holds traces (a manifest or shards) but no {RUN_INFO}: the settings they were "
            f"made with are unknown, so they cannot be resumed or extended. Restore {info_path}, "
            "or choose a new --out."
        )


def mark_pruned(run_dir: str | os.PathLike[str]) -> None:
    """Record in ``run.json`` that the raw tensors are being deleted (before deleting them), so
    a missing shard reads as pruned, not lost."""
    path = Path(run_dir) / RUN_INFO
    info = read_json_file(path)
    if not info.get("tensors_pruned"):
        info["tensors_pruned"] = True
        write_run_info(Path(run_dir), info)


def _atomic_save(
    tensors: dict[str, np.ndarray], path: Path, metadata: dict[str, str] | None = None
) -> None:
    atomic_write_safetensors(path, tensors, metadata)


def read_json_file(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; :class:`StoreError` naming the file when it is not one."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StoreError(f"{path} is damaged (not valid UTF-8 JSON: {err})") from err
    if not isinstance(obj, dict):
        raise StoreError(f"{path} is damaged (a JSON object was expected)")
    return obj


def write_run_info(run_dir: Path, info: Mapping[str, Any]) -> None:
    """Rewrite ``run.json`` atomically."""
    atomic_write_text(run_dir / RUN_INFO, json.dumps(dict(info), indent=2, sort_keys=True) + "\n")


def clean_leftovers(run_dir: Path) -> list[Path]:
    """Remove temporary files left by a killed writer (this version's and older ones'): in the
    run directory, ``shards/`` and ``stats/*/``. Only for a run no other process is writing."""
    removed: list[Path] = []
    folders = [run_dir, run_dir / SHARD_DIR, *sorted((run_dir / "stats").glob("*/"))]
    for folder in folders:
        if folder.is_dir():
            removed += clean_tmp(folder)
            for p in folder.glob("*.tmp"):  # older versions' names: x.tmp, x.<pid>.tmp
                if p.is_file():
                    p.unlink(missing_ok=True)
                    removed.append(p)
    return removed


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
        check_out_dir(self.dir)
        info_path = self.dir / RUN_INFO
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cleaned = clean_leftovers(self.dir)
        info["checksum"] = ALGORITHM
        if info_path.exists():
            old = read_json_file(info_path)
            diff = [
                k
                for k in set(old) | set(info)
                if k not in _STATE_KEYS
                and not (k in _UNRECORDED_BEFORE and k not in old)
                and old.get(k, _INFO_DEFAULTS.get(k)) != info.get(k)
            ]
            if diff:
                raise StoreError(
                    f"{self.dir} holds a run made with other arguments ({', '.join(sorted(diff))} "
                    "differ); re-run with the same arguments to resume, or choose a new --out."
                )
            for k in ("created", "shared_checksums", "tensors_pruned"):
                if k in old:
                    info[k] = old[k]
        (self.dir / SHARD_DIR).mkdir(exist_ok=True)
        self.rows: list[dict[str, Any]] = _read_manifest(self.dir)
        if info_path.exists() and "checksum" not in old and self.rows:
            # a run of an older version: it stays one (its old traces have no checksums; the
            # new ones get theirs all the same)
            del info["checksum"]
        if (self.dir / SHARED).exists() and "shared_checksums" not in info and not self.rows:
            (self.dir / SHARED).unlink()  # written just before a kill, checksum never recorded
        write_run_info(self.dir, info)
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

    @property
    def next_shard(self) -> str:
        nums = [len(self.shards_done) - 1]
        for name in self.shards_done:
            tail = name.rsplit("_batch_", 1)[-1].split(".", 1)[0]
            if tail.isdigit():
                nums.append(int(tail))
        return f"{self.shard_name}_batch_{max(nums) + 1:04d}.safetensors"

    def damaged_shards(self, stat_names: Sequence[str] = ()) -> dict[str, str]:
        """Shards of the manifest whose data is missing or corrupt: ``{shard: problem}``.

        A shard whose raw tensors were kept must exist and match every recorded checksum; one
        pruned (``keep_tensors`` no) must have a sound statistics cache for each of
        ``stat_names`` (see :func:`hallugraph.features.cache_problem`).
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
            from hallugraph.features import cache_problem

            for name in stat_names:
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
            _atomic_save(shared, self.dir / SHARED)
            self.info["shared_checksums"] = {k: array_digest(v) for k, v in shared.items()}
            write_run_info(self.dir, self.info)
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
            row["checksums"] = {field: array_digest(arr) for field, arr in t.items()}
            row["row_checksum"] = row_digest(row)
            new_rows.append(row)
        _atomic_save(
            tensors, self.dir / SHARD_DIR / name, metadata={"format_version": str(FORMAT_VERSION)}
        )
        self.rows.extend(new_rows)
        self._write_manifest()
        self.done_ids.update(r["question_id"] for r in new_rows)
        self.shards_done.append(name)
        self.shards_written.append(name)
        self._buffer = []

    def close(self) -> None:
        self.flush()


def _read_manifest(run_dir: Path) -> list[dict[str, Any]]:
    """The manifest's rows; :class:`StoreError` naming the file and line when one is damaged
    (not UTF-8, not JSON, or its ``row_checksum`` does not match its fields)."""
    path = run_dir / MANIFEST
    if not path.exists():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise IntegrityError(f"{path} is damaged (not valid UTF-8: {err})") from err
    rows = []
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise IntegrityError(f"{path}:{n} is damaged (not valid JSON: {err})") from err
        if not isinstance(row, dict) or "question_id" not in row or "shard" not in row:
            raise IntegrityError(f"{path}:{n} is damaged (not a trace row)")
        want = row.get("row_checksum")
        if want is not None and row_digest(row) != want:
            raise IntegrityError(
                f"{path}:{n} (trace {row.get('question_id')}) does not match its row_checksum: "
                "the manifest is corrupt or was edited"
            )
        rows.append(row)
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
        self.info: dict[str, Any] = read_json_file(info_path)
        self.rows = _read_manifest(self.dir)
        self._expected: dict[str, dict[str, str]] | None = None
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

    def tensors_expected(self) -> bool:
        """Whether every shard's raw tensors should be on disk (not extracted with
        ``--keep-tensors no`` nor pruned by ``hallugraph stats --prune``)."""
        return bool(self.info.get("keep_tensors", True)) and not self.info.get("tensors_pruned")

    @property
    def has_checksums(self) -> bool:
        """Whether the run records checksums (runs of older versions do not)."""
        return "checksum" in self.info

    def expected_digests(self, shard: str) -> dict[str, str]:
        """Recorded checksums of the tensors of ``shard``: ``{tensor name: digest}``."""
        if self._expected is None:
            self._expected = {}
            for r in self.rows:
                exp = self._expected.setdefault(r["shard"], {})
                for field, digest in (r.get("checksums") or {}).items():
                    exp[f"{r['key']}.{field}"] = digest
        return self._expected.get(shard, {})

    def check_shard(self, shard: str) -> int:
        """Read every tensor of ``shard`` that the manifest lists and check it against its
        checksum; returns how many were checked. Raises :class:`IntegrityError` naming the
        file."""
        expected = self.expected_digests(shard)
        names = expected or {
            f"{r['key']}.{f}": None for r in self.rows if r["shard"] == shard for f in TENSOR_FIELDS
        }
        with self._open(shard) as fh:
            present = set(fh.keys())
            missing = [n for n in names if n not in present]
            if missing:
                raise IntegrityError(
                    f"{self.shard_path(shard)}: tensors {', '.join(missing[:3])} listed in the "
                    "manifest are missing from the file"
                )
            for name in names:
                fh.get_tensor(name)
        return len(expected)

    def check_shared(self) -> None:
        """Check ``shared.safetensors`` against its recorded checksums."""
        self._shared = None
        self._prefix()

    def _prefix(self) -> dict[str, np.ndarray]:
        if self._shared is None:
            path = self.dir / SHARED
            self._shared = {}
            if path.exists() or int(self.info.get("prefix_len", 0)):
                with CheckedFile(path, self.info.get("shared_checksums") or {}) as fh:
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

    def _open(self, shard: str) -> CheckedFile:
        path = self.shard_path(shard)
        if not path.exists():
            if self.tensors_expected():
                raise IntegrityError(
                    f"{path}: missing. {self.dir / RUN_INFO} says the raw tensors were kept, so "
                    "the shard was deleted or lost; a resumed `hallugraph extract` with the "
                    "same arguments redoes its traces."
                )
            how = (
                "pruned by `hallugraph stats --prune`"
                if self.info.get("tensors_pruned")
                else "extracted with --keep-tensors no"
            )
            raise StoreError(
                f"the raw tensors of {path.name} were not kept ({how}); its statistics are in "
                "stats/. Re-extract with --keep-tensors yes for tensors."
            )
        return CheckedFile(path, self.expected_digests(shard))

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
