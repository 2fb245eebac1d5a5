"""CHARM graph statistics on a hand-built trace with known nodes, edges and features, and on the
tiny run (dtypes, shapes, cache)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from hallugraph.features import FeatureTable, get_statistic
from hallugraph.features.charm import (
    CharmGraph,
    CharmNodes,
    graph_layout,
    layer_indices,
    projection,
)
from hallugraph.store import TraceStore

S, P_LEN, N_ANS = 7, 4, 3  # prompt 0..3, answer 4..6; answer nodes = generating rows 3, 4, 5
HID = 3

# attention rows of the two heads (one layer): row -> (head 0, head 1), keys 0..row
ROWS = {
    0: ([1.0], [1.0]),
    1: ([0.3, 0.7], [0.5, 0.5]),
    2: ([0.2, 0.2, 0.6], [0.1, 0.1, 0.8]),
    # key 1 stays under 0.05: no edge; diagonal 0.16 / 0.08 = self-attention
    3: ([0.5, 0.04, 0.3, 0.16], [0.9, 0.0, 0.02, 0.08]),
    # key 1 (0.35 + 0.35) would beat key 0, but prompt token 1 is not a node (max_prompt = 2)
    4: ([0.2, 0.35, 0.0, 0.6, 0.1], [0.3, 0.35, 0.3, 0.06, 0.05]),
    5: ([0.1, 0.0, 0.0, 0.0, 0.7, 0.2], [0.04, 0.0, 0.6, 0.3, 0.03, 0.03]),
    # the last token's row is never read (its query generated nothing)
    6: ([0.0, 0.9, 0.0, 0.0, 0.0, 0.0, 0.1], [0.0, 0.9, 0.0, 0.0, 0.0, 0.0, 0.1]),
}


def hand_trace() -> dict:
    attn = np.zeros((1, 2, S, S), dtype=np.float32)
    for q, heads in ROWS.items():
        for h, row in enumerate(heads):
            attn[0, h, q, : len(row)] = row
    # hidden_states[l, s, :] = 100 l + 10 s + [0, 1, 2]: a row tells where it came from
    hs = 100 * np.arange(2)[:, None, None] + 10 * np.arange(S)[None, :, None] + np.arange(HID)
    return {
        "attentions": attn.astype(np.float16),
        "hidden_states": hs.astype(np.float16),
        "prompt_len": P_LEN,
        "answer_len": N_ANS,
        "context_span": [1, 3],
    }


PARAMS = dict(max_answer=4, max_prompt=2, max_edges=6, layer_fracs=(1.0,), proj_dim=None)
# 3 answer nodes share 6 edges: 2 sources each


def code(*scores: float) -> list[int]:
    """uint8 codes of fp16-stored scores."""
    return [int(np.rint(255 * np.float32(np.float16(s)))) for s in scores]


def test_layout_by_hand():
    kw = {k: v for k, v in PARAMS.items() if k.startswith("max")}
    lay = graph_layout(hand_trace()["attentions"], P_LEN, N_ANS, **kw)
    # attention received by prompt tokens 0..2 from rows 3..5 (thresholded): 2.0, 0.7, 1.2
    np.testing.assert_array_equal(lay.prompt_pos, [0, 2])
    np.testing.assert_array_equal(lay.answer_pos, [3, 4, 5])
    # node indices: prompt block 0, 1 (positions 0, 2); answer block 2, 3, 4 (positions 3, 4, 5)
    np.testing.assert_array_equal(lay.edge_dst_pos, [3, 3, 4, 4, 5, 5])
    np.testing.assert_array_equal(lay.edge_src_pos, [0, 2, 0, 3, 2, 4])
    np.testing.assert_array_equal(lay.edge_dst, [2, 2, 3, 3, 4, 4])
    np.testing.assert_array_equal(lay.edge_src, [0, 1, 0, 2, 1, 3])
    # a larger budget keeps every edge CHARM's rule allows between nodes (4 -> 5 has 0.7)
    wide = graph_layout(hand_trace()["attentions"], P_LEN, N_ANS, **{**kw, "max_edges": 30})
    np.testing.assert_array_equal(wide.edge_src_pos, [0, 2, 0, 2, 3, 0, 2, 3, 4])
    capped = graph_layout(
        hand_trace()["attentions"], P_LEN, N_ANS, **{**kw, "max_edges": 30, "max_sources": 1}
    )
    np.testing.assert_array_equal(capped.edge_src_pos, [0, 3, 4])


def test_charm_graph_by_hand():
    out = CharmGraph(**PARAMS).compute(hand_trace(), {})
    assert out.shape == (6, 2 + 2) and out.dtype == np.uint8
    want = np.array(
        [
            [1, 3, *code(0.5, 0.9)],  # position 0 -> 3 (node 0 -> node 2)
            [2, 3, *code(0.3, 0)],  # 2 -> 3 (0.02 dropped)
            [1, 4, *code(0.2, 0.3)],  # 0 -> 4
            [3, 4, *code(0.6, 0.06)],  # 3 -> 4
            [2, 5, *code(0, 0.6)],  # 2 -> 5
            [4, 5, *code(0.7, 0)],  # 4 -> 5
        ]
    )
    np.testing.assert_array_equal(out, want)
    assert code(0.5) == [128]  # 127.5 rounds to even
    # a bigger budget pads with empty rows
    big = CharmGraph(**{**PARAMS, "max_edges": 8}).compute(hand_trace(), {})
    np.testing.assert_array_equal(big[:6], want)
    assert (big[6:] == 0).all()


def test_charm_nodes_by_hand():
    t = hand_trace()
    out = CharmNodes(**PARAMS).compute(t, {})
    assert out.shape == (2 + 4, 2 + 2 + HID) and out.dtype == np.float16
    pos = [0, 2, 3, 4, 5]
    kind = [1, 1, 2, 2, 2, 0]
    in_ctx = [0, 1, 0, 0, 0, 0]  # span [1, 3): prompt token 2 only
    np.testing.assert_array_equal(out[:, 0], kind)
    np.testing.assert_array_equal(out[:, 1], in_ctx)
    diag = np.float16([[1.0, 1.0], [0.6, 0.8], [0.16, 0.08], [0.1, 0.05], [0.2, 0.03]])
    np.testing.assert_array_equal(out[:5, 2:4], diag)
    hs_last = np.array([100 + 10 * s + np.arange(HID) for s in pos], dtype=np.float16)
    np.testing.assert_array_equal(out[:5, 4:], hs_last)  # layer round(1.0 * 1) = 1, raw
    assert (out[5] == 0).all()


def test_projection_is_fixed_and_applied():
    t = hand_trace()
    R = projection(HID, 2, 1, seed=7)
    assert R.shape == (HID, 2)
    np.testing.assert_array_equal(R, projection(HID, 2, 1, seed=7))
    assert not np.array_equal(R, projection(HID, 2, 1, seed=8))
    assert not np.array_equal(R, projection(HID, 2, 0, seed=7))
    out = CharmNodes(**{**PARAMS, "proj_dim": 2, "proj_seed": 7}).compute(t, {})
    assert out.shape == (6, 2 + 2 + 2)
    want = t["hidden_states"][1, [0, 2, 3, 4, 5]].astype(np.float32) @ R
    np.testing.assert_allclose(out[:5, 4:].astype(np.float32), want, rtol=2e-3)
    np.testing.assert_array_equal(projection(HID, 5, 1), np.eye(HID))  # dim >= hidden: raw


def test_layer_indices_and_truncation():
    assert layer_indices(30, (0.6, 0.75, 0.9)) == [18, 22, 27]
    assert layer_indices(2, (0.6, 0.75, 0.9)) == [1, 2]  # no repeats
    # an answer longer than max_answer keeps its first rows
    lay = graph_layout(hand_trace()["attentions"], P_LEN, N_ANS, max_answer=2, max_edges=2)
    np.testing.assert_array_equal(lay.answer_pos, [3, 4])
    np.testing.assert_array_equal(lay.edge_dst_pos, [3, 4])  # one source each: the strongest
    np.testing.assert_array_equal(lay.edge_src_pos, [0, 1])  # prompt token 1 is a node now


def test_params_and_defaults():
    g, n = get_statistic("charm_graph"), get_statistic("charm_nodes")
    assert g.dtype == np.uint8 and n.dtype == np.float16
    assert g.params()["threshold"] == 0.05 and g.params()["max_edges"] == 512
    assert g.params()["max_prompt"] == 48 and g.params()["max_sources"] is None
    assert n.params()["proj_dim"] == 96 and n.params()["layer_fracs"] == [0.6, 0.75, 0.9]
    with pytest.raises(ValueError):
        CharmGraph(max_prompt=200, max_answer=64)
    with pytest.raises(ValueError):
        CharmGraph(max_edges=10, max_answer=64)


def test_on_the_tiny_run(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    X = FeatureTable.from_run(run)
    info = X.run_info[0]
    F = info["num_layers"] * info["num_heads"]
    edges, nodes = X.stat("charm_graph"), X.stat("charm_nodes")
    assert edges.dtype == np.uint8 and edges.shape == (24, 512, 2 + F)
    hidden = info["hidden_size"]  # 32 < proj_dim: raw activations of layers 1 and 2
    assert nodes.dtype == np.float16 and nodes.shape == (24, 48 + 64, 2 + F + 2 * hidden)
    t = TraceStore(run)[3]
    n_a = min(t["answer_len"], 64)
    np.testing.assert_array_equal(nodes[3, 48 : 48 + n_a, 0], 2)
    assert (nodes[3, 48 + n_a :, 0] == 0).all()
    src, dst = edges[3, :, 0].astype(int) - 1, edges[3, :, 1].astype(int) - 1
    real = dst >= 0
    assert real.any() and (src[real] >= 0).all() and (src[~real] == -1).all()
    assert (dst[real] >= 48).all() and (dst[real] < 48 + n_a).all()  # targets: answer nodes
    assert (src[real] < dst[real]).all()  # sources come before their target
    assert (nodes[3, src[real], 0] > 0).all()  # sources are real nodes
    # cached: a second table reads the same arrays back
    again = FeatureTable.from_run(run)
    cached_edges, cached_nodes = again.stat("charm_graph"), again.stat("charm_nodes")
    assert cached_edges.dtype == np.uint8 and cached_nodes.dtype == np.float16
    np.testing.assert_array_equal(cached_edges, edges)
    np.testing.assert_array_equal(cached_nodes, nodes)


def test_the_layout_is_computed_once_for_both_statistics(monkeypatch):
    import hallugraph.features.charm as charm

    calls = []
    real = charm.graph_layout
    monkeypatch.setattr(charm, "graph_layout", lambda *a, **k: calls.append(1) or real(*a, **k))
    t = hand_trace()
    graph = get_statistic("charm_graph").values(t, {})
    nodes = get_statistic("charm_nodes").values(t, {})
    assert len(calls) == 1
    other = {**t, "attentions": t["attentions"].copy()}  # another trace: computed again
    get_statistic("charm_graph").values(other, {})
    assert len(calls) == 2
    monkeypatch.setattr(charm, "graph_layout", real)
    charm._CharmBase._last_layout = None
    np.testing.assert_array_equal(get_statistic("charm_graph").values(t, {}), graph)
    np.testing.assert_array_equal(get_statistic("charm_nodes").values(t, {}), nodes)
