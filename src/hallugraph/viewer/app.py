"""The viewer's web app (FastAPI): HTML pages from ``templates/``, scripts and styles from
``static/`` (everything ships in the package: no request leaves the machine), JSON under
``/api``. Pages fetch only what they show (a page of the trace list, one trace, one layer).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hallugraph.io import jsonable
from hallugraph.viewer.attribution import GraphFormatError, read_attribution_graph
from hallugraph.viewer.data import RunView

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
TEMPLATES = HERE / "templates"
PAGES = ("runs", "traces", "trace", "graph", "attribution")

__all__ = ["create_app"]


def _page(name: str) -> str:
    return (TEMPLATES / f"{name}.html").read_text(encoding="utf-8")


def create_app(runs: Sequence[RunView]) -> Any:
    """A FastAPI app serving ``runs`` (needs the ``serve`` extra: fastapi + uvicorn)."""
    from fastapi import FastAPI, HTTPException, Query
    from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
    from fastapi.staticfiles import StaticFiles

    app = FastAPI(title="hallugraph view", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def run_of(r: int) -> RunView:
        if not 0 <= r < len(runs):
            raise HTTPException(404, f"run {r} not found: {len(runs)} run(s) are open")
        return runs[r]

    def ok(obj: Any) -> JSONResponse:
        return JSONResponse(jsonable(obj))

    def guard(fn: Any, *args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except (IndexError, KeyError) as err:
            raise HTTPException(404, str(err).strip("'\"")) from err
        except (ValueError, GraphFormatError) as err:
            raise HTTPException(400, str(err)) from err

    # ---------------------------------------------------------------- pages
    @app.get("/", response_class=HTMLResponse)
    def home() -> str:
        return _page("runs")

    @app.get("/favicon.ico")
    def favicon() -> RedirectResponse:
        return RedirectResponse("/static/favicon.svg")

    @app.get("/run/{r}/traces", response_class=HTMLResponse)
    def traces_page(r: int) -> str:
        run_of(r)
        return _page("traces")

    @app.get("/run/{r}/trace/{i}", response_class=HTMLResponse)
    def trace_page(r: int, i: int) -> str:
        guard(run_of(r).check_index, i)
        return _page("trace")

    @app.get("/run/{r}/trace/{i}/graph", response_class=HTMLResponse)
    def graph_page(r: int, i: int) -> str:
        guard(run_of(r).check_index, i)
        return _page("graph")

    @app.get("/run/{r}/attribution/{slug}", response_class=HTMLResponse)
    def attribution_page(r: int, slug: str) -> str:
        guard(run_of(r).graph_file, slug)
        return _page("attribution")

    # ---------------------------------------------------------------- API
    @app.get("/api/runs")
    def api_runs() -> JSONResponse:
        return ok([dict(run.summary(), id=k) for k, run in enumerate(runs)])

    @app.get("/api/runs/{r}/eval")
    def api_eval(r: int) -> JSONResponse:
        return ok(guard(run_of(r).evaluations))

    @app.get("/api/runs/{r}/roc")
    def api_roc(r: int) -> JSONResponse:
        return ok(guard(run_of(r).roc))

    @app.get("/api/runs/{r}/traces")
    def api_traces(
        r: int,
        offset: int = 0,
        limit: int = 50,
        sort: str = "index",
        desc: bool = False,
        q: str = "",
        label: str = "",
    ) -> JSONResponse:
        run = run_of(r)
        return ok(guard(run.traces, offset, limit, sort, desc, q, label))

    @app.get("/api/runs/{r}/traces/{i}")
    def api_trace(r: int, i: int) -> JSONResponse:
        return ok(guard(run_of(r).trace_meta, i))

    @app.get("/api/runs/{r}/traces/{i}/tokens")
    def api_tokens(r: int, i: int) -> JSONResponse:
        return ok(guard(run_of(r).tokens, i))

    @app.get("/api/runs/{r}/traces/{i}/graph")
    def api_graph(
        r: int,
        i: int,
        layer: int = 0,
        head: int | None = None,
        top_k: int | None = Query(None, ge=1),
        threshold: float | None = None,
        hide_sink: bool = False,
    ) -> JSONResponse:
        run = run_of(r)
        guard(run.check_index, i)
        if not run.has_tensors(i):
            raise HTTPException(
                409,
                f"trace {i} of {run.name} has no attention maps (extracted with "
                "--keep-tensors no); re-extract with --keep-tensors yes to see its graph",
            )
        return ok(guard(run.graph, i, layer, head, top_k, threshold, hide_sink))

    @app.get("/api/runs/{r}/graphs")
    def api_graphs(r: int) -> JSONResponse:
        return ok(run_of(r).graphs())

    @app.get("/api/runs/{r}/graphs/{slug}")
    def api_attribution(r: int, slug: str) -> JSONResponse:
        path, scores = guard(run_of(r).graph_file, slug)
        return ok(guard(read_attribution_graph, path, scores))

    return app
