"""Attention graphs: exact edges, weights and roles on hand-built maps; networkx and PyG exports
agree; pruning; the ``hallugraph graph`` command."""

from __future__ import annotations

import numpy as np
import pytest

from hallugraph.cli import main
from hallugraph.graphs.graph import build_graph
from hallugraph.graphs.roles import ROLE_IDS, ROLES, token_roles
from hallugraph.store import TraceStore

# Layer 1 of the hand-built trace: two heads, dyadic weights (exact in binary).
HEAD0 = [[1, 0, 0, 0], [0.5, 0.5, 0, 0], [0.25, 0.25, 0.5, 0], [0.125, 0.375, 0.25, 0.25]]
HEAD1 = [[1, 0, 0, 0], [0.75, 0.25, 0, 0], [0.75, 0.25, 0, 0], [0.375, 0.125, 0.25, 0.25]]
# mean over heads: [[1], [.625, .375], [.5, .25, .25], [.25, .25, .25, .25]]
ALL_EDGES = [  # (source = key, target = query, mean weight), by target then source
    (0, 0, 1.0),
    (0, 1, 0.625),
    (1, 1, 0.375),
    (0, 2, 0.5),
    (1, 2, 0.25),
    (2, 2, 0.25),
    (0, 3, 0.25),
    (1, 3, 0.25),
    (2, 3, 0.25),
    (3, 3, 0.25),
]


def hand_trace(**extra) -> dict:
    attn = np.zeros((2, 2, 4, 4))
    attn[0] = np.eye(4)  # layer 0: every token on itself only
    attn[1, 0], attn[1, 1] = HEAD0, HEAD1
    hs = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    trace = {
        "attentions": attn.astype(np.float16),
        "hidden_states": hs,
        "tokens": [11, 12, 13, 14],
        "tokens_decoded": ["a", " b", " c", " d"],
        "seq_len": 4,
        "prompt_len": 3,
        "answer_len": 1,
        "context_span": [1, 2],
        "question": "zzz",
        "question_id": "q0",
        "generated_answer_clean": "d",
        "label": 1,
    }
    trace.update(extra)
    return trace


def edges(g) -> list[tuple[int, int, float]]:
    return [(int(s), int(d), float(w)) for (s, d), w in zip(g.edge_index.T, g.weight, strict=True)]


def test_full_graph_has_exactly_the_causal_edges_and_mean_weights():
    g = build_graph(hand_trace(), 1)
    assert edges(g) == ALL_EDGES
    assert g.edge_attr.shape == (10,) and g.layer == 1 and g.num_nodes == 4
    assert g.role_names == ["prompt", "context", "prompt", "answer"]
    assert build_graph(hand_trace(), -1).layer == 1  # negative layers count from the end
    # layer 0 is the identity: self-loops only, or nothing without them
    assert edges(build_graph(hand_trace(), 0)) == [(i, i, 1.0) for i in range(4)]
    assert build_graph(hand_trace(), 0, self_loops=False).num_edges == 0


def test_heads_all_gives_one_weight_per_head_and_the_same_edges():
    g = build_graph(hand_trace(), 1, heads="all")
    assert edges(g) == ALL_EDGES
    h0, h1 = np.array(HEAD0), np.array(HEAD1)
    want = [[h0[d, s], h1[d, s]] for s, d, _ in ALL_EDGES]
    np.testing.assert_array_equal(g.edge_attr, want)
    # the edge 2 -> 2 exists (mean 0.25) although head 1 gives it 0
    assert list(g.edge_attr[5]) == [0.5, 0.0]


def test_threshold_and_top_k_pruning():
    thr = build_graph(hand_trace(), 1, threshold=0.375)
    assert edges(thr) == [(0, 0, 1.0), (0, 1, 0.625), (1, 1, 0.375), (0, 2, 0.5)]
    top1 = build_graph(hand_trace(), 1, top_k=1)  # row 3 is a four-way tie: the earliest key
    assert edges(top1) == [(0, 0, 1.0), (0, 1, 0.625), (0, 2, 0.5), (0, 3, 0.25)]
    top2 = build_graph(hand_trace(), 1, top_k=2, self_loops=False)
    assert [(s, d) for s, d, _ in edges(top2)] == [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3)]
    both = build_graph(hand_trace(), 1, threshold=0.3, top_k=1)
    assert [(s, d) for s, d, _ in edges(both)] == [(0, 0), (0, 1), (0, 2)]
    # pruning reads the mean over heads, whatever the edge features
    assert edges(build_graph(hand_trace(), 1, heads="all", top_k=1)) == edges(top1)


