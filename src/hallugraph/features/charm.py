"""CHARM's attention graph of a trace, stored compactly so the GNN never rereads raw tensors.

CHARM (Frasca, Bar-Shalom, Ziser, Maron, ICLR 2026, "Neural Message-Passing on Attention Graphs
for Hallucination Detection"; reference ``Noired/charm``, ``dataset/graphs.py``,
``dataset/transforms.py``, ``dataset/acts.py``) turns one generation into a graph:

* **nodes** are tokens. The reference's attention matrix holds the rows the generation computed
  (prompt rows from the prefill, one row per decode step), i.e. rows ``0 .. S-2``, and its
  *response nodes* are the rows ``prompt_len - 1 .. S - 2``: node ``q`` is the query that
  generated answer token ``q + 1`` ("we use the last prompt token and the attention patterns
  thereof to predict hallucination on the first generated token");
* **edges** go from key ``j`` to query ``q`` (``j < q``; messages flow key -> query), one edge
  where the attention score of *any* layer and head is ``>= 0.05`` (``ThresholdAttention``:
  scores below the threshold are zeroed, an edge with no score left is deleted). Prompt ->
  prompt edges are not materialised (``prompt_graph=False``) and the diagonal is removed;
* **edge features** are the (thresholded) scores of every layer and head, ``L x heads``
  (layer-major);
* **node features** are the self-attention (the diagonal) of every layer and head, plus the
  residual-stream activations of a deep layer (the ``att_act`` configs: layer 24 of
  Llama-2-7B's 32, ``acts.py`` reads ``hidden_states[layer]``, embeddings at index 0).

Statistics must have one shape per run and the cache must stay small. The reference keeps every
token and every edge its rule allows: on SmolLM2 / TriviaQA ~40 sources per answer row, i.e. up
to 64 rows x 40 x 270 scores ~ 1.4 MB per trace in fp16, and up to 64 x 250 x 270 ~ 8.6 MB with
250-token RAG prompts. What is kept here, and why:

* **answer nodes** (targets): the response rows ``prompt_len - 1 ..``, at most ``max_answer``
  (64 = the default ``--max-new-tokens``; a longer answer keeps its first rows). Node ``a`` of
  this block is sequence position ``prompt_len - 1 + a``;
* **prompt nodes** (sources only: with no prompt -> prompt edge they receive no message): the
  ``max_prompt`` prompt positions ``0 .. prompt_len - 2`` that receive the most thresholded
  attention from the answer rows (summed over rows, layers and heads), in position order.
  Edges from the other prompt tokens are dropped;
* **edges**: a budget of ``max_edges`` per trace, shared equally by the answer nodes: each keeps
  its ``max_edges // n_answer`` sources (earlier answer nodes or kept prompt nodes; at most
  ``max_sources`` when set) of largest total thresholded score over layers and heads, among
  those CHARM's rule keeps (some layer/head ``>= threshold``); ties go to the earlier position.
  On SmolLM2 / TriviaQA the rule keeps ~40 sources per answer token: a 10-token answer keeps
  (nearly) all of its edges, a 64-token answer its 8 strongest per token;
* **edge features** as uint8 codes ``round(255 * score)`` (scores below the threshold are 0, as
  in the reference; the resolution 1/255 is < 8 % of the smallest kept score);
* **activations**: the residual stream at a few deep layers (``layer_fracs`` of the depth,
  index ``round(f * L)`` of ``hidden_states``; the reference uses one layer at 3/4 depth), each
  through a fixed Gaussian random projection to ``proj_dim`` dimensions (entries
  ``N(0, 1/proj_dim)``, so norms are kept in expectation; Johnson-Lindenstrauss). The matrix
  depends only on ``proj_seed``, the hidden size and the layer index, never on the run, so
  runs of one model share it and a detector transfers between them. ``proj_dim=None`` (or
  ``>= hidden``) stores the raw activations.

Two statistics (one array each, fixed shape, padded):

``charm_graph`` uint8 ``[E, 2 + F]`` (``E = max_edges``, ``F = layers x heads``): one row per
kept edge, target-major, sources in position order, then empty rows; column 0 is the source's
node index + 1, column 1 the target's node index + 1 (0 = empty row), columns ``2:`` the uint8
codes of its scores.

``charm_nodes`` float16 ``[P + A, 2 + F + D]`` (``P = max_prompt``, ``A = max_answer``; node
index ``i < P`` = the prompt block, ``P + a`` = answer node ``a``): column 0 the node kind (0
padding, 1 prompt, 2 answer), column 1 whether a prompt node lies in the trace's
``context_span`` (RAG), then the ``F`` self-attention scores, then the
``D = len(layer_fracs) x proj_dim`` projected activations.

Size with the defaults (``max_edges=512``, ``max_prompt=48``, ``max_answer=64``) for
SmolLM2-135M (30 layers x 9 heads, hidden 576): 512 x 272 B = 139 KB + 112 x 560 x 2 B =
125 KB, ~265 KB per trace whatever the prompt length. The edge part grows with ``F`` (a 32 x 32
model: 512 x 1026 B = 525 KB): lower ``max_edges`` there.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np

from hallugraph.features.base import Statistic, register

THRESHOLD = 0.05
"""CHARM's attention threshold (``attention_threshold: 0.05`` in the reference's configs)."""
MAX_ANSWER = 64
MAX_PROMPT = 48
MAX_EDGES = 512
MAX_SOURCES: int | None = None
LAYER_FRACS = (0.6, 0.75, 0.9)
PROJ_DIM = 96
PROJ_SEED = 0

NODE_PAD, NODE_PROMPT, NODE_ANSWER = 0, 1, 2
NODE_META = 2
"""Columns of ``charm_nodes`` before the self-attention block: kind, in-context flag."""
CODE_SCALE = 255.0
"""uint8 code of an edge score: ``round(CODE_SCALE * score)``."""


@dataclass(frozen=True)
class GraphLayout:
    """Which tokens and edges of one trace the CHARM graph keeps.

    ``prompt_pos`` / ``answer_pos``: sequence positions of the prompt and answer nodes (node
    ``i`` of the prompt block, ``a`` of the answer block). ``edge_src`` / ``edge_dst``: node
    indices (prompt block first, answer node ``a`` = ``max_prompt + a``) of each kept edge,
    target-major; ``edge_src_pos`` / ``edge_dst_pos`` the same as sequence positions.
    """

    prompt_pos: np.ndarray
    answer_pos: np.ndarray
    edge_src: np.ndarray
    edge_dst: np.ndarray
    edge_src_pos: np.ndarray
    edge_dst_pos: np.ndarray


def graph_layout(
    attn: np.ndarray,
    prompt_len: int,
    answer_len: int,
    *,
    threshold: float = THRESHOLD,
    max_answer: int = MAX_ANSWER,
    max_prompt: int = MAX_PROMPT,
    max_edges: int = MAX_EDGES,
    max_sources: int | None = MAX_SOURCES,
) -> GraphLayout:
    """Nodes and edges kept for attention maps ``attn`` ``[L, heads, S, S]`` (see the module
    docstring). Scores are compared in float32; the upper triangle is never read."""
    attn = np.asarray(attn)
    L, H, S = attn.shape[0], attn.shape[1], attn.shape[-1]
    p = min(max(int(prompt_len), 1), S)
    n_a = max(1, min(int(answer_len), max_answer, S - p + 1))
    answer_pos = np.arange(p - 1, p - 1 + n_a)
    rows = attn[:, :, answer_pos, :].reshape(L * H, n_a, S).astype(np.float32)
    kept = np.where(rows >= threshold, rows, np.float32(0))
    # keys at or after the query (the diagonal, the causal zeros) are never sources
    causal = np.arange(S)[None, :] < answer_pos[:, None]  # [n_a, S]
    kept *= causal[None]
    weight = kept.sum(axis=0, dtype=np.float64)  # [n_a, S]: total thresholded score

    received = weight[:, : p - 1].sum(axis=0)  # attention each prompt token gets from the answer
    cand = np.flatnonzero(received > 0)
    top = cand[np.argsort(-received[cand], kind="stable")][:max_prompt]
    prompt_pos = np.sort(top)

    slot = np.full(S, -1, dtype=np.int64)
    slot[prompt_pos] = np.arange(len(prompt_pos))
    slot[answer_pos] = max_prompt + np.arange(n_a)
    weight[:, slot < 0] = 0.0
    k = max(1, max_edges // n_a)
    if max_sources is not None:
        k = min(k, max_sources)
    order = np.argsort(-weight, axis=1, kind="stable")[:, :k]  # ties: earlier first
    ok = np.take_along_axis(weight, order, axis=1) > 0
    pos = np.sort(np.where(ok, order, S), axis=1)  # kept sources in position order
    a, j = np.nonzero(pos < S)  # row-major: target-major, sources in position order
    src_pos = pos[a, j]
    return GraphLayout(
        prompt_pos, answer_pos, slot[src_pos], max_prompt + a, src_pos, answer_pos[a]
    )


def layer_indices(num_layers: int, fracs: Sequence[float]) -> list[int]:
    """``hidden_states`` indices of the activation layers: ``round(f * L)`` within ``1..L``,
    without repeats (a shallow model may map two fractions to one layer)."""
    idx = [min(max(int(round(f * num_layers)), 1), num_layers) for f in fracs]
    return list(dict.fromkeys(idx))


@lru_cache(maxsize=64)
def projection(hidden: int, dim: int | None, layer: int, seed: int = PROJ_SEED) -> np.ndarray:
    """The fixed ``[hidden, dim]`` Gaussian projection of one layer (entries ``N(0, 1/dim)``);
    the identity when ``dim`` is None or ``>= hidden``. Depends only on its arguments."""
    if dim is None or dim >= hidden:
        return np.eye(hidden, dtype=np.float32)
    rng = np.random.default_rng([int(seed), int(hidden), int(layer)])
    return (rng.standard_normal((hidden, dim)) / np.sqrt(dim)).astype(np.float32)


class _CharmBase(Statistic):
    def __init__(
        self,
        threshold: float = THRESHOLD,
        max_answer: int = MAX_ANSWER,
        max_prompt: int = MAX_PROMPT,
        max_edges: int = MAX_EDGES,
        max_sources: int | None = MAX_SOURCES,
        layer_fracs: Sequence[float] = LAYER_FRACS,
        proj_dim: int | None = PROJ_DIM,
        proj_seed: int = PROJ_SEED,
    ) -> None:
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must lie in (0, 1), not {threshold}")
        if min(max_answer, max_edges, max_sources or 1) < 1 or max_prompt < 0:
            raise ValueError("max_answer, max_edges, max_sources must be >= 1, max_prompt >= 0")
        if max_edges < max_answer:
            raise ValueError("max_edges must be >= max_answer (one edge per answer node)")
        if max_prompt + max_answer > 254:
            raise ValueError("max_prompt + max_answer must be <= 254 (uint8 node indices)")
        if proj_dim is not None and proj_dim < 1:
            raise ValueError(f"proj_dim must be >= 1 or None, not {proj_dim}")
        self.threshold = float(threshold)
        self.max_answer = int(max_answer)
        self.max_prompt = int(max_prompt)
        self.max_edges = int(max_edges)
        self.max_sources = None if max_sources is None else int(max_sources)
        self.layer_fracs = tuple(float(f) for f in layer_fracs)
        self.proj_dim = None if proj_dim is None else int(proj_dim)
        self.proj_seed = int(proj_seed)

    def _layout_params(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "max_answer": self.max_answer,
            "max_prompt": self.max_prompt,
            "max_edges": self.max_edges,
            "max_sources": self.max_sources,
            "rows": "prompt_len-1..",
            "rank": "sum-thresholded",
            "edge_share": "max_edges // n_answer",
        }

    #: the last layout computed, shared by charm_graph and charm_nodes: both need the same
    #: layout of the same trace, one after the other, in the one pass over a shard
    _last_layout: ClassVar[tuple[Any, tuple[Any, GraphLayout]] | None] = None

    def layout(self, trace: Mapping[str, Any]) -> GraphLayout:
        """The trace's :func:`graph_layout` (computed once for both CHARM statistics)."""
        attn = trace["attentions"]
        key = (id(attn), attn.shape, trace.get("question_id"), json.dumps(self._layout_params()))
        last = _CharmBase._last_layout
        if last is not None and last[0] == key and last[1][0] is attn:
            return last[1][1]
        lay = graph_layout(
            attn,
            trace["prompt_len"],
            trace["answer_len"],
            threshold=self.threshold,
            max_answer=self.max_answer,
            max_prompt=self.max_prompt,
            max_edges=self.max_edges,
            max_sources=self.max_sources,
        )
        _CharmBase._last_layout = (key, (attn, lay))
        return lay


