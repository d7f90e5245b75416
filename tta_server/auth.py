"""Optional bearer-token authentication, declared per route as a dependency.

With ``api_tokens`` (or ``admin_tokens``) set, every route but the health checks needs
``Authorization: Bearer <token>`` (401 otherwise). Routes and requests that change streams
(create, reset, delete, snapshot, restore, and OIP ``sequence_start``/``sequence_end``) need one of
``admin_tokens`` when those are set (403 for other valid tokens). Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Literal

from fastapi import Depends, Request

from tta_server.codec.errors import ApiError
from tta_server.deps import SettingsDep
from tta_server.settings import Settings

Role = Literal["open", "api", "admin"]


def _matches(token: str, allowed: list[str]) -> bool:
    return any(hmac.compare_digest(token.encode(), candidate.encode()) for candidate in allowed)


def role_of(request: Request, settings: Settings) -> Role:
    """``open`` without tokens configured; else the bearer token's role, or 401."""
    if not settings.api_tokens and not settings.admin_tokens:
        return "open"
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token:
        if _matches(token, settings.admin_tokens):
            return "admin"
        if _matches(token, settings.api_tokens):
            return "api" if settings.admin_tokens else "admin"  # without admin tokens every token may change streams
    raise ApiError(
        401,
        "unauthorized",
        "send Authorization: Bearer <token> (see the api_tokens setting)",
        {"WWW-Authenticate": "Bearer"},
    )


def require_admin_role(role: Role, what: str) -> None:
    if role == "api":
        raise ApiError(403, "forbidden", f"{what} changes streams and needs an admin token")


async def api_access(request: Request, settings: SettingsDep) -> Role:
    return role_of(request, settings)


async def admin_access(request: Request, settings: SettingsDep) -> Role:
    role = role_of(request, settings)
    require_admin_role(role, f"{request.method} {request.url.path}")
    return role


ApiRole = Annotated[Role, Depends(api_access)]  # for a route that needs to know the role
# declared on routers and routes; they run before any other dependency, so 401/403 come first
API = [Depends(api_access)]
ADMIN = [Depends(admin_access)]
