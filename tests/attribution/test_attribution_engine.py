"""hallugraph's attribution engine against circuit-tracer 0.5.0 on tiny random Llamas (and a
tiny Qwen3): the same active features, logit targets, selected features and adjacency (rows
scaled by their largest |entry|, rtol 1e-4), RS / CS / Gctx equal to 1e-6, for ReLU,
JumpReLU and skip transcoders, both input hooks, salient and given targets, several budgets;
exact ties; the transcoder loader's errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hallugraph.attribution.engine import AttributionEngine, load_transcoders
from hallugraph.attribution.engine.prune import prune_graph
from hallugraph.attribution.scores import scores_from_graph
from hallugraph.attribution.transcoders import write_transcoder_set

PROMPT = "Context: Arthur's Magazine was an American literary periodical. Question: Who? Paris"


def _layers(n_layers, d, width, *, seed, jumprelu=(), skip=False, duplicate=False, bias=0.0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n_layers):
        w = width // 2 if duplicate else width
        t = {
            "W_enc": torch.randn(w, d, generator=g) * 0.4,
            "W_dec": torch.randn(w, d, generator=g) * 0.1,
            "b_enc": torch.randn(w, generator=g) * bias,
            "b_dec": torch.randn(d, generator=g) * 0.01,
        }
        if duplicate:  # features 2j and 2j + 1 are the same feature
            t = {k: v.repeat_interleave(2, 0) if k != "b_dec" else v for k, v in t.items()}
        if i in jumprelu:
            t["activation_function.threshold"] = torch.full((width,), 0.05)
        if skip:
            t["W_skip"] = torch.randn(d, d, generator=g) * 0.05
        out.append(t)
    return out


def _write(root: Path, name: str, layers, input_hook: str = "mlp.hook_in") -> Path:
    import yaml

    tdir = write_transcoder_set(root / name, layers, scan=name)
    cfg = yaml.safe_load((tdir / "config.yaml").read_text())
    cfg["feature_input_hook"] = input_hook
    (tdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    return tdir


@pytest.fixture(scope="module")
def llama_dir(tiny_lm, tmp_path_factory):
    lm = tiny_lm  # 2 layers, d = 32
    root = tmp_path_factory.mktemp("engine")
    lm.model.save_pretrained(root / "llama")
    lm.tokenizer.save_pretrained(root / "llama")
    return root / "llama"


def _ids(tok):
    return [tok.bos_token_id, *tok(PROMPT, add_special_tokens=False).input_ids]


def _ctx(n_pos):
    return list(range(1, n_pos // 2))


def _compare(ct_graph, ours, n_pos):
    assert torch.equal(ours.active_features, ct_graph.active_features)
    assert torch.allclose(ours.activation_values, ct_graph.activation_values, rtol=1e-5, atol=1e-7)
    assert [t.vocab_idx for t in ours.logit_targets] == [
        t.vocab_idx for t in ct_graph.logit_targets
    ]
    assert torch.allclose(ours.logit_probabilities, ct_graph.logit_probabilities, rtol=1e-5)
    assert torch.equal(ours.selected_features, ct_graph.selected_features)
    a, b = ours.adjacency_matrix, ct_graph.adjacency_matrix
    assert a.shape == b.shape
    scale = b.abs().amax(1, keepdim=True).clamp(min=1e-30)
    assert ((a - b).abs() <= 1e-4 * scale).all()
    assert (b != 0).sum() > 0.05 * b.numel() / 10  # a real graph, not mostly zeros
    s1, s2 = scores_from_graph(ours, _ctx(n_pos)), scores_from_graph(ct_graph, _ctx(n_pos))
    for k in ("gctx", "rs", "cs"):
        assert abs(getattr(s1, k) - getattr(s2, k)) <= 1e-6, k


def _ct(model_dir, tdir):
    from hallugraph.attribution.tracer import load_replacement_model

    return load_replacement_model(model_dir, tdir)


CASES = {
    "relu_jumprelu": dict(jumprelu=(1,)),
    "jumprelu_skip": dict(jumprelu=(0, 1), skip=True),
    "relu_skip_bias": dict(skip=True, bias=0.2),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_graph_as_circuit_tracer(llama_dir, tmp_path, case):
    pytest.importorskip("circuit_tracer")
    from circuit_tracer import attribute

    tdir = _write(tmp_path, case, _layers(2, 32, 48, seed=3, **CASES[case]))
    rm, engine = _ct(llama_dir, tdir), AttributionEngine.from_pretrained(llama_dir, tdir)
    ids = _ids(engine.tokenizer)
    target = torch.tensor([ids[5]])
    # (budget, batch_size, update_interval, desired_logit_prob, given target?)
    runs = [(13, 4, 1, 0.95, False), (40, 8, 2, 0.5, True)]
    if case == "relu_jumprelu":  # every active feature, in index order (a narrower set)
        runs.append((None, 256, 4, 0.95, True))
    for nodes, batch, interval, prob, given in runs:
        if nodes is None:
            tdir = _write(tmp_path, "narrow", _layers(2, 32, 8, seed=4, **CASES[case]))
            rm, engine = _ct(llama_dir, tdir), AttributionEngine.from_pretrained(llama_dir, tdir)
        kw = dict(max_feature_nodes=nodes, batch_size=batch)
        if given:
            kw["attribution_targets"] = target
        else:
            kw.update(max_n_logits=4, desired_logit_prob=prob)
        g_ct = attribute(torch.tensor(ids), rm, update_interval=interval, **kw)
        ours = engine.attribute(ids, update_interval=interval, chunk_size=3, **kw)
        _compare(g_ct, ours, len(ids))
        if nodes is None:
            assert len(ours.selected_features) == len(ours.active_features)
        elif not given:
            assert len(ours.logit_targets) > 1  # the cumulative-probability cut was exercised


def test_resid_mid_hook_and_graph_conversion(llama_dir, tmp_path):
    pytest.importorskip("circuit_tracer")
    from circuit_tracer.graph import Graph, compute_graph_scores
    from circuit_tracer.graph import prune_graph as ct_prune

    from hallugraph.attribution.tracer import attribute_tokens

    tdir = _write(tmp_path, "mid", _layers(2, 32, 40, seed=5, skip=True), "hook_resid_mid")
    rm, engine = _ct(llama_dir, tdir), AttributionEngine.from_pretrained(llama_dir, tdir)
    ids = _ids(engine.tokenizer)
    g_ct = attribute_tokens(rm, torch.tensor(ids), max_feature_nodes=24, batch_size=4)
    ours = engine.attribute(ids, max_feature_nodes=24, batch_size=4)
    _compare(g_ct, ours, len(ids))
    converted = ours.to_circuit_tracer()
    assert isinstance(converted, Graph) and converted.cfg.n_layers == 2
    assert compute_graph_scores(converted) == pytest.approx(compute_graph_scores(g_ct), abs=1e-6)
    mine, theirs = prune_graph(ours, 0.8, 0.98), ct_prune(g_ct, 0.8, 0.98)
    assert torch.equal(mine.node_mask, theirs.node_mask)
    assert (mine.edge_mask != theirs.edge_mask).float().mean() < 1e-3


def test_exact_ties_ordered_as_circuit_tracer(llama_dir, tmp_path):
    """Duplicated features (identical weights) have exactly equal influences; an odd budget
    cuts a pair. Both engines order ties as ``torch.argsort(descending=True)`` does (not by
    index: it is not a stable sort), and keep the same member of the cut pair."""
    pytest.importorskip("circuit_tracer")
    from circuit_tracer import attribute

    tdir = _write(tmp_path, "dup", _layers(2, 32, 48, seed=7, jumprelu=(1,), duplicate=True))
    rm, engine = _ct(llama_dir, tdir), AttributionEngine.from_pretrained(llama_dir, tdir)
    ids = _ids(engine.tokenizer)
    for nodes in (7, 21):
        kw = dict(max_feature_nodes=nodes, batch_size=2, update_interval=2)
        ours = engine.attribute(ids, **kw)
        g_ct = attribute(torch.tensor(ids), rm, **kw)
        _compare(g_ct, ours, len(ids))
        feats = ours.active_features[ours.selected_features]
        pairs = {(int(a), int(b), int(c) // 2) for a, b, c in feats.tolist()}
        assert len(pairs) < nodes  # whole pairs were taken together ...
        lone = [
            tuple(f)
            for f in feats.tolist()
            if (f[0], f[1], f[2] ^ 1) not in map(tuple, feats.tolist())
        ]
        assert lone  # ... but a pair was cut (the same member kept: _compare)


def test_qwen3_same_graph(tmp_path):
    pytest.importorskip("circuit_tracer")
    from tiny_models import make_tokenizer
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from hallugraph.attribution.tracer import attribute_tokens

    tok = make_tokenizer()
    torch.manual_seed(0)
    cfg = Qwen3Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        attn_implementation="eager",
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    model = Qwen3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(20)
    model.save_pretrained(tmp_path / "qwen")
    tok.save_pretrained(tmp_path / "qwen")
    tdir = _write(tmp_path, "qtc", _layers(2, 32, 40, seed=9, jumprelu=(1,)))
    rm = _ct(tmp_path / "qwen", tdir)
    engine = AttributionEngine.from_pretrained(tmp_path / "qwen", tdir)
    ids = _ids(tok)
    g_ct = attribute_tokens(rm, torch.tensor(ids), max_feature_nodes=16, batch_size=4)
    _compare(g_ct, engine.attribute(ids, max_feature_nodes=16, batch_size=4), len(ids))


def test_engine_prepends_bos_and_checks_targets(llama_dir, tmp_path):
    tdir = _write(tmp_path, "t", _layers(2, 32, 16, seed=1))
    engine = AttributionEngine.from_pretrained(llama_dir, tdir)
    tok = engine.tokenizer
    body = tok(PROMPT, add_special_tokens=False).input_ids
    assert engine.ensure_tokenized(body)[0] == tok.bos_token_id
    assert engine.ensure_tokenized([tok.bos_token_id, *body]).tolist() == [tok.bos_token_id, *body]
    g = engine.attribute(body, max_feature_nodes=4, batch_size=2)
    assert g.input_tokens[0] == tok.bos_token_id and g.n_pos == len(body) + 1
    with pytest.raises(ValueError, match="target token ids"):
        engine.attribute(body, attribution_targets=[10**6])


def test_loader_errors_name_the_file(tmp_path, llama_dir):
    with pytest.raises(ValueError, match="config.yaml is missing"):
        load_transcoders(tmp_path)
    tdir = _write(tmp_path, "bad", _layers(2, 32, 16, seed=1), "hook_resid_pre")
    with pytest.raises(ValueError, match="feature_input_hook 'hook_resid_pre'"):
        load_transcoders(tdir)
    tdir = _write(tmp_path, "three", _layers(3, 32, 16, seed=1))
    with pytest.raises(ValueError, match="3 transcoders for a model with 2 layers"):
        AttributionEngine.from_pretrained(llama_dir, tdir)
    tdir = _write(tmp_path, "miss", _layers(3, 32, 16, seed=1))
    (tdir / "layer_1.safetensors").unlink()
    with pytest.raises(ValueError, match="layer_0"):
        load_transcoders(tdir)


def test_influence_equals_circuit_tracer_partial_influences():
    """RowStore.influence (square part iterated, then applied to the full rows) equals
    circuit-tracer's compute_partial_influences on the full edge matrix."""
    pytest.importorskip("circuit_tracer")
    from circuit_tracer.graph import compute_partial_influences

    from hallugraph.attribution.engine.rows import RowStore

    g = torch.Generator().manual_seed(0)
    offsets, row_size, n_logits = [0, 30, 55, 90], 12, 2
    n_feat = offsets[-1]
    store = RowStore(offsets, row_size, 40, "cpu", torch.float32)
    layers = torch.tensor([3] * n_logits)
    feats = torch.randn(n_logits, n_feat, generator=g)
    store.add(
        layers, torch.full((n_logits,), -1), torch.arange(n_logits), feats, torch.randn(2, 12)
    )
    rti = [n_feat + row_size + i for i in range(n_logits)]
    edge = torch.zeros(n_logits, n_feat + row_size + n_logits)
    edge[:, :n_feat] = feats
    edge[:, n_feat : n_feat + row_size] = store.et[:n_logits]
    probs = torch.tensor([0.6, 0.3])
    for _ in range(3):  # three batches of feature rows, as the schedule adds them
        infl = store.influence(probs)
        ref = compute_partial_influences(edge, probs, torch.tensor(rti), device="cpu")
        assert torch.allclose(infl, ref[:n_feat], rtol=1e-5, atol=1e-9)
        nodes = torch.randperm(n_feat, generator=g)[:6]
        lay = torch.bucketize(nodes, torch.tensor(offsets[1:]), right=True)
        f = torch.randn(6, n_feat, generator=g)
        f[torch.arange(n_feat)[None, :] >= torch.tensor(offsets)[lay][:, None]] = 0
        et = torch.randn(6, row_size, generator=g)
        store.add(lay, nodes, torch.full((6,), -1), f, et)
        block = torch.zeros(6, edge.shape[1])
        block[:, :n_feat], block[:, n_feat : n_feat + row_size] = f, et
        edge = torch.cat([edge, block])
        rti += nodes.tolist()


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Within 1e-5 of the row's largest entry (sums in another order round differently)."""
    if b.numel() == 0:
        return a.numel() == 0
    return bool(((a - b).abs() <= 1e-5 * b.abs().max().clamp(min=1e-30)).all())


