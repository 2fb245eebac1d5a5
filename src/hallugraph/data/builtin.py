"""The built-in benchmarks: TriviaQA, TruthfulQA, HaluEval-QA (and its teacher-forced variant).

The files live under :func:`hallugraph.config.data_dir` (``--data-dir``,
``$HALLUGRAPH_DATA_DIR``, or ``../shared/data`` beside the checkout)::

    triviaqa/validation_unfiltered.jsonl
    truthfulqa/TruthfulQA.csv
    halueval_qa/qa_one_turn.jsonl, halueval_qa/qa_multi_turn.jsonl

Every loader returns a list of :class:`~hallugraph.data.example.Example` in file order, with
ids that are stable across runs.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from dataclasses import replace

from hallugraph.data.example import (
    HALUEVAL_MULTI_TURN,
    HALUEVAL_ONE_TURN,
    TRIVIAQA_FILE,
    TRUTHFULQA_FILE,
    DatasetError,
    Example,
    data_file,
    dedup,
    iter_jsonl,
    open_csv,
    require_fields,
    split_list_cell,
    take,
)


def load_triviaqa(
    data_dir: str | os.PathLike[str] | None = None, num_samples: int | None = None
) -> list[Example]:
    """TriviaQA unfiltered validation (11,313 questions, no context).

    Ids are ``tqa_unf_val_{idx}``; references are the answer value followed by its aliases.
    """
    path = data_file(TRIVIAQA_FILE, data_dir, "triviaqa")
    out: list[Example] = []
    for lineno, rec in iter_jsonl(path):
        require_fields(rec, ("idx", "question", "answers"), path, f"line {lineno}")
        answers = rec["answers"]
        if isinstance(answers, str):
            answers = [answers]
        out.append(
            Example(
                id=f"tqa_unf_val_{rec['idx']}",
                question=str(rec["question"]).strip(),
                references=dedup(answers),
                meta={"idx": rec["idx"]},
            )
        )
        if num_samples is not None and len(out) >= num_samples:
            break
    return take(out, num_samples)


def load_truthfulqa(
    data_dir: str | os.PathLike[str] | None = None, num_samples: int | None = None
) -> list[Example]:
    """TruthfulQA generation split (817 questions, no context).

    Ids are ``truthfulqa_{row:04d}`` (0-based data row). References: Best Answer first, then
    the Correct Answers, deduplicated; ``incorrect``: the Incorrect Answers. ``meta`` holds
    ``type``, ``category`` and ``source``.
    """
    path = data_file(TRUTHFULQA_FILE, data_dir, "truthfulqa")
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
    with open_csv(path) as fh:
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
                    references=dedup(
                        [row["Best Answer"], *split_list_cell(row["Correct Answers"])]
                    ),
                    incorrect=dedup(split_list_cell(row["Incorrect Answers"])),
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
    return take(out, num_samples)


def load_halueval_qa(
    data_dir: str | os.PathLike[str] | None = None, num_samples: int | None = None
) -> list[Example]:
    """HaluEval QA (500 HotpotQA questions with their knowledge as context).

    ``qa_one_turn.jsonl`` and ``qa_multi_turn.jsonl`` hold the same questions in the same
    order; ``incorrect`` is ``(one-turn hallucinated answer, multi-turn hallucinated answer)``
    (kept in that order even where both are the same text). Ids are ``halueval_qa_{line:04d}``
    (0-based record). The two files are checked to be aligned question by question.
    """
    one_path = data_file(HALUEVAL_ONE_TURN, data_dir, "halueval_qa")
    multi_path = data_file(HALUEVAL_MULTI_TURN, data_dir, "halueval_qa")
    keys = ("knowledge", "question", "right_answer", "hallucinated_answer")
    one = list(iter_jsonl(one_path))
    multi = list(iter_jsonl(multi_path))
    if len(one) != len(multi):
        raise DatasetError(
            f"halueval_qa: {one_path.name} has {len(one)} records but {multi_path.name} has "
            f"{len(multi)}; the two files must hold the same questions in the same order"
        )
    out: list[Example] = []
    for i, ((line_a, a), (line_b, b)) in enumerate(zip(one, multi, strict=True)):
        require_fields(a, keys, one_path, f"line {line_a}")
        require_fields(b, keys, multi_path, f"line {line_b}")
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
    return take(out, num_samples)


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
    return take(out, num_samples)


DATASETS: dict[str, Callable[..., list[Example]]] = {
    "triviaqa": load_triviaqa,
    "truthfulqa": load_truthfulqa,
    "halueval_qa": load_halueval_qa,
    "halueval_qa_tf": load_halueval_qa_teacher_forced,
}
