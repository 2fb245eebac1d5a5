"""``attribute_prefixes`` (several answer tokens of one sequence attributed together) against
separate ``attribute`` calls on the tiny random Llama with random transcoders: the same active
and selected features, selection order, logit probabilities, adjacency (to float rounding) and
Gctx / RS / CS (1e-6), with a single last queue, with several ranking steps (full rows shared
between the targets) and with every feature; ``prefix_view`` is the prefix's own ``prepare``;
``score_run`` with ``targets=all`` (shared by default) stores the separate path's scores with
``path: shared``."""

from __future__ import annotations

import shutil

import pytest
import torch

from hallugraph.attribution.engine import AttributionEngine, attribute_prefixes
from hallugraph.attribution.engine.model import frozen_forward
from hallugraph.attribution.engine.prefixes import prefix_view
from hallugraph.attribution.engine.sweep import prepare
from hallugraph.attribution.scores import scores_from_graph
from hallugraph.attribution.transcoders import write_transcoder_set

PROMPT = "Context: Arthur's Magazine was an American literary periodical. Question: Who? Paris"


def _layers(n_layers: int, d: int, width: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n_layers):
        t = {
            "W_enc": torch.randn(width, d, generator=g) * 0.4,
            "W_dec": torch.randn(width, d, generator=g) * 0.1,
            "b_enc": torch.zeros(width),
            "b_dec": torch.randn(d, generator=g) * 0.01,
            "W_skip": torch.randn(d, d, generator=g) * 0.05,
        }
        if i == 1:
            t["activation_function.threshold"] = torch.full((width,), 0.05)
        out.append(t)
    return out


@pytest.fixture(scope="module")
def engine(tiny_lm, tmp_path_factory):
    root = tmp_path_factory.mktemp("prefixes")
    tiny_lm.model.save_pretrained(root / "llama")
    tiny_lm.tokenizer.save_pretrained(root / "llama")
    tdir = write_transcoder_set(root / "tc", _layers(tiny_lm.num_layers, 32, 48, 3), scan="tc")
    return AttributionEngine.from_pretrained(root / "llama", tdir)


def _ids(tok) -> torch.Tensor:
    return torch.tensor([tok.bos_token_id, *tok(PROMPT, add_special_tokens=False).input_ids])


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Within 1e-5 of the row's largest |entry| (sums in another order round differently)."""
    scale = b.abs().amax(1, keepdim=True).clamp(min=1e-30)
    return bool(((a - b).abs() <= 1e-5 * scale).all())


