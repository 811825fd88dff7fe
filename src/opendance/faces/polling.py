"""Polling a task cheaply, on every face's task read: an ETag on every answer, `If-None-Match`
answered `304 Not Modified`, and long-polls (`?wait=N`, an opendance extension).

The ETag is a strong validator over the exact bytes of the face's body, so it changes exactly
when something in that body does (status, progress, result, error, estimated_time,
queue_position...). Views come from memory while the task has not changed
(`opendance.tasks.view_cache`), so a 304, or the same body again, costs no database read.

`?wait=N` (0 < N <= 60 seconds):
- with `If-None-Match`: a current ETag that differs is answered at once (200); else the
  request is held until the task changes (200 with the new body) or N seconds pass (304:
  the client's copy is still current);
- without it: held until the task changes from what it was when the request arrived (200
  with the new body), or N seconds pass (200 with the current body);
- a finished task (completed, failed, cancelled) is answered at once.

A held request awaits an `asyncio.Event` of the runtime's hub (`runtime.events`): no thread,
no database connection. Changes in this process wake it at once; changes made by other
processes arrive through the task feed within about a second. A pending task is also looked
at again every `RECHECK_SECONDS`: its estimate and queue position move with other tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Annotated, Any, Final

from fastapi import Header, Query, Request, Response

from opendance.faces.auth import read_key
from opendance.faces.common import run_on
from opendance.faces.deps import runtime_of
from opendance.runtime import Runtime
from opendance.tasks.models import TaskView
from opendance.tasks.reads import not_found
from opendance.tasks.states import Status
from opendance.tasks.view_cache import CachedTask, Place, RenderedBody, TaskViews
from opendance.tasks.watchers import TaskEvents

#: The longest `wait`, in seconds (the longest a request is held).
MAX_WAIT_SECONDS: float = 60.0
#: How often a held request looks at a pending task again (or at any task while the feed of
#: other processes' changes is down).
RECHECK_SECONDS: Final[float] = 1.0
#: Anyone may keep a copy, but must ask (with If-None-Match) before using it again.
CACHE_CONTROL: Final[str] = "private, no-cache"

#: A face's object and its own headers for a view.
FaceRender = Callable[[Runtime, TaskView], tuple[dict[str, Any], dict[str, str]]]


@dataclass(frozen=True)
class TaskReadFace:
    """One face's task read: its name, its path (before the id, and as routed), its body."""

    name: str
    prefix: str
    route: str
    render: FaceRender


#: Every face's task read, by path prefix (the middleware answers from memory with it).
TASK_READS: dict[str, TaskReadFace] = {}


def task_read_face(name: str, route: str, render: FaceRender) -> TaskReadFace:
    """Declare a face's task read (`route` ends with its one path parameter, the id)."""
    prefix = route[: route.rindex("{")]
    face = TaskReadFace(name=name, prefix=prefix, route=route, render=render)
    TASK_READS[prefix] = face
    return face


#: The query parameter, as the three routes declare it (FastAPI validates it: a 400 in the
#: face's error shape, naming `wait`).
WaitQuery = Annotated[
    float | None,
    Query(
        gt=0,
        le=MAX_WAIT_SECONDS,
        description="opendance extension, long-poll: hold the request up to this many seconds "
        "until the task changes (see `If-None-Match`); a finished task answers at once.",
    ),
]
#: Declared for the API docs; the values are read from the request (it may repeat).
IfNoneMatchHeader = Annotated[
    str | None,
    Header(
        alias="If-None-Match",
        description="ETags of the copy you hold: 304 Not Modified (no body) while one is current.",
    ),
]
#: The `responses=` entry of a task read.
NOT_MODIFIED: dict[int | str, dict[str, Any]] = {
    304: {"description": "Not Modified: the task is as in the copy named by If-None-Match"}
}


# -- validators ----------------------------------------------------------------------------


def etag_of(body: bytes) -> str:
    """A strong ETag over the exact bytes: equal bodies, equal tags, in every process."""
    return '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


#: An entity tag (weak or strong) or `*`, as RFC 9110 writes If-None-Match's members.
_MEMBER = re.compile(r'(?:W/)?("[\x21\x23-\x7e\x80-\xff]*")|(\*)')

#: If-None-Match: * (any current representation).
ANY: Final[frozenset[str]] = frozenset({"*"})


def if_none_match(values: list[str]) -> frozenset[str] | None:
    """The opaque tags of If-None-Match (its lines joined), `ANY` for `*`; None when absent.

    Weak comparison, as RFC 9110 asks of If-None-Match: `W/"x"` names the same as `"x"`.
    """
    if not values:
        return None
    tags: set[str] = set()
    for value in values:
        for tag, star in _MEMBER.findall(value):
            if star:
                return ANY
            tags.add(tag)
    return frozenset(tags)


def is_current(tags: frozenset[str] | None, etag: str) -> bool:
    """Whether the client's copy, named by `tags`, is the current one."""
    return tags is not None and (tags is ANY or etag in tags)


# -- reading and rendering -----------------------------------------------------------------


