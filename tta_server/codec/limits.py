"""Body limits enforced while the body streams in (ASGI middleware), before any route buffers it.

A declared ``Content-Length`` over the route's limit is refused at once; a chunked body is counted
as it arrives and refused as soon as it passes the limit, so one request never holds more than its
limit (plus one chunk). Image and tensor routes (``large_body(path)``) may take ``max_bytes``; the
others, whose JSON bodies are parsed on the event loop (about 25 ms per MiB: a 29 MiB feedback body
stalled every request for 0.7 s), take ``max_json_bytes``. A body that stalls for
``read_timeout_s`` between chunks is refused with 408, so a slow upload cannot hold a worker or a
graceful shutdown without bound; so is one not complete ``body_timeout_s`` after its request began,
so a client that uploads most of a large body quickly and then trickles a byte now and then cannot
keep those bytes in flight (below) for ever: holding the room takes uploading it again every
``body_timeout_s``.

The bodies of all requests in flight together stay within ``InFlightBodies.limit`` bytes
(``max_inflight_request_bytes``): each chunk is counted as the route reads it, and a request's
bytes are given back when its answer is sent. A request whose declared ``Content-Length`` does not
fit beside the bytes held now gets 503 ``overloaded`` with ``Retry-After`` at once, before its body
is read; one whose chunks no longer fit gets it when they arrive. A burst of large uploads (or of
retries after an outage) is shed instead of buffered until the process runs out of memory, while
small requests keep passing. Only bytes received count, never a declared length: connections that
declare large bodies and then send nothing hold no room.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tta_server.codec.errors import ApiError

RETRY_OVERLOADED = {"Retry-After": "1"}


class InFlightBodies:
    """The body bytes held by the requests in flight, and the requests refused for want of room."""

    def __init__(self, limit: int | None) -> None:
        self.limit, self.held, self.refused = limit, 0, 0

    def fits(self, size: int) -> bool:
        return self.limit is None or self.held + size <= self.limit

    def take(self, size: int) -> bool:
        if not self.fits(size):
            return False
        self.held += size
        return True

    def refuse(self, size: int) -> ApiError:
        """The 503 for a request that does not fit, counted."""
        self.refused += 1
        message = (
            f"overloaded: the requests in flight hold {self.held} B of bodies and this one needs {size} B more, "
            f"beyond max_inflight_request_bytes={self.limit}; retry shortly"
        )
        return ApiError(503, "overloaded", message, RETRY_OVERLOADED)

    def give_back(self, size: int) -> None:
        self.held -= size


class BodyLimitMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        read_timeout_s: float,
        error_body: Callable[[str, str, str], Any],
        max_json_bytes: int | None = None,
        large_body: Callable[[str], bool] = lambda path: True,
        in_flight: InFlightBodies | None = None,
        body_timeout_s: float | None = None,
    ) -> None:
        self.app, self.max_bytes, self.read_timeout_s, self.error_body = app, max_bytes, read_timeout_s, error_body
        self.body_timeout_s = body_timeout_s
        self.max_json_bytes = max_bytes if max_json_bytes is None else min(max_json_bytes, max_bytes)
        self.large_body = large_body
        self.in_flight = in_flight or InFlightBodies(None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.large_body(scope["path"]):
            limit, setting = self.max_bytes, "max_request_bytes"
        else:
            limit, setting = self.max_json_bytes, "max_json_request_bytes"
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await self._refuse(scope, send, 400, "invalid_request", "Content-Length must be a decimal integer")
                return
            if int(declared) > limit:
                message = f"request is {int(declared)} bytes; {setting}={limit} on this route"
                await self._refuse(scope, send, 413, "request_too_large", message)
                return
        in_flight = self.in_flight
        if declared is not None and not in_flight.fits(int(declared)):  # clearly no room: before the body
            refused = in_flight.refuse(int(declared))
            await self._refuse(scope, send, refused.status, refused.code, refused.message, refused.headers)
            return
        received, complete = 0, False
        loop = asyncio.get_running_loop()
        deadline = None if self.body_timeout_s is None else loop.time() + self.body_timeout_s

        async def limited_receive() -> Message:
            nonlocal received, complete
            if complete:  # after the body: waiting for a disconnect is not a stalled upload
                return await receive()
            wait, stalled = self.read_timeout_s, f"no body data for {self.read_timeout_s} s"
            if deadline is not None and deadline - loop.time() < wait:
                wait, stalled = max(0.0, deadline - loop.time()), f"body not complete within {self.body_timeout_s} s"
            try:
                message = await asyncio.wait_for(receive(), wait)
            except TimeoutError:
                raise ApiError(408, "request_timeout", stalled) from None
            if message["type"] == "http.request":
                chunk = len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received + chunk > limit:
                    raise ApiError(413, "request_too_large", f"body exceeds {setting}={limit} on this route")
                if chunk and not in_flight.take(chunk):
                    raise in_flight.refuse(chunk)
                received += chunk
            return message

        try:
            await self.app(scope, limited_receive, send)
        finally:
            in_flight.give_back(received)

    async def _refuse(
        self, scope: Scope, send: Send, status: int, code: str, message: str, extra: dict[str, str] | None = None
    ) -> None:
        body = json.dumps(self.error_body(scope["path"], code, message)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in (extra or {}).items()]
        headers.append((b"connection", b"close"))  # the unread body must not be parsed as the next request
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
