"""Viewer fixtures: a copy of the tiny run with evaluate outputs and one attribution graph made
by the attribution command (circuit-tracer on the tiny Llama, random transcoders), and the app
served by uvicorn on a free local port."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the viewer needs the `serve` extra (fastapi, uvicorn)")
pytest.importorskip("uvicorn", reason="the viewer needs the `serve` extra (fastapi, uvicorn)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def view_run(tiny_run, tiny_lm, tmp_path_factory) -> Path:
    """The tiny run copied, evaluated (label-free detectors) and, when circuit-tracer is
    installed, with one attribution graph (trace 1) in RUN/attribution/graphs."""
    from hallugraph.cli import main

    root = tmp_path_factory.mktemp("view")
    run = root / "tiny"
    shutil.copytree(tiny_run, run)
    dets = "perplexity,min_logprob,mean_entropy,answer_length,lookback_lens"
    argv = ["evaluate", str(run), "--out", str(root / "eval"), "--detectors", dets]
    assert main([*argv, "--bootstrap", "50", "--no-progress"]) == 0
    try:
        import circuit_tracer  # noqa: F401
    except ImportError:
        return run
    import torch

    from hallugraph.attribution.transcoders import random_transcoder_set

    model_dir = root / "tiny-llama"
    tiny_lm.model.save_pretrained(model_dir)
    tiny_lm.tokenizer.save_pretrained(model_dir)
    tdir = random_transcoder_set(root / "tc", 2, 32, 48, jumprelu_layers=(1,), scan="tiny-tc")
    threads = torch.get_num_threads()
    argv = ["attribution", str(run), "--index", "1", "--transcoders", str(tdir)]
    argv += ["--model", str(model_dir), "--device", "cpu", "--max-feature-nodes", "16"]
    try:
        assert main([*argv, "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    return run


@pytest.fixture(scope="session")
def server(view_run):
    """``http://127.0.0.1:PORT`` of the viewer serving ``view_run``."""
    import uvicorn

    from hallugraph.viewer.app import create_app
    from hallugraph.viewer.data import load_runs

    app = create_app(load_runs([view_run]))
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the viewer did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)