def rendered(runtime: Runtime, face: TaskReadFace, entry: CachedTask, place: Place) -> RenderedBody:
    """The face's body for a view at a place, rendered once per change (kept on the entry)."""
    done = entry.renders.get(face.name)
    if done is not None and done.place == place:
        return done
    view = entry.view
    if place != entry.read_place:
        view = replace(view, estimated_time=place[0], queue_position=place[1])
    content, own = face.render(runtime, view)
    # The bytes Starlette's JSONResponse would send.
    body = json.dumps(
        content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode()
    etag = etag_of(body)
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL, **own}
    done = RenderedBody(
        place=place,
        body=body,
        etag=etag,
        headers=tuple(headers.items()),
        raw_headers=tuple((k.lower().encode(), v.encode()) for k, v in headers.items()),
    )
    entry.renders[face.name] = done
    return done


def from_memory(
    runtime: Runtime, face: TaskReadFace, key_id: str, task_id: str
) -> tuple[CachedTask, RenderedBody] | None:
    """The task's answer from memory; None when the database must be read. Another key's task
    is as unknown as a missing one (`TaskNotFound`)."""
    views = runtime.views
    entry = views.lookup(task_id)
    if entry is None:
        return None
    if entry.view.api_key_id != key_id:
        raise not_found(task_id)
    place = views.place(entry)
    if place is None:
        return None
    return entry, rendered(runtime, face, entry, place)


async def current(
    runtime: Runtime, face: TaskReadFace, key_id: str, task_id: str
) -> tuple[CachedTask, RenderedBody]:
    """The task's answer now: from memory, else read (off the event loop) and kept."""
    views = runtime.views
    known = from_memory(runtime, face, key_id, task_id)
    if known is not None:
        return known
    entry = views.lookup(task_id)
    if entry is not None:  # the key's own (`from_memory` said); its queue snapshot was stale
        place = await _place_read(runtime, entry)
    else:
        entry = await run_on(runtime.db.read_executor, views.load, key_id, task_id)
        place = entry.read_place
    return entry, rendered(runtime, face, entry, place)


#: Per runtime, per model: the one read under way of what a pending task's place needs.
_PLACE_READS: weakref.WeakKeyDictionary[TaskViews, dict[str, asyncio.Future[Place]]] = (
    weakref.WeakKeyDictionary()
)


async def _place_read(runtime: Runtime, entry: CachedTask) -> Place:
    """A pending task's place, reading what went stale; one read per model at a time (a
    thousand long-polls finding the queue snapshot stale at once wait on the same one)."""
    views = runtime.views
    reads = _PLACE_READS.setdefault(views, {})
    model = entry.view.requested_model
    under_way = reads.get(model)
    if under_way is not None:
        with contextlib.suppress(Exception):  # its failure is its owner's to report
            await asyncio.shield(under_way)
        place = views.place(entry)
        if place is not None:
            return place
    read = asyncio.ensure_future(run_on(runtime.db.read_executor, views.place_read, entry))
    reads[model] = read
    try:
        return await asyncio.shield(read)
    finally:
        if reads.get(model) is read:
            del reads[model]


def answer(body: RenderedBody, tags: frozenset[str] | None, headers: dict[str, str]) -> Response:
    """200 with the body, or 304 (no body) when the client's copy is current; the ETag on both."""
    headers = {**headers, **dict(body.headers)}
    if is_current(tags, body.etag):
        return Response(status_code=304, headers=headers)
    return Response(body.body, media_type="application/json", headers=headers)


# -- the route -----------------------------------------------------------------------------


async def read_task(
    request: Request, face: TaskReadFace, task_id: str, wait: float | None
) -> Response:
    """A face's `GET` of one task: conditional, and held while `wait` asks for it."""
    runtime = runtime_of(request)
    key, headers = await read_key(request)
    tags = if_none_match(request.headers.getlist("if-none-match"))
    if wait is None:
        _, body = await current(runtime, face, key.id, task_id)
        return answer(body, tags, headers)
    events: TaskEvents = runtime.events
    # Subscribed before the first read: a change committed after it wakes the wait.
    with events.subscribe(task_id) as changed:
        entry, body = await current(runtime, face, key.id, task_id)
        if entry.finished or (tags is not None and not is_current(tags, body.etag)):
            return answer(body, tags, headers)
        arrived = body.etag
        body = await _hold(runtime, face, key.id, task_id, changed, arrived, wait)
    # Changed: the new body, whatever the tags said (`*` too); else as a plain conditional GET.
    return answer(body, None if body.etag != arrived else tags, headers)


async def _hold(
    runtime: Runtime,
    face: TaskReadFace,
    key_id: str,
    task_id: str,
    changed: asyncio.Event,
    baseline: str,
    wait: float,
) -> RenderedBody:
    """Until the body differs from `baseline`, or the task ends, or `wait` seconds pass (or the
    server stops); then the body as it is."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(wait, MAX_WAIT_SECONDS)
    while True:
        remaining = deadline - loop.time()
        if remaining > 0 and not runtime.shutting_down:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, _recheck_after(runtime, task_id))):
                    await changed.wait()
        changed.clear()  # before reading: a change committed after the read sets it again
        entry, body = await current(runtime, face, key_id, task_id)
        if body.etag != baseline or entry.finished:
            return body
        if loop.time() >= deadline or runtime.shutting_down:
            return body


def _recheck_after(runtime: Runtime, task_id: str) -> float:
    """How long to wait for a wake-up before looking again: a pending task's place moves with
    other tasks, and without the feed another process's change wakes nobody."""
    entry = runtime.views.lookup(task_id)
    if entry is None or entry.view.status == Status.PENDING:
        return RECHECK_SECONDS
    return MAX_WAIT_SECONDS
