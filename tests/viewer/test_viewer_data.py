"""The viewer's data and API on the tiny run: pages of the trace list, the token signals, the
attention graph (the `graph` command's graph), ROC points equal to what `evaluate` reported,
the attribution graph JSON, clear errors."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pytest

from hallugraph.features.attention import context_columns, lookback_ratio
from hallugraph.graphs.graph import build_graph
from hallugraph.store import TraceStore
from hallugraph.viewer.attribution import GraphFormatError, read_attribution_graph
from hallugraph.viewer.data import RunView, lookback_per_token, top_sources


def get(url: str) -> tuple[int, object]:
    try:
        with urllib.request.urlopen(url) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_lookback_per_token_averages_to_lookback_ratio(tiny_run):
    store = TraceStore(tiny_run)
    for i in (0, 3):
        t = store.get(i, fields=("attentions",))
        p, n = int(t["prompt_len"]), int(t["answer_len"])
        ctx = context_columns(t, "span")
        per_token = lookback_per_token(t["attentions"], p, ctx)
        assert per_token.shape == (n,)
        want = lookback_ratio(t["attentions"], p, n, ctx).mean()
        assert per_token[1:].mean() == pytest.approx(want, rel=1e-9)


def test_top_sources_are_the_heaviest_keys():
    rng = np.random.default_rng(0)
    a = np.tril(rng.random((2, 3, 6, 6)))
    src = top_sources(a, k=2)
    mean = a.mean(axis=(0, 1))
    assert len(src) == 6 and len(src[0]) == 1  # row 0 sees only itself
    for q in range(1, 6):
        assert [j for j, _ in src[q]] == list(np.argsort(-mean[q], kind="stable")[:2])


def test_trace_list_filters_sorts_and_pages(view_run):
    run = RunView(view_run)
    page = run.traces(offset=0, limit=10)
    assert page["total"] == 24 and [r["index"] for r in page["rows"]] == list(range(10))
    page = run.traces(offset=20, limit=10)
    assert [r["index"] for r in page["rows"]] == [20, 21, 22, 23]
    hal = run.traces(label="1", limit=100)
    assert hal["total"] == 12 and all(r["label"] == 1 for r in hal["rows"])
    ppl = run.traces(sort="log_perplexity", desc=True, limit=100)["rows"]
    vals = [r["log_perplexity"] for r in ppl]
    assert vals == sorted(vals, reverse=True) and len(set(vals)) > 1
    q = run.traces(q="SCORPIO", limit=100)
    assert 0 < q["total"] < 24 and all("scorpio" in r["question"].lower() for r in q["rows"])
    with pytest.raises(ValueError, match="sort must be one of"):
        run.traces(sort="nope")


def test_api_graph_is_the_graph_commands_graph(view_run, server):
    store = TraceStore(view_run)
    t = store.get(2, fields=("attentions",))
    for layer, extra in ((0, "&top_k=2&hide_sink=true"), (1, "&threshold=0.05")):
        status, g = get(f"{server}/api/runs/0/traces/2/graph?layer={layer}{extra}")
        assert status == 200
        want = build_graph(
            t,
            layer,
            top_k=2 if layer == 0 else None,
            threshold=0.05 if layer == 1 else None,
            hide_sink=layer == 0,
            self_loops=False,
        )
        assert len(g["nodes"]) == t["seq_len"]
        assert [e[:2] for e in g["edges"]] == want.edge_index.T.tolist()
        np.testing.assert_allclose([e[2] for e in g["edges"]], want.weight, atol=1e-6)
    status, one = get(f"{server}/api/runs/0/traces/2/graph?layer=1&head=3")
    head_graph = build_graph({**t, "attentions": t["attentions"][:, 3:4]}, 1, self_loops=False)
    assert status == 200 and len(one["edges"]) == head_graph.num_edges
    assert get(f"{server}/api/runs/0/traces/2/graph?layer=7")[0] == 400
    assert get(f"{server}/api/runs/0/traces/2/graph?layer=0&head=4")[0] == 400
    status, err = get(f"{server}/api/runs/0/traces/99/graph?layer=0")
    assert status == 404 and "out of range" in err["detail"]
    assert get(f"{server}/api/runs/3/traces")[0] == 404


def test_api_tokens_and_trace_json(view_run, server):
    row = TraceStore(view_run).manifest[5]
    status, tok = get(f"{server}/api/runs/0/traces/5/tokens")
    assert status == 200 and len(tok["tokens"]) == len(tok["roles"]) == row["seq_len"]
    p = row["prompt_len"]
    assert tok["signals"]["logprob"][:p] == [None] * p
    np.testing.assert_allclose(tok["signals"]["logprob"][p:], row["token_logprobs"], rtol=1e-6)
    assert set(tok["roles"][p:]) == {"answer"} and "context" in tok["roles"]
    assert len(tok["sources"]) == row["seq_len"]
    lookback = tok["signals"]["lookback"]
    assert row["answer_len"] >= 2  # the first answer token has no ratio, the others have one
    assert lookback[: p + 1] == [None] * (p + 1) and None not in lookback[p + 1 :]
    status, meta = get(f"{server}/api/runs/0/traces/5")
    assert status == 200 and meta["question_id"] == row["question_id"]


def test_roc_points_reproduce_evaluate(view_run, server):
    status, evals = get(f"{server}/api/runs/0/eval")
    assert status == 200 and len(evals) == 1
    reported = {r["detector"]: r for r in evals[0]["rows"]}
    assert set(reported) >= {"perplexity", "lookback_lens"}
    status, roc = get(f"{server}/api/runs/0/roc")
    assert status == 200
    names = [d["name"] for d in roc["detectors"]]
    assert "perplexity" in names and "lookback_lens" in names  # saved out-of-fold scores
    labels = [r["label"] for r in TraceStore(view_run).manifest]
    for det in roc["detectors"]:
        assert det["auroc"] == pytest.approx(reported[det["name"]]["auroc"], abs=1e-5)
        assert len(det["points"]) == reported[det["name"]]["n"]
        assert all(labels[i] == y for i, y, _ in det["points"])


def test_attribution_graph_json(view_run, server):
    pytest.importorskip("circuit_tracer")
    folder = view_run / "attribution" / "graphs"
    (graph_file,) = [
        f for f in folder.glob("*.json") if f.name.count(".") == 1 and "meta" not in f.name
    ]
    raw = json.loads(graph_file.read_text())
    status, g = get(f"{server}/api/runs/0/graphs/{graph_file.stem}")
    assert status == 200
    assert len(g["nodes"]) == len(raw["nodes"]) and len(g["links"]) == len(raw["links"])
    kinds = [n["feature_type"] for n in raw["nodes"]]
    assert g["counts"]["token"] == kinds.count("embedding") == len(raw["metadata"]["prompt_tokens"])
    assert g["counts"]["logit"] == kinds.count("logit") >= 1
    assert g["counts"]["feature"] == kinds.count("cross layer transcoder") > 0
    assert g["n_layers"] == 2 and {n["row"] for n in g["nodes"]} <= {0, 1, 2, 3}
    scores = json.loads((folder / f"{graph_file.stem}.scores.json").read_text())
    assert g["scores"]["gctx"] == scores["scores"]["gctx"]
    assert g["context_positions"] == scores["context_positions"]
    assert get(f"{server}/api/runs/0/graphs/nope")[0] == 404


def test_attribution_reader_names_the_bad_file(tmp_path):
    bad = tmp_path / "g.json"
    bad.write_text('{"metadata": {}, "nodes": []}')
    with pytest.raises(GraphFormatError, match=r"g\.json: missing links"):
        read_attribution_graph(bad)
    bad.write_text(
        '{"metadata": {}, "nodes": [{"node_id": "a", "feature_type": "x", '
        '"layer": "0", "ctx_idx": 0}], "links": []}'
    )
    with pytest.raises(GraphFormatError, match="unknown feature_type 'x'"):
        read_attribution_graph(bad)
    bad.write_text("{not json")
    with pytest.raises(GraphFormatError, match="cannot read"):
        read_attribution_graph(bad)


def test_view_command_refuses_a_missing_run(tmp_path, capsys):
    from hallugraph.cli import main

    assert main(["view", str(tmp_path / "nope")]) == 2
    assert "is not a hallugraph run" in capsys.readouterr().err


def test_view_command_serves_the_runs(view_run):
    """``hallugraph view RUN --port P`` in a subprocess answers on 127.0.0.1:P."""
    import os
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "hallugraph", "view", str(view_run), "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, runs = get(f"http://127.0.0.1:{port}/api/runs")
                break
            except urllib.error.URLError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "hallugraph view did not answer in 60 s"
                time.sleep(0.2)
        assert status == 200 and runs[0]["n_traces"] == 24 and runs[0]["labeled"] == 24
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/") as r:
            assert b"/static/vendor/d3/d3.min.js" in r.read()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_run_without_tensors_still_shows_its_tokens(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "pruned"
    shutil.copytree(tiny_run, run)
    shutil.rmtree(run / "shards")
    view = RunView(run)
    assert not view.summary()["tensors_kept"] and not view.has_tensors(0)
    tok = view.tokens(0)
    assert tok["sources"] is None and set(tok["signals"]) == {"logprob", "entropy"}
    assert view.traces(limit=5)["total"] == 24
