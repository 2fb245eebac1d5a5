"""Gctx, RS, CS and Groundedness: hand-computed graphs, and agreement with circuit-tracer."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hallugraph.attribution.scores import (
    GraphLayout,
    GroundednessFit,
    completeness_score,
    context_positions,
    context_share,
    fit_groundedness,
    graph_scores,
    groundedness,
    node_influence,
    replacement_score,
    row_influence,
    scores_from_graph,
)

# 1 feature, 1 layer, 3 positions, 1 logit:
# node 0 = feature, 1..3 = errors (layer 0, pos 0..2), 4..6 = tokens 0..2, 7 = logit
LAYOUT = GraphLayout(n_features=1, n_layers=1, n_pos=3, n_logits=1)


def hand_graph(tok1: float = 3.0, tok2: float = 1.0) -> torch.Tensor:
    a = torch.zeros(8, 8)
    a[7, 0] = 2.0  # logit <- feature
    a[7, LAYOUT.error_index(0, 2)] = -2.0  # logit <- error at pos 2 (sign ignored)
    a[0, 4 + 1] = tok1  # feature <- token 1
    a[0, 4 + 2] = tok2  # feature <- token 2
    return a


def test_layout_slices():
    assert (LAYOUT.errors, LAYOUT.tokens, LAYOUT.logits) == (slice(1, 4), slice(4, 7), slice(7, 8))
    assert LAYOUT.n_nodes == 8 and LAYOUT.error_index(0, 2) == 3


def test_hand_computed_influence_rs_cs():
    a = hand_graph()
    infl = node_influence(a, LAYOUT, [1.0])
    # logit row normalized: feature 0.5, error 0.5; feature row: tok1 0.75, tok2 0.25
    expected = torch.tensor([0.5, 0.0, 0.0, 0.5, 0.0, 0.375, 0.125, 0.0], dtype=torch.float64)
    torch.testing.assert_close(infl, expected)
    # RS = tokens / (tokens + errors) = 0.5 / (0.5 + 0.5)
    assert replacement_score(infl, LAYOUT) == pytest.approx(0.5)
    # CS: influence + w = [.5, 0, 0, .5, 0, .375, .125, 1] (sum 2.5); non-error share 1 for
    # every row but the logit's (0.5): (2.5 - 0.5) / 2.5
    assert completeness_score(a, LAYOUT, [1.0]) == pytest.approx(0.8)
    assert graph_scores(a, LAYOUT, [1.0]) == pytest.approx((0.5, 0.8))


def test_gctx_hand_computed():
    infl = node_influence(hand_graph(), LAYOUT, [1.0])
    assert context_share(infl, LAYOUT, [1]) == pytest.approx(0.75)
    assert context_share(infl, LAYOUT, [2]) == pytest.approx(0.25)
    assert context_share(infl, LAYOUT, [1, 2]) == pytest.approx(1.0)
    assert context_share(infl, LAYOUT, []) == 0.0
    with pytest.raises(ValueError):
        context_share(infl, LAYOUT, [3])


def test_gctx_one_when_only_context_carries_influence_zero_when_none():
    infl = node_influence(hand_graph(tok1=3.0, tok2=0.0), LAYOUT, [1.0])
    assert context_share(infl, LAYOUT, [1]) == 1.0
    assert context_share(infl, LAYOUT, [2]) == 0.0
    # the BOS (position 0) is left out by default; with it in the denominator it dilutes Gctx
    a = hand_graph(tok1=3.0, tok2=0.0)
    a[0, 4] = 1.0  # feature <- token 0
    infl = node_influence(a, LAYOUT, [1.0])
    assert context_share(infl, LAYOUT, [1]) == 1.0
    assert context_share(infl, LAYOUT, [1], exclude=()) == pytest.approx(0.75)
    # no token influence at all: nothing is grounded
    infl = node_influence(torch.zeros(8, 8), LAYOUT, [1.0])
    assert context_share(infl, LAYOUT, [1, 2]) == 0.0


def hand_graph_object() -> SimpleNamespace:
    """The hand graph as a graph object (adjacency, one selected feature, three tokens)."""
    return SimpleNamespace(
        adjacency_matrix=hand_graph(),
        selected_features=torch.tensor([0]),
        input_tokens=torch.tensor([1, 5, 6]),
        logit_targets=["x"],
        logit_probabilities=torch.tensor([1.0]),
        cfg=SimpleNamespace(n_layers=1),
    )


def test_scores_from_graph_object():
    g = hand_graph_object()
    s = scores_from_graph(g, context=[1])
    assert (s.gctx, s.rs, s.cs) == pytest.approx((0.75, 0.5, 0.8))
    assert s.to_dict()["n_context"] == 1
    with pytest.raises(ValueError, match="shape"):
        scores_from_graph(
            SimpleNamespace(**{**vars(g), "adjacency_matrix": torch.zeros(7, 7)}), [1]
        )


def test_context_positions_from_offsets():
    offsets = [(0, 0), (0, 5), (5, 9), (9, 15), (15, 20)]
    assert context_positions(offsets, (6, 15)) == [2, 3]
    assert context_positions(offsets, (6, 15), shift=1) == [3, 4]


def random_graph(seed: int):
    """A random DAG in circuit-tracer's layout (features in a random topological order)."""
    g = torch.Generator().manual_seed(seed)
    n_f, n_l, n_p, n_lg = 7, 3, 4, 3
    lay = GraphLayout(n_f, n_l, n_p, n_lg)
    a = torch.zeros(lay.n_nodes, lay.n_nodes)
    order = torch.randperm(n_f, generator=g)
    sources = list(range(lay.errors.start, lay.tokens.stop))
    for k, f in enumerate(order.tolist()):
        cols = sources + order[:k].tolist()
        vals = torch.randn(len(cols), generator=g)
        vals[torch.rand(len(cols), generator=g) < 0.5] = 0.0
        a[f, cols] = vals
    for r in range(lay.logits.start, lay.logits.stop):
        cols = list(range(lay.tokens.stop))
        vals = torch.randn(len(cols), generator=g)
        vals[torch.rand(len(cols), generator=g) < 0.3] = 0.0
        a[r, cols] = vals
    probs = torch.rand(n_lg, generator=g)
    graph = SimpleNamespace(
        adjacency_matrix=a,
        selected_features=torch.arange(n_f),
        input_tokens=torch.arange(n_p),
        logit_targets=list(range(n_lg)),
        logit_probabilities=probs / probs.sum() * 0.9,
        cfg=SimpleNamespace(n_layers=n_l),
    )
    return graph, lay


