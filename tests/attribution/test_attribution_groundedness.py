"""``hallugraph groundedness`` / ``hallugraph attribution`` on the tiny Llama with random
transcoders: stored scores (hallugraph's engine, the default) equal scores_from_graph of
circuit-tracer's graph, resume, interruption, clear errors, viewer JSON + PNG, the speed
benchmarks."""

from __future__ import annotations

import json
import shutil
import socket
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("circuit_tracer")

from hallugraph.attribution import run as gmod  # noqa: E402
from hallugraph.attribution.run import (  # noqa: E402
    AttributionSettings,
    answer_offsets,
    score_run,
)
from hallugraph.attribution.scores import scores_from_graph  # noqa: E402
from hallugraph.attribution.tracer import (  # noqa: E402
    attribute_tokens,
    attribution_tokens,
    load_replacement_model,
)
from hallugraph.cli import main  # noqa: E402
from hallugraph.features import FeatureTable  # noqa: E402
from hallugraph.features.groundedness import read_scores, scores_path  # noqa: E402
from hallugraph.io import atomic_write_text  # noqa: E402
from hallugraph.store import TraceStore
from hallugraph.store.layout import MANIFEST, read_manifest

NODES = 16


@pytest.fixture(scope="module")
def rm(tiny_ct):
    return load_replacement_model(*tiny_ct)


def _copy(tiny_run, tmp_path, name="run") -> Path:
    run = tmp_path / name
    shutil.copytree(tiny_run, run)
    return run


def _argv(run, tiny_ct, *extra):
    model_dir, tdir = tiny_ct
    return [
        "groundedness",
        str(run),
        "--transcoders",
        str(tdir),
        "--model",
        str(model_dir),
        "--max-feature-nodes",
        str(NODES),
        "--device",
        "cpu",
        "--threads",
        "1",
        "--no-progress",
        *extra,
    ]


def _direct(rm, row):
    """scores_from_graph on the graph of the first answer token, built by hand."""
    p = row["prompt_len"]
    tokens, shift = attribution_tokens(rm.tokenizer, row["tokens"][:p])
    graph = attribute_tokens(
        rm,
        tokens,
        max_feature_nodes=NODES,
        attribution_targets=torch.tensor([row["tokens"][p]]),
    )
    assert graph.logit_targets[0].vocab_idx == row["tokens"][p]
    ctx = [i + shift for i in range(*row["context_span"])]
    return scores_from_graph(graph, ctx)


def test_groundedness_command_scores_resumes(tiny_run, tiny_ct, rm, tmp_path, capsys, monkeypatch):
    run = _copy(tiny_run, tmp_path)
    assert main(_argv(run, tiny_ct, "--limit", "3")) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["eligible"], summary["already"], summary["scored"]) == (3, 0, 3)
    payload = read_scores(run)
    assert payload["settings"]["max_feature_nodes"] == NODES
    assert payload["settings"]["targets"] == "first"
    store = TraceStore(run)
    assert set(payload["scores"]) == {r["question_id"] for r in store.manifest[:3]}
    for row in store.manifest[:3]:
        rec = payload["scores"][row["question_id"]]
        direct = _direct(rm, row)
        assert rec["gctx"] == pytest.approx(direct.gctx, abs=1e-6)
        assert rec["rs"] == pytest.approx(direct.rs, abs=1e-6)
        assert rec["cs"] == pytest.approx(direct.cs, abs=1e-6)
        assert rec["n_features"] == direct.n_features == NODES
        assert rec["n_graphs"] == 1 and rec["seconds"] > 0 and rec["index"] == row["index"]
        assert 0 < rec["gctx"] < 1
    # the statistic reads them (and the rest of the run is unscored)
    v = FeatureTable.from_run(run).stat("groundedness")
    assert v[:3, 3].tolist() == [1, 1, 1] and (v[3:, 3] == 0).all() and np.isnan(v[3:, 0]).all()
    first = store.manifest[0]["question_id"]
    assert v[0, 0] == pytest.approx(payload["scores"][first]["gctx"], rel=1e-6)

    # resume: nothing recomputed; a larger --limit scores only the new traces
    calls = []
    real = gmod.score_trace

    def counting(rm_, row, settings, **kw):
        calls.append(row["question_id"])
        return real(rm_, row, settings, **kw)

    monkeypatch.setattr(gmod, "score_trace", counting)
    before = scores_path(run).read_bytes()
    assert main(_argv(run, tiny_ct, "--limit", "3")) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["already"], summary["scored"]) == (3, 0) and calls == []
    assert scores_path(run).read_bytes() == before
    s = score_run(
        run,
        tiny_ct[1],
        AttributionSettings(max_feature_nodes=NODES),
        limit=5,
        replacement_model=rm,
        progress=False,
    )
    assert (s.already, s.scored) == (3, 2) and len(calls) == 2
    assert len(read_scores(run)["scores"]) == 5

    # other settings: refused, unless --overwrite
    assert main(_argv(run, tiny_ct, "--limit", "3", "--max-feature-nodes", "8")) == 2
    assert "other settings" in capsys.readouterr().err
    assert len(read_scores(run)["scores"]) == 5


