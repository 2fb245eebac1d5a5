"""Read a run directory (:class:`TraceStore`): traces as dicts of numpy arrays, streamed shard by
shard, checked against their checksums."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hallugraph.store.integrity import (
    CheckedFile,
    IntegrityError,
    StoreError,
)
from hallugraph.store.layout import (
    CODECS,
    MANIFEST,
    RUN_INFO,
    SHARD_DIR,
    SHARED,
    TENSOR_FIELDS,
    read_json_file,
    read_manifest,
    unpack_tril,
)


class TraceStore:
    """Read a run directory.

    ``store[i]`` returns the original dict layout — ``question_id``, ``generated_answer_clean``,
    ``hidden_states [L+1, S, H]``, ``attentions [L, heads, S, S]``, ``tokens``,
    ``tokens_decoded`` — plus the rest of the metadata, with numpy arrays. Iterating streams
    shard by shard (one shard open at a time). ``fields`` limits which tensors are read.

    Runs written with ``codec="predictive"`` are decoded on read, which needs the model that
    wrote them: ``model`` (a :class:`hallugraph.models.LoadedModel`, a transformers model or a
    :class:`hallugraph.store.codec.Predictor`), else the run's model is loaded on first use (CPU,
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
        self.rows = read_manifest(self.dir)
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
        """The :class:`hallugraph.store.codec.Predictor` that decodes a predictive run (lazy)."""
        if self._predictor is None:
            from hallugraph.store.codec import predictor_for_run

            self._predictor = predictor_for_run(self.dir, self.info, self._model)
        return self._predictor

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
        from hallugraph.store.codec import decode_trace

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
