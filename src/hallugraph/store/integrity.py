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
