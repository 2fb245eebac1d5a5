"""Benchmark data: TriviaQA, TruthfulQA, HaluEval-QA and custom JSONL/CSV files.

Every loader returns a list of :class:`Example` in file order, with ids that are stable
across runs. The built-in files live under :func:`hallugraph.config.data_dir` (``--data-dir``,
``$HALLUGRAPH_DATA_DIR``, or ``../shared/data`` beside the checkout)::

    triviaqa/validation_unfiltered.jsonl
    truthfulqa/TruthfulQA.csv
    halueval_qa/qa_one_turn.jsonl, halueval_qa/qa_multi_turn.jsonl

Only the standard library is used.
"""

from __future__ import annotations

import csv
import io
import json
import os
import string
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hallugraph.config import data_dir as _config_data_dir

__all__ = [
    "CONTEXT_TEMPLATE",
    "DATASETS",
    "DEFAULT_TEMPLATE",
    "DatasetError",
    "Example",
    "FIELDS",
    "build_prompt",
    "load_custom",
    "load_dataset",
    "load_halueval_qa",
    "load_triviaqa",
    "load_truthfulqa",
    "parse_columns",
]

DEFAULT_TEMPLATE = "Answer the question concisely in one sentence.\n\nQuestion: {question}\nAnswer:"
CONTEXT_TEMPLATE = (
    "Answer the question concisely in one sentence, using the context.\n\n"
    "Context: {context}\n\nQuestion: {question}\nAnswer:"
)

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


