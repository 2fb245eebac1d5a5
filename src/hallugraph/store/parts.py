"""Publishing a run extracted in units: the part files, merged into ``manifest.jsonl`` in unit
order (:func:`merge_parts`), and runs begun by older versions adopted (:func:`adopt_rows`).

Only one process may publish (the driver of ``hallugraph extract``, or ``hallugraph merge``
once every ``--part`` has finished); workers only write their shards and part files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hallugraph.extract.units import Unit, part_path, read_part, read_plan, write_part
from hallugraph.io import atomic_write_text
from hallugraph.store.layout import ERRORS, MANIFEST


def unit_shard_name(shard_name: str, unit: int, piece: int = 0) -> str:
    """The file name of piece ``piece`` of unit ``unit`` (a unit is cut in pieces only when its
    traces would pass ``--max-shard-mb``)."""
    tail = f"-{piece}" if piece else ""
    return f"{shard_name}_unit_{unit:05d}{tail}.safetensors"


@dataclass
class Merged:
    """What :func:`merge_parts` published."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    done: list[int] = field(default_factory=list)
    """Units with a part file."""
    missing: list[int] = field(default_factory=list)
    """Units without one (not done yet, or being redone)."""
    shards: dict[str, int] = field(default_factory=dict)
    """Shard -> the unit whose part lists it."""


def merge_parts(
    run_dir: str | os.PathLike[str],
    units: Sequence[Unit] | None = None,
    skipped: Mapping[str, str] | None = None,
) -> Merged:
    """Rewrite ``manifest.jsonl`` (and ``errors.jsonl``) from the part files, in unit order.

    ``units``/``skipped`` default to the recorded plan (``units/plan.json``). Units without a
    part file are left out (a rerun of the extraction does them).
    """
    d = Path(run_dir)
    if units is None:
        units, skipped = read_plan(d)
    out = Merged()
    out.errors = [{"question_id": q, "error": m} for q, m in (skipped or {}).items()]
    for unit in units:
        part = read_part(d, unit)
        if part is None:
            out.missing.append(unit.index)
            continue
        out.done.append(unit.index)
        for row in part["rows"]:
            row = dict(row)
            row["index"] = len(out.rows)
            out.rows.append(row)
        out.errors += part.get("errors") or []
        for shard in part.get("shards") or []:
            out.shards[shard] = unit.index
    atomic_write_text(d / MANIFEST, "".join(json.dumps(r) + "\n" for r in out.rows))
    if out.errors or (d / ERRORS).exists():
        atomic_write_text(d / ERRORS, "".join(json.dumps(e) + "\n" for e in out.errors))
    return out


def adopt_rows(
    run_dir: str | os.PathLike[str], units: Sequence[Unit], rows: Sequence[Mapping[str, Any]]
) -> list[int]:
    """Give part files to the traces of the manifest that no part file holds (a run begun by a
    version that wrote one shard at a time): a unit all of whose traces are there, in shards
    that hold traces of that unit only, becomes done with those rows; the other traces are
    left out of the new manifest and extracted again. Returns the adopted units."""
    d = Path(run_dir)
    parts = {u.index: read_part(d, u) for u in units}
    covered = {q for p in parts.values() if p is not None for q in p["ids"]}
    legacy = {r["question_id"]: r for r in rows if r["question_id"] not in covered}
    if not legacy:
        return []
    unit_of = {q: u.index for u in units for q in u.ids}
    in_shard: dict[str, set[int | None]] = {}
    for q, r in legacy.items():
        in_shard.setdefault(r["shard"], set()).add(unit_of.get(q))
    adopted = []
    for u in units:
        if parts[u.index] is not None or not all(q in legacy for q in u.ids):
            continue
        mine = [dict(legacy[q]) for q in u.ids]
        shards = list(dict.fromkeys(r["shard"] for r in mine))
        if all(in_shard[s] == {u.index} for s in shards):
            write_part(d, u, mine, [], shards)
            adopted.append(u.index)
    return adopted


def forget_units(run_dir: str | os.PathLike[str], indices: Sequence[int]) -> None:
    """Delete the part files of ``indices``: those units are done again."""
    for u in indices:
        part_path(run_dir, u).unlink(missing_ok=True)
