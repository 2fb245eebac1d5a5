"""HalluShift's features (Dasgupta et al., IJCNN 2025), for a model of any depth.

HalluShift measures how much the internal state *shifts* between layers while the model
generates, and adds a few token-probability features. What the reference implementation
(``sharanya-dasgupta001/hallushift``, ``functions.py``) computes, and how it maps onto a trace:

**Generation steps.** The reference reads ``generate(..., output_hidden_states=True,
output_attentions=True)``: one entry per generated token. Step 0 is the prefill (every prompt
row), step ``t >= 1`` the row of the token chosen at step ``t - 1``. So for an answer of
``n = answer_len`` tokens (its final end-of-turn token included, as generation produced it)
the steps are: the prompt block ``[0, prompt_len)`` and the rows ``prompt_len .. S - 2``. The
row of the last answer token (which hallugraph feeds once more) is never seen by the reference
and is not used here. ``prefill="last"`` replaces the prompt block by its last row, so that
every step is one token: the row that predicted each answer token.

**Distributions.** Each step's tensor at a layer is flattened and softmaxed *as a whole*
(``tensor.view(-1)`` then ``softmax``):

* hidden states: step ``t >= 1`` is one token's ``[H]`` vector, so per token, over the hidden
  dimension; the prefill step is the whole ``[prompt_len, H]`` block, one distribution over
  ``prompt_len * H`` values;
* attentions: step ``t >= 1`` is the token's attention row of every head, ``[heads, i + 1]``
  (keys up to and including itself), one distribution over ``heads * (i + 1)`` values (the
  softmax of attention weights); the prefill step is the ``[heads, P, P]`` block *including*
  the causal zeros above the diagonal (they are part of the reference's tensor).

**Shift measures** between consecutive sampled layers, per step, then averaged over the steps:
the 1-D Wasserstein distance between the two distributions' *values* (the reference passes the
softmax outputs as ``u_values``/``v_values`` of ``scipy.stats.wasserstein_distance``, with no
weights: it compares the empirical distribution of the probabilities, not a distribution over
the hidden dimensions), and the cosine similarity of the two softmax vectors. Both vectors of a
pair always have the same length, for which that Wasserstein distance is exactly
``mean(|sort(u) - sort(v)|)``; that is what is computed here (float64; the reference's softmax
runs in the model's bf16).

**Layers.** The reference's code (``functions.py``, ``plot_internal_state_2``) reads
``hidden_states[i] for i in range(2, 33, 2)`` and ``attentions[i] for i in range(1, 32, 2)``:
every second layer, the outputs of layers 2, 4, ..., 32 (1-based) and the attention of the same
layers, written out for its 32-layer models. Here the rule is kept for any depth: layer numbers
``range(2, L + 1, 2)`` (``stride=2``), so a 30-layer model gets 2, 4, ..., 30 (15 layers, 14
consecutive pairs) and a 32-layer model exactly the reference's 16. Layer number ``l`` is
``hidden_states[l]`` and ``attentions[l - 1]``. A model too shallow for two such layers
(``L < 4``, test models) uses every layer.

**Token-probability features** (the reference's 11, in its column order), over the ``n``
steps. We store the chosen token's log-prob and the entropy of each step, not the full
distribution. Under greedy generation the chosen token is the arg-max, so the step's max prob
``q_t = exp(token_logprob_t)`` exactly (for teacher-forced answers or beam search it is the
chosen token's probability instead). The per-step *min* prob over the vocabulary is not
stored; it is at most ``1 / V`` (V = vocabulary size).

====  =====================  ===========================================================
col   reference              here
====  =====================  ===========================================================
0     min_t max prob         ``min q`` (exact)
1     max_t (max - min)      ``max q``: differs from the reference by at most ``1 / V``
2     norm. entropy of max   ``-sum q log q / log n`` (exact; 0 when ``n == 1``)
3     norm. entropy of min   NOT STORED; substitute: mean per-step entropy (nats)
4     #(max prob < 0.1)      exact
5     #(min prob < 0.1)      ``n`` (exact: min prob <= 1 / V < 0.1 for any V > 10)
6     mean abs grad of max   ``mean |diff q|`` (exact; 0 when ``n == 1``)
7     mean abs grad of min   NOT STORED; substitute: ``mean |diff entropy|``
8-10  25/50/75th pct of max  exact (numpy's linear interpolation, as the reference)
====  =====================  ===========================================================

The substitutes describe the same thing the min-prob features do (the spread of each step's
full distribution) from what is stored; the reference's values are ~0 for real vocabularies
(``m log m`` with ``m <= 1 / V``).

The vector is ``[W_hidden (m-1), cos_hidden (m-1), W_attn (m-1), cos_attn (m-1), prob (11)]``
for ``m`` sampled layers, ``4 (m - 1) + 11`` floats: 71 for ``L = 32`` (the reference's 60 +
11), 67 for SmolLM2's ``L = 30``. See :func:`feature_names`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from hallugraph.features.base import Statistic, register

PROB_FEATURES = (
    "min_max_prob",
    "max_spread",
    "norm_entropy_max",
    "mean_step_entropy",
    "low_prob_count_max",
    "num_steps",
    "mean_grad_max",
    "mean_grad_entropy",
    "p25_max",
    "p50_max",
    "p75_max",
)
"""Names of the 11 probability features (see the module docstring for their reference)."""

PREFILL_MODES = ("flatten", "last")


def sampled_layers(num_layers: int, stride: int = 2) -> list[int]:
    """1-based layer numbers ``range(stride, L + 1, stride)``: every second layer, as the
    reference (``sampled_layers(32) == [2, 4, ..., 32]``, ``sampled_layers(30) == [2, ...,
    30]``); every layer when that leaves fewer than two."""
    if num_layers < 1 or stride < 1:
        raise ValueError("num_layers and stride must be positive")
    layers = list(range(stride, num_layers + 1, stride))
    return layers if len(layers) >= 2 else list(range(1, num_layers + 1))


def feature_names(num_layers: int, stride: int = 2) -> list[str]:
    """Name of each column of the ``hallushift`` statistic for a model of ``num_layers``."""
    layers = sampled_layers(num_layers, stride)
    pairs = [f"{a}-{b}" for a, b in zip(layers[:-1], layers[1:], strict=True)]
    names = []
    for state in ("hidden", "attn"):
        names += [f"wasserstein_{state}_{p}" for p in pairs]
        names += [f"cosine_{state}_{p}" for p in pairs]
    return names + list(PROB_FEATURES)


def num_features(num_layers: int, stride: int = 2) -> int:
    return 4 * (len(sampled_layers(num_layers, stride)) - 1) + len(PROB_FEATURES)


def softmax(x: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Softmax over the last axis in float64; entries where ``valid`` is False get 0."""
    x = np.asarray(x, dtype=np.float64)
    if valid is not None:
        x = np.where(valid, x, -np.inf)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def consecutive_shift(
    dists: Iterator[np.ndarray], counts: np.ndarray | float
) -> tuple[np.ndarray, np.ndarray]:
    """Wasserstein distance and cosine similarity between consecutive distributions.

    ``dists`` yields one ``[B, N]`` array per layer (B distributions of N values each; padded
    entries must be exactly 0 in every layer and count ``counts`` ``[B]`` real values each).
    The Wasserstein distance is the 1-D one between the *values* of the two distributions
    (``scipy.stats.wasserstein_distance(u, v)``), which for two samples of equal size is the
    mean absolute difference of their sorted values. Returns two ``[K - 1, B]`` arrays.
    """
    w, c = [], []
    prev = prev_sorted = prev_norm = None
    for p in dists:
        s = np.sort(p, axis=-1)
        norm = np.linalg.norm(p, axis=-1)
        if prev is not None:
            w.append(np.abs(s - prev_sorted).sum(-1) / counts)
            c.append((p * prev).sum(-1) / np.maximum(norm * prev_norm, 1e-300))
        prev, prev_sorted, prev_norm = p, s, norm
    if not w:
        return np.zeros((0,)), np.zeros((0,))
    return np.stack(w), np.stack(c)


