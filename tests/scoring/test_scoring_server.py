"""``hallugraph serve`` started for real (a subprocess on 127.0.0.1, a free port), queried
over HTTP: correct JSON, a 4xx with a JSON error per bad input, still serving afterwards.
And ``hallugraph train`` / ``score`` from the command line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from scoring_fixtures import scoring_env  # noqa: F401 - fixture

from hallugraph.cli import main
from hallugraph.scoring import Scorer

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture(scope="module")
def env(scoring_env):  # noqa: F811
    return scoring_env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, body: bytes | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture(scope="module")
def server(env, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    environ = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "hallugraph", "serve", str(env.bundle), "--port", str(port)]
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=environ)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 900  # a busy machine imports torch slowly
        while True:
            try:
                if _request(base + "/healthz")[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"server did not start:\n{log.read_text()}")
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_server_scores_refuses_bad_input_and_keeps_serving(env, server, tiny_lm):
    ex = env.examples[1]
    good = {"question": ex.question, "answer": ex.answer, "context": ex.context}
    want = Scorer.load(env.bundle, lm=tiny_lm).score(**good)

    status, body = _request(server + "/v1/score", json.dumps(good).encode())
    assert status == 200
    assert body["hallucination_score"] == pytest.approx(want.hallucination_score, abs=1e-12)
    assert body["hallucinated"] == want.hallucinated and body["threshold"] == want.threshold
    assert body["detector"] == "lookback_lens" and body["model"] == str(env.model_dir)

    status, meta = _request(server + "/v1/detector")
    assert status == 200 and meta["detector"]["name"] == "lookback_lens"
    assert meta["threshold"] == want.threshold and "state" not in meta["detector"]

    status, batch = _request(
        server + "/v1/score/batch", json.dumps({"records": [{**good, "id": "a"}, good]}).encode()
    )
    assert status == 200 and [r.get("id") for r in batch["results"]] == ["a", None]
    assert batch["results"][1]["hallucination_score"] == body["hallucination_score"]

    bad = [
        (b"{not json", 400, "malformed JSON"),
        (b"[1, 2]", 422, "JSON object"),
        (json.dumps({**good, "answer": ""}).encode(), 422, "answer is empty"),
        (json.dumps({**good, "context": None}).encode(), 422, "context"),
        (json.dumps({**good, "answer": "word " * 600}).encode(), 422, "at most"),
        (json.dumps({**good, "temperature": 1}).encode(), 422, "unknown field"),
        (json.dumps({"question": "q"}).encode(), 422, "answer is empty"),
    ]
    for payload, code, message in bad:
        status, err = _request(server + "/v1/score", payload)
        assert status == code and message in err["error"], (payload[:40], status, err)
    status, err = _request(server + "/v1/score/batch", json.dumps({"records": []}).encode())
    assert status == 422 and "records" in err["error"]

    status, again = _request(server + "/v1/score", json.dumps(good).encode())
    assert status == 200 and again == body


def test_cli_train_and_score(env, tmp_path, capsys):
    out = tmp_path / "det"
    assert main(["train", "perplexity", str(env.run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "validation AUROC" in printed and "threshold" in printed
    assert (out / "detector.json").is_file() and (out / "weights.safetensors").is_file()

    result = tmp_path / "out.jsonl"
    assert main(["score", str(out), "--input", str(env.records), "--output", str(result)]) == 0
    lines = [json.loads(line) for line in result.read_text().splitlines()]
    inputs = [json.loads(line) for line in env.records.read_text().splitlines()]
    assert [r["id"] for r in lines] == [r["id"] for r in inputs]
    scorer = Scorer.load(out)
    for r in lines:
        v = scorer.score(r["question"], r["answer"], r["context"])
        assert r["hallucination_score"] == v.hallucination_score
        assert r["hallucinated"] == v.hallucinated and r["threshold"] == v.threshold

    ex = env.examples[0]
    args = ["score", str(out), "--question", ex.question, "--answer", ex.answer]
    assert main([*args, "--context", ex.context]) == 0
    single = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert single["hallucination_score"] == lines[0]["hallucination_score"]

    assert main(["score", str(out), "--question", "q", "--answer", "", "--context", "c"]) == 2
    assert "answer is empty" in capsys.readouterr().err
    broken = tmp_path / "broken.jsonl"
    broken.write_text(env.records.read_text() + '{"question": "q", "context": "c"}\n')
    kept = tmp_path / "kept.jsonl"
    kept.write_text("earlier results\n")
    assert main(["score", str(out), "--input", str(broken), "--output", str(kept)]) == 2
    assert f"{broken}:4" in capsys.readouterr().err
    assert kept.read_text() == "earlier results\n"  # nothing written on error


def test_train_from_your_own_labeled_file(env, tmp_path, capsys):
    data = tmp_path / "mine.csv"
    rows = ["question,answer,context,label"]
    for e in env.examples[:12]:
        rows.append(f'"{e.question}","{e.answer}","{e.context}",{e.meta["given_label"]}')
    data.write_text("\n".join(rows) + "\n")
    out, run = tmp_path / "det", tmp_path / "run"
    argv = ["train", "lookback_lens", "--data", str(data), "--run", str(run)]
    assert main([*argv, "--model", str(env.model_dir), "--out", str(out)]) == 0
    assert "12 traces labeled" in capsys.readouterr().out
    scorer = Scorer.load(out)
    assert scorer.meta["runs"][0]["n"] == 12 and scorer.meta["prompt"]["context"] is True

    data.write_text("question,answer,label\nq,a,maybe\n")
    assert main([*argv, "--model", str(env.model_dir), "--out", str(tmp_path / "x")]) == 2
    assert "label must be 1" in capsys.readouterr().err