def test_hide_sink_drops_edges_out_of_token_0_before_top_k():
    full = build_graph(hand_trace(), 1, top_k=1)
    hidden = build_graph(hand_trace(), 1, top_k=1, hide_sink=True)
    assert all(s == 0 for s, _, _ in edges(full))  # the sink wins every row here
    got = edges(hidden)
    assert [d for _, d, _ in got] == [1, 2, 3]  # token 0 has no other in-edge
    assert all(s != 0 for s, _, _ in got)
    weights = {(s, d): w for s, d, w in edges(build_graph(hand_trace(), 1))}
    assert all(w == weights[(s, d)] for s, d, w in got)  # not renormalized


def test_node_features_are_the_layer_hidden_states():
    t = hand_trace()
    np.testing.assert_array_equal(build_graph(t, 1).x, t["hidden_states"][2])
    np.testing.assert_array_equal(build_graph(t, 1, hidden="input").x, t["hidden_states"][1])
    assert build_graph({**t, "hidden_states": None}, 1).x is None


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"layer": 2}, "out of range"),
        ({"layer": -3}, "out of range"),
        ({"layer": 0, "heads": "max"}, "heads"),
        ({"layer": 0, "top_k": 0}, "top_k"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, needle):
    layer = kwargs.pop("layer")
    with pytest.raises(ValueError, match=needle):
        build_graph(hand_trace(), layer, **kwargs)
    with pytest.raises(ValueError, match="no attention maps"):
        build_graph({k: v for k, v in hand_trace().items() if k != "attentions"}, 0)


# --- roles ------------------------------------------------------------------------------------

CHAT_PIECES = [
    "<|im_start|>", "system", "\n", "Be", " brief", "<|im_end|>",  # 0-5 system
    "\n", "<|im_start|>", "user", "\n", "Context", ":",  # 6-11 prompt
    " Paris", " is", " big", ".",  # 12-15 context
    "\n", "Question", ":",  # 16-18 prompt
    " Where", " is", " Paris", "?",  # 19-22 question
    "<|im_end|>", "<|im_start|>", "assistant", "\n",  # 23-26 prompt
    " In", " France", "<|im_end|>",  # 27-29 answer
]  # fmt: skip
CHAT_ROLES = ["system"] * 6 + ["prompt"] * 6 + ["context"] * 4 + ["prompt"] * 3
CHAT_ROLES += ["question"] * 4 + ["prompt"] * 4 + ["answer"] * 3


def _roles(pieces, prompt_len, question, span=None) -> list[str]:
    trace = {
        "tokens": list(range(len(pieces))),
        "tokens_decoded": pieces,
        "prompt_len": prompt_len,
        "context_span": span,
        "question": question,
    }
    return [ROLES[r] for r in token_roles(trace)]


def test_roles_of_a_chatml_prompt():
    assert _roles(CHAT_PIECES, 27, "Where is Paris?", [12, 16]) == CHAT_ROLES
    # no context span: the context tokens are plain prompt; the question is still found last
    no_ctx = _roles(CHAT_PIECES, 27, "Where is Paris?")
    assert no_ctx == [("prompt" if r == "context" else r) for r in CHAT_ROLES]
    # a question that is not in the prompt gives no question tokens
    assert "question" not in _roles(CHAT_PIECES, 27, "What is this?", [12, 16])


def test_roles_with_sentencepiece_pieces_split_characters_and_llama2_system():
    pieces = ["<s>", "[INST]", "<<SYS>>", "Be", "brief", "<</SYS>>", "O", "\ufffd", "\ufffd"]
    pieces += ["est", "Z", "\ufffd", "\ufffd", "rich", "?", "[/INST]", "Z", "urich"]
    roles = _roles(pieces, 16, "Où est Zürich ?")
    assert roles == ["prompt"] * 2 + ["system"] * 4 + ["question"] * 9 + ["prompt"] + ["answer"] * 2
    # no system marker, no question: prompt and answer only
    assert set(_roles(["Q", ":", " hi", " A"], 3, "bye")) == {"prompt", "answer"}


def test_role_ids_are_role_indices():
    assert [ROLE_IDS[r] for r in ROLES] == list(range(5))


# --- exports ----------------------------------------------------------------------------------