def _steps(prompt_len: int, answer_len: int, prefill: str) -> tuple[np.ndarray, bool]:
    """Rows of the single-token steps, and whether the prompt block is a step of its own."""
    P, n = prompt_len, answer_len
    if prefill == "flatten":
        return np.arange(P, P + n - 1), True
    return np.arange(P - 1, P + n - 1), False


def hidden_shift(
    hidden_states: np.ndarray, layers: list[int], prompt_len: int, answer_len: int, prefill: str
) -> np.ndarray:
    """``[2 (m - 1)]``: mean Wasserstein distances, then mean cosine similarities, between
    consecutive sampled layers' softmaxed hidden states, over the generation steps."""
    if len(layers) < 2:
        return np.zeros(0)
    rows, block = _steps(prompt_len, answer_len, prefill)
    hs = hidden_states
    w, c = consecutive_shift((softmax(hs[li, rows]) for li in layers), hs.shape[-1])
    if block:
        blocks = (softmax(hs[li, :prompt_len].reshape(1, -1)) for li in layers)
        w0, c0 = consecutive_shift(blocks, prompt_len * hs.shape[-1])
        w, c = np.concatenate([w0, w], axis=1), np.concatenate([c0, c], axis=1)
    return np.concatenate([w.mean(1), c.mean(1)])


