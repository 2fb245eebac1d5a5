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
    """``[log_perplexity, mean_logprob, min_logprob, mean_entropy, max_entropy]`` over the
    answer's content tokens."""

    name = "logit"

    def compute(self, trace: Mapping[str, Any], run_info: Mapping[str, Any]) -> np.ndarray:
        span = answer_content(trace)
        lp = np.asarray(trace["token_logprobs"], dtype=np.float64)[span]
        ent = np.asarray(trace["token_entropy"], dtype=np.float64)[span]
        return np.array([-lp.mean(), lp.mean(), lp.min(), ent.mean(), ent.max()], np.float32)


@register
class AnswerLength(Statistic):
    """``[n]``: the number of answer content tokens (without the final end-of-turn token), a
    control for detectors that might only read how long the answer is."""

    name = "answer_length"

    def compute(self, trace: Mapping[str, Any], run_info: Mapping[str, Any]) -> np.ndarray:
        span = answer_content(trace)
        return np.array([span.stop - span.start], np.float32)
