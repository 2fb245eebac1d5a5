"""``targets=all`` scored from one shared attribution (``hallugraph groundedness RUN --targets all
--shared-prefixes``): the graphs of a trace's answer tokens ``k`` (each on the prefix ``prompt +
answer[:k]``) built together by :func:`~hallugraph.attribution.engine.attribute_prefixes` (one
forward over the longest prefix, encodings and feature rows shared) and scored through their
non-zero rows (``scores_from_graph(..., sparse=True)``).

The graphs equal the separate calls' up to float rounding (see
:mod:`hallugraph.attribution.engine.prefixes`), so the scores do too, except where rounding
swaps a selected feature; ``benchmarks/groundedness_all_speed.py`` measures both on real
answers. Records scored this way carry ``"path": "shared"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hallugraph.attribution.engine import AttributionEngine, attribute_prefixes
from hallugraph.attribution.scores import GraphScores, scores_from_graph
from hallugraph.attribution.tracer import attribution_tokens

__all__ = ["shared_graphs", "shared_scores"]


def shared_graphs(
    engine: AttributionEngine,
    row: Mapping[str, Any],
    ks: Sequence[int],
    *,
    max_feature_nodes: int | None = 64,
    batch_size: int = 64,
) -> tuple[list[Any], list[int]]:
    """``(graphs, context positions)``: the graph of answer token ``k`` for each ``k`` in
    ``ks`` (what :func:`~hallugraph.attribution.run.attribute_answer_token` builds, up to
    rounding), from one shared attribution."""
    span = row.get("context_span")
    if not span:
        raise ValueError(f"trace {row.get('question_id')} has no context span")
    if not ks:
        raise ValueError("no answer token to attribute")
    tokens = [int(t) for t in row["tokens"]]
    p, n_answer = int(row["prompt_len"]), int(row["answer_len"])
    bad = [k for k in ks if not 0 <= k < n_answer]
    if bad:
        raise ValueError(f"answer tokens {bad} out of range: the answer has {n_answer}")
    ids, shift = attribution_tokens(engine.tokenizer, tokens[: p + max(ks)])
    graphs = attribute_prefixes(
        engine,
        ids,
        [p + k + shift for k in ks],
        [tokens[p + k] for k in ks],
        max_feature_nodes=max_feature_nodes,
        batch_size=batch_size,
    )
    return graphs, [i + shift for i in range(int(span[0]), int(span[1]))]


def shared_scores(
    engine: AttributionEngine,
    row: Mapping[str, Any],
    ks: Sequence[int],
    *,
    max_feature_nodes: int | None = 64,
    batch_size: int = 64,
) -> tuple[list[GraphScores], list[float]]:
    """``(scores, target probabilities)`` of the graphs of :func:`shared_graphs`."""
    graphs, ctx = shared_graphs(
        engine, row, ks, max_feature_nodes=max_feature_nodes, batch_size=batch_size
    )
    scores = [scores_from_graph(g, ctx, sparse=True) for g in graphs]
    return scores, [float(g.logit_probabilities[0]) for g in graphs]
