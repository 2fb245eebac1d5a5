"""The trace store: a run directory of safetensors shards plus a JSON-lines manifest.

Layout of a run directory::

    run.json                      what produced the run (model, dataset, settings, shapes)
    manifest.jsonl                one row per trace: metadata + where its tensors live
    shared.safetensors            rows of the prompt prefix common to every trace (written once)
    shards/{model}_{dataset}_unit_{u:05d}.safetensors   the traces of unit u (``-k``: piece k)
    units/plan.json               the units of work: example ids, fixed from the start
    units/unit_{u:05d}.json       unit u is done: its manifest rows (hallugraph.extract.units)
    errors.jsonl                  examples that failed (their unit is redone on resume)

Runs of older versions name their shards ``..._batch_{num:04d}.safetensors`` and have no
``units/``: they read the same, and a resumed extraction adopts their traces.

What is stored, and what is not (it is redundant):

* the causal upper triangle of every attention map (all zeros): maps are packed row-major as
  their lower triangle, ``[layers, heads, S*(S+1)/2]``;
* the rows of the prompt prefix that every trace shares (chat header + instruction): under a
  causal mask they are the same for every trace, so they are kept once in
  ``shared.safetensors`` and each trace keeps only its rows ``p..S-1``;
* tensors are fp16 by default (``float32`` on request);
* with ``codec="predictive"`` (``--codec predictive``, fp16 only) each tensor is stored as
  its exact difference from what the model computes from the previous stored layer
  (:mod:`hallugraph.store.codec`): lossless, several times smaller, but reading needs the model's
  weights (checked by fingerprint) and the same machine type and torch build.

No pickle anywhere: tensors are safetensors, metadata is JSON. Every file is written by
:mod:`hallugraph.io` (temporary file, fsync, rename) and the manifest is rewritten after each
shard, so an interrupted run never shows a half-written shard and resumes where it stopped.
Every stored tensor has a checksum, checked when it is read (:mod:`hallugraph.store.integrity`);
``docs/RELIABILITY.md`` lists what is guaranteed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hallugraph.io import atomic_write_safetensors, atomic_write_text, clean_tmp
from hallugraph.store.integrity import (
    IntegrityError,
    StoreError,
    row_digest,
)

MANIFEST = "manifest.jsonl"
RUN_INFO = "run.json"
SHARED = "shared.safetensors"
ERRORS = "errors.jsonl"
SHARD_DIR = "shards"
FORMAT_VERSION = 1

TENSOR_FIELDS = ("hidden_states", "attentions")
CODECS = ("fp16", "predictive")
INFO_DEFAULTS = {"codec": "fp16", "max_shard_mb": 4096.0}  # keys older runs lack: implied value
#: Settings older runs did not record: not compared on resume when the old run lacks them.
UNRECORDED_BEFORE = frozenset({"device", "max_prompt_tokens", "on_long_prompt", "columns"})
#: The same inside ``generation`` (``batch_tokens``: the batch token budget, issue 16).
GENERATION_UNRECORDED_BEFORE = frozenset({"batch_tokens"})
#: Keys of run.json that a resume may change (they describe the state, not the settings).
STATE_KEYS = frozenset({"num_samples", "created", "checksum", "shared_checksums", "tensors_pruned"})


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


def atomic_save(
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


def read_manifest(run_dir: Path) -> list[dict[str, Any]]:
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
