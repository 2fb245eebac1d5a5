"""The viewer on a real SmolLM2 run in headless Chromium, and the README's screenshots.

By default the test extracts 3 teacher-forced HaluEval-QA answers with SmolLM2 (tensors kept)
and checks the token and attention-graph views on them. With ``HALLUGRAPH_VIEW_RUN=RUN`` it
views RUN instead (``HALLUGRAPH_VIEW_EVAL=DIR``: an evaluate output folder, else the defaults;
``HALLUGRAPH_VIEW_INDEX``: the trace shown, default 1), the attribution view too when RUN has a
graph; with ``HALLUGRAPH_VIEW_SHOTS=DIR`` it writes the screenshots ``view_runs.png``,
``view_trace.png``, ``view_graph.png`` and ``view_attribution.png`` into DIR. The README's
come from (the run made as the README's section "Look at a run" says)::

    HALLUGRAPH_VIEW_RUN=runs/view60 HALLUGRAPH_VIEW_EVAL=runs/view60_eval \\
    HALLUGRAPH_VIEW_SHOTS=docs/img python -m pytest tests/viewer/test_viewer_real.py -m real_model
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hallugraph.store import TraceStore

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    given = os.environ.get("HALLUGRAPH_VIEW_RUN")
    if given:
        return Path(given)
    from hallugraph.cli import main

    out = tmp_path_factory.mktemp("real") / "halueval_tf3"
    argv = ["extract", "--dataset", "halueval_qa_tf", "--num-samples", "3", "--out", str(out)]
    assert main([*argv, "--no-progress"]) == 0
    return out


def test_views_of_a_real_run(real_run, serve, open_page):
    shots = os.environ.get("HALLUGRAPH_VIEW_SHOTS")
    shots_dir = Path(shots) if shots else None
    if shots_dir:
        shots_dir.mkdir(parents=True, exist_ok=True)
    evals = (
        [Path(os.environ["HALLUGRAPH_VIEW_EVAL"])] if os.environ.get("HALLUGRAPH_VIEW_EVAL") else []
    )
    i = int(os.environ.get("HALLUGRAPH_VIEW_INDEX", "1"))
    row = TraceStore(real_run).manifest[i]
    with serve([real_run], evals) as base, open_page(base, 1500, 950) as (pg, watch):
        pg.goto(base + "/")
        pg.wait_for_selector(".run .facts")
        if pg.locator(".roc-point").count() or evals:
            pg.wait_for_selector(".roc-point")
            points = pg.locator(".roc-point")
            points.nth(points.count() // 2).dispatch_event("click")
            pg.wait_for_selector(".near-row")
        if shots_dir:
            pg.screenshot(path=str(shots_dir / "view_runs.png"), full_page=True)

        pg.goto(f"{base}/run/0/trace/{i}")
        pg.wait_for_selector("#tokens .tok")
        assert pg.locator("#tokens .tok").count() == row["seq_len"]
        pg.select_option("#colour", "lookback")
        pg.locator("#tokens .tok").nth(row["prompt_len"]).hover()  # the first answer token
        assert pg.locator("#tooltip").is_visible()
        if shots_dir:
            pg.screenshot(path=str(shots_dir / "view_trace.png"))

        pg.goto(f"{base}/run/0/trace/{i}/graph")
        pg.wait_for_selector("#graph-svg circle.node")
        assert pg.locator("#graph-svg circle.node").count() == row["seq_len"]
        before = pg.get_attribute("#graph-svg", "data-layer")
        pg.locator("#layer").fill("20")
        pg.wait_for_selector("#graph-svg[data-layer='20']")
        assert before != "20"
        pg.fill("#top_k", "2")
        pg.locator("#top_k").dispatch_event("change")
        pg.wait_for_function("document.getElementById('graph-info').textContent.includes('edges')")
        if shots_dir:
            pg.screenshot(path=str(shots_dir / "view_graph.png"))

        graphs = sorted((real_run / "attribution" / "graphs").glob("*_a*.json"))
        graphs = [g for g in graphs if not g.name.endswith(".scores.json")]
        if graphs:
            pg.goto(f"{base}/run/0/attribution/{graphs[0].stem}")
            pg.wait_for_selector("#attr-svg .anode")
            pg.locator("#keep").fill("25")
            pg.locator("#attr-svg .anode.kind-logit").first.click()
            pg.wait_for_selector("#node-info .link-row")
            if shots_dir:
                pg.screenshot(path=str(shots_dir / "view_attribution.png"))
        watch.check()