def test_rows_do_not_depend_on_batching_or_columns(llama_dir, tmp_path):
    """compute_rows on a batch mixing layers and positions (rows joining the position-major
    gradient at different layers, each step cut at the positions reached so far) equals each
    row computed alone; with ``columns`` it returns exactly those columns of the full rows."""
    from hallugraph.attribution.engine.model import frozen_forward
    from hallugraph.attribution.engine.sweep import compute_rows, encoder_rows, prepare

    tdir = _write(tmp_path, "rows", _layers(2, 32, 48, seed=11, jumprelu=(1,), skip=True))
    engine = AttributionEngine.from_pretrained(llama_dir, tdir)
    ids = engine.ensure_tokenized(_ids(engine.tokenizer))
    cache = frozen_forward(engine.model, ids)
    prep = prepare(cache, engine.weights, engine.transcoders, ids)
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(prep.n_features, generator=g)[:12]
    lay, pos = prep.feat_layer[idx], prep.feat_pos[idx]
    assert len(lay.unique()) > 1 and len(pos.unique()) > 3
    args = (prep, cache, engine.weights, engine.transcoders)
    feats, et = compute_rows(*args, lay, pos, encoder_rows(prep, engine.transcoders, idx))
    for r in range(len(idx)):
        one = idx[r : r + 1]
        f1, e1 = compute_rows(
            *args, lay[r : r + 1], pos[r : r + 1], encoder_rows(prep, engine.transcoders, one)
        )
        width = f1.shape[1]
        assert _close(feats[r, :width], f1[0])
        assert not feats[r, width:].any()  # features of its own layer and above: zero
        assert _close(et[r], e1[0])
    cols = torch.sort(torch.randperm(prep.n_features, generator=g)[:20]).values
    narrow, et2 = compute_rows(*args, lay, pos, encoder_rows(prep, engine.transcoders, idx), cols)
    full = torch.zeros(len(idx), prep.n_features)
    full[:, : feats.shape[1]] = feats
    assert all(_close(a, b) for a, b in zip(narrow, full[:, cols], strict=True))
    assert torch.equal(et2, et)


