"""Checksums of what a run stores, checked on every read: a damaged file is an error naming it.

Every tensor block written to a shard, the shared prefix file and every statistics cache file
carries an ``xxh3_128`` digest of its dtype, shape and bytes (:func:`array_digest`; about
25 GB/s on one core, so checking on read costs nothing next to reading). Shard digests live
in the manifest (``row["checksums"]``, one per stored tensor of the trace), the shared
prefix's in ``run.json`` (``shared_checksums``), a statistics cache file's in its own
safetensors metadata. The fields of each manifest row that numbers are computed from
(tokens, log-probs, lengths, where its tensors live) have a digest too
(``row["row_checksum"]``, :func:`row_digest`).

Runs written before checksums existed have none: they are read as before and
``hallugraph verify`` says that their contents cannot be verified.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

__all__ = [
    "ALGORITHM",
    "ROW_FIELDS",
    "IntegrityError",
    "StoreError",
    "VerifyReport",
    "array_digest",
    "open_safetensors",
    "row_digest",
    "verify_run",
]

ALGORITHM = "xxh3_128"

#: Manifest fields written by the extraction that numbers are computed from (token ids,
#: log-probs, entropies, lengths, where the tensors live): :func:`row_digest` covers these.
#: Text fields and labels are not covered (labels are added later; tests and users may edit
#: the rest).
ROW_FIELDS = (
    "question_id",
    "tokens",
    "seq_len",
    "prompt_len",
    "answer_len",
    "token_logprobs",
    "token_entropy",
    "shard",
    "key",
)


class StoreError(RuntimeError):
    """A run directory is missing, corrupt or does not match the requested run (re-exported by
    :mod:`hallugraph.store`)."""


class IntegrityError(StoreError):
    """A stored file is missing, truncated or does not match its recorded checksum."""


def array_digest(a: np.ndarray) -> str:
    """Hex ``xxh3_128`` of an array's dtype, shape and C-order bytes."""
    a = np.ascontiguousarray(a)
    h = xxhash.xxh3_128()
    h.update(f"{a.dtype.str}{list(a.shape)}".encode())
    h.update(a.reshape(-1).view(np.uint8))
    return h.hexdigest()


