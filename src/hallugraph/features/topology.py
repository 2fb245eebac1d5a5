"""Topology of the attention graph, per layer: where the answer's attention goes and how central
the answer tokens are.

The graph is :mod:`hallugraph.graphs`'s: at layer ``l`` the mean-over-heads map
``M = mean_h A[l, h]`` (row = query, column = key), one node per token, an edge key ``j`` ->
query ``i`` of weight ``M[i, j]``. The *answer nodes* are positions ``prompt_len .. S - 1``
(every answer token, the last one included: the graph is the whole teacher-forced photo); an
answer node's *row* ``M[i, :]`` is its attention, i.e. its incoming edges. Following the
attention-graph view of hallucination (Lookback Lens, Chuang et al. 2024: hallucinated answers
look less at the context; LapEigvals, Binkowski et al. 2025, and graph-based detectors such as
CHARM: the structure of the attention graph carries the signal), ``graph_topology`` gives
``[L, 6]`` per trace, the columns of :data:`TOPOLOGY_FEATURES`:

0. ``context_share`` — mean over answer rows of the share of the row's weight on the context
   columns: the trace's ``context_span``, the whole prompt ``[0, prompt_len)`` when it has none;
1. ``prompt_share`` — the same with the whole prompt;
2. ``pagerank`` — mean PageRank of the answer nodes times ``S`` (so 1 = the average node), on
   the weighted directed graph (key -> query, weights ``M[i, j]``, no self-loops), damping
   0.85, dangling nodes (no out-edge: the last token) spread uniformly: networkx's
   ``pagerank`` of ``build_graph(..., self_loops=False).to_networkx()``. The graph is a DAG, so
   ``I - d T`` is unit triangular and PageRank is one exact triangular solve per layer
   (``pi ∝ (I - d T)^{-1} 1``: teleport and dangling mass are both uniform), no power
   iteration;
3. ``in_degree`` — mean in-degree centrality of the answer nodes in the *thresholded* graph
   (edges with ``M[i, j] >= threshold``, no self-loops, unweighted): the number of keys an
   answer token reads with weight ``>= threshold``, over ``S - 1`` (networkx's
   ``in_degree_centrality``). Its weighted in-degree would be the row sum, 1 for every token;
4. ``clustering`` — mean clustering coefficient of the answer nodes in the thresholded graph
   taken **undirected and unweighted** (an edge when either direction is kept; under the causal
   mask only one can be): ``2 T_i / (k_i (k_i - 1))``, 0 when ``k_i < 2`` (networkx's
   ``clustering`` of the undirected graph). Unweighted because the threshold already decides
   what is an edge, and the directed variants count one triangle in up to eight ways that the
   causal order makes mostly impossible;
5. ``entropy`` — mean over answer rows of the row's attention entropy divided by ``log(i + 1)``
   (the entropy of a uniform row over its ``i + 1`` keys): 1 = uniform, 0 = one key. Normalized
   so that traces of different lengths compare.

Across-layer changes are left to the detector (``graph_topology`` takes layer-to-layer
differences). Default ``threshold = 0.02``: on SmolLM2-135M HaluEval traces (S ~ 130-230) it
keeps about 5-8 keys per answer token in most layers; fixed rather than relative to ``S`` so
that a diffuse long-context answer does show a lower in-degree.

Cost: everything is numpy on ``[L, S, S]`` float32 maps; the only ``O(S^3)`` step, the
triangle count, touches only the answer rows (``[n_answer, S] @ [S, S]``, numpy's einsum loop).
About 0.2 s for ``S = 250`` (50 answer tokens), 30 layers, 9 heads (fp16), half of it the mean
over heads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy.linalg import solve_triangular

from hallugraph.features.base import Statistic, register

TOPOLOGY_FEATURES: tuple[str, ...] = (
    "context_share",
    "prompt_share",
    "pagerank",
    "in_degree",
    "clustering",
    "entropy",
)
"""Columns of the ``graph_topology`` statistic."""

THRESHOLD = 0.02
DAMPING = 0.85


def mean_heads(attn: np.ndarray) -> np.ndarray:
    """``[L, heads, S, S]`` -> ``[L, S, S]`` float32 mean over heads (float32 accumulation)."""
    attn = np.asarray(attn)
    out = np.zeros(attn.shape[:1] + attn.shape[2:], dtype=np.float32)
    for h in range(attn.shape[1]):
        out += attn[:, h]
    out /= attn.shape[1]
    return out


def pagerank_dag(weights: np.ndarray, damping: float = DAMPING) -> np.ndarray:
    """PageRank of the graph key ``j`` -> query ``i`` with weights ``weights[..., i, j]``.

    ``weights`` ``[..., S, S]`` must be strictly lower triangular (causal, no self-loops).
    Out-edges of ``j`` are normalized by their total ``sum_i weights[i, j]``; a node without
    out-edges spreads its rank uniformly, as does the teleport. Returns ``[..., S]`` summing to 1.
    """
    W = np.asarray(weights, dtype=np.float64)
    batch = W.shape[:-2]
    S = W.shape[-1]
    W = W.reshape(-1, S, S)
    out = np.empty((W.shape[0], S))
    ones = np.ones(S)
    for b in range(W.shape[0]):
        outw = W[b].sum(axis=0)
        inv = np.divide(1.0, outw, out=np.zeros(S), where=outw > 0)
        T = W[b] * inv[None, :]  # T[i, j]: probability to move j -> i
        sys = -damping * T
        sys[np.diag_indices(S)] = 1.0
        x = solve_triangular(sys, ones, lower=True, unit_diagonal=True, check_finite=False)
        out[b] = x / x.sum()
    return out.reshape(batch + (S,))


def topology_features(
    attn: np.ndarray,
    prompt_len: int,
    context: slice | None = None,
    *,
    threshold: float = THRESHOLD,
    damping: float = DAMPING,
    mean_map: np.ndarray | None = None,
) -> np.ndarray:
    """``[L, 6]`` topology features (columns :data:`TOPOLOGY_FEATURES`) of attention maps
    ``[L, heads, S, S]`` (or of ``mean_map`` ``[L, S, S]`` when given); ``context`` = the
    context columns (default: the whole prompt)."""
    M = mean_heads(attn) if mean_map is None else np.asarray(mean_map, dtype=np.float32)
    L, S, _ = M.shape
    P = int(prompt_len)
    first = P if P < S else S - 1  # at least one answer row
    ctx = context if context is not None else slice(0, P)
    rows = M[:, first:, :].astype(np.float64)  # [L, n_answer, S] answer rows
    total = rows.sum(axis=-1)
    safe = np.where(total > 0, total, 1.0)
    out = np.zeros((L, len(TOPOLOGY_FEATURES)))
    out[:, 0] = (rows[..., ctx].sum(axis=-1) / safe).mean(axis=-1)
    out[:, 1] = (rows[..., :P].sum(axis=-1) / safe).mean(axis=-1)

    # entropy of each answer row, over the log of its number of keys
    p = rows / safe[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=-1)
    n_keys = np.arange(first, S) + 1
    norm = np.log(n_keys).astype(np.float64)
    out[:, 5] = np.divide(ent, norm, out=np.zeros_like(ent), where=norm > 0).mean(axis=-1)

    # PageRank on the weighted graph without self-loops
    W = np.tril(M, k=-1)
    out[:, 2] = pagerank_dag(W, damping)[:, first:].mean(axis=-1) * S

    # thresholded, unweighted graph without self-loops
    B = (W >= threshold) & (W > 0)
    out[:, 3] = B[:, first:, :].sum(axis=-1).mean(axis=-1) / max(S - 1, 1)
    U = (B | np.swapaxes(B, 1, 2)).astype(np.float32)  # undirected
    Ua = U[:, first:, :]  # [L, n_answer, S]
    deg = Ua.sum(axis=-1).astype(np.float64)
    # triangles at each answer node; einsum's own loop, not BLAS: a multithreaded BLAS on a busy
    # machine was 100x slower here (0.7 s instead of 0.01 s per trace)
    paths2 = np.einsum("lns,lst->lnt", Ua, U)
    tri = (paths2 * Ua).sum(axis=-1).astype(np.float64) / 2
    pairs = deg * (deg - 1) / 2
    out[:, 4] = np.divide(tri, pairs, out=np.zeros_like(tri), where=pairs > 0).mean(axis=-1)
    return out


def context_slice(trace: Mapping[str, Any]) -> slice:
    """The trace's ``context_span`` as a slice, or the whole prompt when it has none."""
    span = trace.get("context_span")
    if span and int(span[1]) > int(span[0]):
        return slice(int(span[0]), int(span[1]))
    return slice(0, int(trace["prompt_len"]))


@register
class GraphTopology(Statistic):
    """``[L, 6]``: per layer, the answer's attention share on the context and on the prompt,
    the answer nodes' PageRank, in-degree centrality and clustering, and the answer rows'
    normalized entropy (see the module docstring)."""

    name = "graph_topology"
    outputs = TOPOLOGY_FEATURES
    fields = ("attentions",)

    def __init__(self, threshold: float = THRESHOLD, damping: float = DAMPING) -> None:
        if not threshold > 0:
            raise ValueError(f"threshold must be > 0, not {threshold}")
        if not 0 < damping < 1:
            raise ValueError(f"damping must be in (0, 1), not {damping}")
        self.threshold = float(threshold)
        self.damping = float(damping)

    def params(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "damping": self.damping,
            "features": list(TOPOLOGY_FEATURES),
            "answer_rows": "prompt_len..S-1",
        }

    def compute(self, trace: Mapping[str, Any], run_info: Mapping[str, Any]) -> np.ndarray:
        out = topology_features(
            trace["attentions"],
            int(trace["prompt_len"]),
            context_slice(trace),
            threshold=self.threshold,
            damping=self.damping,
        )
        return out.astype(np.float32)
