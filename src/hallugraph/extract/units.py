"""The plan of an extraction: fixed units of work, and the part file that marks a unit done.

A run's planned examples (those that fit the context window, in dataset order) are cut into
**units** of ``unit_size`` consecutive examples. The plan depends on nothing else: not on what
is already done, not on ``--max-shard-mb``, not on how many workers there are, so any worker
can do any unit and a rerun recomputes exactly the same unit.

A unit is done when its **part file** ``units/unit_{u:05d}.json`` exists and lists the unit's
example ids: the worker writes the unit's shard(s) first, then the part file (its manifest
rows, its errors) last. Only the driver (or ``hallugraph merge``) writes ``manifest.jsonl``,
from the part files in unit order. The plan itself is kept in ``units/plan.json`` so that
``merge`` needs neither the data nor the model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hallugraph.io import atomic_write_json

UNITS_DIR = "units"
PLAN = "plan.json"
PLAN_VERSION = 1


@dataclass(frozen=True)
class Unit:
    """One unit of work: its number in the plan and the ids of its examples, in order."""

    index: int
    ids: tuple[str, ...]


def plan_units(ids: Sequence[str], unit_size: int) -> list[Unit]:
    """Consecutive slices of ``unit_size`` ids (the last may be shorter)."""
    if unit_size < 1:
        raise ValueError(f"unit size must be at least 1, not {unit_size}")
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise ValueError(f"example id {i!r} appears twice: ids must be unique")
        seen.add(i)
    return [
        Unit(u, tuple(ids[s : s + unit_size])) for u, s in enumerate(range(0, len(ids), unit_size))
    ]


def select_part(units: Sequence[Unit], num_parts: int, part: int) -> list[Unit]:
    """The units of part ``part`` of ``num_parts`` (unit ``u`` goes to part ``u % num_parts``)."""
    if num_parts < 1:
        raise ValueError(f"--num-parts must be at least 1, not {num_parts}")
    if not 0 <= part < num_parts:
        raise ValueError(f"--part must be in 0..{num_parts - 1}, not {part}")
    return [u for u in units if u.index % num_parts == part]


def units_dir(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / UNITS_DIR


def part_path(run_dir: str | os.PathLike[str], index: int) -> Path:
    return units_dir(run_dir) / f"unit_{index:05d}.json"


def write_plan(
    run_dir: str | os.PathLike[str],
    units: Sequence[Unit],
    unit_size: int,
    skipped: Mapping[str, str],
) -> None:
    """Record the plan (``skipped``: examples left out before any compute, id -> why)."""
    units_dir(run_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        units_dir(run_dir) / PLAN,
        {
            "version": PLAN_VERSION,
            "unit_size": unit_size,
            "units": [list(u.ids) for u in units],
            "skipped": dict(skipped),
        },
        indent=None,
    )


class PlanError(RuntimeError):
    """``units/plan.json`` is missing or damaged."""


def read_plan(run_dir: str | os.PathLike[str]) -> tuple[list[Unit], dict[str, str]]:
    """``(units, skipped)`` as recorded by :func:`write_plan`."""
    path = units_dir(run_dir) / PLAN
    if not path.exists():
        raise PlanError(f"{path} is missing: {run_dir} was not extracted in units")
    obj = _read_json(path)
    if obj is None or not isinstance(obj.get("units"), list):
        raise PlanError(f"{path} is damaged (not a plan); rerun the extraction to rewrite it")
    units = [Unit(u, tuple(ids)) for u, ids in enumerate(obj["units"])]
    return units, dict(obj.get("skipped") or {})


def write_part(
    run_dir: str | os.PathLike[str],
    unit: Unit,
    rows: Sequence[Mapping[str, Any]],
    errors: Sequence[Mapping[str, str]],
    shards: Sequence[str],
) -> None:
    """Mark ``unit`` done: its manifest rows (without ``index``), errors and shard files. Call it
    after every shard of the unit is written (and, when pruning, its statistics)."""
    atomic_write_json(
        part_path(run_dir, unit.index),
        {
            "unit": unit.index,
            "ids": list(unit.ids),
            "rows": [dict(r) for r in rows],
            "errors": [dict(e) for e in errors],
            "shards": list(shards),
        },
        indent=None,
    )


def read_part(run_dir: str | os.PathLike[str], unit: Unit) -> dict[str, Any] | None:
    """The part file of ``unit`` when it exists and was made for the unit's examples; ``None``
    when it is missing, unreadable or made for another plan (the unit is then redone)."""
    path = part_path(run_dir, unit.index)
    if not path.exists():
        return None
    obj = _read_json(path)
    if obj is None or obj.get("ids") != list(unit.ids) or not isinstance(obj.get("rows"), list):
        return None
    return obj


def unit_done(run_dir: str | os.PathLike[str], unit: Unit) -> bool:
    """Whether ``unit`` needs no more work: its part file exists and records no failed example
    (a unit with failures is done again, whole, on resume)."""
    part = read_part(run_dir, unit)
    return part is not None and not part.get("errors")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return obj if isinstance(obj, dict) else None