@register
class CharmGraph(_CharmBase):
    """``[E, 2 + F]`` uint8: the kept edges, one per row: source node index + 1, target node
    index + 1 (0 = empty row), then the uint8 codes of the thresholded scores of every layer
    and head."""

    name = "charm_graph"
    fields = ("attentions",)
    dtype = np.uint8

    def params(self) -> dict[str, Any]:
        return {**self._layout_params(), "codes": "uint8 round(255 score)"}

    def compute(self, trace: Mapping[str, Any], run_info: Mapping[str, Any]) -> np.ndarray:
        attn = trace["attentions"]
        L, H = attn.shape[0], attn.shape[1]
        lay = self.layout(trace)
        out = np.zeros((self.max_edges, 2 + L * H), dtype=np.uint8)
        E = len(lay.edge_src)
        if E:
            scores = attn[:, :, lay.edge_dst_pos, lay.edge_src_pos].reshape(L * H, E).T
            scores = scores.astype(np.float32)
            scores = np.where(scores >= self.threshold, scores, 0.0)
            out[:E, 0] = lay.edge_src + 1
            out[:E, 1] = lay.edge_dst + 1
            out[:E, 2:] = np.clip(np.rint(scores * CODE_SCALE), 0, 255).astype(np.uint8)
        return out