@pytest.mark.parametrize("seed", range(5))
def test_rs_cs_equal_circuit_tracer_on_random_graphs(seed):
    ct_graph = pytest.importorskip("circuit_tracer.graph")
    graph, lay = random_graph(seed)
    rs, cs = ct_graph.compute_graph_scores(graph)
    ours = scores_from_graph(graph, context=[1, 2])
    assert ours.rs == pytest.approx(rs, abs=1e-5)
    assert ours.cs == pytest.approx(cs, abs=1e-5)
    theirs = ct_graph.compute_node_influence(graph.adjacency_matrix, _logit_w(graph, lay))
    ours_infl = node_influence(graph.adjacency_matrix, lay, graph.logit_probabilities)
    torch.testing.assert_close(ours_infl.float(), theirs, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("seed", range(3))
def test_sparse_scores_equal_dense(seed):
    """Propagating through the non-zero rows only gives the dense scores (float64, 1e-12), on
    random graphs, the hand graph, and a graph with a cycle (solved by the dense path)."""
    graph, lay = random_graph(seed)
    cyc = SimpleNamespace(**{**vars(graph), "adjacency_matrix": graph.adjacency_matrix.clone()})
    cyc.adjacency_matrix[0, 1] = cyc.adjacency_matrix[1, 0] = 0.5  # features 0 <-> 1
    hand = hand_graph_object()
    for g in (graph, cyc, hand):
        dense, sparse = scores_from_graph(g, [1]), scores_from_graph(g, [1], sparse=True)
        for f in ("gctx", "rs", "cs"):
            assert abs(getattr(dense, f) - getattr(sparse, f)) <= 1e-12, f
    infl, _ = row_influence(graph.adjacency_matrix, lay, graph.logit_probabilities)
    dense = node_influence(graph.adjacency_matrix, lay, graph.logit_probabilities)
    torch.testing.assert_close(infl, dense, atol=1e-12, rtol=1e-12)
    assert infl[lay.tokens].sum() > 0


def _logit_w(graph, lay: GraphLayout) -> torch.Tensor:
    w = torch.zeros(lay.n_nodes)
    w[lay.logits] = graph.logit_probabilities
    return w


def test_groundedness_formula_and_fit():
    assert groundedness(0.5, 0.4, 0.8, alpha=0.25) == pytest.approx(0.5 * (0.1 + 0.6))
    assert groundedness(1.0, 0.0, 1.0, alpha=1.0) == 0.0
    with pytest.raises(ValueError):
        groundedness(1.0, 1.0, 1.0, alpha=1.5)
    # hallucinated answers (y = 1) have high RS but low CS; grounded ones the reverse:
    # only CS separates them, so the fit must pick alpha = 0
    rng = np.random.default_rng(0)
    n = 40
    y = np.array([0, 1] * (n // 2))
    gctx = np.full(n, 0.8)
    cs = np.where(y == 1, 0.3, 0.9) + rng.uniform(-0.05, 0.05, n)
    rs = np.where(y == 1, 0.9, 0.3) + rng.uniform(-0.05, 0.05, n)
    fit = fit_groundedness(gctx, rs, cs, y)
    assert fit.alpha == 0.0
    assert fit.balanced_accuracy == 1.0
    assert (fit.predict(gctx, rs, cs) == y).all()
    assert len(fit.grid) == 21
    assert GroundednessFit.from_dict(fit.to_dict()) == fit
    # NaN scores (empty graphs) count as ungrounded
    assert fit.predict(np.array([np.nan]), np.array([0.5]), np.array([0.5]))[0] == 1
    with pytest.raises(ValueError, match="both"):
        fit_groundedness(gctx, rs, cs, np.zeros(n))