def _data_file(
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


def _take(examples: list[Example], num_samples: int | None) -> list[Example]:
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


def _read_text(path: Path) -> str:
    """The whole file as text (UTF-8, a BOM dropped); :class:`DatasetError` naming the file
    when it is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise _not_utf8(path, err) from None


def _open_csv(path: Path) -> io.StringIO:
    return io.StringIO(_read_text(path), newline="")


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(1-based line number, record)`` for each non-blank line; each must be a JSON object."""
    try:
        yield from _iter_jsonl_lines(path)
    except UnicodeDecodeError as err:
        raise _not_utf8(path, err) from None


def _iter_jsonl_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
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


def _require(record: Mapping[str, Any], keys: tuple[str, ...], path: Path, where: str) -> None:
    missing = [k for k in keys if k not in record]
    if missing:
        raise DatasetError(
            f"{path}: {where}: missing required field(s) {', '.join(map(repr, missing))} "
            f"(has {', '.join(map(repr, record)) or 'none'})"
        )


def _dedup(items: Any) -> tuple[str, ...]:
    """Non-empty strings, stripped, first occurrence kept."""
    seen: dict[str, None] = {}
    for item in items:
        text = str(item).strip()
        if text and text not in seen:
            seen[text] = None
    return tuple(seen)


def _split_list_cell(cell: str) -> list[str]:
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


def load_triviaqa(
    data_dir: str | os.PathLike[str] | None = None, num_samples: int | None = None
) -> list[Example]:
    """TriviaQA unfiltered validation (11,313 questions, no context).

    Ids are ``tqa_unf_val_{idx}``; references are the answer value followed by its aliases.
    """
    path = _data_file(TRIVIAQA_FILE, data_dir, "triviaqa")
    out: list[Example] = []
    for lineno, rec in _iter_jsonl(path):
        _require(rec, ("idx", "question", "answers"), path, f"line {lineno}")
        answers = rec["answers"]
        if isinstance(answers, str):
            answers = [answers]
        out.append(
            Example(
                id=f"tqa_unf_val_{rec['idx']}",
                question=str(rec["question"]).strip(),
                references=_dedup(answers),
                meta={"idx": rec["idx"]},
            )
        )
        if num_samples is not None and len(out) >= num_samples:
            break
    return _take(out, num_samples)


def load_truthfulqa(
    data_dir: str | os.PathLike[str] | None = None, num_samples: int | None = None
) -> list[Example]:
    """TruthfulQA generation split (817 questions, no context).

    Ids are ``truthfulqa_{row:04d}`` (0-based data row). References: Best Answer first, then
    the Correct Answers, deduplicated; ``incorrect``: the Incorrect Answers. ``meta`` holds
    ``type``, ``category`` and ``source``.
    """
    path = _data_file(TRUTHFULQA_FILE, data_dir, "truthfulqa")
    needed = (
        "Type",
        "Category",
        "Question",
        "Best Answer",
        "Correct Answers",
        "Incorrect Answers",
        "Source",
    )
    out: list[Example] = []
    with _open_csv(path) as fh:
        reader = csv.DictReader(fh)
        header = [h.lstrip("\ufeff").strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        missing = [c for c in needed if c not in header]
        if missing:
            raise DatasetError(
                f"{path}: missing required column(s) {', '.join(map(repr, missing))} "
                f"(header: {', '.join(map(repr, header))})"
            )
        for row_idx, row in enumerate(reader):
            out.append(
                Example(
                    id=f"truthfulqa_{row_idx:04d}",
                    question=row["Question"].strip(),
                    references=_dedup(
                        [row["Best Answer"], *_split_list_cell(row["Correct Answers"])]
                    ),
                    incorrect=_dedup(_split_list_cell(row["Incorrect Answers"])),
                    meta={
                        "type": row["Type"],
                        "category": row["Category"],
                        "source": row["Source"],
                        "row": row_idx,
                    },
                )
            )
            if num_samples is not None and len(out) >= num_samples:
                break
    return _take(out, num_samples)


def load_halueval_qa(
    data_dir: str | os.PathLike[str] | None = None, num_samples: int | None = None
) -> list[Example]:
    """HaluEval QA (500 HotpotQA questions with their knowledge as context).

    ``qa_one_turn.jsonl`` and ``qa_multi_turn.jsonl`` hold the same questions in the same
    order; ``incorrect`` is ``(one-turn hallucinated answer, multi-turn hallucinated answer)``
    (kept in that order even where both are the same text). Ids are ``halueval_qa_{line:04d}``
    (0-based record). The two files are checked to be aligned question by question.
    """
    one_path = _data_file(HALUEVAL_ONE_TURN, data_dir, "halueval_qa")
    multi_path = _data_file(HALUEVAL_MULTI_TURN, data_dir, "halueval_qa")
    keys = ("knowledge", "question", "right_answer", "hallucinated_answer")
    one = list(_iter_jsonl(one_path))
    multi = list(_iter_jsonl(multi_path))
    if len(one) != len(multi):
        raise DatasetError(
            f"halueval_qa: {one_path.name} has {len(one)} records but {multi_path.name} has "
            f"{len(multi)}; the two files must hold the same questions in the same order"
        )
    out: list[Example] = []
    for i, ((line_a, a), (line_b, b)) in enumerate(zip(one, multi, strict=True)):
        _require(a, keys, one_path, f"line {line_a}")
        _require(b, keys, multi_path, f"line {line_b}")
        if str(a["question"]).strip() != str(b["question"]).strip():
            raise DatasetError(
                f"halueval_qa: {one_path.name} and {multi_path.name} are misaligned at record {i} "
                f"(lines {line_a}/{line_b}): question {a['question']!r} vs {b['question']!r}"
            )
        if num_samples is not None and len(out) >= num_samples:
            continue  # keep verifying alignment over the whole file
        out.append(
            Example(
                id=f"halueval_qa_{i:04d}",
                question=str(a["question"]).strip(),
                references=(str(a["right_answer"]).strip(),),
                incorrect=(
                    str(a["hallucinated_answer"]).strip(),
                    str(b["hallucinated_answer"]).strip(),
                ),
                context=str(a["knowledge"]),
                meta={"line": i},
            )
        )
    return _take(out, num_samples)


def load_halueval_qa_teacher_forced(
    data_dir: str | os.PathLike[str] | None = None, num_samples: int | None = None
) -> list[Example]:
    """HaluEval QA with given answers (1,500): per question its right answer and its two
    hallucinated answers, each to be teacher-forced after context + question.

    Ids are ``halueval_qa_{line:04d}_{right|hal1|hal2}``; ``meta`` holds ``given_label``
    (0 = right answer, 1 = hallucinated) and ``group`` (the question's id, so that the three
    answers of one question never fall in different splits). ``num_samples`` counts answers,
    in file order (question 0's three answers first).
    """
    out: list[Example] = []
    for ex in load_halueval_qa(data_dir):
        given = [("right", ex.references[0], 0)]
        given += [(f"hal{k + 1}", a, 1) for k, a in enumerate(ex.incorrect)]
        for tag, answer, label in given:
            meta = {**ex.meta, "given_label": label, "group": ex.id}
            out.append(replace(ex, id=f"{ex.id}_{tag}", answer=answer, meta=meta))
    return _take(out, num_samples)


DATASETS: dict[str, Callable[..., list[Example]]] = {
    "triviaqa": load_triviaqa,
    "truthfulqa": load_truthfulqa,
    "halueval_qa": load_halueval_qa,
    "halueval_qa_tf": load_halueval_qa_teacher_forced,
}


# ---------------------------------------------------------------------------------------------
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
        return _dedup(value)
    if isinstance(value, dict):
        raise DatasetError(
            f"{path}: {where}: column {column!r} must hold a list or a string, got an object"
        )
    text = str(value)
    if csv_cell:
        return _dedup(_split_list_cell(text))
    if text.strip().startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, list):
            return _dedup(parsed)
    return _dedup([text])


def _read_records(path: Path) -> tuple[list[tuple[int, dict[str, Any]]], list[str], bool]:
    """``([(line, record)], header, is_csv)``; header is the union of keys for JSONL."""
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        with _open_csv(path) as fh:
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
                data = json.loads(_read_text(path))
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
            records = list(_iter_jsonl(path))
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
    same name if the file has one (``question`` is required). A column the mapping names
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
    mapping = {f: f for f in FIELDS}
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
    return _take(out, num_samples)


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
    _take([], num_samples)  # validate early
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


# ---------------------------------------------------------------------------------------------
# prompts

_FORMATTER = string.Formatter()
_TEMPLATE_FIELDS = ("question", "context")


def build_prompt(
    example: Example, template: str | None = None
) -> tuple[str, tuple[int, int] | None]:
    """The user-message text and the character span ``[start, end)`` of the context in it.

    Uses :data:`CONTEXT_TEMPLATE` when the example has a context, else
    :data:`DEFAULT_TEMPLATE`, unless ``template`` is given (it may use ``{question}`` and
    ``{context}``). The span satisfies ``text[start:end] == example.context``; it is ``None``
    when the example has no context or the template does not include it.
    """
    if template is None:
        template = DEFAULT_TEMPLATE if example.context is None else CONTEXT_TEMPLATE
    values = {"question": example.question, "context": example.context}
    parts: list[str] = []
    pos = 0
    span: tuple[int, int] | None = None
    try:
        parsed = list(_FORMATTER.parse(template))
    except ValueError as err:
        raise DatasetError(f"bad prompt template {template!r}: {err}") from None
    for literal, field_name, spec, conversion in parsed:
        parts.append(literal)
        pos += len(literal)
        if field_name is None:
            continue
        root = field_name.split(".", 1)[0].split("[", 1)[0]
        if root not in _TEMPLATE_FIELDS:
            raise DatasetError(
                f"prompt template field {{{field_name}}} is not allowed; "
                f"use {{question}} and {{context}}"
            )
        if root == "context" and example.context is None:
            raise DatasetError(
                f"prompt template uses {{context}} but example {example.id!r} has no context"
            )
        try:
            obj, _ = _FORMATTER.get_field(field_name, (), values)
            obj = _FORMATTER.convert_field(obj, conversion)
            piece = _FORMATTER.format_field(obj, spec or "")
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as err:
            raise DatasetError(f"bad prompt template field {{{field_name}}}: {err}") from None
        if span is None and field_name == "context" and piece == example.context:
            span = (pos, pos + len(piece))
        parts.append(piece)
        pos += len(piece)
    return "".join(parts), span
