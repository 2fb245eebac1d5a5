"""Statistic ``groundedness``: reads RUN/attribution/groundedness.json, NaN when unscored,
its cache follows the file."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np

from hallugraph.features import compute_stats
from hallugraph.features.groundedness import (
    empty_scores,
    read_scores,
    scores_path,
    write_scores,
)
from hallugraph.store import TraceStore


def test_scores_file_roundtrip(tmp_path):
    assert read_scores(tmp_path) == empty_scores()
    payload = {
        "format_version": 1,
        "settings": {"max_feature_nodes": 64},
        "scores": {"a": {"gctx": 0.5, "rs": float("nan"), "cs": 0.25}},
    }
    path = write_scores(tmp_path, payload)
    assert path == scores_path(tmp_path) == tmp_path / "attribution" / "groundedness.json"
    assert json.loads(path.read_text())["scores"]["a"]["rs"] is None  # strict JSON: null
    back = read_scores(tmp_path)
    assert back["scores"]["a"]["gctx"] == 0.5 and math.isnan(back["scores"]["a"]["rs"])
    assert back["settings"] == {"max_feature_nodes": 64}
    assert [p.name for p in path.parent.iterdir()] == ["groundedness.json"]  # no temp left


def test_statistic_reads_scores_and_cache_follows_them(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    v = compute_stats(run, ["groundedness"], progress=False)["groundedness"]
    assert v.shape == (24, 4) and np.isnan(v[:, :3]).all() and (v[:, 3] == 0).all()
    rows = TraceStore(run).manifest
    scores = {
        r["question_id"]: {"gctx": 0.1 * i, "rs": 0.5, "cs": 0.9} for i, r in enumerate(rows[:3])
    }
    scores[rows[2]["question_id"]]["rs"] = float("nan")
    write_scores(run, {"format_version": 1, "settings": None, "scores": scores})
    v = compute_stats(run, ["groundedness"], progress=False)["groundedness"]
    assert v[:3, 3].tolist() == [1, 1, 1] and (v[3:, 3] == 0).all()
    np.testing.assert_allclose(v[:3, 0], [0.0, 0.1, 0.2], rtol=1e-6)
    assert np.isnan(v[2, 1]) and v[1, 2] == np.float32(0.9)
    # cached per shard, and recomputed when the scores change
    assert (run / "stats" / "groundedness").is_dir()
    scores[rows[0]["question_id"]]["gctx"] = 0.75
    write_scores(run, {"format_version": 1, "settings": None, "scores": scores})
    v = compute_stats(run, ["groundedness"], progress=False)["groundedness"]
    assert v[0, 0] == 0.75
