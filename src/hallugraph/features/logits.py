"""Token-probability statistics: read from the manifest, no tensor needed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from hallugraph.features.base import Statistic, register


def answer_content(trace: Mapping[str, Any]) -> slice:
    """Answer positions without the final end-of-turn token (when the model stopped).

    Falls back to every answer position when the answer is nothing but that token.
    """
    n = int(trace["answer_len"])
    if trace.get("finished") and n > 1:
        n -= 1
    return slice(0, n)


@register
class LogitStats(Statistic):
    """Log-probabilities and entropies of the answer's content tokens, from the manifest."""

    name = "logit"
    outputs = ("log_perplexity", "mean_logprob", "min_logprob", "mean_entropy", "max_entropy")

    def compute(self, trace: Mapping[str, Any], run_info: Mapping[str, Any]) -> dict[str, float]:
        span = answer_content(trace)
        lp = np.asarray(trace["token_logprobs"], dtype=np.float64)[span]
        ent = np.asarray(trace["token_entropy"], dtype=np.float64)[span]
        return {
            "log_perplexity": -lp.mean(),
            "mean_logprob": lp.mean(),
            "min_logprob": lp.min(),
            "mean_entropy": ent.mean(),
            "max_entropy": ent.max(),
        }


@register
class AnswerLength(Statistic):
    """``[n]``: the number of answer content tokens (without the final end-of-turn token), a
    control for detectors that might only read how long the answer is."""

    name = "answer_length"

    def compute(self, trace: Mapping[str, Any], run_info: Mapping[str, Any]) -> np.ndarray:
        span = answer_content(trace)
        return np.array([span.stop - span.start], np.float32)
