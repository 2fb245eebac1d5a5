"""Attention-graph topology statistic on hand-built maps with known answers, against networkx,
and on the tiny run."""

from __future__ import annotations

import shutil

import networkx as nx
import numpy as np
import pytest

from hallugraph.features import FeatureTable, get_statistic
from hallugraph.features.topology import (
    TOPOLOGY_FEATURES,
    GraphTopology,
    pagerank_dag,
    topology_features,
)
from hallugraph.graphs.graph import build_graph
from hallugraph.store import TraceStore

CTX, PROMPT, PR, INDEG, CLUST, ENT = range(6)


def uniform_causal(S: int) -> np.ndarray:
    """Row i attends uniformly to positions 0..i."""
    return np.tril(np.ones((S, S))) / np.arange(1, S + 1)[:, None]


def _maps(*layers: np.ndarray) -> np.ndarray:
    """``[L, 1, S, S]`` from per-layer maps (one head)."""
    return np.stack(layers)[:, None]


def test_feature_names_and_shape():
    assert TOPOLOGY_FEATURES == (
        "context_share",
        "prompt_share",
        "pagerank",
        "in_degree",
        "clustering",
        "entropy",
    )
    out = topology_features(_maps(uniform_causal(6), np.eye(6)), 4, slice(1, 3))
    assert out.shape == (2, 6)


def test_all_answer_attention_on_the_context_gives_share_one():
    S, P, span = 8, 5, slice(1, 3)
    A = uniform_causal(S)
    A[P:] = 0
    A[P:, 1:3] = 0.5  # every answer row: all of its weight on the two context tokens
    half = uniform_causal(S)
    half[P:] = 0
    half[P:, 1:3] = 0.25  # half on the context ...
    half[P:, 4] = 0.5  # ... half on a prompt token outside it
    out = topology_features(_maps(A, half), P, span)
    assert out[0, CTX] == pytest.approx(1.0) and out[0, PROMPT] == pytest.approx(1.0)
    assert out[1, CTX] == pytest.approx(0.5) and out[1, PROMPT] == pytest.approx(1.0)
    # without a span the context is the whole prompt
    assert topology_features(_maps(half), P)[0, CTX] == pytest.approx(1.0)
    # uniform map: answer row i puts P / (i + 1) of its weight on the prompt
    uni = topology_features(_maps(uniform_causal(S)), P, span)
    assert uni[0, PROMPT] == pytest.approx(np.mean([P / (i + 1) for i in range(P, S)]))
    assert uni[0, CTX] == pytest.approx(np.mean([2 / (i + 1) for i in range(P, S)]))


def test_entropy_is_one_for_uniform_rows_and_zero_for_one_key():
    out = topology_features(_maps(uniform_causal(7), np.eye(7)), 4)
    assert out[0, ENT] == pytest.approx(1.0)
    assert out[1, ENT] == pytest.approx(0.0)
    two = np.zeros((7, 7))
    two[:, 0] = 1.0
    two[4:, 0] = two[4:, 1] = 0.5  # answer rows: two keys, log 2 nats over log(i + 1)
    want = np.mean([np.log(2) / np.log(i + 1) for i in (4, 5, 6)])
    assert topology_features(_maps(two), 4)[0, ENT] == pytest.approx(want)


def test_pagerank_of_two_nodes_by_hand():
    # 0 -> 1 with weight 1 (no self-loops), node 1 dangling; d = 0.85:
    # pi0 = 0.15/2 + 0.85 pi1 / 2, pi0 + pi1 = 1  =>  pi0 = 0.5 / 1.425 = 20/57
    W = np.array([[0.0, 0.0], [0.3, 0.0]])  # the weight's scale does not matter
    np.testing.assert_allclose(pagerank_dag(W), [20 / 57, 37 / 57], rtol=1e-12)
    # the statistic reports the answer nodes' mean PageRank times S
    A = np.array([[1.0, 0.0], [0.3, 0.7]])
    assert topology_features(_maps(A), 1)[0, PR] == pytest.approx(2 * 37 / 57)


def test_pagerank_of_the_uniform_map_matches_networkx():
    S = 9
    A = uniform_causal(S)
    g = nx.DiGraph()
    g.add_nodes_from(range(S))
    g.add_weighted_edges_from((j, i, A[i, j]) for i in range(S) for j in range(i))
    want = nx.pagerank(g, alpha=0.85, tol=1e-14, max_iter=10_000)
    got = pagerank_dag(np.tril(A, -1))
    np.testing.assert_allclose(got, [want[i] for i in range(S)], atol=1e-10)
    assert got.sum() == pytest.approx(1.0)
    assert (np.diff(got) > 0).all()  # rank flows forward along the causal order


