"""The Seedance task API face: `POST /v1/videos/generations`, `GET /v1/tasks/{id}`, cancel,
list. Auth comes first, then the body (`requests`), so every bad input gets the contract's
error shape.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from opendance.faces.auth import (
    BEARER_SECURITY,
    CurrentKey,
    authenticate_async,
    bearer_token,
)
from opendance.faces.common import (
    guarded_create,
)
from opendance.faces.deps import runtime_of
from opendance.faces.errors import KEY_ERRORS, error_responses
from opendance.faces.images import ImageInbox
from opendance.faces.polling import (
    NOT_MODIFIED,
    IfNoneMatchHeader,
    WaitQuery,
    read_task,
    task_read_face,
)
from opendance.faces.seedance.objects import task_object
from opendance.faces.seedance.requests import CreateVideoRequest, parse_create_request
from opendance.runtime import Runtime
from opendance.settings import DEFAULT_MODEL
from opendance.tasks.models import TaskView

router = APIRouter(
    tags=["Seedance task API"],
    responses={
        **error_responses({400: "Invalid request (the field is named in `error.param`)"}),
        **KEY_ERRORS,
    },
)

_TASK_EXAMPLE = {
    "created": 1761313744,
    "id": "task-unified-1761313744-vux2jw0k",
    "model": DEFAULT_MODEL,
    "object": "video.generation.task",
    "progress": 0,
    "status": "pending",
    "task_info": {"can_cancel": True, "estimated_time": 165, "video_duration": 5},
    "type": "video",
    "usage": {
        "billing_rule": "per_call",
        "credits_reserved": 8,
        "credits_charged": 0,
        "credits_refunded": 0,
        "user_group": "default",
    },
}

_TASK_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/json": {"example": _TASK_EXAMPLE}}}
}
_ERROR_RESPONSES = error_responses(
    {
        402: "Not enough credits; nothing was created",
        413: "The request body is too large",
        422: "The Idempotency-Key was used with another body",
        429: "Rate limit reached, or too many unfinished tasks",
        503: "Queue full or shutting down",
    }
)


@router.post(
    "/v1/videos/generations",
    summary="Create a video generation task",
    responses={**_TASK_ANSWER, **_ERROR_RESPONSES},
    openapi_extra={
        **BEARER_SECURITY,
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": CreateVideoRequest.model_json_schema()}},
        },
    },
)
async def create_video(request: Request) -> JSONResponse:
    runtime = runtime_of(request)
    key = await authenticate_async(request, bearer_token(request))
    raw = await request.body()
    inbox = ImageInbox(runtime.uploads, key.id, runtime.settings)
    # A small body without an image of ours cannot need a thread (storing a data: URL in the
    # store, or looking up an upload, blocks).
    if len(raw) <= 4096 and b"upload:" not in raw and b"data:" not in raw:
        create = parse_create_request(raw, runtime.settings, inbox)
    else:
        create = await run_in_threadpool(parse_create_request, raw, runtime.settings, inbox)
    view, headers = await guarded_create(request, key, create, hashlib.sha256(raw).hexdigest())
    headers["Location"] = f"/v1/tasks/{view.id}"
    return JSONResponse(task_object(view, runtime.results), headers=headers)


def _task_body(runtime: Runtime, view: TaskView) -> tuple[dict[str, Any], dict[str, str]]:
    return task_object(view, runtime.results), {}


TASK_READ = task_read_face("seed", "/v1/tasks/{task_id}", _task_body)


# The hottest read. An unchanged task is answered from memory before routing
# (`faces/cached_reads.py`); here the rest: the first read after a change, long-polls.
@router.get(
    TASK_READ.route,
    summary="Query a task (ETag, If-None-Match, long-poll with `wait`)",
    responses={**_TASK_ANSWER, **NOT_MODIFIED, **error_responses({404: "Unknown task"})},
    openapi_extra=BEARER_SECURITY,
)
async def get_task(
    task_id: str,
    request: Request,
    wait: WaitQuery = None,
    _if_none_match: IfNoneMatchHeader = None,
) -> Response:
    return await read_task(request, TASK_READ, task_id, wait)


@router.post(
    "/v1/tasks/{task_id}/cancel",
    summary="Cancel a task",
    responses=error_responses({404: "Unknown task", 409: "Task already finished"}),
)
def cancel_task(task_id: str, key: CurrentKey, request: Request) -> dict[str, Any]:
    runtime = runtime_of(request)
    view = runtime.service.cancel_task(key.id, task_id)
    return task_object(view, runtime.results)


@router.get(
    "/v1/tasks",
    summary="List your tasks, newest first",
    responses=error_responses({404: "Unknown `after` task"}),
)
def list_tasks(
    key: CurrentKey,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[
        str | None, Query(description="Id of the last task of the previous page")
    ] = None,
) -> dict[str, Any]:
    runtime = runtime_of(request)
    views, has_more = runtime.service.list_tasks(key.id, limit=limit, after=after)
    data = [task_object(view, runtime.results) for view in views]
    return {
        "object": "list",
        "data": data,
        "has_more": has_more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }
