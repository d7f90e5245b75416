"""JSON error responses, one handler per error type, never a stack trace to the client.

REST routes answer ``{"error": {"code": ..., "message": ...}}``; Open Inference Protocol routes
(``/v2/...``) answer ``{"error": "<message>"}`` as that protocol defines.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from adapters import AdapterError, InputError
from adapters.errors import describe_validation
from adapters.online import DivergenceError
from tta_server.codec.errors import ApiError
from tta_server.streams import (
    DamagedSnapshotError,
    InvalidStreamIdError,
    MemoryBudgetError,
    MissingSnapshotError,
    SnapshotDeleteError,
    SnapshotError,
    SnapshotsDisabledError,
    StepTooLargeError,
    StreamExistsError,
    StreamLimitError,
    StreamOwnedError,
    UnknownStreamError,
)
from tta_server.streams.feedback import FeedbackError

__all__ = ["ApiError", "error_body", "install_error_handlers"]
logger = logging.getLogger("tta_server")
RETRY = {"Retry-After": "30"}
STREAM_ID_FIELDS = ("stream_id", "x-stream-id")


def error_body(path: str, code: str, message: str) -> dict[str, Any]:
    if path.startswith("/v2"):
        return {"error": message}
    return {"error": {"code": code, "message": message}}


def _mapping(exc: Exception) -> tuple[int, str, str, dict[str, str] | None]:
    """(status, code, message, headers) of an exception raised while serving a request."""
    table: list[tuple[type[Exception], int, str]] = [
        (InvalidStreamIdError, 400, "invalid_stream_id"),
        (UnknownStreamError, 404, "unknown_stream"),
        (StreamExistsError, 409, "stream_exists"),
        (SnapshotsDisabledError, 409, "snapshots_disabled"),
        (MissingSnapshotError, 404, "snapshot_missing"),
        (DamagedSnapshotError, 409, "snapshot_damaged"),
        (SnapshotError, 409, "snapshot_error"),
        (DivergenceError, 422, "step_diverged"),
        (StepTooLargeError, 413, "step_exceeds_memory_budget"),
        (InputError, 422, "invalid_input"),
        (AdapterError, 400, "adapter_error"),
    ]
    if isinstance(exc, ApiError):
        return exc.status, exc.code, exc.message, exc.headers
    if isinstance(exc, FeedbackError):
        return exc.status, exc.code, str(exc), None
    if isinstance(exc, SnapshotDeleteError):  # the disk refused: nothing changed, retry later
        return 503, "snapshot_delete_failed", str(exc), RETRY
    if isinstance(exc, StreamLimitError):  # no room now: retry once others finish or go idle
        if isinstance(exc, StreamOwnedError):
            return 503, "stream_owned_elsewhere", str(exc), RETRY
        return 503, "memory_budget" if isinstance(exc, MemoryBudgetError) else "stream_limit", str(exc), RETRY
    for kind, status, code in table:
        if isinstance(exc, kind):
            message = f"no stream {exc.args[0]!r}" if isinstance(exc, UnknownStreamError) else str(exc)
            return status, code, message, None
    logger.error("unhandled error on a request", exc_info=exc)
    return 500, "internal_error", "internal error; the server log has the details", None


def install_error_handlers(app: FastAPI) -> None:
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        status, code, message, headers = _mapping(exc)
        return JSONResponse(error_body(request.url.path, code, message), status_code=status, headers=headers)

    kinds: tuple[type[Exception], ...] = (
        ApiError,
        StreamLimitError,
        StepTooLargeError,
        InvalidStreamIdError,
        UnknownStreamError,
    )
    for kind in (*kinds, StreamExistsError, SnapshotError, AdapterError, FeedbackError, Exception):
        app.add_exception_handler(kind, handle)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        details = describe_validation(errors)
        if any(e["loc"] and str(e["loc"][-1]).lower() in STREAM_ID_FIELDS and e["type"] != "missing" for e in errors):
            message = f"invalid stream id ({details[:300]}); see the stream-id grammar in the API docs"
            return JSONResponse(error_body(request.url.path, "invalid_stream_id", message), status_code=400)
        return JSONResponse(error_body(request.url.path, "invalid_request", details[:2000]), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, ApiError):  # FastAPI's body parsing turns every error into a 400
            return await handle(request, exc.__cause__)  # a body over its limit or stalled: 413 or 408
        body = error_body(request.url.path, "http_error", str(exc.detail))
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))
