"""One question to answer: :class:`Example`, :class:`DatasetError`, and the file-reading helpers the
loaders share."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hallugraph.config import data_dir as _config_data_dir

#: The fields of :class:`Example` a custom file's columns can be mapped to.
FIELDS: tuple[str, ...] = ("id", "question", "references", "incorrect", "context", "answer")

#: Suffixes of files :func:`load_dataset` reads as custom data.
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
CSV_SUFFIXES = (".csv",)

TRIVIAQA_FILE = ("triviaqa", "validation_unfiltered.jsonl")
TRUTHFULQA_FILE = ("truthfulqa", "TruthfulQA.csv")
HALUEVAL_ONE_TURN = ("halueval_qa", "qa_one_turn.jsonl")
HALUEVAL_MULTI_TURN = ("halueval_qa", "qa_multi_turn.jsonl")

#: Separator of list fields in CSV cells (TruthfulQA's convention).
LIST_SEPARATOR = "; "


class DatasetError(ValueError):
    """A dataset cannot be found or read: unknown name, missing file, malformed content."""


@dataclass(frozen=True)
class Example:
    """One benchmark question.

    ``references`` are the correct answers, ``incorrect`` known wrong (hallucinated) ones.
    ``context`` is the retrieved passage of context-grounded sets (HaluEval). ``answer`` is a
    given answer to teacher-force instead of generating one (the built-in loaders leave it
    ``None``). ``meta`` holds JSON-serializable extras (TruthfulQA type/category/source, the
    line a record came from, ...); it takes no part in hashing.
    """

    id: str
    question: str
    references: tuple[str, ...]
    incorrect: tuple[str, ...] = ()
    context: str | None = None
    answer: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        for name in ("references", "incorrect"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise TypeError(
                    f"Example.{name} must be a sequence of strings, not a string: {value!r}"
                )
            if not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))


# ---------------------------------------------------------------------------------------------
# helpers


def _where(override: str | os.PathLike[str] | None) -> str:
    """Says what chose the data directory, for error messages."""
    if override:
        return "given by --data-dir / data_dir"
    if os.environ.get("HALLUGRAPH_DATA_DIR"):
        return "given by $HALLUGRAPH_DATA_DIR"
    return "the default, ../shared/data beside the checkout"


def data_file(
    parts: tuple[str, str], data_dir: str | os.PathLike[str] | None, dataset: str
) -> Path:
    root = _config_data_dir(data_dir)
    path = root.joinpath(*parts)
    if not path.is_file():
        raise DatasetError(
            f"{dataset}: data file not found: {path}. Looked in the data directory {root} "
            f"({_where(data_dir)}); --data-dir or $HALLUGRAPH_DATA_DIR set that location, a folder "
            f"holding {'/'.join(parts)}"
        )
    return path


def take(examples: list[Example], num_samples: int | None) -> list[Example]:
    if num_samples is None:
        return examples
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 0:
        raise DatasetError(
            f"num_samples must be a non-negative integer or None, got {num_samples!r}"
        )
    return examples[:num_samples]


def _not_utf8(path: Path, err: UnicodeDecodeError) -> DatasetError:
    return DatasetError(
        f"{path}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start} of "
        "the block read); save the file as UTF-8"
    )


def read_text_file(path: Path) -> str:
    """The whole file as text (UTF-8, a BOM dropped); :class:`DatasetError` naming the file
    when it is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise _not_utf8(path, err) from None


def open_csv(path: Path) -> io.StringIO:
    return io.StringIO(read_text_file(path), newline="")


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(1-based line number, record)`` for each non-blank line; each must be a JSON object."""
    try:
        yield from iter_jsonl_lines(path)
    except UnicodeDecodeError as err:
        raise _not_utf8(path, err) from None


def iter_jsonl_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DatasetError(
                    f"{path}: line {lineno}: malformed JSON: {err.msg} (column {err.colno})"
                ) from None
            if not isinstance(record, dict):
                raise DatasetError(
                    f"{path}: line {lineno}: expected a JSON object, got {type(record).__name__}"
                )
            yield lineno, record


def require_fields(
    record: Mapping[str, Any], keys: tuple[str, ...], path: Path, where: str
) -> None:
    missing = [k for k in keys if k not in record]
    if missing:
        raise DatasetError(
            f"{path}: {where}: missing required field(s) {', '.join(map(repr, missing))} "
            f"(has {', '.join(map(repr, record)) or 'none'})"
        )


def dedup(items: Any) -> tuple[str, ...]:
    """Non-empty strings, stripped, first occurrence kept."""
    seen: dict[str, None] = {}
    for item in items:
        text = str(item).strip()
        if text and text not in seen:
            seen[text] = None
    return tuple(seen)


def split_list_cell(cell: str) -> list[str]:
    """A CSV list cell: a JSON list, or items separated by ``"; "``.

    A stray ``;`` at either end of an item is dropped.
    """
    text = cell.strip()
    if text.startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, list):
            return [str(v) for v in value]
    return [part.strip().strip(";").strip() for part in text.split(LIST_SEPARATOR)]


# ---------------------------------------------------------------------------------------------
# built-in datasets