def test_interruption_keeps_scored_traces(tiny_run, tiny_ct, rm, tmp_path, monkeypatch):
    run = _copy(tiny_run, tmp_path)
    real = gmod.score_trace
    n = []

    def flaky(rm_, row, settings, **kw):
        n.append(1)
        if len(n) == 3:
            raise KeyboardInterrupt
        return real(rm_, row, settings, **kw)

    monkeypatch.setattr(gmod, "score_trace", flaky)
    settings = AttributionSettings(max_feature_nodes=NODES)
    with pytest.raises(KeyboardInterrupt):
        score_run(run, tiny_ct[1], settings, replacement_model=rm, progress=False)
    assert len(read_scores(run)["scores"]) == 2
    assert not list(scores_path(run).parent.glob("*.tmp"))
    monkeypatch.setattr(gmod, "score_trace", real)
    s = score_run(run, tiny_ct[1], settings, replacement_model=rm, limit=3, progress=False)
    assert (s.already, s.scored) == (2, 1)


def test_first_ids_are_scored_first(tiny_run, tiny_ct, rm, tmp_path):
    """``first`` orders the traces before ``limit`` / ``shard``; an unknown id is refused
    before anything is written."""
    run = _copy(tiny_run, tmp_path)
    ids = [r["question_id"] for r in TraceStore(run).manifest if r.get("context_span")]
    settings = AttributionSettings(max_feature_nodes=NODES)
    with pytest.raises(ValueError, match="not traces with a context"):
        score_run(run, tiny_ct[1], settings, replacement_model=rm, first=["nope"], limit=1)
    assert not scores_path(run).exists()
    first = [ids[-1], ids[2]]
    score_run(run, tiny_ct[1], settings, replacement_model=rm, first=first, limit=2, progress=False)
    assert set(read_scores(run)["scores"]) == set(first)
    score_run(
        run,
        tiny_ct[1],
        settings,
        replacement_model=rm,
        first=first,
        limit=4,
        shard=(1, 2),
        progress=False,
    )
    shard = read_scores(run, "groundedness.shard-1-of-2.json")["scores"]
    assert set(shard) == {ids[1]}  # order: ids[-1], ids[2], ids[0], ids[1]; every 2nd from 1


def test_targets_all_averages_answer_tokens(tiny_run, tiny_ct, rm, tmp_path):
    run = _copy(tiny_run, tmp_path)
    row = TraceStore(run).manifest[0]
    ks = answer_offsets(row, "all", 2)
    assert ks == list(range(min(2, row["answer_len"] - bool(row["finished"]))))
    settings = AttributionSettings(max_feature_nodes=NODES, targets="all", max_answer_tokens=2)
    score_run(run, tiny_ct[1], settings, replacement_model=rm, limit=1, progress=False)
    rec = read_scores(run)["scores"][row["question_id"]]
    assert rec["n_graphs"] == len(ks)
    per = []
    for k in ks:
        graph, ctx, _ = gmod.attribute_answer_token(rm, row, k, max_feature_nodes=NODES)
        assert graph.logit_targets[0].vocab_idx == row["tokens"][row["prompt_len"] + k]
        per.append(scores_from_graph(graph, ctx))
    assert rec["gctx"] == pytest.approx(np.mean([s.gctx for s in per]), abs=1e-6)
    assert rec["cs"] == pytest.approx(np.mean([s.cs for s in per]), abs=1e-6)
    assert read_scores(run)["settings"]["targets"] == "all"


