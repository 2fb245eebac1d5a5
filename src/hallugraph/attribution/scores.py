"""Scores of an attribution graph: context share Gctx, replacement RS, completeness CS, and
the Groundedness score built from them.

An attribution graph (circuit-tracer 0.5.0) is a dense adjacency matrix ``A`` whose rows are
*targets* and columns *sources*, over nodes laid out in this order (:class:`GraphLayout`)::

    [selected features (n_features)]
    [error nodes: layer-major, then position (n_layers * n_pos)]
    [token (embedding) nodes, one per position (n_pos)]
    [logit nodes (n_logits)]

Everything here is plain torch on that matrix (no circuit-tracer import), computed in
float64:

* **Influence.** ``Â = |A|`` with every row divided by its sum (rows that sum to 0 stay 0).
  With ``w`` the logit weights (the logit targets' probabilities, zero on other nodes), the
  influence of every node on the logits is ``w·(Â + Â² + Â³ + …)``, the total weight of all
  paths from the node to the logits. Graphs are DAGs, so the series is finite.
* **RS** (replacement score) = token influence / (token influence + error influence): the part
  of the end-to-end input→logit influence that is explained by features rather than by
  reconstruction errors (errors have no inputs, so they are sources like tokens).
* **CS** (completeness score) = Σ_n (1 − Σ_{e∈errors} Â[n, e]) · (influence_n + w_n)
  / Σ_n (influence_n + w_n): the share of each node's inputs that does not come from error
  nodes, averaged with the node's weight on the output. Both equal circuit-tracer's
  ``compute_graph_scores`` (tested).
* **Gctx** (context share) = Σ_{t ∈ context} influence(token t) / Σ_{t ∉ excluded}
  influence(token t): the share of the input tokens' influence on the answer logits that comes
  from the context's tokens. Position 0 (the BOS circuit-tracer puts first, whose features and
  error are zeroed) is excluded from the denominator by default. 0 when no token has influence.
* **Groundedness** ``G = Gctx · (α·RS + (1 − α)·CS)``: an answer is grounded when the answer
  logits are driven by the context (Gctx) *and* the graph explains that computation (RS, CS:
  a context share measured on a graph that is mostly error nodes means little). The answer is
  flagged as hallucinated when ``G ≤ T``. ``α ∈ [0, 1]`` and ``T`` are chosen on a validation
  split by :func:`fit_groundedness` (grid over α, for each α the threshold of maximal balanced
  accuracy; the best α wins, ties to the smaller α). Both are defined in
  :mod:`hallugraph.detectors.groundedness` (the detectors ``groundedness`` and
  ``groundedness_lr``) and re-exported here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

# Groundedness is defined with its detectors (they come before attribution in the stage order)
from hallugraph.detectors.groundedness import GroundednessFit, fit_groundedness, groundedness

__all__ = [
    "GraphLayout",
    "GraphScores",
    "GroundednessFit",
    "completeness_score",
    "context_positions",
    "context_share",
    "fit_groundedness",
    "graph_scores",
    "groundedness",
    "node_influence",
    "normalize_rows",
    "row_influence",
    "replacement_score",
    "scores_from_graph",
]


@dataclass(frozen=True)
class GraphLayout:
    """Sizes of the four node groups of a circuit-tracer graph, and their index ranges."""

    n_features: int
    n_layers: int
    n_pos: int
    n_logits: int

    @property
    def errors(self) -> slice:
        start = self.n_features
        return slice(start, start + self.n_layers * self.n_pos)

    @property
    def tokens(self) -> slice:
        start = self.errors.stop
        return slice(start, start + self.n_pos)

    @property
    def logits(self) -> slice:
        start = self.tokens.stop
        return slice(start, start + self.n_logits)

    @property
    def n_nodes(self) -> int:
        return self.logits.stop

    def error_index(self, layer: int, pos: int) -> int:
        """Node index of the error node of ``layer`` at position ``pos``."""
        return self.n_features + layer * self.n_pos + pos

    @classmethod
    def from_graph(cls, graph: Any) -> GraphLayout:
        """The layout of a ``circuit_tracer.graph.Graph`` or an engine ``AttributionGraph``."""
        layout = cls(
            n_features=len(graph.selected_features),
            n_layers=int(graph.cfg.n_layers),
            n_pos=len(graph.input_tokens),
            n_logits=len(graph.logit_targets),
        )
        _check(graph.adjacency_matrix, layout)
        return layout


def _check(adjacency: torch.Tensor, layout: GraphLayout) -> None:
    n = layout.n_nodes
    if tuple(adjacency.shape) != (n, n):
        raise ValueError(
            f"adjacency has shape {tuple(adjacency.shape)} but the layout {layout} has {n} nodes"
        )


def normalize_rows(adjacency: torch.Tensor) -> torch.Tensor:
    """``|A|`` with each row divided by its sum (float64; all-zero rows stay zero)."""
    a = torch.as_tensor(adjacency).detach().to(torch.float64).abs()
    sums = a.sum(dim=1, keepdim=True)
    return torch.where(sums > 0, a / torch.where(sums > 0, sums, 1.0), torch.zeros_like(a))


def _logit_weight_vector(
    layout: GraphLayout, logit_weights: torch.Tensor | Sequence[float]
) -> torch.Tensor:
    lw = torch.as_tensor(logit_weights, dtype=torch.float64).detach().cpu().reshape(-1)
    if len(lw) != layout.n_logits:
        raise ValueError(f"{len(lw)} logit weights for {layout.n_logits} logit nodes")
    w = torch.zeros(layout.n_nodes, dtype=torch.float64)
    w[layout.logits] = lw
    return w


def node_influence(
    adjacency: torch.Tensor,
    layout: GraphLayout,
    logit_weights: torch.Tensor | Sequence[float],
) -> torch.Tensor:
    """Influence of every node on the logits, ``w·(Â + Â² + …)`` (float64, length n_nodes).

    Summed path by path (``x ← x·Â``) until the walk dies out, which takes at most the graph's
    depth on a DAG; a graph with cycles whose series still converges is solved exactly instead.
    """
    _check(adjacency, layout)
    a = normalize_rows(adjacency.cpu())
    w = _logit_weight_vector(layout, logit_weights)
    step = w @ a
    total = step.clone()
    for _ in range(layout.n_nodes + 1):
        step = step @ a
        if not bool(step.any()):
            return total
        total += step
    # not nilpotent (a cycle): x = w·Â·(I − Â)⁻¹, i.e. (I − Â)ᵀ xᵀ = (w·Â)ᵀ
    eye = torch.eye(layout.n_nodes, dtype=torch.float64)
    sol = torch.linalg.solve((eye - a).T, (w @ a).unsqueeze(1)).squeeze(1)
    if not torch.isfinite(sol).all():
        raise ValueError("the influence series does not converge on this graph")
    return sol


def row_influence(
    adjacency: torch.Tensor,
    layout: GraphLayout,
    logit_weights: torch.Tensor | Sequence[float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(influence, non_error)``: :func:`node_influence`, and each node's ``1 − Σ_errors Â[n,
    e]`` (:func:`completeness_score`'s factor), propagated through the rows that have an entry
    only. An engine graph's error and token rows are all zero (nodes without inputs), so this
    touches ``n_features + n_logits`` rows instead of every node's: the same sums without their
    zero terms (float64, equal to the dense path to ~1e-15 relative)."""
    _check(adjacency, layout)
    adj = torch.as_tensor(adjacency).detach().cpu()
    rows = torch.nonzero(adj.ne(0).any(dim=1)).squeeze(1)
    a = adj[rows].to(torch.float64).abs()
    a = a / a.sum(dim=1, keepdim=True)
    w = _logit_weight_vector(layout, logit_weights)
    step = w[rows] @ a
    total = step.clone()
    for _ in range(layout.n_nodes + 1):
        step = step[rows] @ a
        if not bool(step.any()):
            break
        total += step
    else:  # a cycle: the dense path solves it
        total = node_influence(adjacency, layout, logit_weights)
    non_error = torch.ones(layout.n_nodes, dtype=torch.float64)
    non_error[rows] = 1.0 - a[:, layout.errors].sum(dim=1)
    return total, non_error