def test_last_queue_with_selected_columns_only_gives_the_same_graph(
    llama_dir, tmp_path, monkeypatch
):
    """The last queue's rows computed for the selected columns only (nothing ranks them) give
    the graph of full rows."""
    from hallugraph.attribution.engine import attribute

    tdir = _write(tmp_path, "narrow", _layers(2, 32, 48, seed=11, jumprelu=(1,), skip=True))
    engine = AttributionEngine.from_pretrained(llama_dir, tdir)
    ids = _ids(engine.tokenizer)
    graphs = []
    for factor in (1, 10**9):  # narrow last queue / always full rows
        monkeypatch.setattr(attribute, "_NARROW_BELOW", factor)
        graphs.append(engine.attribute(ids, max_feature_nodes=30, batch_size=8, chunk_size=16))
    assert torch.equal(graphs[0].selected_features, graphs[1].selected_features)
    assert torch.allclose(graphs[0].adjacency_matrix, graphs[1].adjacency_matrix, atol=1e-6)


def test_prefix_of_a_larger_budget_is_the_smaller_budgets_graph(llama_dir, tmp_path):
    """``graph.prefix(n)`` of a run at a large budget equals a separate run at budget ``n``
    (same selected features, adjacency, RS / CS / Gctx), also across re-rankings; a graph of
    every active feature has no order to cut."""
    tdir = _write(tmp_path, "prefix", _layers(2, 32, 48, seed=5, jumprelu=(1,), skip=True))
    engine = AttributionEngine.from_pretrained(llama_dir, tdir)
    ids = _ids(engine.tokenizer)
    kw = {"batch_size": 8, "update_interval": 2, "chunk_size": 8}
    big = engine.attribute(ids, max_feature_nodes=60, **kw)
    assert big.selection_order is not None and len(big.selection_order) == 60
    assert torch.equal(torch.sort(big.selection_order).values, big.selected_features)
    ctx = _ctx(big.n_pos)
    for n in (5, 16, 23, 40):
        one = engine.attribute(ids, max_feature_nodes=n, **kw)
        cut = big.prefix(n)
        assert torch.equal(cut.selected_features, one.selected_features), n
        assert cut.adjacency_matrix.shape == one.adjacency_matrix.shape
        assert torch.allclose(cut.adjacency_matrix, one.adjacency_matrix, atol=1e-6), n
        a, b = scores_from_graph(cut, ctx), scores_from_graph(one, ctx)
        for f in ("gctx", "rs", "cs"):
            assert abs(getattr(a, f) - getattr(b, f)) < 1e-6, (n, f)
    assert big.prefix(60) is big and big.prefix(1000) is big
    every = engine.attribute(ids, max_feature_nodes=None, **kw)
    assert every.selection_order is None
    with pytest.raises(ValueError, match="no selection order"):
        every.prefix(3)
