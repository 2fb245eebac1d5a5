"""Per-token and per-span scores, for the detectors that have them.

* **Logit baselines** (``perplexity``, ``min_logprob``, ``mean_entropy``): each answer content
  token's own value (its negative log-prob, log-prob, or next-token entropy) through the
  detector's fitted squashing, so a token's score is on the answer score's scale (the answer's
  ``min_logprob`` score is its highest token score).
* **Lookback Lens**: spans of :data:`SPAN_TOKENS` answer tokens (the reference's sliding-window
  chunk size, 8), each scored by the fitted classifier on the mean lookback ratio of the
  generation steps inside the span (step 0, which the answer-level statistic also leaves out,
  is skipped).

Offsets are character spans ``[start, end)`` in the answer text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from hallugraph.features.attention import lookback_steps
from hallugraph.features.logits import answer_content

SPAN_TOKENS = 8


@dataclass
class TokenScore:
    """One token (or span) of the answer and its score in [0, 1]."""

    text: str
    start: int
    end: int
    score: float


def answer_spans(tokenizer: Any, answer: str, ids: list[int]) -> list[tuple[int, int]]:
    """Character span in ``answer`` of each token of ``ids``: the tokenizer's offsets when
    ``answer`` tokenizes to ``ids`` (a given answer), else by decoding prefixes of ``ids``
    (a generated answer)."""
    enc = tokenizer(answer, add_special_tokens=False, return_offsets_mapping=True)
    if list(enc["input_ids"]) == list(ids):
        return [(int(s), int(e)) for s, e in enc["offset_mapping"]]
    full = tokenizer.decode(ids, skip_special_tokens=True)
    lead = len(full) - len(full.lstrip())
    spans, prev = [], 0
    for k in range(len(ids)):
        cur = len(tokenizer.decode(ids[: k + 1], skip_special_tokens=True))
        spans.append((max(prev - lead, 0), max(min(cur - lead, len(answer)), 0)))
        prev = cur
    return spans


def _squash(det: Any, raw: np.ndarray) -> np.ndarray:
    z = np.clip((raw - det.center_) / det.scale_, -50, 50)
    return 1.0 / (1.0 + np.exp(-z))


def _logit_values(det: Any, trace: Mapping[str, Any], n: int) -> np.ndarray | None:
    lp = np.asarray(trace["token_logprobs"], dtype=np.float64)[:n]
    ent = np.asarray(trace["token_entropy"], dtype=np.float64)[:n]
    per_token = {
        "logit.log_perplexity": -lp,
        "logit.min_logprob": lp,
        "logit.mean_entropy": ent,
    }
    column = per_token.get(getattr(det, "output", None))
    return None if column is None else det.sign * column


def _lookback_spans(det: Any, trace: Mapping[str, Any], n: int) -> list[tuple[int, int, float]]:
    from hallugraph.features.attention import context_columns

    ctx = context_columns(trace, det.context)
    steps = lookback_steps(
        trace["attentions"], trace["prompt_len"], trace["answer_len"], ctx
    )  # [L, heads, answer_len - 1]: step t at index t - 1
    out = []
    for a in range(0, n, SPAN_TOKENS):
        b = min(a + SPAN_TOKENS, n)
        lo, hi = max(a, 1) - 1, b - 1  # steps max(a, 1) .. b - 1
        if hi <= lo:
            continue
        feats = steps[..., lo:hi].mean(axis=-1).astype(np.float32).astype(np.float64)
        p = det.model_.predict_proba(feats.reshape(1, -1))[0, 1]
        out.append((a, b, float(p)))
    return out


def token_scores(
    det: Any, trace: Mapping[str, Any], answer: str, tokenizer: Any
) -> list[TokenScore] | None:
    """Per-token (logit baselines) or per-span (Lookback Lens) scores of one trace; ``None``
    for other detectors."""
    name = getattr(det, "name", "")
    n = answer_content(trace).stop
    ids = list(trace["tokens"])[int(trace["prompt_len"]) :][:n]
    if name in ("perplexity", "min_logprob", "mean_entropy"):
        values = _logit_values(det, trace, n)
        if values is None:
            return None
        spans = answer_spans(tokenizer, answer, ids)
        scores = _squash(det, values)
        return [
            TokenScore(answer[s:e], s, e, float(v))
            for (s, e), v in zip(spans, scores, strict=False)
        ]
    if name == "lookback_lens" and "attentions" in trace:
        spans = answer_spans(tokenizer, answer, ids)
        out = []
        for a, b, p in _lookback_spans(det, trace, n):
            s, e = spans[a][0], spans[min(b, len(spans)) - 1][1]
            out.append(TokenScore(answer[s:e], s, e, p))
        return out
    return None