@register
class CharmNodes(_CharmBase):
    """``[P + A, 2 + F + D]`` float16: node kind, in-context flag, self-attention of every layer
    and head, projected deep-layer activations (prompt block, then answer block)."""

    name = "charm_nodes"
    fields = ("attentions", "hidden_states")
    dtype = np.float16

    def params(self) -> dict[str, Any]:
        return {
            **self._layout_params(),
            "layer_fracs": list(self.layer_fracs),
            "proj_dim": self.proj_dim,
            "proj_seed": self.proj_seed,
            "proj": "gaussian N(0,1/d)",
        }

    def compute(self, trace: Mapping[str, Any], run_info: Mapping[str, Any]) -> np.ndarray:
        attn, hs = trace["attentions"], np.asarray(trace["hidden_states"])
        L, H = attn.shape[0], attn.shape[1]
        hidden = hs.shape[-1]
        lay = self.layout(trace)
        layers = layer_indices(hs.shape[0] - 1, self.layer_fracs)
        dims = [projection(hidden, self.proj_dim, li, self.proj_seed).shape[1] for li in layers]
        F, D = L * H, sum(dims)
        out = np.zeros((self.max_prompt + self.max_answer, NODE_META + F + D), dtype=np.float32)
        slots = np.concatenate(
            [np.arange(len(lay.prompt_pos)), self.max_prompt + np.arange(len(lay.answer_pos))]
        )
        pos = np.concatenate([lay.prompt_pos, lay.answer_pos])
        out[slots, 0] = np.where(slots < self.max_prompt, NODE_PROMPT, NODE_ANSWER)
        span = trace.get("context_span")
        if span:
            start, end = int(span[0]), int(span[1])
            in_ctx = (pos >= start) & (pos < end) & (slots < self.max_prompt)
            out[slots, 1] = in_ctx
        out[slots, NODE_META : NODE_META + F] = attn[:, :, pos, pos].reshape(F, -1).T
        col = NODE_META + F
        for li, d in zip(layers, dims, strict=True):
            R = projection(hidden, self.proj_dim, li, self.proj_seed)
            out[slots, col : col + d] = hs[li, pos, :].astype(np.float32) @ R
            col += d
        fmax = float(np.finfo(np.float16).max)
        return np.clip(out, -fmax, fmax).astype(np.float16)