def replacement_score(influence: torch.Tensor, layout: GraphLayout) -> float:
    """Token influence / (token + error influence); NaN when both are zero."""
    tok = float(influence[layout.tokens].sum())
    err = float(influence[layout.errors].sum())
    return tok / (tok + err) if tok + err > 0 else float("nan")


def completeness_score(
    adjacency: torch.Tensor,
    layout: GraphLayout,
    logit_weights: torch.Tensor | Sequence[float],
    influence: torch.Tensor | None = None,
) -> float:
    """Σ (1 − error share of the node's inputs) · (influence + w) / Σ (influence + w)."""
    a = normalize_rows(adjacency.cpu())
    if influence is None:
        influence = node_influence(adjacency, layout, logit_weights)
    w = _logit_weight_vector(layout, logit_weights)
    non_error = 1.0 - a[:, layout.errors].sum(dim=1)
    out = influence + w
    return float((non_error * out).sum() / out.sum())


def graph_scores(
    adjacency: torch.Tensor,
    layout: GraphLayout,
    logit_weights: torch.Tensor | Sequence[float],
) -> tuple[float, float]:
    """``(RS, CS)``, as circuit-tracer's ``compute_graph_scores`` defines them."""
    infl = node_influence(adjacency, layout, logit_weights)
    return (
        replacement_score(infl, layout),
        completeness_score(adjacency, layout, logit_weights, influence=infl),
    )


