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

from hallugraph.labels.normalize import (
    HALLUCINATED,
    NOT_HALLUCINATED,
    answer_tokens,
    lcs_length,
    match_label,
    normalize_answer,
    rouge_l,
)
from hallugraph.labels.rules import METHODS, halueval_label, label_row, truthfulqa_label
from hallugraph.labels.run import SPOT_CHECK, LabelSummary, label_run

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
