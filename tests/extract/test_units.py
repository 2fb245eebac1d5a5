"""The plan of units and the part files: fixed from the start, done = a part file for the unit's
very examples; the manifest is published from the parts in unit order."""

from __future__ import annotations

import json

import pytest
from tiny_models import extract_toy

from hallugraph.data import Example
from hallugraph.extract import GenerationSettings
from hallugraph.extract.units import (
    PlanError,
    Unit,
    part_path,
    plan_units,
    read_part,
    read_plan,
    select_part,
    unit_done,
    write_part,
    write_plan,
)
from hallugraph.store.parts import adopt_rows, merge_parts


def test_plan_is_fixed_slices_of_the_planned_ids():
    ids = [f"q{i}" for i in range(7)]
    units = plan_units(ids, 3)
    assert units == [Unit(0, ("q0", "q1", "q2")), Unit(1, ("q3", "q4", "q5")), Unit(2, ("q6",))]
    # more examples later (a run extended with --num-samples): the full units stay the same
    assert plan_units([*ids, "q7", "q8"], 3)[:2] == units[:2]
    with pytest.raises(ValueError, match="twice"):
        plan_units(["a", "b", "a"], 2)
    with pytest.raises(ValueError, match="at least 1"):
        plan_units(ids, 0)


def test_parts_take_every_unit_once():
    units = plan_units([str(i) for i in range(10)], 1)
    parts = [select_part(units, 3, i) for i in range(3)]
    assert sorted(u.index for p in parts for u in p) == list(range(10))
    assert [u.index for u in parts[1]] == [1, 4, 7]
    with pytest.raises(ValueError, match="--part"):
        select_part(units, 3, 3)


def test_a_part_file_marks_only_its_own_examples_done(tmp_path):
    unit = Unit(0, ("a", "b"))
    assert read_part(tmp_path, unit) is None
    (tmp_path / "units").mkdir()
    write_part(tmp_path, unit, [{"question_id": "a"}], [{"question_id": "b", "error": "x"}], [])
    assert read_part(tmp_path, unit)["rows"] == [{"question_id": "a"}]
    assert not unit_done(tmp_path, unit)  # a failed example: the unit is done again
    write_part(tmp_path, unit, [{"question_id": "a"}, {"question_id": "b"}], [], ["s"])
    assert unit_done(tmp_path, unit)
    assert read_part(tmp_path, Unit(0, ("a", "b", "c"))) is None  # another plan: stale
    part_path(tmp_path, 0).write_text("{trunc")
    assert read_part(tmp_path, unit) is None  # unreadable: redone


def test_merge_publishes_parts_in_unit_order_whatever_finished_first(tmp_path):
    units = plan_units(["a", "b", "c", "d", "e"], 2)
    write_plan(tmp_path, units, 2, {"z": "too long; skipped before any compute"})
    for u in reversed(units):  # finished last to first, unit 1 not at all
        if u.index != 1:
            rows = [{"question_id": q, "index": 0, "shard": f"s{u.index}"} for q in u.ids]
            write_part(tmp_path, u, rows, [], [f"s{u.index}"])
    merged = merge_parts(tmp_path)
    assert merged.done == [0, 2] and merged.missing == [1]
    lines = (tmp_path / "manifest.jsonl").read_text().splitlines()
    got = [json.loads(x) for x in lines]
    assert [(r["question_id"], r["index"]) for r in got] == [("a", 0), ("b", 1), ("e", 2)]
    errors = [json.loads(x) for x in (tmp_path / "errors.jsonl").read_text().splitlines()]
    assert errors == [{"question_id": "z", "error": "too long; skipped before any compute"}]
    assert read_plan(tmp_path) == (units, {"z": "too long; skipped before any compute"})


def test_a_missing_plan_names_the_file(tmp_path):
    with pytest.raises(PlanError, match="plan.json is missing"):
        read_plan(tmp_path)


def test_rows_of_an_older_version_are_adopted_by_whole_units_only(tmp_path):
    units = plan_units(["a", "b", "c", "d", "e"], 2)
    (tmp_path / "units").mkdir()
    rows = [
        {"question_id": "a", "shard": "old0"},
        {"question_id": "b", "shard": "old0"},  # unit 0, whole, in a shard of its own: adopted
        {"question_id": "c", "shard": "old1"},
        {"question_id": "d", "shard": "old2"},
        {"question_id": "e", "shard": "old2"},  # unit 1's d shares a shard with unit 2's e
    ]
    assert adopt_rows(tmp_path, units, rows) == [0]
    assert read_part(tmp_path, units[0])["rows"] == rows[:2]
    assert adopt_rows(tmp_path, units, rows) == []  # nothing twice


def test_single_process_run_writes_one_part_per_unit(tiny_lm, tmp_path):
    exs = [
        Example(id=f"q{i}", question=f"Which city is number {i}?", references=()) for i in range(5)
    ]
    gs = GenerationSettings(max_new_tokens=3, batch_size=2)
    s = extract_toy(tiny_lm, tmp_path, exs, gs, shard_size=2)
    assert s.units == (3, 3) and s.shards_written == [
        f"tiny_toy_unit_{u:05d}.safetensors" for u in range(3)
    ]
    units, _ = read_plan(tmp_path)
    assert [u.ids for u in units] == [("q0", "q1"), ("q2", "q3"), ("q4",)]
    assert all(unit_done(tmp_path, u) for u in units)