def row_digest(row: Mapping[str, Any]) -> str:
    """Hex ``xxh3_128`` of the :data:`ROW_FIELDS` of a manifest row (as canonical JSON)."""
    payload = {k: row[k] for k in ROW_FIELDS if k in row}
    return xxhash.xxh3_128(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def check_array(a: np.ndarray, expected: str | None, where: str) -> np.ndarray:
    """``a`` when its digest is ``expected`` (or nothing is recorded); else :class:`IntegrityError`
    naming ``where``."""
    if expected is not None:
        got = array_digest(a)
        if got != expected:
            raise IntegrityError(
                f"{where}: checksum mismatch (recorded {expected}, read {got}): the file is "
                "corrupt. Check the whole run with `hallugraph verify RUN`; a resumed "
                "`hallugraph extract` redoes the traces of a damaged shard."
            )
    return a


def open_safetensors(path: str | os.PathLike[str]) -> Any:
    """``safe_open(path)`` whose failures name the file (missing, truncated, not safetensors)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise IntegrityError(f"{path}: missing")
    try:
        return safe_open(str(path), framework="np")
    except Exception as err:  # noqa: BLE001 - SafetensorError and friends, re-raised with the path
        raise IntegrityError(
            f"{path}: unreadable ({type(err).__name__}: {err}); the file is truncated or corrupt"
        ) from err


class CheckedFile:
    """A safetensors file open for reading whose tensors are checked against ``expected``
    digests (name -> digest; names without one are read unchecked). A context manager."""

    def __init__(self, path: str | os.PathLike[str], expected: Mapping[str, str]) -> None:
        self.path = Path(path)
        self.expected = expected
        self.fh = open_safetensors(self.path)

    def __enter__(self) -> CheckedFile:
        self.fh.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.fh.__exit__(*exc)

    def keys(self) -> list[str]:
        return list(self.fh.keys())

    def metadata(self) -> dict[str, str]:
        return self.fh.metadata() or {}

    def get_tensor(self, name: str) -> np.ndarray:
        try:
            a = self.fh.get_tensor(name)
        except Exception as err:  # noqa: BLE001
            raise IntegrityError(
                f"{self.path}: tensor {name!r} unreadable ({type(err).__name__}: {err})"
            ) from err
        return check_array(a, self.expected.get(name), f"{self.path} (tensor {name!r})")


class VerifyReport:
    """What :func:`verify_run` found: ``problems`` (damage: the run must not be trusted),
    ``notes`` (worth knowing, not damage) and how many tensors/files were checked."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.tensors = 0
        self.files = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def render(self) -> str:
        head = (
            f"{self.run_dir}: OK ({self.files} files, {self.tensors} tensors checked)"
            if self.ok
            else f"{self.run_dir}: DAMAGED ({len(self.problems)} problem(s))"
        )
        lines = [head]
        lines += [f"  problem: {p}" for p in self.problems]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def verify_run(run_dir: str | os.PathLike[str]) -> VerifyReport:
    """Check a whole run: ``run.json`` and the manifest parse (rows against their
    ``row_checksum``), ``shared.safetensors`` and every tensor of every shard against their
    checksums, shards that should exist do, every statistics cache file is readable and
    matches its checksum, and a pruned shard has the cache files the run's statistics need."""
    from hallugraph.features import STATS_DIR, check_cache_file
    from hallugraph.store import SHARD_DIR, TraceStore

    rep = VerifyReport(Path(run_dir))
    try:
        store = TraceStore(run_dir, verify=False)
    except StoreError as err:
        rep.problems.append(str(err))
        return rep
    rep.files += 2
    if not store.has_checksums:
        rep.notes.append(
            "no checksums recorded (made by an older version of hallugraph): files were checked "
            "for presence and readability only, their contents cannot be verified"
        )
    if int(store.info.get("prefix_len", 0)):
        try:
            store.check_shared()
            rep.files += 1
        except StoreError as err:
            rep.problems.append(str(err))
    by_shard: dict[str, int] = {}
    for r in store.rows:
        by_shard[r["shard"]] = by_shard.get(r["shard"], 0) + 1
        if store.has_checksums and ("checksums" not in r or "row_checksum" not in r):
            rep.problems.append(
                f"{store.dir / 'manifest.jsonl'}: trace {r['question_id']} has no checksums "
                "in a run that records them (the manifest was edited)"
            )
    stat_dirs = sorted(p for p in (store.dir / STATS_DIR).glob("*") if p.is_dir())
    for shard in by_shard:
        path = store.shard_path(shard)
        if path.exists() or store.tensors_expected():
            try:
                rep.tensors += store.check_shard(shard)
                rep.files += 1
            except StoreError as err:
                rep.problems.append(str(err))
            continue
        for d in stat_dirs:  # a pruned shard: its statistics are all that is left
            if not (d / shard).exists():
                rep.problems.append(
                    f"{d / shard}: missing, and the raw tensors of {shard} were not kept "
                    f"(statistic {d.name} cannot be recomputed for its traces)"
                )
    for d in stat_dirs:
        for f in sorted(d.iterdir()):
            if not f.is_file() or f.name not in by_shard:
                continue
            problem = check_cache_file(f, by_shard[f.name])
            rep.files += 1
            if problem:
                rep.problems.append(problem)
    leftovers = [
        p
        for folder in [store.dir, store.dir / SHARD_DIR, *stat_dirs]
        if folder.is_dir()
        for p in folder.glob("*.tmp")
    ]
    if leftovers:
        rep.notes.append(
            f"{len(leftovers)} temporary file(s) left by an interrupted writer (e.g. "
            f"{leftovers[0]}); a resumed `hallugraph extract` removes them"
        )
    damaged = sorted(store.dir.glob(f"{SHARD_DIR}/*.damaged"))
    if damaged:
        rep.notes.append(
            f"{len(damaged)} damaged shard(s) set aside by a resumed extract (e.g. {damaged[0]}); "
            "their traces were extracted again, the files can be deleted"
        )
    return rep