def test_in_degree_and_clustering_on_a_thresholded_uniform_map():
    # S = 6, answer rows 4 and 5; weights 1/(i+1): 1/2, 1/3, 1/4, 1/5 pass 0.18, 1/6 does not.
    # Kept edges: every pair among tokens 0..4 (a 5-clique); token 5 is isolated.
    out = topology_features(_maps(uniform_causal(6)), 4, threshold=0.18)
    assert out[0, INDEG] == pytest.approx((4 / 5 + 0 / 5) / 2)
    assert out[0, CLUST] == pytest.approx((1.0 + 0.0) / 2)
    # a chain (each token on its predecessor only): no triangle, in-degree 1
    chain = np.eye(6, k=-1)
    chain[0, 0] = 1
    out = topology_features(_maps(chain), 4, threshold=0.5)
    assert out[0, INDEG] == pytest.approx(1 / 5) and out[0, CLUST] == 0.0


def test_topology_matches_networkx_on_random_maps():
    rng = np.random.default_rng(0)
    S, heads, P, thr = 14, 3, 9, 0.08
    logits = rng.normal(size=(2, heads, S, S)) * 2
    attn = np.where(np.tril(np.ones((S, S), bool)), np.exp(logits), 0.0)
    attn /= attn.sum(-1, keepdims=True)
    trace = {"attentions": attn, "prompt_len": P, "answer_len": S - P, "context_span": [2, 6]}
    trace["tokens_decoded"] = [f"t{i}" for i in range(S)]
    out = GraphTopology(threshold=thr).compute(trace, {})
    assert out.dtype == np.float32 and out.shape == (2, 6)
    ans = range(P, S)
    for layer in range(2):
        full = build_graph(trace, layer, self_loops=False).to_networkx()
        pr = nx.pagerank(full, tol=1e-13, max_iter=10_000)
        pruned = build_graph(trace, layer, self_loops=False, threshold=thr).to_networkx()
        indeg = nx.in_degree_centrality(pruned)
        clust = nx.clustering(pruned.to_undirected())
        mean = attn[layer].mean(0)
        assert out[layer, PR] == pytest.approx(np.mean([pr[i] for i in ans]) * S, rel=1e-5)
        assert out[layer, INDEG] == pytest.approx(np.mean([indeg[i] for i in ans]), rel=1e-6)
        assert out[layer, CLUST] == pytest.approx(np.mean([clust[i] for i in ans]), rel=1e-6)
        assert out[layer, CTX] == pytest.approx(mean[P:, 2:6].sum(1).mean(), rel=1e-5)
        assert out[layer, PROMPT] == pytest.approx(mean[P:, :P].sum(1).mean(), rel=1e-5)
        assert 0 < out[layer, CLUST] < 1 and 0 < out[layer, INDEG] < 1  # a non-trivial case


def test_statistic_parameters():
    st = get_statistic("graph_topology")
    assert st.threshold == 0.02 and st.params()["features"] == list(TOPOLOGY_FEATURES)
    with pytest.raises(ValueError):
        GraphTopology(threshold=0)
    with pytest.raises(ValueError):
        GraphTopology(damping=1.0)


def test_topology_on_the_tiny_run(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    X = FeatureTable.from_run(run)
    topo = X.stat("graph_topology")
    assert topo.shape == (24, 2, 6) and np.isfinite(topo).all()
    shares = topo[..., [CTX, PROMPT, INDEG, CLUST, ENT]]
    assert ((shares >= 0) & (shares <= 1 + 1e-6)).all()
    assert (topo[..., CTX] <= topo[..., PROMPT] + 1e-6).all()  # the span is inside the prompt
    assert (run / "stats" / "graph_topology").is_dir()  # cached for the hypothesis test

    t = TraceStore(run)[5]
    A = t["attentions"].astype(np.float64).mean(1)
    p, (cs, ce) = t["prompt_len"], t["context_span"]
    rows = A[:, p:]
    want_ctx = (rows[..., cs:ce].sum(-1) / rows.sum(-1)).mean(-1)
    np.testing.assert_allclose(topo[5, :, CTX], want_ctx, rtol=1e-5)
