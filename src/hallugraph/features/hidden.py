"""Hidden-state statistics: the SAPLMA probe inputs and LLM-Check's hidden score.

Every statistic here reads ``hidden_states`` ``[L+1, S, H]`` (index 0 = token embeddings,
index ``L`` = output of the last layer after the final norm) and returns one value set per
layer, so a detector can pick its layer later without recomputing anything.

* ``hidden_last`` ``[L+1, H]``: the hidden state of the last answer *content* token (the final
  end-of-turn token is excluded when the model stopped, see
  :func:`hallugraph.features.logits.answer_content`), the token a SAPLMA probe reads.
* ``hidden_mean`` ``[L+1, H]``: the mean hidden state over the answer content tokens.
* ``llmcheck_hidden`` ``[L+1]``: LLM-Check's hidden score per layer (see
  :class:`LLMCheckHidden` for the exact definition followed).

A trace whose answer is empty (never produced by extraction, handled for robustness) falls back
to the last position of the sequence.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from hallugraph.features.base import Statistic, register
from hallugraph.features.logits import answer_content

LLMCHECK_ALPHA = 1e-3
"""Ridge added to the Gram matrix before the log-det (``alpha`` of LLM-Check's
``centered_svd_val``)."""


def content_positions(trace: Mapping[str, Any]) -> np.ndarray:
    """Sequence positions of the answer's content tokens (final end-of-turn token excluded)."""
    span = answer_content(trace)
    pos = int(trace["prompt_len"]) + np.arange(span.start, span.stop)
    if len(pos) == 0:
        pos = np.array([int(np.shape(trace["hidden_states"])[1]) - 1])
    return pos


def answer_positions(trace: Mapping[str, Any]) -> np.ndarray:
    """Sequence positions of the whole answer (final end-of-turn token included), as LLM-Check's
    response span ``tok_lens = [len(prompt), len(prompt + response)]``."""
    p, n = int(trace["prompt_len"]), int(trace["answer_len"])
    pos = np.arange(p, p + n)
    if len(pos) == 0:
        seq = trace.get("hidden_states", trace.get("attentions"))
        pos = np.array([int(np.shape(seq)[-2]) - 1])
    return pos


def llmcheck_hidden_score(Z: np.ndarray, alpha: float = LLMCHECK_ALPHA) -> np.ndarray:
    """LLM-Check's hidden score of token matrices ``Z`` ``[..., n, H]`` (n tokens).

    Follows the reference ``centered_svd_val``: with the centering matrix ``J = I_H - 11^T/H``
    (centering each token's vector over its H features, *not* over tokens),
    ``Sigma = Z J Z^T + alpha I_n`` is the ``[n, n]`` Gram matrix of the centered tokens and the
    score is the mean log singular value of ``Sigma``, i.e. ``logdet(Sigma) / n``. ``Sigma`` is
    symmetric positive definite, so its singular values are its eigenvalues. float64 inside.
    """
    Z = np.asarray(Z, dtype=np.float64)
    Zc = Z - Z.mean(axis=-1, keepdims=True)  # Z J: J is symmetric and idempotent
    gram = Zc @ np.swapaxes(Zc, -1, -2)
    n = gram.shape[-1]
    gram = gram + alpha * np.eye(n)
    eig = np.linalg.eigvalsh(gram)
    return np.log(np.maximum(eig, alpha * 1e-3)).mean(axis=-1)


@register
class HiddenLast(Statistic):
    """``[L+1, H]``: hidden state of the last answer content token at every layer."""

    name = "hidden_last"
    fields = ("hidden_states",)

    def compute(self, trace: Mapping[str, Any], run_info: Mapping[str, Any]) -> np.ndarray:
        pos = content_positions(trace)[-1]
        return np.asarray(trace["hidden_states"][:, pos, :], dtype=np.float32)


@register
class HiddenMean(Statistic):
    """``[L+1, H]``: mean hidden state over the answer content tokens at every layer."""

    name = "hidden_mean"
    fields = ("hidden_states",)

    def compute(self, trace: Mapping[str, Any], run_info: Mapping[str, Any]) -> np.ndarray:
        pos = content_positions(trace)
        h = np.asarray(trace["hidden_states"][:, pos, :], dtype=np.float64)
        return h.mean(axis=1).astype(np.float32)


@register
class LLMCheckHidden(Statistic):
    """``[L+1]``: LLM-Check's hidden score (Sriramanan et al., NeurIPS 2024) at every layer.

    What the reference code (``common_utils.get_svd_eval`` / ``centered_svd_val``) does, and
    what is followed here:

    * tokens: the response span ``[len(prompt), len(prompt + response))`` (its ``--use_toklens``
      option; the template's closing token is part of it, so the final end-of-turn token is
      included here too); every hidden-state index, embeddings included;
    * ``Sigma = Z^T J Z + alpha I`` with ``Z`` ``[H, n]``, ``J = I_H - 11^T/H``, ``alpha = 1e-3``;
    * score = mean of ``log svdvals(Sigma)`` = ``logdet(Sigma) / n``.

    No sign is implied: a detector orients it on labels.
    """

    name = "llmcheck_hidden"
    fields = ("hidden_states",)

    def params(self) -> dict[str, Any]:
        return {"alpha": LLMCHECK_ALPHA, "span": "answer+eos"}

    def compute(self, trace: Mapping[str, Any], run_info: Mapping[str, Any]) -> np.ndarray:
        pos = answer_positions(trace)
        Z = np.asarray(trace["hidden_states"][:, pos, :], dtype=np.float64)  # [L+1, n, H]
        return llmcheck_hidden_score(Z).astype(np.float32)