def attention_shift(
    attentions: np.ndarray, layers: list[int], prompt_len: int, answer_len: int, prefill: str
) -> np.ndarray:
    """``[2 (m - 1)]``: the same on each step's attention rows (every head, keys up to the
    token itself, one distribution); layer number ``l`` is ``attentions[l - 1]``."""
    if len(layers) < 2:
        return np.zeros(0)
    rows, block = _steps(prompt_len, answer_len, prefill)
    heads, S = attentions.shape[1], attentions.shape[-1]
    valid = np.arange(S)[None, :] <= rows[:, None]  # [T, S]: causal keys of each row
    valid = np.broadcast_to(valid[:, None, :], (len(rows), heads, S)).reshape(len(rows), heads * S)
    counts = heads * (rows + 1)

    def per_token() -> Iterator[np.ndarray]:
        for li in layers:
            a = attentions[li - 1][:, rows, :].transpose(1, 0, 2).reshape(len(rows), heads * S)
            yield softmax(a, valid)

    w, c = consecutive_shift(per_token(), counts)
    if block:
        P = prompt_len
        blocks = (softmax(attentions[li - 1, :, :P, :P].reshape(1, -1)) for li in layers)
        w0, c0 = consecutive_shift(blocks, heads * P * P)
        w, c = np.concatenate([w0, w], axis=1), np.concatenate([c0, c], axis=1)
    return np.concatenate([w.mean(1), c.mean(1)])


def probability_features(token_logprobs: np.ndarray, token_entropy: np.ndarray) -> np.ndarray:
    """The 11 token-probability features (:data:`PROB_FEATURES`) of one answer's steps."""
    q = np.exp(np.asarray(token_logprobs, dtype=np.float64))
    ent = np.asarray(token_entropy, dtype=np.float64)
    n = len(q)
    if n == 0:
        return np.zeros(len(PROB_FEATURES))
    qs = q[q > 0]
    norm_ent = -(qs * np.log(qs)).sum() / np.log(n) if n > 1 else 0.0
    grad_q = np.abs(np.diff(q)).mean() if n > 1 else 0.0
    grad_e = np.abs(np.diff(ent)).mean() if n > 1 else 0.0
    p25, p50, p75 = np.percentile(q, [25, 50, 75])
    return np.array(
        [q.min(), q.max(), norm_ent, ent.mean(), (q < 0.1).sum(), n, grad_q, grad_e, p25, p50, p75]
    )


@register
class HalluShiftStats(Statistic):
    """``[4 (m - 1) + 11]`` HalluShift features: Wasserstein distance and cosine similarity
    between consecutive sampled layers of the softmaxed hidden states and attention rows,
    averaged over the generation steps, then 11 token-probability features (module
    docstring). ``m`` layers: every ``stride``-th (:func:`sampled_layers`)."""

    name = "hallushift"
    fields = ("hidden_states", "attentions")

    def __init__(self, stride: int = 2, prefill: str = "flatten") -> None:
        if prefill not in PREFILL_MODES:
            raise ValueError(f"prefill must be one of {PREFILL_MODES}, not {prefill!r}")
        if stride < 1:
            raise ValueError("stride must be positive")
        self.stride = stride
        self.prefill = prefill

    def params(self) -> dict[str, Any]:
        return {"stride": self.stride, "prefill": self.prefill}

    def compute(self, trace: Mapping[str, Any], run_info: Mapping[str, Any]) -> np.ndarray:
        hs, attn = trace["hidden_states"], trace["attentions"]
        L = attn.shape[0]
        if hs.shape[0] != L + 1:
            raise ValueError(f"hidden_states has {hs.shape[0]} layers, attentions {L}: need L+1")
        layers = sampled_layers(L, self.stride)
        P, n = int(trace["prompt_len"]), int(trace["answer_len"])
        prob = probability_features(
            np.asarray(trace["token_logprobs"])[:n], np.asarray(trace["token_entropy"])[:n]
        )
        if n == 0 or P == 0:
            shift = np.zeros(4 * (len(layers) - 1))
        else:
            shift = np.concatenate(
                [
                    hidden_shift(hs, layers, P, n, self.prefill),
                    attention_shift(attn, layers, P, n, self.prefill),
                ]
            )
        return np.concatenate([shift, prob]).astype(np.float32)
