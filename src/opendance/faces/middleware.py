"""ASGI middleware: request ids in and out, a request body limit, request metrics, and the
task reads answered from memory before routing (`cached_reads`).

It lives with the faces because its 413 is an API error: it answers in the shape of the face
that owns the path (`error_response_for`, handed in by the app). Written as plain ASGI (not
BaseHTTPMiddleware) so it adds little per request and never buffers streamed responses such
as SSE or video downloads.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from opendance.faces.cached_reads import answer_from_memory
from opendance.faces.errors import ApiError
from opendance.observability import context
from opendance.observability.metrics import Metrics

_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class _BodyTooLarge(Exception):
    pass


class RequestContextMiddleware:
    """X-Request-Id (the client's if sane, else a new one) on the response and every log line;
    413 for bodies over `max_body_bytes` (announced or streamed); a latency histogram; a task
    read answered from memory when it can be."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        metrics: Metrics,
        error_response_for: Callable[[str], Callable[[ApiError], Response]],
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.error_response_for = error_response_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        # 128 random bits as 32 hex digits (uuid4's form, at a fraction of its cost).
        request_id = given if _VALID_ID.match(given) else os.urandom(16).hex()
        token = context.request_id.set(request_id)
        started = time.perf_counter()
        status_holder = {"status": 500, "started": False}
        raw_length = headers.get(b"content-length")
        route_path: str | None = None
        try:
            if (
                raw_length is not None
                and raw_length.isdigit()
                and int(raw_length) > self.max_body_bytes
            ):
                await self._reject(scope, receive, send, request_id)
                status_holder["status"] = 413
                return

            received = 0

            async def limited_receive() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.max_body_bytes:
                        raise _BodyTooLarge
                return message

            async def send_with_id(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status_holder["status"] = message["status"]
                    status_holder["started"] = True
                    message.setdefault("headers", [])
                    message["headers"] = [
                        *message["headers"],
                        (b"x-request-id", request_id.encode()),
                    ]
                await send(message)

            if scope.get("method") == "GET":
                route_path = await answer_from_memory(
                    scope, receive, send_with_id, self.error_response_for
                )
                if route_path is not None:
                    return
            try:
                await self.app(scope, limited_receive, send_with_id)
            except _BodyTooLarge:
                if not status_holder["started"]:
                    status_holder["status"] = 413
                    await self._reject(scope, receive, send, request_id)
        finally:
            context.request_id.reset(token)
            route = scope.get("route")
            path = route_path or getattr(route, "path", None) or "unmatched"
            self.metrics.http_requests.labels(
                scope.get("method", ""), path, str(status_holder["status"])
            ).observe(time.perf_counter() - started)

    async def _reject(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        error = ApiError(
            413,
            "request_too_large",
            f"The request body is larger than {self.max_body_bytes} bytes.",
        )
        response = self.error_response_for(scope.get("path", ""))(error)
        response.headers["x-request-id"] = request_id
        response.headers["connection"] = "close"
        await response(scope, receive, send)