def _positions(positions: Iterable[int] | torch.Tensor, n_pos: int, what: str) -> torch.Tensor:
    idx = torch.as_tensor(list(positions) if not torch.is_tensor(positions) else positions)
    idx = idx.to(torch.long).reshape(-1)
    if len(idx) and (idx.min() < 0 or idx.max() >= n_pos):
        raise ValueError(f"{what} positions must lie in [0, {n_pos}), got {idx.tolist()}")
    return idx.unique()


def context_share(
    influence: torch.Tensor,
    layout: GraphLayout,
    context: Iterable[int] | torch.Tensor,
    exclude: Iterable[int] = (0,),
) -> float:
    """Gctx: the context tokens' share of the (non-excluded) token nodes' influence.

    ``context`` are token positions (0-based, as in ``graph.input_tokens``); ``exclude`` are
    positions left out of both sums (default: position 0, the BOS). 0.0 when no token has any
    influence.
    """
    tok = influence[layout.tokens].clone()
    ex = _positions(exclude, layout.n_pos, "excluded")
    tok[ex] = 0.0
    ctx = _positions(context, layout.n_pos, "context")
    total = float(tok.sum())
    if total <= 0:
        return 0.0
    return float(tok[ctx].sum()) / total


@dataclass(frozen=True)
class GraphScores:
    """Gctx, RS and CS of one graph, with what they were computed from."""

    gctx: float
    rs: float
    cs: float
    n_features: int
    n_pos: int
    n_context: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def scores_from_graph(
    graph: Any,
    context: Iterable[int] | torch.Tensor,
    exclude: Iterable[int] = (0,),
    logit_weights: torch.Tensor | Sequence[float] | None = None,
    *,
    sparse: bool = False,
) -> GraphScores:
    """Gctx, RS and CS of a ``circuit_tracer.graph.Graph`` or an engine ``AttributionGraph``.

    ``logit_weights`` default to the graph's ``logit_probabilities`` (what circuit-tracer uses).
    ``sparse``: through the rows that have an entry only (:func:`row_influence`: the same
    scores to ~1e-15, without the dense matrix's passes over its all-zero rows).
    """
    layout = GraphLayout.from_graph(graph)
    lw = graph.logit_probabilities if logit_weights is None else logit_weights
    adj = graph.adjacency_matrix
    ctx = _positions(context, layout.n_pos, "context")
    if sparse:
        infl, non_error = row_influence(adj, layout, lw)
        out = infl + _logit_weight_vector(layout, lw)
        cs = float((non_error * out).sum() / out.sum())
    else:
        infl = node_influence(adj, layout, lw)
        cs = completeness_score(adj, layout, lw, influence=infl)
    return GraphScores(
        gctx=context_share(infl, layout, ctx, exclude),
        rs=replacement_score(infl, layout),
        cs=cs,
        n_features=layout.n_features,
        n_pos=layout.n_pos,
        n_context=len(ctx),
    )


def context_positions(
    offsets: Sequence[tuple[int, int]], span: tuple[int, int], shift: int = 0
) -> list[int]:
    """Token positions whose character range overlaps ``span`` = ``[start, end)``.

    ``offsets`` is a fast tokenizer's ``offset_mapping`` of the text; ``shift`` is added to
    every position (1 when a BOS is prepended to the tokens afterwards).
    """
    start, end = span
    return [i + shift for i, (s, e) in enumerate(offsets) if e > start and s < end and e > s]


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def trace_record(
    row: Mapping[str, Any],
    scores: Sequence[GraphScores],
    probs: Sequence[float],
    seconds: float,
    cpu0: float | None = None,
) -> dict[str, Any]:
    """The stored record of one trace from its graphs' scores: Gctx, RS, CS (NaN-aware means
    over the graphs), mean feature nodes, context positions, graphs, mean target probability,
    wall ``seconds`` and, given the CPU clock ``cpu0`` at the start, ``cpu_s``."""
    cpu = {} if cpu0 is None else {"cpu_s": round(time.process_time() - cpu0, 3)}
    return {
        **cpu,
        "index": int(row.get("index", -1)),
        "gctx": _mean([s.gctx for s in scores]),
        "rs": _mean([s.rs for s in scores]),
        "cs": _mean([s.cs for s in scores]),
        "n_features": round(sum(s.n_features for s in scores) / len(scores)),
        "n_context": scores[0].n_context,
        "n_graphs": len(scores),
        "target_prob": _mean(probs),
        "seconds": seconds,
    }
