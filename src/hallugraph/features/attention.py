"""Attention-map statistics: LapEigvals' Laplacian spectra and Lookback Lens' lookback ratios.

Both read ``attentions`` ``[L, heads, S, S]`` (row = query, column = key, zero above the
diagonal, softmax weights stored in fp16) and return one value set per layer and head. All
arithmetic is float64 (fp16 maps are summed with a float64 accumulator, never copied whole);
the result is float32.

**Generation steps.** Both reference implementations read ``generate(...,
output_attentions=True)``: the prefill computes the prompt rows, decode step ``t`` the row of the
token chosen at step ``t - 1``, and the last answer token is never fed. So the rows the
references see are ``0 .. S - 2``; the row of the last answer token (which hallugraph feeds once
more, see ``docs/EXTRACTION.md``) is never used here either.

``lapeig`` ``[L, heads, k]`` — LapEigvals (Binkowski et al., EMNLP 2025; reference
``graphml-lab-pwr/lapeigvals``). Each map ``A`` is the weighted adjacency matrix of a directed
graph over tokens (edge query -> key). The reference's pipeline
(``feature_storage.AttentionAndLaplacianDiagsFeatureStorage`` ->
``attention_weights.laplacian_diagonal_from_attn(item_attn, vertical_edges=False)``) uses, per
layer and head:

* the whole sequence, prompt and answer, without padding and without the last generated token
  (``remove_padding_from_intermediate_states`` drops ``generated_tokens[:, -1]``): here the map
  ``A[:S-1, :S-1]``, ``S' = S - 1`` tokens;
* the degree ``d_i = (sum_j A[j, i]) / (S' - i)``: the attention token ``i`` receives (column
  sum, its self-attention included) divided by its number of edges, the ``S' - i`` tokens
  ``j >= i`` that can attend to it under the causal mask (itself included);
* the Laplacian ``L = D - A``. ``A`` is lower triangular, so ``L`` is too and its eigenvalues are
  its diagonal ``d_i - A[i, i]`` (real; negative when a token attends to itself more than the
  average attention it receives);
* the eigenvalues sorted in descending order and the first ``k`` kept
  (``attn_feats.get_laplacian_eigvals_per_head_topk``).

The reference's ``vertical_edges=False`` means the layers are *not* linked (the module
``laplacian.py`` also holds a stacked-layers graph with a token linked to itself in the next
layer, but the extraction and the probes never call it). The reference keeps only the ``k`` that
fit every sequence (``k <= min S'``). The statistic is computed per trace, before the data set
is known, so a sequence shorter than ``k`` gets NaN *after* its ``S'`` sorted eigenvalues
(never zeros: the position of the first zero would tell a classifier the sequence's length),
and the detector keeps the top ``k' <= min S'`` of its training traces
(:class:`~hallugraph.detectors.lapeigvals.LapEigvals`). Default ``k = 100``: the reference
sweeps ``k`` in {5, 10, 25, 50, 100}; the paper's ablation finds LapEigvals nearly flat in
``k``, best by a hair at 100. The list is sorted, so a detector can take the first ``k' <= k``
columns of the cached statistic (the top-``k'`` eigenvalues) without recomputing it.

``lookback`` / ``lookback_prompt`` ``[L, heads]`` — Lookback Lens (Chuang et al., EMNLP 2024;
reference ``voidism/Lookback-Lens``, ``step01_extract_attns.py``). At generation step ``t``
(generating answer token ``t``) the reference reads the query row that produced it,
``q_t = prompt_len - 1 + t``, and computes per head

    ratio_t = mean(A[q_t, context]) / (mean(A[q_t, context]) + mean(A[q_t, new]))

with ``new = [context_end, q_t]``: the previously generated tokens, the query token itself
included (for ``t >= 1`` the query *is* answer token ``t - 1``). The classifier's feature is
the mean of ``ratio_t`` over the span (``step03_lookback_lens.extract_time_series_features``;
for a whole response, every generated step, end-of-turn included). Here:

* steps ``t = 1 .. answer_len - 1``: the query rows ``prompt_len .. S - 2`` (every answer token
  but the last), each with ``new`` = the answer tokens ``prompt_len .. q_t``;
* step ``t = 0`` is left out: its query is the last prompt token and it has no previously
  generated token (the paper's mean over ``t - 1 = 0`` tokens). The reference's split point is
  the start of its response header (``"\\n#Answer#:"``), so those header tokens fill its
  ``new`` side at every step; in a chat prompt the header (``<|im_start|>assistant\\n``) is
  part of the prompt, and no answer token exists before step 1. An answer of a single token
  (nothing but end-of-turn) keeps step 0, whose ratio is 1 (no generated token to look at);
* ``context``: ``lookback`` uses the trace's ``context_span`` (the retrieved document, RAG
  datasets) and falls back to the whole prompt when the trace has none; ``lookback_prompt``
  always uses the whole prompt ``[0, prompt_len)``. The reference's context is everything before
  its response header: instruction, document and question. With a span, prompt tokens outside
  it (chat template, instruction, question) count on neither side, as in the paper's
  definition (context vs. new tokens);
* a head that gives both sides exactly zero weight (fp16 underflow) gets ratio 0.5.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from hallugraph.features.base import Statistic, register

LAPEIG_K = 100
"""Default number of Laplacian eigenvalues kept per layer and head."""

CONTEXTS = ("span", "prompt")


def laplacian_diagonal(attn: np.ndarray) -> np.ndarray:
    """LapEigvals' Laplacian eigenvalues of causal attention maps ``[..., S, S]`` -> ``[..., S]``.

    ``L = D - A`` with ``D_ii = (sum_j A[j, i]) / (S - i)`` (attention received over the number
    of tokens that can attend to ``i``); ``L`` is lower triangular, so its eigenvalues are its
    diagonal ``D_ii - A[i, i]``, returned in token order. Assumes ``A`` is zero above the
    diagonal (it then needs no masking).
    """
    attn = np.asarray(attn)
    S = attn.shape[-1]
    received = attn.sum(axis=-2, dtype=np.float64)  # column sums
    n_edges = np.arange(S, 0, -1, dtype=np.float64)  # S - i
    self_attn = np.diagonal(attn, axis1=-2, axis2=-1).astype(np.float64)
    return received / n_edges - self_attn


def top_k_desc(values: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` largest of ``values`` ``[..., n]`` in descending order, NaN-padded after the
    ``n`` real values when ``n < k`` (a padding that cannot pass for an eigenvalue)."""
    values = np.asarray(values, dtype=np.float64)
    desc = -np.sort(-values, axis=-1)[..., :k]
    pad = k - desc.shape[-1]
    if pad > 0:
        desc = np.concatenate([desc, np.full(desc.shape[:-1] + (pad,), np.nan)], axis=-1)
    return desc


