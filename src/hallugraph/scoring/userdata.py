"""Your own labeled answers -> a labeled run, ready for ``hallugraph train``.

A JSONL or CSV file with ``question``, ``answer``, ``label`` (1 = hallucinated, 0 = correct)
and optionally ``context``, ``id`` and ``group`` (answers sharing a group, e.g. several answers
to one question, never fall on both sides of a split; default: the question text). Each answer
is teacher-forced through the model (:func:`hallugraph.pipeline.run_extract`) and labeled with
its ``label`` (passed as ``given_label``, which :func:`hallugraph.labels.label_run` takes for
teacher-forced traces).

The same works by hand: name the label column ``given_label``, then
``hallugraph extract --dataset FILE --out RUN`` and ``hallugraph label RUN``.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from hallugraph.data import DatasetError, Example, load_custom

_TRUE = {"1", "true", "yes", "hallucinated"}
_FALSE = {"0", "false", "no", "correct"}


def _label(value: Any, path: Path, line: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float) and value in (0, 1):
        return int(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return int(value.strip().lower() in _TRUE)
    raise DatasetError(
        f"{path}: line {line}: label must be 1 (hallucinated) or 0 (correct), not {value!r}"
    )


def load_labeled(path: str | os.PathLike[str]) -> list[Example]:
    """The file's answers as teacher-forced examples carrying ``given_label`` and ``group``."""
    p = Path(path)
    out = []
    for ex in load_custom(p):
        line = ex.meta.get("line")
        if ex.answer is None:
            raise DatasetError(f"{p}: line {line}: missing or empty answer (column 'answer')")
        label_col = "given_label" if "given_label" in ex.meta else "label"
        if label_col not in ex.meta:
            raise DatasetError(f"{p}: line {line}: missing label (column 'label': 1 or 0)")
        label = _label(ex.meta[label_col], p, line)
        group = str(ex.meta.get("group") or ex.question)
        out.append(replace(ex, meta={**ex.meta, "given_label": label, "group": group}))
    labels = {e.meta["given_label"] for e in out}
    if labels != {0, 1}:
        raise DatasetError(f"{p}: every label is {labels.pop()}; training needs both 0 and 1")
    return out


def extract_labeled(
    path: str | os.PathLike[str], run: str | os.PathLike[str], *, model: str, device: Any = None
) -> Path:
    """Extract and label the answers of ``path`` into the run folder ``run`` (resumable)."""
    from hallugraph.labels import label_run
    from hallugraph.pipeline import run_extract

    examples = load_labeled(path)
    summary = run_extract(model=model, dataset=str(path), out=run, examples=examples, device=device)
    print(summary.render())
    print(label_run(run, spot_check=0).render())
    return Path(run)
