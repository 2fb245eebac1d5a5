"""LLM-Check's attention score (Sriramanan et al., NeurIPS 2024).

The attention map of a head restricted to the response tokens is lower triangular (causal), so
its log-determinant is the sum of the log of its diagonal: the attention each token pays to
itself. The reference code (``common_utils.get_attn_eig_prod``) takes, per head, the *mean* of
``log diag(A[r, r])`` over the response span ``r = [len(prompt), len(prompt + response))``
(template closing token included) and sums the heads of one layer. This statistic keeps the
per-head means so a detector can sum them (the paper's score) or learn weights over them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from hallugraph.features.base import Statistic, register
from hallugraph.features.hidden import answer_positions

ATTN_FLOOR = 1e-8
"""Self-attention weights below this are clamped before the log. fp16 storage flushes weights
below ~3e-8 to 0, whose log would be -inf."""


def llmcheck_attn_score(attn: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Mean of ``log A[t, t]`` over ``positions``: attention maps ``[..., S, S]`` -> ``[...]``."""
    diag = np.diagonal(np.asarray(attn), axis1=-2, axis2=-1)[..., positions]
    diag = np.maximum(diag.astype(np.float64), ATTN_FLOOR)
    return np.log(diag).mean(axis=-1)


@register
class LLMCheckAttn(Statistic):
    """``[L, heads]``: mean log self-attention weight over the answer tokens (final
    end-of-turn token included, as the reference's response span), per layer and head."""

    name = "llmcheck_attn"
    fields = ("attentions",)

    def params(self) -> dict[str, Any]:
        return {"floor": ATTN_FLOOR, "span": "answer+eos"}

    def compute(self, trace: Mapping[str, Any], run_info: Mapping[str, Any]) -> np.ndarray:
        pos = answer_positions(trace)
        return llmcheck_attn_score(trace["attentions"], pos).astype(np.float32)
