"""The core install (no circuit-tracer, no nnsight) runs ``hallugraph groundedness`` and
``hallugraph attribution`` with hallugraph's engine: a subprocess whose imports of
circuit_tracer / nnsight / transformer_lens fail scores a run, writes the scores JSON and the
PNG, and refuses ``--engine circuit-tracer`` with a clear message."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hallugraph.attribution.engine import AttributionEngine
from hallugraph.attribution.run import AttributionSettings, score_trace
from hallugraph.attribution.transcoders import random_transcoder_set
from hallugraph.features.groundedness import read_scores
from hallugraph.store import TraceStore

BLOCKED = ("circuit_tracer", "nnsight", "transformer_lens")

SCRIPT = """
import importlib.abc, json, sys
BLOCKED = {blocked!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"blocked in this test: {{name}}")
        return None
sys.meta_path.insert(0, Block())
from hallugraph.cli import main
rcs = [main(argv) for argv in json.loads(sys.argv[1])]
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print("RESULT", json.dumps({{"rcs": rcs, "leaked": leaked}}))
"""


def test_groundedness_and_attribution_without_circuit_tracer(tiny_lm, tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    model_dir = tmp_path / "tiny-llama"
    tiny_lm.model.save_pretrained(model_dir)
    tiny_lm.tokenizer.save_pretrained(model_dir)
    tdir = random_transcoder_set(tmp_path / "tc", 2, 32, 48, jumprelu_layers=(1,))
    common = ["--transcoders", str(tdir), "--model", str(model_dir), "--device", "cpu"]
    common += ["--max-feature-nodes", "12", "--threads", "1"]
    out, png = tmp_path / "graphs", tmp_path / "g.png"
    argvs = [
        ["groundedness", str(run), *common, "--limit", "2", "--no-progress"],
        ["attribution", str(run), "--index", "0", "--out", str(out), "--png", str(png), *common],
        ["groundedness", str(run), *common, "--engine", "circuit-tracer", "--overwrite"],
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(blocked=BLOCKED), json.dumps(argvs)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert line, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(line[0][len("RESULT ") :])
    assert result == {"rcs": [0, 0, 2], "leaked": []}, proc.stderr[-3000:]
    assert "need circuit-tracer" in proc.stderr
    assert "viewer JSON not written" in proc.stdout

    payload = read_scores(run)
    assert len(payload["scores"]) == 2 and payload["settings"]["engine"] == "hallugraph"
    rows = TraceStore(run).manifest
    slug = f"{rows[0]['question_id']}_a0"
    info = json.loads((out / f"{slug}.scores.json").read_text())
    assert not (out / f"{slug}.json").exists()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the same numbers as the engine in this process
    torch.set_num_threads(1)
    engine = AttributionEngine.from_pretrained(model_dir, tdir)
    settings = AttributionSettings(max_feature_nodes=12)
    for row in rows[:2]:
        rec, stored = score_trace(engine, row, settings), payload["scores"][row["question_id"]]
        for k in ("gctx", "rs", "cs"):
            assert stored[k] == pytest.approx(rec[k], abs=1e-9)
    assert info["scores"]["gctx"] == pytest.approx(
        payload["scores"][rows[0]["question_id"]]["gctx"]
    )
