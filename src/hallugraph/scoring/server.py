"""``hallugraph serve DIR``: a trained detector over HTTP (FastAPI + uvicorn, extra ``serve``).

Endpoints (JSON in, JSON out):

* ``POST /v1/score`` ``{question, answer, context?}`` -> ``{hallucination_score, hallucinated,
  threshold, detector, model, tokens?}``;
* ``POST /v1/score/batch`` ``{"records": [{question, answer, context?, id?}, ...]}`` ->
  ``{"results": [...]}`` (each result carries the record's ``id`` when it has one);
* ``GET /v1/detector``: the bundle's metadata (training runs, threshold, model, versions);
* ``GET /healthz``: ``{"status": "ok", ...}``.

The model is loaded once at start. Requests are scored one at a time (a lock around the model:
one answer's attention maps are large, and the scorer keeps one decoder). Bad input gets a 4xx
with ``{"error": message}`` — malformed JSON 400, a body that is not an object or a field that
cannot be scored 422, a body over :data:`MAX_BODY_BYTES` 413 — and the server keeps serving.
"""

from __future__ import annotations

import json
from typing import Any

from hallugraph.scoring.scorer import Scorer, ScoringError

try:  # module level: FastAPI resolves the endpoints' (string) annotations in these globals
    from fastapi import FastAPI, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import JSONResponse
except ImportError as _err:  # pragma: no cover - the extra is installed by make test
    raise ImportError(
        "hallugraph serve needs FastAPI and uvicorn: pip install 'hallugraph[serve]'"
    ) from _err

MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_BATCH = 1024


def _result(v: Any, record: dict[str, Any]) -> dict[str, Any]:
    out = v.to_dict()
    out.pop("answer", None)
    if "id" in record:
        out = {"id": record["id"], **out}
    return out


def create_app(scorer: Scorer) -> Any:
    """The FastAPI application serving ``scorer``."""
    app = FastAPI(title="hallugraph", description="Flag hallucinated answers.")

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse(status_code=status, content={"error": message})

    async def body_of(request: Request) -> Any:
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise _HTTPError(413, f"request body over {MAX_BODY_BYTES} bytes")
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise _HTTPError(400, f"malformed JSON: {err}") from None

    async def score_records(records: list[Any]) -> list[dict[str, Any]]:
        verdicts = await run_in_threadpool(scorer.score_batch, records, 16, False)
        return [_result(v, r) for v, r in zip(verdicts, records, strict=True)]

    @app.exception_handler(_HTTPError)
    async def _http_error(request: Request, exc: _HTTPError) -> JSONResponse:
        return error(exc.status, exc.message)

    @app.exception_handler(ScoringError)
    async def _scoring_error(request: Request, exc: ScoringError) -> JSONResponse:
        return error(422, str(exc))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        return error(500, f"{type(exc).__name__}: {exc}")

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "detector": scorer.name, "model": scorer.meta["model"]["name"]}

    @app.get("/v1/detector")
    async def detector() -> dict[str, Any]:
        return scorer.describe()

    @app.post("/v1/score")
    async def score(request: Request) -> dict[str, Any]:
        body = await body_of(request)
        if not isinstance(body, dict):
            raise _HTTPError(422, "the body must be a JSON object {question, answer, context?}")
        unknown = sorted(set(body) - {"question", "answer", "context", "id"})
        if unknown:
            raise _HTTPError(422, f"unknown field(s) {', '.join(unknown)}")
        try:
            return (await score_records([body]))[0]
        except ScoringError as err:  # one record: no "record 0:" prefix
            raise ScoringError(str(err).removeprefix("record 0: ")) from None

    @app.post("/v1/score/batch")
    async def score_batch(request: Request) -> dict[str, Any]:
        body = await body_of(request)
        records = body.get("records") if isinstance(body, dict) else None
        if not isinstance(records, list) or not records:
            raise _HTTPError(422, 'the body must be {"records": [{question, answer, ...}, ...]}')
        if len(records) > MAX_BATCH:
            raise _HTTPError(413, f"{len(records)} records; at most {MAX_BATCH} per request")
        return {"results": await score_records(records)}

    return app


class _HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def serve(scorer: Scorer, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the server until interrupted."""
    import uvicorn

    uvicorn.run(create_app(scorer), host=host, port=port, log_level="info", workers=1)