@register
class LapEig(Statistic):
    """``[L, heads, k]``: the top-``k`` Laplacian eigenvalues (descending, NaN-padded) of every
    attention map over the whole sequence but its last token (see the module docstring)."""

    name = "lapeig"
    fields = ("attentions",)

    def __init__(self, k: int = LAPEIG_K) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, not {k}")
        self.k = int(k)

    def params(self) -> dict[str, Any]:
        return {"k": self.k, "tokens": "sequence-without-last", "sort": "desc", "pad": "nan"}

    def compute(self, trace: Mapping[str, Any], run_info: Mapping[str, Any]) -> np.ndarray:
        attn = trace["attentions"]
        S = int(np.shape(attn)[-1])
        n = max(S - 1, 1)  # the last token is never fed by generate; keep one token at least
        eig = laplacian_diagonal(attn[..., :n, :n])
        return top_k_desc(eig, self.k).astype(np.float32)


def context_columns(trace: Mapping[str, Any], context: str) -> slice:
    """Key columns of the context: the trace's ``context_span`` (``context="span"``, when the
    trace has one) or the whole prompt."""
    if context not in CONTEXTS:
        raise ValueError(f"context must be one of {CONTEXTS}, not {context!r}")
    span = trace.get("context_span")
    if context == "span" and span:
        start, end = int(span[0]), int(span[1])
        if end > start:
            return slice(start, end)
    return slice(0, int(trace["prompt_len"]))


def lookback_steps(attn: np.ndarray, prompt_len: int, answer_len: int, ctx: slice) -> np.ndarray:
    """Lookback ratio of each of the answer's generation steps: ``[..., S, S]`` -> ``[..., steps]``.

    Steps ``t = 1 .. answer_len - 1`` read the query row ``q = prompt_len - 1 + t``; its ratio
    is ``c / (c + g)`` with ``c`` the mean weight on the ``ctx`` columns and ``g`` the mean
    weight on the answer columns ``prompt_len .. q`` (the query itself included). With a
    one-token answer, step 0 (row ``prompt_len - 1``, no answer token before it: ``g = 0``) is
    the single step instead. Assumes zeros above the diagonal. (The per-token scores of
    :mod:`hallugraph.scoring.tokens`.)
    """
    attn = np.asarray(attn)
    p, n = int(prompt_len), int(answer_len)
    if n >= 2:
        rows = attn[..., p : p + n - 1, :].astype(np.float64)  # queries p .. S-2
        # row q = p + r has r + 1 answer keys p..q; the columns after q are causal zeros
        gen = rows[..., p:].sum(axis=-1) / np.arange(1, n, dtype=np.float64)
    else:
        rows = attn[..., p - 1 : p, :].astype(np.float64)
        gen = np.zeros(rows.shape[:-1])
    c = rows[..., ctx].mean(axis=-1)
    den = c + gen
    return np.divide(c, den, out=np.full_like(den, 0.5), where=den > 0)


def lookback_ratio(attn: np.ndarray, prompt_len: int, answer_len: int, ctx: slice) -> np.ndarray:
    """Mean lookback ratio over the answer's generation steps (:func:`lookback_steps`): maps
    ``[..., S, S]`` -> ``[...]``."""
    return lookback_steps(attn, prompt_len, answer_len, ctx).mean(axis=-1)


@register
class Lookback(Statistic):
    """``[L, heads]``: Lookback Lens' lookback ratio, averaged over the answer's generation
    steps; context = the trace's ``context_span`` when it has one, else the whole prompt."""

    name = "lookback"
    fields = ("attentions",)
    context = "span"

    def __init__(self, context: str | None = None) -> None:
        if context is not None:
            if context not in CONTEXTS:
                raise ValueError(f"context must be one of {CONTEXTS}, not {context!r}")
            self.context = context

    def params(self) -> dict[str, Any]:
        return {"context": self.context, "steps": "1..answer_len-1", "new": "answer[:q+1]"}

    def compute(self, trace: Mapping[str, Any], run_info: Mapping[str, Any]) -> np.ndarray:
        ctx = context_columns(trace, self.context)
        out = lookback_ratio(trace["attentions"], trace["prompt_len"], trace["answer_len"], ctx)
        return out.astype(np.float32)


@register
class LookbackPrompt(Lookback):
    """``[L, heads]``: the lookback ratio with the whole prompt as the context."""

    name = "lookback_prompt"
    context = "prompt"
