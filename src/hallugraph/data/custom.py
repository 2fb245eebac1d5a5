"""Custom JSONL/CSV files with a column mapping, and :func:`load_dataset` (a built-in name or a
path)."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hallugraph.data.builtin import DATASETS
from hallugraph.data.example import (
    CSV_SUFFIXES,
    FIELDS,
    JSONL_SUFFIXES,
    DatasetError,
    Example,
    dedup,
    iter_jsonl,
    open_csv,
    read_text_file,
    split_list_cell,
    take,
)

# custom files


def parse_columns(spec: str) -> dict[str, str]:
    """Parse a CLI column mapping ``'question=q,references=answers,context=ctx,id=qid'``.

    Keys are :data:`FIELDS` (id, question, references, incorrect, context, answer), values the
    column names in the file. Raises :class:`DatasetError` on an unknown or repeated key or a
    malformed item.
    """
    out: dict[str, str] = {}
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise DatasetError(
                f"bad column mapping item {item!r}: expected FIELD=COLUMN, e.g. "
                f"'question=q,references=answers'"
            )
        if key not in FIELDS:
            raise DatasetError(
                f"unknown field {key!r} in column mapping; allowed fields: {', '.join(FIELDS)}"
            )
        if key in out:
            raise DatasetError(f"field {key!r} is mapped twice in column mapping {spec!r}")
        out[key] = value
    return out


def _check_columns(columns: Mapping[str, str] | None) -> dict[str, str]:
    if columns is None:
        return {}
    unknown = [k for k in columns if k not in FIELDS]
    if unknown:
        raise DatasetError(
            f"unknown field(s) {', '.join(map(repr, unknown))} in column mapping; "
            f"allowed fields: {', '.join(FIELDS)}"
        )
    bad = [k for k, v in columns.items() if not isinstance(v, str) or not v]
    if bad:
        raise DatasetError(
            f"column mapping for {', '.join(map(repr, bad))} must be a non-empty column name"
        )
    return dict(columns)


def _as_text(value: Any, path: Path, where: str, column: str) -> str | None:
    """A scalar cell as text; ``None``/empty -> ``None``."""
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        raise DatasetError(
            f"{path}: {where}: column {column!r} must hold a string, got {type(value).__name__}"
        )
    text = str(value)
    return text if text.strip() else None


def _as_list(value: Any, path: Path, where: str, column: str, csv_cell: bool) -> tuple[str, ...]:
    """A JSON list, or a string (a CSV cell is split on ``"; "``)."""
    if value is None:
        return ()
    if isinstance(value, list):
        if any(isinstance(v, (dict, list)) for v in value):
            raise DatasetError(f"{path}: {where}: column {column!r} must hold a list of strings")
        return dedup(value)
    if isinstance(value, dict):
        raise DatasetError(
            f"{path}: {where}: column {column!r} must hold a list or a string, got an object"
        )
    text = str(value)
    if csv_cell:
        return dedup(split_list_cell(text))
    if text.strip().startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, list):
            return dedup(parsed)
    return dedup([text])


def _read_records(path: Path) -> tuple[list[tuple[int, dict[str, Any]]], list[str], bool]:
    """``([(line, record)], header, is_csv)``; header is the union of keys for JSONL."""
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        with open_csv(path) as fh:
            reader = csv.DictReader(fh)
            header = [h.lstrip("\ufeff").strip() for h in (reader.fieldnames or [])]
            reader.fieldnames = header
            if not header:
                raise DatasetError(f"{path}: empty CSV file (no header row)")
            records = []
            for row in reader:
                if None in row:
                    raise DatasetError(
                        f"{path}: line {reader.line_num}: more cells than header columns "
                        f"({len(header)})"
                    )
                records.append((reader.line_num, row))
        return records, header, True
    if suffix in JSONL_SUFFIXES:
        with path.open(encoding="utf-8-sig", errors="replace") as fh:
            head = fh.read(4096).lstrip()
        if suffix == ".json" and head.startswith("["):  # a JSON array of objects
            try:
                data = json.loads(read_text_file(path))
            except json.JSONDecodeError as err:
                raise DatasetError(
                    f"{path}: line {err.lineno}: malformed JSON: {err.msg}"
                ) from None
            records = []
            for i, rec in enumerate(data):
                if not isinstance(rec, dict):
                    raise DatasetError(
                        f"{path}: item {i}: expected a JSON object, got {type(rec).__name__}"
                    )
                records.append((i + 1, rec))
        else:
            records = list(iter_jsonl(path))
        header: dict[str, None] = {}
        for _, rec in records:
            header.update(dict.fromkeys(rec))
        return records, list(header), False
    raise DatasetError(
        f"{path}: unsupported file type {path.suffix!r}; use .jsonl (JSON lines) or .csv"
    )


def load_custom(
    path: str | os.PathLike[str],
    *,
    columns: Mapping[str, str] | None = None,
    num_samples: int | None = None,
) -> list[Example]:
    """Load a JSONL (``.jsonl``/``.ndjson``/``.json``) or CSV file.

    ``columns`` maps :data:`FIELDS` to column names; fields it leaves out use the column of the
    same name if the file has one and the mapping does not name that column for another field
    (``question`` is required). A column the mapping names
    explicitly must exist in the file. ``references``/``incorrect`` may hold a JSON list or a
    string (a CSV string is split on ``"; "``). Ids come from the id column, else
    ``{file_stem}_{record:05d}`` (0-based record); they must be unique. Other columns go to
    ``meta``, with ``line`` (1-based line in the file).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        where = p if p.is_absolute() else f"{p} (resolved to {p.resolve()})"
        raise DatasetError(f"dataset file not found: {where}")
    explicit = _check_columns(columns)
    # a column mapped explicitly to one field is never auto-mapped to another (references=answer
    # on an NQ-open file must not also make its `answer` list the teacher-forced answer)
    claimed = set(explicit.values())
    mapping = {f: f for f in FIELDS if f not in claimed}
    mapping.update(explicit)
    records, header, is_csv = _read_records(p)
    if not records:
        raise DatasetError(f"{p}: no records")
    present = set(header)
    absent = [f"{k}={v}" for k, v in explicit.items() if v not in present]
    if absent:
        raise DatasetError(
            f"{p}: column(s) named in the mapping not found: {', '.join(absent)} "
            f"(columns: {', '.join(map(repr, header))})"
        )
    if mapping["question"] not in present:
        raise DatasetError(
            f"{p}: missing required question column {mapping['question']!r} "
            f"(columns: {', '.join(map(repr, header))}; "
            f"map it with columns/--columns question=NAME)"
        )
    used = {f: c for f, c in mapping.items() if c in present}
    used_cols = set(used.values())
    has_id = "id" in used
    out: list[Example] = []
    seen: dict[str, int] = {}
    for i, (line, rec) in enumerate(records):
        where = f"line {line}"
        question = _as_text(rec.get(used["question"]), p, where, used["question"])
        if question is None:
            raise DatasetError(
                f"{p}: {where}: missing or empty question (column {used['question']!r})"
            )
        if has_id:
            ex_id = _as_text(rec.get(used["id"]), p, where, used["id"])
            if ex_id is None:
                raise DatasetError(f"{p}: {where}: missing or empty id (column {used['id']!r})")
            ex_id = ex_id.strip()
        else:
            ex_id = f"{p.stem}_{i:05d}"
        if ex_id in seen:
            raise DatasetError(
                f"{p}: duplicate id {ex_id!r} at line {line} (first at line {seen[ex_id]}); "
                f"ids must be unique"
            )
        seen[ex_id] = line
        meta: dict[str, Any] = {k: v for k, v in rec.items() if k not in used_cols}
        meta["line"] = line
        out.append(
            Example(
                id=ex_id,
                question=question.strip(),
                references=_as_list(
                    rec.get(used["references"]), p, where, used["references"], is_csv
                )
                if "references" in used
                else (),
                incorrect=_as_list(rec.get(used["incorrect"]), p, where, used["incorrect"], is_csv)
                if "incorrect" in used
                else (),
                context=_as_text(rec.get(used["context"]), p, where, used["context"])
                if "context" in used
                else None,
                answer=_as_text(rec.get(used["answer"]), p, where, used["answer"])
                if "answer" in used
                else None,
                meta=meta,
            )
        )
    return take(out, num_samples)