def test_prefix_view_is_the_prefix_prepare(engine):
    ids = _ids(engine.tokenizer)
    w, tc = engine.weights, engine.transcoders
    full = prepare(frozen_forward(engine.model, ids), w, tc, ids)
    n = len(ids) - 4
    view, sub = prefix_view(full, n)
    own = prepare(frozen_forward(engine.model, ids[:n]), w, tc, ids[:n])
    assert view.offsets == own.offsets and view.n_pos == own.n_pos == n
    for f in ("feat_layer", "feat_pos", "feat_idx"):
        assert torch.equal(getattr(view, f), getattr(own, f)), f
    assert torch.equal(full.feat_idx[sub], own.feat_idx) and (full.feat_pos[sub] < n).all()
    torch.testing.assert_close(view.values, own.values, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(view.errors, own.errors, rtol=1e-5, atol=1e-5)
    assert torch.equal(view.pos_starts, own.pos_starts)
    with pytest.raises(ValueError, match="prefix of"):
        prefix_view(full, len(ids) + 1)


@pytest.mark.parametrize(
    "budget, kw",
    [
        (16, {"batch_size": 64}),  # one queue (rows of the selected columns only)
        (30, {"batch_size": 4, "update_interval": 2, "chunk_size": 8}),  # several rankings
        (None, {"batch_size": 64}),  # every active feature, no ranking
    ],
)
def test_shared_graphs_equal_separate_graphs(engine, budget, kw):
    ids = _ids(engine.tokenizer)
    n = len(ids)
    ends = [n - 5, n - 3, n - 2, n]
    targets = [int(ids[e]) if e < n else 7 for e in ends]
    graphs = attribute_prefixes(engine, ids, ends, targets, max_feature_nodes=budget, **kw)
    assert len(graphs) == len(ends)
    for end, t, g in zip(ends, targets, graphs, strict=True):
        one = engine.attribute(ids[:end], attribution_targets=[t], max_feature_nodes=budget, **kw)
        assert torch.equal(g.input_tokens, one.input_tokens) and g.n_pos == end
        assert torch.equal(g.active_features, one.active_features)
        assert torch.equal(g.selected_features, one.selected_features)
        if budget is None:
            assert g.selection_order is None and one.selection_order is None
        else:
            assert torch.equal(g.selection_order, one.selection_order)
        assert g.logit_targets == one.logit_targets
        torch.testing.assert_close(g.logit_probabilities, one.logit_probabilities)
        a, b = g.adjacency_matrix, one.adjacency_matrix
        assert a.shape == b.shape and _close(a, b)
        assert (b != 0).sum() > b.shape[0]  # a real graph
        ctx = list(range(1, end // 2))
        s1, s2 = scores_from_graph(g, ctx, sparse=True), scores_from_graph(one, ctx)
        for f in ("gctx", "rs", "cs"):
            assert abs(getattr(s1, f) - getattr(s2, f)) <= 1e-6, f


def test_bos_shift_and_errors(engine):
    ids = _ids(engine.tokenizer)
    raw = ids[1:]  # without the BOS: one is prepended, the ends shift with it
    (g,) = attribute_prefixes(engine, raw, [len(raw) - 1], [5], max_feature_nodes=8)
    (h,) = attribute_prefixes(engine, ids, [len(ids) - 1], [5], max_feature_nodes=8)
    assert torch.equal(g.input_tokens, h.input_tokens) and g.n_pos == len(ids) - 1
    assert torch.equal(g.adjacency_matrix, h.adjacency_matrix)
    with pytest.raises(ValueError, match="one each"):
        attribute_prefixes(engine, ids, [3, 4], [5])
    with pytest.raises(ValueError, match="prefix ends"):
        attribute_prefixes(engine, ids, [len(ids) + 1], [5])
    with pytest.raises(ValueError, match="at least 1"):
        attribute_prefixes(engine, ids, [4], [5], batch_size=0)


def test_score_run_shared_prefixes(tiny_run, tiny_ct, tmp_path):
    """``score_run`` at ``targets=all`` (shared by default; ``shared_prefixes=False``: one
    attribution per token): the same Gctx / RS / CS (1e-6), each record of several graphs
    marked ``path: shared``."""
    from hallugraph.attribution.run import AttributionSettings, score_run
    from hallugraph.features.groundedness import read_scores

    eng = AttributionEngine.from_pretrained(*tiny_ct)
    settings = AttributionSettings(max_feature_nodes=12, targets="all", max_answer_tokens=3)
    recs = []
    for shared in (False, None):  # None: the default for targets=all with our engine
        run = tmp_path / f"run{shared}"
        shutil.copytree(tiny_run, run)
        score_run(
            run,
            tiny_ct[1],
            settings,
            replacement_model=eng,
            limit=4,
            progress=False,
            shared_prefixes=shared,
        )
        recs.append(read_scores(run)["scores"])
    assert recs[0].keys() == recs[1].keys() and len(recs[0]) == 4
    multi = 0
    for qid, old in recs[0].items():
        new = recs[1][qid]
        assert "path" not in old
        assert new.get("path") == ("shared" if new["n_graphs"] > 1 else None)
        multi += new["n_graphs"] > 1
        assert new["n_graphs"] == old["n_graphs"] and new["n_features"] == old["n_features"]
        for f in ("gctx", "rs", "cs", "target_prob"):
            assert new[f] == pytest.approx(old[f], abs=1e-6), (qid, f)
    assert multi >= 2


def test_all_speed_benchmark_smoke(tiny_run, tiny_ct, tmp_path, capsys):
    """``benchmarks/groundedness_all_speed.py`` on the tiny run: both paths on the same answers,
    the same selected features, scores within 1e-6, the last line's format (no timing
    asserted)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    try:
        import groundedness_all_speed
    finally:
        sys.path.pop(0)
    model_dir, tdir = tiny_ct
    out = tmp_path / "speed.jsonl"
    rows = groundedness_all_speed.main(
        [str(tiny_run), "--transcoders", str(tdir), "--model", str(model_dir)]
        + ["--answers", "2", "--stride", "1", "--nodes", "8", "--max-answer-tokens", "2"]
        + ["--out", str(out)]
    )
    assert len(rows) == 2 and all(r["graphs"] == 2 for r in rows)
    assert all(g["same_selected"] and g["active_diff"] == 0 for r in rows for g in r["per_graph"])
    assert max(r["max_abs_diff"] for r in rows) < 1e-6
    assert len(out.read_text().splitlines()) == 2
    last = capsys.readouterr().out.strip().splitlines()[-1].split()
    assert [kv.split("=")[0] for kv in last] == [
        "answers",
        "seconds_old",
        "seconds_new",
        "ratio",
        "max_abs_diff",
    ]
    assert last[0] == "answers=2"
