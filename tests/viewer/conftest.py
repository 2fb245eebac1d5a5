"""Viewer fixtures: a copy of the tiny run with evaluate outputs and one attribution graph made
by the attribution command (circuit-tracer on the tiny Llama, random transcoders), and the app
served by uvicorn on a free local port."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator, Sequence
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


@contextlib.contextmanager
def serve_runs(runs: Sequence[Path], eval_dirs: Sequence[Path] = ()) -> Iterator[str]:
    """The viewer of ``runs`` served by uvicorn in a thread: yields ``http://127.0.0.1:PORT``."""
    import uvicorn

    from hallugraph.viewer.app import create_app
    from hallugraph.viewer.data import load_runs

    app = create_app(load_runs(runs, eval_dirs))
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the viewer did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def server(view_run):
    """``http://127.0.0.1:PORT`` of the viewer serving ``view_run``."""
    with serve_runs([view_run]) as url:
        yield url


CHROMIUM = os.environ.get("HALLUGRAPH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium (Debian's ``chromium``) driven by Playwright; skips, saying why,
    when either is missing."""
    if not Path(CHROMIUM).exists():
        pytest.skip(
            f"no Chromium at {CHROMIUM}: the viewer's browser tests need Debian's `chromium` "
            "(apt-get install chromium; .ci/run installs it) or $HALLUGRAPH_CHROMIUM"
        )
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the browser tests need the `browser` extra (playwright)"
    )
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


class Watch:
    """Console errors, page errors and every request a page makes (non-local ones aborted)."""

    def __init__(self, page, base: str) -> None:
        self.base = base
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.outside: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.route("**/*", self._route)

    def _route(self, route) -> None:
        url = route.request.url
        self.requests.append(url)
        if url.startswith(self.base + "/"):
            route.continue_()
        else:
            self.outside.append(url)
            route.abort()

    def check(self) -> None:
        assert not self.errors, self.errors
        assert not self.outside, self.outside
        assert self.requests and all(u.startswith("http://127.0.0.1:") for u in self.requests)


@pytest.fixture(scope="session")
def open_page(browser):
    """``open_page(base, width, height)``: a context manager giving a fresh page (its own
    browser context) and its :class:`Watch`."""

    @contextlib.contextmanager
    def _open(base: str, width: int = 1400, height: int = 900):
        ctx = browser.new_context(viewport={"width": width, "height": height})
        pg = ctx.new_page()
        pg.set_default_timeout(60000)  # generous: shared CI machines stall
        try:
            yield pg, Watch(pg, base)
        finally:
            ctx.close()

    return _open


@pytest.fixture(scope="session")
def serve():
    """``serve(runs, eval_dirs)``: :func:`serve_runs` for tests that bring their own runs."""
    return serve_runs
