"""Label every trace of a run: the rule per row, the manifest rewritten with the labels, a
spot-check sample and a summary."""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from hallugraph.io import atomic_write_text
from hallugraph.labels.normalize import HALLUCINATED, METHODS, NOT_HALLUCINATED, SPOT_CHECK
from hallugraph.labels.rules import answer_of, label_row, rule_of
from hallugraph.labels.similarity import embedder, embedding_text
from hallugraph.store import TraceStore
from hallugraph.store.layout import MANIFEST


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
        todo = [r for r in rows if rule_of(r, dataset) == "truthfulqa"]
        if todo:  # embed every text once, in batches, before scoring row by row
            texts = {embedding_text(answer_of(r)) for r in todo}
            for r in todo:
                texts.update(embedding_text(x) for x in r.get("references") or [])
                texts.update(embedding_text(x) for x in r.get("incorrect") or [])
            embedder().encode(sorted(t for t in texts if t.strip()))

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
                "answer": answer_of(r),
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
        embedder().cache.clear()
    return summary
