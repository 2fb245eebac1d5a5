"""The viewer in a real browser: headless Chromium (Debian's ``chromium``) driven by
Playwright. Every page of the tiny run loads with no console error and no request leaving
127.0.0.1; the token view has one element per token; the attention graph has one node per token
and other edges at another layer; the attribution view draws the engine-made graph's nodes.

Skipped, saying why, without Chromium or Playwright. The same views on a real SmolLM2 run (and
the README's screenshots): ``test_viewer_real.py``.
"""

from __future__ import annotations

import json

import pytest

from hallugraph.store import TraceStore


@pytest.fixture
def page(open_page, server):
    with open_page(server) as pw:
        yield pw


def test_runs_page_table_roc_and_traces_list(page, server, view_run):
    pg, watch = page
    pg.goto(server + "/")
    pg.wait_for_selector(".roc-point")
    results = json.loads((view_run.parent / "eval" / "results.json").read_text())
    assert pg.locator(".det-row").count() == len(results["results"])
    assert "24" in pg.locator(".run .facts").inner_text()
    pg.locator(".roc-point").last.click()  # drawn last: on top
    pg.wait_for_selector(".near-row")
    assert pg.locator(".near-row").count() >= 1
    pg.goto(server + "/run/0/traces")
    pg.wait_for_selector(".trace-row")
    assert pg.locator(".trace-row").count() == 24
    pg.select_option("#label", "1")
    pg.wait_for_function("document.querySelectorAll('.trace-row').length === 12")
    pg.locator(".trace-row .json-btn").first.click()
    pg.wait_for_selector("pre.json")
    assert '"question_id"' in pg.locator("pre.json").inner_text()
    watch.check()


def test_token_view_has_one_element_per_token(page, server, view_run):
    pg, watch = page
    row = TraceStore(view_run).manifest[1]
    pg.goto(server + "/run/0/trace/1")
    pg.wait_for_selector("#tokens .tok")
    assert pg.locator("#tokens .tok").count() == row["seq_len"]
    assert pg.locator("#tokens .tok.role-answer").count() == row["answer_len"]
    pg.select_option("#colour", "lookback")
    pg.locator("#tokens .tok").nth(row["seq_len"] - 1).hover()
    assert pg.locator("#tooltip").is_visible()
    assert "top attention sources" in pg.locator("#tooltip").inner_text()
    assert pg.locator("#tokens .tok.hl").count() >= 1
    watch.check()


def _edges(pg) -> list[tuple[str, str, str]]:
    return pg.eval_on_selector_all(
        "#graph-svg path.edge",
        "els => els.map(e => [e.dataset.src, e.dataset.dst, e.dataset.w])",
    )


def test_attention_graph_nodes_and_layer_slider(page, server, view_run):
    pg, watch = page
    row = TraceStore(view_run).manifest[1]
    pg.goto(server + "/run/0/trace/1/graph")
    pg.wait_for_selector("#graph-svg[data-layer='1']")  # 2 layers: starts in the middle
    assert pg.locator("#graph-svg circle.node").count() == row["seq_len"]
    before = _edges(pg)
    assert before
    pg.locator("#layer").fill("0")  # fires input: the slider moves to layer 0
    pg.wait_for_selector("#graph-svg[data-layer='0']")
    after = _edges(pg)
    assert after and sorted(after) != sorted(before)
    assert pg.locator("#graph-svg circle.node").count() == row["seq_len"]
    pg.select_option("#head", "2")
    pg.wait_for_function("document.getElementById('graph-info').textContent.includes('head 2')")
    watch.check()


def test_attribution_view_draws_the_graph(page, server, view_run):
    pytest.importorskip("circuit_tracer")
    pg, watch = page
    folder = view_run / "attribution" / "graphs"
    graph_file = next(f for f in folder.glob("*_a0.json"))
    raw = json.loads(graph_file.read_text())
    kinds = [n["feature_type"] for n in raw["nodes"]]
    pg.goto(f"{server}/run/0/attribution/{graph_file.stem}")
    pg.wait_for_selector("#attr-svg .anode")
    assert pg.locator("#attr-svg .anode").count() == len(raw["nodes"])
    assert pg.locator("#attr-svg .anode.kind-feature").count() == kinds.count(
        "cross layer transcoder"
    )
    assert pg.locator("#attr-svg .anode.kind-token").count() == kinds.count("embedding")
    assert pg.locator("#attr-svg .anode.kind-logit").count() == kinds.count("logit")
    assert pg.locator("#attr-svg line.aedge").count() == len(raw["links"])
    assert pg.locator("#attr-svg .anode.context").count() > 0
    assert "Gctx" in pg.locator("#scores").inner_text()
    pg.locator("#keep").fill("10")
    kept = max(1, round(len(raw["links"]) * 0.1))
    assert pg.locator("#attr-svg line.aedge").count() == kept
    pg.locator("#attr-svg .anode.kind-logit").first.click()
    pg.wait_for_selector("#node-info .link-row")
    assert "strongest inputs" in pg.locator("#node-info").inner_text()
    watch.check()
