"""Pruning an attribution graph for people (viewer, PNG): circuit-tracer 0.5.0's
``prune_graph``, ported so that it works on any graph with its fields and without
circuit-tracer.

Node influence is ``w·(Â + Â² + …)`` of the row-normalized ``|A|`` (logit probabilities as
``w``); nodes are kept while their sorted cumulative influence stays below ``node_threshold``
(tokens and logits always), edges likewise with ``edge_threshold`` on
``Â[i, j] · (influence_i + w_i)`` of the node-pruned graph; then nodes left without outgoing
(features, errors) or incoming (features) edges are dropped until nothing changes.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

__all__ = ["PruneResult", "prune_graph"]


class PruneResult(NamedTuple):
    node_mask: torch.Tensor
    edge_mask: torch.Tensor
    cumulative_scores: torch.Tensor


def _normalize(matrix: torch.Tensor) -> torch.Tensor:
    a = matrix.abs()
    return a / a.sum(dim=1, keepdim=True).clamp(min=1e-10)


def _influence(a: torch.Tensor, w: torch.Tensor, max_iter: int = 1000) -> torch.Tensor:
    cur = w @ a
    total = cur
    for _ in range(max_iter):
        if not cur.any():
            return total
        cur = cur @ a
        total = total + cur
    raise RuntimeError(f"influence did not converge in {max_iter} iterations")


def _threshold(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    srt = torch.sort(scores, descending=True).values
    cum = torch.cumsum(srt, dim=0) / torch.sum(srt)
    idx = min(int(torch.searchsorted(cum, threshold).item()), len(cum) - 1)
    return srt[idx]


def prune_graph(
    graph: Any, node_threshold: float = 0.8, edge_threshold: float = 0.98
) -> PruneResult:
    """``(node_mask, edge_mask, cumulative_scores)`` of ``graph`` (see the module docstring)."""
    if not 0.0 <= node_threshold <= 1.0 or not 0.0 <= edge_threshold <= 1.0:
        raise ValueError("node_threshold and edge_threshold must lie in [0, 1]")
    adj = graph.adjacency_matrix
    n_tokens, n_logits = len(graph.input_tokens), len(graph.logit_targets)
    n_features = len(graph.selected_features)
    w = torch.zeros(adj.shape[0], device=adj.device)
    w[-n_logits:] = graph.logit_probabilities
    infl = _influence(_normalize(adj), w)
    node_mask = infl >= _threshold(infl, node_threshold)
    node_mask[-n_logits - n_tokens :] = True
    pruned = adj.clone()
    pruned[~node_mask] = 0
    pruned[:, ~node_mask] = 0
    norm = _normalize(pruned)
    edge_scores = norm * (_influence(norm, w) + w)[:, None]
    edge_mask = edge_scores >= _threshold(edge_scores.flatten(), edge_threshold)
    old = node_mask.clone()
    src = slice(None, -n_logits - n_tokens)
    node_mask[src] &= edge_mask[:, src].any(0)
    node_mask[:n_features] &= edge_mask[:n_features].any(1)
    while not torch.all(node_mask == old):
        old[:] = node_mask
        edge_mask[~node_mask] = False
        edge_mask[:, ~node_mask] = False
        node_mask[src] &= edge_mask[:, src].any(0)
        node_mask[:n_features] &= edge_mask[:n_features].any(1)
    srt, order = torch.sort(infl, descending=True)
    scores = torch.zeros_like(infl)
    scores[order] = torch.cumsum(srt, dim=0) / torch.sum(srt)
    return PruneResult(node_mask, edge_mask, scores)