def test_groundedness_clear_errors(tiny_run, tiny_ct, tmp_path, capsys, monkeypatch):
    run = _copy(tiny_run, tmp_path)
    # transcoders missing
    argv = _argv(run, tiny_ct)
    argv[argv.index("--transcoders") + 1] = str(tmp_path / "nowhere")
    assert main(argv) == 2
    assert "transcoder folder" in capsys.readouterr().err
    # no --transcoders and none in the cache
    monkeypatch.setenv("HALLUGRAPH_CACHE", str(tmp_path / "cache"))
    argv = _argv(run, tiny_ct)
    del argv[argv.index("--transcoders") : argv.index("--transcoders") + 2]
    assert main(argv) == 2
    assert "no transcoder set found" in capsys.readouterr().err
    # circuit-tracer missing, and asked for
    from hallugraph.attribution import tracer

    def missing():
        raise ImportError("attribution graphs need circuit-tracer: pip install -e '.[attribution]'")

    with monkeypatch.context() as m:
        m.setattr(tracer, "require_circuit_tracer", missing)
        assert main(_argv(run, tiny_ct, "--engine", "circuit-tracer")) == 2
        assert "need circuit-tracer" in capsys.readouterr().err
    # a run without any context
    rows = read_manifest(run)
    for r in rows:
        r["context_span"] = None
    atomic_write_text(run / MANIFEST, "".join(json.dumps(r) + "\n" for r in rows))
    assert main(_argv(run, tiny_ct)) == 2
    assert "no trace with a context" in capsys.readouterr().err
    assert not scores_path(run).exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_attribution_command_json_png_and_viewer(tiny_run, tiny_ct, rm, tmp_path, capsys):
    from hallugraph.attribution.viewer import serve_viewer

    run = _copy(tiny_run, tmp_path)
    model_dir, tdir = tiny_ct
    out, png = tmp_path / "graphs", tmp_path / "g.png"
    argv = ["attribution", str(run), "--index", "1", "--out", str(out), "--png", str(png)]
    argv += ["--transcoders", str(tdir), "--model", str(model_dir), "--device", "cpu"]
    argv += ["--max-feature-nodes", str(NODES), "--threads", "1"]
    assert main(argv) == 0
    assert "Gctx" in capsys.readouterr().out
    row = TraceStore(run).manifest[1]
    slug = f"{row['question_id']}_a0"
    viewer = json.loads((out / f"{slug}.json").read_text())
    assert {"metadata", "nodes", "links"} <= set(viewer) and viewer["nodes"]
    assert viewer["metadata"]["slug"] == slug
    meta = json.loads((out / "graph-metadata.json").read_text())
    assert [g["slug"] for g in meta["graphs"]] == [slug]
    info = json.loads((out / f"{slug}.scores.json").read_text())
    direct = _direct(rm, row)
    assert info["scores"]["gctx"] == pytest.approx(direct.gctx, abs=1e-6)
    assert info["target"]["id"] == row["tokens"][row["prompt_len"]]
    assert info["context_positions"] == list(range(*row["context_span"]))
    assert not list(out.glob("*.pt"))  # nothing pickled
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000

    port = _free_port()
    server = serve_viewer(out, port)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/graph-metadata.json") as r:
            assert json.loads(r.read())["graphs"][0]["slug"] == slug
    finally:
        server.stop()


def test_speed_benchmark_smoke(tiny_run, tiny_ct, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    try:
        import groundedness_speed
    finally:
        sys.path.pop(0)
    model_dir, _ = tiny_ct
    rows = groundedness_speed.main(
        ["random:40", "--run", str(tiny_run), "--indices", "0,1", "--model", str(model_dir)]
        + ["--nodes", "4,12", "--threads", "1"]
    )
    assert [(r["max_feature_nodes"], r["ratio_vs_largest"] > 0) for r in rows] == [
        (4, True),
        (12, True),
    ] * 2
    assert rows[1]["d_gctx"] == 0.0 and rows[1]["ratio_vs_largest"] == 1.0
    assert "| trace | nodes |" in capsys.readouterr().out