def _random_trace(S=12, heads=3, layers=2, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(layers, heads, S, S)) * 2
    attn = np.where(np.tril(np.ones((S, S), bool)), np.exp(logits), 0.0)
    attn /= attn.sum(-1, keepdims=True)
    return {
        "attentions": attn.astype(np.float32),
        "hidden_states": rng.normal(size=(layers + 1, S, 6)).astype(np.float32),
        "tokens": list(range(100, 100 + S)),
        "tokens_decoded": [f"t{i}" for i in range(S)],
        "prompt_len": 8,
        "answer_len": S - 8,
        "context_span": [2, 5],
        "question": "t5t6",
        "label": 0,
    }


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"heads": "all"}, {"threshold": 0.1}, {"top_k": 3, "heads": "all", "self_loops": False}],
)
def test_networkx_and_pyg_exports_agree(kwargs):
    torch = pytest.importorskip("torch")
    g = build_graph(_random_trace(), 1, **kwargs)
    nxg, data = g.to_networkx(), g.to_pyg()
    nx_edges = sorted((s, d, w["weight"]) for s, d, w in nxg.edges(data=True))
    pyg_edges = sorted(
        zip(
            data.edge_index[0].tolist(),
            data.edge_index[1].tolist(),
            data.edge_weight.tolist(),
            strict=True,
        )
    )
    assert len(nx_edges) == len(pyg_edges) == g.num_edges > 0
    assert [e[:2] for e in nx_edges] == [e[:2] for e in pyg_edges]
    np.testing.assert_allclose([e[2] for e in nx_edges], [e[2] for e in pyg_edges], rtol=1e-6)
    assert data.edge_index.dtype == torch.long and data.num_nodes == 12
    assert data.x.shape == (12, 6) and torch.equal(data.role, torch.from_numpy(g.roles))
    assert [nxg.nodes[i]["role"] for i in range(12)] == g.role_names
    assert data.y.tolist() == [0]
    if kwargs.get("heads") == "all":
        assert data.edge_attr.shape == (g.num_edges, 3)
        s, d = int(data.edge_index[0, 0]), int(data.edge_index[1, 0])
        np.testing.assert_allclose(nxg.edges[s, d]["heads"], data.edge_attr[0].numpy())
    else:
        assert data.edge_attr.shape == (g.num_edges, 1)
    if "threshold" in kwargs:
        assert min(w for *_, w in nx_edges) >= 0.1
    if "top_k" in kwargs:
        assert max(d for _, d in nxg.in_degree()) <= 3
        assert not any(s == d for s, d in nxg.edges())


def test_graph_of_a_stored_trace(tiny_run):
    t = TraceStore(tiny_run)[0]
    g = build_graph(t, 1)
    S, p = len(t["tokens"]), t["prompt_len"]
    cs, ce = t["context_span"]
    mean = t["attentions"][1].astype(np.float64).mean(0)
    assert g.num_nodes == S and g.num_edges == np.count_nonzero(np.tril(mean)) > S
    src, dst = g.edge_index
    np.testing.assert_allclose(g.weight, mean[dst, src], rtol=1e-6)
    roles = np.array(g.role_names)
    assert (roles[p:] == "answer").all() and (roles[:p] != "answer").all()
    assert (roles[cs:ce] == "context").all() and (roles == "context").sum() == ce - cs
    assert (roles == "question").any()  # the toy question is found in the prompt
    np.testing.assert_allclose(
        g.to_pyg().x.numpy(), t["hidden_states"][2].astype(np.float32), rtol=0, atol=0
    )


# --- CLI --------------------------------------------------------------------------------------


def test_graph_command_writes_a_png(tiny_run, tmp_path, capsys):
    png = tmp_path / "g.png"
    rc = main(["graph", str(tiny_run), "--index", "3", "--layer", "1", "--png", str(png)])
    assert rc == 0 and png.stat().st_size > 10_000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "layer 1" in capsys.readouterr().out
    png2 = tmp_path / "g2.png"
    argv = ["graph", str(tiny_run), "--index", "0", "--layer", "0", "--png", str(png2)]
    assert main([*argv, "--heads", "all", "--threshold", "0.05", "--top-k", "5"]) == 0
    assert png2.exists()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--index", "24", "--layer", "0"], "out of range"),
        (["--index", "0", "--layer", "2"], "layer 2 out of range"),
    ],
)
def test_graph_command_bad_index_or_layer(tiny_run, tmp_path, capsys, args, needle):
    rc = main(["graph", str(tiny_run), *args, "--png", str(tmp_path / "x.png")])
    assert rc == 2 and needle in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_graph_command_on_a_pruned_run(tiny_run, tmp_path, capsys):
    import shutil

    from hallugraph.store import mark_pruned

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    mark_pruned(run)  # as `stats --prune` does: a shard deleted without it reads as lost
    shutil.rmtree(run / "shards")
    (run / "shards").mkdir()
    rc = main(["graph", str(run), "--index", "0", "--layer", "0", "--png", str(tmp_path / "x.png")])
    assert rc == 2 and "were not kept" in capsys.readouterr().err
