"""Optional bearer-token authentication.

With ``api_tokens`` set, every route but the health checks needs ``Authorization: Bearer <token>``
(401 otherwise). Routes that change streams (create, reset, delete) need one of ``admin_tokens``
when those are set (403 for other valid tokens). Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from tta_server.errors import error_body
from tta_server.settings import Settings

OPEN_PREFIXES = ("/health/", "/v2/health/")


def _matches(token: str, allowed: list[str]) -> bool:
    return any(hmac.compare_digest(token.encode(), candidate.encode()) for candidate in allowed)


def is_admin_route(method: str, path: str) -> bool:
    return method in ("POST", "DELETE") and path.startswith("/v1/streams")


def install_auth(app: FastAPI, settings: Settings) -> None:
    if not settings.api_tokens and not settings.admin_tokens:
        return
    api_tokens = list(settings.api_tokens) + list(settings.admin_tokens)

    @app.middleware("http")
    async def _bearer(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        path = request.url.path
        if path.startswith(OPEN_PREFIXES):
            return await call_next(request)
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token or not _matches(token, api_tokens):
            return JSONResponse(
                error_body("unauthorized", "send Authorization: Bearer <token> (see the api_tokens setting)"),
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        if (
            settings.admin_tokens
            and is_admin_route(request.method, path)
            and not _matches(token, settings.admin_tokens)
        ):
            return JSONResponse(
                error_body("forbidden", f"{request.method} {path} changes streams and needs an admin token"),
                status_code=403,
            )
        return await call_next(request)
