"""Live task events: `GET /v1/tasks/{task_id}/events`, a Server-Sent Events stream.

Each status or progress change of the task is sent as `event: task` with the task object (the
same body as `GET /v1/tasks/{task_id}`) as it happens; the stream ends after the event that
carries a terminal status (`completed`, `failed`, `cancelled`), or without one if the task is
deleted meanwhile (the OpenAI and Ark faces cancel a running task, then delete it). The polling
API stays the contract: the stream is a convenience, and a client that loses it can always poll.

Changes are seen two ways. In this process, the runtime's event hub (`runtime.events`, wired
to the task service's listeners) wakes the streams of that task at once. Changes made by other
processes (scaled-out workers) are not heard here, so every stream also reads the task from
the database every `POLL_SECONDS` and sends an event whenever (status, progress) differ from
the last one sent.
A comment line goes out every `HEARTBEAT_SECONDS` so proxies and clients keep the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Final

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from opendance.faces.auth import CurrentKey
from opendance.faces.deps import runtime_of
from opendance.faces.errors import KEY_ERRORS, error_responses
from opendance.faces.seedance.objects import task_object
from opendance.runtime import Runtime
from opendance.tasks.errors import TaskNotFound
from opendance.tasks.models import TaskView
from opendance.tasks.states import TERMINAL
from opendance.tasks.watchers import TaskEvents

log = logging.getLogger(__name__)

router = APIRouter(tags=["Seedance task API"], responses=KEY_ERRORS)

#: How often a stream reads its task from the database (changes made by other processes).
POLL_SECONDS: float = 0.5
#: How often a quiet stream sends a comment line, so idle-timeouts of proxies never fire.
HEARTBEAT_SECONDS: float = 15.0
#: A stream ends after this long (the client reconnects); bounds what a forgotten tab holds.
MAX_STREAM_SECONDS: float = 3600.0
#: What the client is told to wait before reconnecting (the SSE `retry` field), milliseconds.
RETRY_MS: Final[int] = 2000


def sse_event(body: dict[str, Any], event: str = "task") -> bytes:
    """One SSE message; the JSON is on one line, so one `data:` field carries it."""
    data = json.dumps(body, separators=(",", ":"))
    return f"event: {event}\ndata: {data}\n\n".encode()


async def stream_task(
    runtime: Runtime, key_id: str, first: TaskView, hub: TaskEvents
) -> AsyncIterator[bytes]:
    """The events of one task, from its current state to its end."""
    service = runtime.service
    started = last_write = time.monotonic()
    with hub.subscribe(first.id) as changed:
        view = first
        yield f"retry: {RETRY_MS}\n\n".encode()
        yield sse_event(task_object(view, runtime.results))
        last = (view.status, view.progress)
        while view.status not in TERMINAL:
            if runtime.shutting_down or time.monotonic() - started > MAX_STREAM_SECONDS:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout=POLL_SECONDS)
            # Clear before reading: a change committed after this read sets it again.
            changed.clear()
            try:
                view = await run_in_threadpool(service.get_task, key_id, first.id)
            except TaskNotFound:  # deleted: it is as unknown now as to a new request
                return
            now = time.monotonic()
            if (view.status, view.progress) != last:
                last = (view.status, view.progress)
                last_write = now
                yield sse_event(task_object(view, runtime.results))
            elif now - last_write >= HEARTBEAT_SECONDS:
                last_write = now
                yield b": keep-alive\n\n"


@router.get(
    "/v1/tasks/{task_id}/events",
    summary="Follow a task live (Server-Sent Events)",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "`event: task` with the task object on every status or progress "
            "change; the stream ends after the event with a terminal status.",
            "content": {"text/event-stream": {}},
        },
        **error_responses({404: "Unknown task (or another key's)"}),
    },
)
async def follow_task(task_id: str, key: CurrentKey, request: Request) -> StreamingResponse:
    runtime = runtime_of(request)
    hub = runtime.events
    view = await run_in_threadpool(runtime.service.get_task, key.id, task_id)
    return StreamingResponse(
        stream_task(runtime, key.id, view, hub),
        media_type="text/event-stream",
        headers={
            "Cache-Control": "no-cache, no-transform",
            "X-Accel-Buffering": "no",
        },
    )