def load_dataset(
    name_or_path: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    num_samples: int | None = None,
    columns: Mapping[str, str] | None = None,
) -> list[Example]:
    """Load a registry dataset (:data:`DATASETS`) or a custom ``.jsonl``/``.json``/``.csv`` file.

    ``data_dir`` overrides where the built-in datasets live (see
    :func:`hallugraph.config.data_dir`). ``num_samples`` keeps the first N examples in file
    order (stable across runs); ``None`` keeps all. ``columns`` maps :data:`FIELDS` to the
    custom file's column names (identity names by default); it is an error with a registry
    name.
    """
    take([], num_samples)  # validate early
    name = str(name_or_path)
    if name in DATASETS:
        if columns:
            raise DatasetError(
                f"a column mapping applies only to custom files, "
                f"not to the built-in dataset {name!r}"
            )
        return DATASETS[name](data_dir=data_dir, num_samples=num_samples)
    p = Path(name).expanduser()
    looks_like_path = (
        p.suffix.lower() in JSONL_SUFFIXES + CSV_SUFFIXES
        or os.sep in name
        or (os.altsep is not None and os.altsep in name)
        or p.exists()
    )
    if not looks_like_path:
        raise DatasetError(
            f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)} "
            f"(or give a path to a .jsonl or .csv file)"
        )
    return load_custom(p, columns=columns, num_samples=num_samples)
