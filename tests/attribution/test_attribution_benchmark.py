"""``hallugraph groundedness-eval``: the knee rule, α / T chosen on validation only (a spy), the
CSV / JSON schema, ``groundedness --shard K/N`` + ``--merge N`` against one process, and the
whole pipeline on the tiny Llama with random transcoders, resumed."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from hallugraph.attribution import benchmark_report as rep
from hallugraph.attribution.benchmark import EvalConfig, choose_setting, run_eval
from hallugraph.cli import main
from hallugraph.detectors import groundedness as gdet
from hallugraph.features.groundedness import read_scores, write_scores

NODES = 8


def test_knee_rule():
    t = [
        {"nodes": 32, "targets": "first", "auroc": 0.60},
        {"nodes": 64, "targets": "first", "auroc": 0.695},
        {"nodes": 128, "targets": "first", "auroc": 0.70},
        {"nodes": 32, "targets": "all", "auroc": 0.71},
        {"nodes": 64, "targets": "all", "auroc": None},
    ]
    assert (choose_setting(t)["nodes"], choose_setting(t)["targets"]) == (64, "first")
    t[3]["auroc"] = 0.75  # 'all' beats 'first''s knee by >= 0.02
    assert (choose_setting(t)["nodes"], choose_setting(t)["targets"]) == (32, "all")
    with pytest.raises(ValueError, match="AUROC"):
        choose_setting([{"nodes": 8, "targets": "first", "auroc": None}])


def _frame(n_q=60, seed=0):
    rng = np.random.default_rng(seed)
    qid = np.repeat([f"q{i:02d}" for i in range(n_q)], 3)
    label = np.tile([0, 1, 1], n_q)
    split = np.repeat(rng.choice(["train", "val", "test"], n_q, p=[0.25, 0.25, 0.5]), 3)
    pair = np.where(rng.random(3 * n_q) < 0.5, np.arange(3 * n_q), -1)
    gctx = np.clip(0.5 - 0.2 * label + rng.normal(0, 0.15, 3 * n_q), 0, 1)
    return {
        "id": np.array(
            [f"{q}_{k}" for q, k in zip(qid, np.tile(["r", "h1", "h2"], n_q), strict=True)]
        ),
        "question_id": qid,
        "label": label,
        "answer_tokens": np.where(label == 0, 5, 7),
        "split": split,
        "pair": pair,
        "gctx": gctx,
        "rs": rng.random(3 * n_q),
        "cs": rng.random(3 * n_q),
        "scored": np.ones(3 * n_q, dtype=bool),
    }


def test_alpha_t_on_validation_only_and_the_schema(tmp_path, monkeypatch):
    frames = {"halueval_qa_tf": _frame(), "halueval_qa": _frame(30, seed=1)}
    seen = []
    real_fit = gdet.fit_groundedness

    def spy(gctx, rs, cs, y, alphas=None):
        seen.append(np.asarray(gctx).copy())
        return real_fit(gctx, rs, cs, y, alphas)

    def fake_base(out, run, t, info=None):
        s = np.full(len(t["id"]), np.nan)
        te = t["split"] == "test"
        s[te] = np.linspace(0, 1, te.sum())
        return {k: s for k in (*rep.BASELINES, "groundedness_lr")}

    monkeypatch.setattr(gdet, "fit_groundedness", spy)
    monkeypatch.setattr(rep, "run_frame", lambda out, r, p, partial=False: frames[r])
    monkeypatch.setattr(rep, "baseline_scores", fake_base)
    cfg = EvalConfig(out=str(tmp_path), bootstrap=50, graph_png=False)
    p = {
        "tol": 2,
        "seed": 0,
        "frac": [0.25, 0.25, 0.5],
        "runs": {r: {"counts": {}} for r in frames},
    }
    res = rep.write_report(cfg, p, 64, "first", {})

    tf = frames["halueval_qa_tf"]
    val = (tf["split"] == "val") & (tf["pair"] >= 0)
    assert len(seen) == 1 and np.array_equal(seen[0], tf["gctx"][val])  # validation only
    out = tmp_path / "report"
    rows = list(csv.reader((out / "groundedness_scores.csv").open()))
    assert tuple(rows[0]) == rep.CSV_COLUMNS
    assert len(rows) - 1 == sum(len(f["id"]) for f in frames.values())
    body = [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]
    assert all((r["lookback"] == "") == (r["split"] != "test") for r in body)
    assert {r["length_matched"] for r in body} == {"0", "1"}
    data = json.loads((out / "groundedness.json").read_text())
    assert data == json.loads(json.dumps(res))
    for k in ("node_budget", "target_mode", "alpha", "T", "metrics", "counts"):
        assert k in data
    m = data["metrics"]["halueval_qa_tf"]
    test = (tf["split"] == "test") & (tf["pair"] >= 0)
    assert m["n_test"] == test.sum() and m["n_test_hallucinated"] == tf["label"][test].sum()
    for k in ("accuracy_T0.4_alpha_val", "accuracy_alpha_T_val", "auroc_groundedness"):
        assert m[k]["lo"] <= m[k]["value"] <= m[k]["hi"]
    for k in ("gctx", "rs", "cs", "lookback_lens", "graph_topology", "answer_length"):
        assert f"auroc_{k}" in m
    assert (out / "groundedness_distributions.png").stat().st_size > 1000


def _tiny_args(run, tiny_ct, *extra):
    model_dir, tdir = tiny_ct
    return ["groundedness", str(run), "--transcoders", str(tdir), "--model", str(model_dir)]


def test_shards_merge_to_the_single_process_scores(tiny_run, tiny_ct, tmp_path, capsys):
    one, two = tmp_path / "one", tmp_path / "two"
    shutil.copytree(tiny_run, one)
    shutil.copytree(tiny_run, two)
    common = ["--max-feature-nodes", str(NODES), "--device", "cpu", "--no-progress"]
    assert main([*_tiny_args(one, tiny_ct), *common, "--limit", "5"]) == 0
    for k in (0, 1):
        assert main([*_tiny_args(two, tiny_ct), *common, "--limit", "5", "--shard", f"{k}/2"]) == 0
    assert read_scores(two)["scores"] == {}
    assert main(["groundedness", str(two), "--merge", "2"]) == 0
    a, b = read_scores(one), read_scores(two)
    assert a["settings"] == b["settings"] and set(a["scores"]) == set(b["scores"])
    for q, rec in a["scores"].items():
        for c in ("gctx", "rs", "cs"):
            assert b["scores"][q][c] == pytest.approx(rec[c], rel=1e-5, abs=1e-7, nan_ok=True)
    assert main([*_tiny_args(two, tiny_ct), *common, "--shard", "2/2"]) == 2  # K out of range


def test_pipeline_end_to_end_and_resumes(tiny_run, tiny_ct, tmp_path, monkeypatch):
    from hallugraph.attribution import benchmark as bm

    def fake_extract(cfg):  # the tiny run stands for both HaluEval runs
        for r in bm.RUNS:
            if not (tmp_path / "w" / r).exists():
                shutil.copytree(tiny_run, tmp_path / "w" / r)

    monkeypatch.setattr(bm, "extract", fake_extract)
    model_dir, tdir = tiny_ct
    cfg = EvalConfig(
        out=str(tmp_path / "w"),
        transcoders=str(tdir),
        model=str(model_dir),
        nodes=(4, NODES),
        sweep_targets=("first", "all"),
        sweep_all_nodes=(4,),
        sweep_max_answer_tokens=2,
        sweep_answers=4,
        processes=1,  # --shard / --merge: test_shards_merge_to_the_single_process_scores
        tol=100,  # the tiny answers' lengths vary: match them all
        bootstrap=20,
        graph_png=False,
        progress=False,
    )
    res = run_eval(cfg)
    w = tmp_path / "w"
    sweep = json.loads((w / "sweep.json").read_text())
    assert [(r["nodes"], r["targets"]) for r in sweep["table"]] == [
        (4, "first"),
        (NODES, "first"),
        (4, "all"),
    ]
    assert all(r["answers"] == sweep["answers"] for r in sweep["table"])
    # budget 4 comes from prefixes of the NODES graphs; separate runs at 4 time it and agree
    small, big = sweep["table"][0], sweep["table"][1]
    assert small["timed"] >= 1 and small["prefix_max_diff"] < 1e-5
    assert big["timed"] == big["answers"] and big["prefix_max_diff"] is None
    val = json.loads((w / "plan.json").read_text())["question_split"]
    assert all(val[i] == "val" for i in json.loads((w / "sweep" / "ids.json").read_text()))
    assert res["node_budget"] == sweep["chosen"]["nodes"]
    scored = read_scores(w / "halueval_qa_tf")
    assert (
        len(scored["scores"]) == 24
        and scored["settings"]["max_feature_nodes"] == NODES
        or (scored["settings"]["max_feature_nodes"] == 4)
    )
    rows = list(csv.reader((w / "report" / "groundedness_scores.csv").open()))
    assert len(rows) == 1 + 2 * 24
    # the sweep's validation answers were not scored again: their records come from the sweep
    reused = [i for i, r in scored["scores"].items() if r.get("from_sweep")]
    assert sorted(reused) == sorted(json.loads((w / "sweep" / "ids.json").read_text()))
    # CPU: the steps that finished + the scoring's per-answer seconds (the sweep's reused
    # answers counted once, in the sweep step)
    acct = res["cpu_seconds"]
    mine = [r for r in scored["scores"].values() if not r.get("from_sweep")]
    assert all(0 < r["cpu_s"] for r in mine)  # CPU, not wall, seconds per answer
    own = sum(r["cpu_s"] for r in mine)
    assert acct["scoring_answer_s"]["halueval_qa_tf"] == pytest.approx(own, abs=0.05)
    assert acct["scoring_wall_answers"]["halueval_qa_tf"] == 0
    assert "sweep" in acct["steps_cpu_s"] and "score" not in acct["steps_cpu_s"]
    assert acct["total_s"] == pytest.approx(
        sum(acct["steps_cpu_s"].values()) + sum(acct["scoring_answer_s"].values()), abs=0.1
    )
    # resumed: nothing is recomputed, the same results come out
    before = {p: p.stat().st_mtime_ns for p in (w / "sweep").glob("shard-*.json")}
    before[w / "halueval_qa_tf" / "attribution" / "groundedness.json"] = (
        (w / "halueval_qa_tf" / "attribution" / "groundedness.json").stat().st_mtime_ns
    )
    res2 = run_eval(cfg)
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert res2["metrics"] == res["metrics"] and res2["alpha"] == res["alpha"]
    # the report's answers were scored first; a partial report leaves unscored train answers
    # out and says so, and refuses when a length-matched test answer is missing
    plan = json.loads((w / "plan.json").read_text())
    first = json.loads((w / "first-halueval_qa_tf.json").read_text())
    assert first == rep.report_ids(w, "halueval_qa_tf", plan)
    tf = w / "halueval_qa_tf"
    payload = read_scores(tf)
    at = rep.answer_table(tf)
    side = {i: plan["question_split"][q] for i, q in zip(at["id"], at["question_id"], strict=True)}
    train = [i for i in first if side[i] == "train"]
    assert train, first
    for i in train[:2]:
        del payload["scores"][i]
    write_scores(tf, payload)
    monkeypatch.setattr(rep, "MIN_LR_CLASS", 1)  # the tiny train side is small
    part = run_eval(replace(cfg, partial=True))
    assert part["partial"] and part["scored"]["halueval_qa_tf"] == {"scored": 22, "traces": 24}
    assert part["metrics"]["halueval_qa_tf"]["groundedness_lr_fitted_on"] == "train"
    rows = list(csv.reader((w / "report" / "groundedness_scores.csv").open()))
    assert len(rows) == 1 + 22 + 24
    # no train answer scored yet: groundedness_lr is fitted on the scored validation answers
    # (never on test) and the JSON says so
    for i in train[2:]:
        del payload["scores"][i]
    write_scores(tf, payload)
    part = run_eval(replace(cfg, partial=True))
    assert part["metrics"]["halueval_qa_tf"]["groundedness_lr_fitted_on"] == "val"
    # the generated run's test answers not scored yet: the partial report leaves that run out
    # and says why; the teacher-forced run must be complete
    gen = w / "halueval_qa"
    gpay = read_scores(gen)
    gat = rep.answer_table(gen)
    gtest = next(
        i
        for i, q in zip(gat["id"], gat["question_id"], strict=True)
        if plan["question_split"][q] == "test" and plan["runs"]["halueval_qa"]["pair"][i] >= 0
    )
    del gpay["scores"][gtest]
    write_scores(gen, gpay)
    part = run_eval(replace(cfg, partial=True))
    assert list(part["not_reported"]) == ["halueval_qa"] and list(part["metrics"]) == [
        "halueval_qa_tf"
    ]
    test = next(i for i in first if side[i] == "test")
    del payload["scores"][test]
    write_scores(tf, payload)
    with pytest.raises(ValueError, match="length-matched test / val traces"):
        run_eval(replace(cfg, partial=True))
