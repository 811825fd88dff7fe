"""The hottest request, answered before routing: a face's task GET whose answer is in memory.

Clients poll their tasks every few seconds and most polls find the task unchanged; routing
and dependency injection alone then cost more than the answer. The request middleware hands
every GET here first. When the path is a face's task read (`polling.TASK_READS`) without a
query string, the bearer key is in the key cache, the task's view is current in memory
(`opendance.tasks.view_cache`) and the key's own, this answers exactly as the route would:
200 with the body, or 304 for a current If-None-Match, the ETag and the rate-limit headers
on both, the read counted against the key's limit (429 in the face's shape past it).
Anything else is left to the app, untouched and uncounted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from opendance.faces.errors import ApiError, from_service_error
from opendance.faces.polling import (
    TASK_READS,
    TaskReadFace,
    from_memory,
    if_none_match,
    is_current,
)
from opendance.runtime import Runtime
from opendance.tasks.errors import RateLimited, TaskNotFound


def _face_of(path: str) -> tuple[TaskReadFace, str] | None:
    for prefix, face in TASK_READS.items():
        if path.startswith(prefix):
            task_id = path[len(prefix) :]
            if task_id and "/" not in task_id:
                return face, task_id
    return None


async def answer_from_memory(
    scope: Scope,
    receive: Receive,
    send: Send,
    error_response_for: Callable[[str], Callable[[ApiError], Response]],
) -> str | None:
    """Answer a task read from memory if it can be; the route's path when it was answered."""
    if scope.get("query_string"):
        return None  # `wait`, or anything else the route should see
    found = _face_of(scope["path"])
    if found is None:
        return None
    face, task_id = found
    token = ""
    tag_lines: list[str] = []
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, rest = value.partition(b" ")
            if scheme.lower() == b"bearer":
                token = rest.strip().decode("latin-1")
        elif name == b"if-none-match":
            tag_lines.append(value.decode("latin-1"))
    if not token:
        return None
    runtime = cast(Runtime, scope["app"].state.runtime)
    key = runtime.accounts.cached(token)
    if key is None:
        return None
    try:
        known = from_memory(runtime, face, key.id, task_id)
    except TaskNotFound:
        return None
    if known is None:
        return None
    _, body = known
    try:
        limit_headers = runtime.limiter.check(key.id, "read")
    except RateLimited as error:
        refused = error_response_for(scope["path"])(from_service_error(error))
        await refused(scope, receive, send)
        return face.route
    headers = [
        *body.raw_headers,
        *((name.lower().encode(), value.encode()) for name, value in limit_headers.items()),
    ]
    if is_current(if_none_match(tag_lines), body.etag):
        await send({"type": "http.response.start", "status": 304, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return face.route
    headers += [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body.body)).encode()),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body.body})
    return face.route
