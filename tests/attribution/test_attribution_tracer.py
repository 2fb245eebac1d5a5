"""A real attribution graph of the tiny Llama with random transcoders (circuit-tracer, nnsight):
our RS/CS equal circuit-tracer's compute_graph_scores, Gctx behaves."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("circuit_tracer")

from hallugraph.attribution.scores import GraphLayout, scores_from_graph  # noqa: E402
from hallugraph.attribution.tracer import (  # noqa: E402
    attribute_tokens,
    attribution_tokens,
    load_replacement_model,
)


@pytest.fixture
def tiny_setup(tiny_ct):
    """``(model_dir, cache_dir)``: the cache dir holds the set as ``tiny-tc``."""
    model_dir, tdir = tiny_ct
    return model_dir, tdir.parent


def _prompt(tok):
    user = "Context: Arthur's Magazine was a periodical.\n\nQuestion: Who?\nAnswer:"
    text = tok.apply_chat_template(
        [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
    )
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    start = text.index("Arthur")
    span = (start, text.index(".\n\nQuestion") + 1)
    return enc["input_ids"], enc["offset_mapping"], span


def test_graph_scores_equal_circuit_tracer(tiny_lm, tiny_setup, monkeypatch):
    from circuit_tracer import ReplacementModel
    from circuit_tracer.graph import compute_graph_scores

    from hallugraph.attribution.scores import context_positions

    model_dir, cache = tiny_setup
    # loading by name through $CIRCUIT_TRACER_CACHE_DIR, as circuit-tracer documents
    monkeypatch.setenv("CIRCUIT_TRACER_CACHE_DIR", str(cache))
    rm = ReplacementModel.from_pretrained(
        str(model_dir), "tiny-tc", backend="nnsight", device=torch.device("cpu")
    )
    ids, offsets, span = _prompt(tiny_lm.tokenizer)
    tokens, shift = attribution_tokens(rm.tokenizer, ids)
    assert shift == 0 and int(tokens[0]) == tiny_lm.tokenizer.bos_token_id
    graph = attribute_tokens(rm, tokens, max_feature_nodes=24, batch_size=16)
    layout = GraphLayout.from_graph(graph)
    assert layout.n_features == 24 and layout.n_pos == len(ids) and layout.n_layers == 2
    ctx = context_positions(offsets, span, shift)
    assert len(ctx) > 3
    ours = scores_from_graph(graph, ctx)
    rs, cs = compute_graph_scores(graph)
    assert ours.rs == pytest.approx(rs, abs=1e-5)
    assert ours.cs == pytest.approx(cs, abs=1e-5)
    assert 0.0 < ours.gctx < 1.0
    everything = scores_from_graph(graph, range(1, len(ids)))
    assert everything.gctx == pytest.approx(1.0)
    # the same transcoders through our loader give the same graph
    rm2 = load_replacement_model(model_dir, cache / "tiny-tc")
    graph2 = attribute_tokens(rm2, tokens, max_feature_nodes=24, batch_size=16)
    torch.testing.assert_close(graph2.adjacency_matrix, graph.adjacency_matrix)


def test_attribution_tokens_prepends_bos(tiny_lm):
    tok = tiny_lm.tokenizer
    ids = tok("Who?", add_special_tokens=False)["input_ids"]
    tokens, shift = attribution_tokens(tok, ids)
    assert shift == 1 and int(tokens[0]) == tok.bos_token_id and tokens[1:].tolist() == ids
