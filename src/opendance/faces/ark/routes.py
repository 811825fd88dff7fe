"""The Ark face's routes: create, list with filters, get, delete (cancel or remove)."""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Final

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from opendance.faces.ark.objects import (
    task_object,
)
from opendance.faces.ark.requests import (
    EXPIRED_STATUS,
    FROM_ARK_STATUS,
    PREFIX,
    TAG,
    ArkRoute,
    _invalid,
    parse_create,
)
from opendance.faces.auth import BEARER_SECURITY, CurrentKey
from opendance.faces.common import (
    body_limit,
    guarded_create,
    json_object,
    read_body,
    remove_result,
)
from opendance.faces.deps import runtime_of
from opendance.faces.errors import ApiError, error_responses
from opendance.faces.images import ImageInbox
from opendance.faces.polling import (
    NOT_MODIFIED,
    IfNoneMatchHeader,
    WaitQuery,
    read_task,
    task_read_face,
)
from opendance.media.sizes import NAMED_RATIOS
from opendance.runtime import Runtime
from opendance.settings import SERVICE_TIERS
from opendance.tasks.errors import TaskNotCancellable
from opendance.tasks.models import TaskView
from opendance.tasks.states import Status

# ---------------------------------------------------------------------------------------------
# Routes

router = APIRouter(
    tags=[TAG],
    route_class=ArkRoute,
    responses=error_responses(
        {
            400: "InvalidParameter / MissingParameter (`error.param` names the field)",
            401: "AuthenticationError: missing or invalid API key",
            429: "RateLimitExceeded",
        }
    ),
)

_TASK_EXAMPLE: Final[dict[str, Any]] = {
    "id": "task-unified-1761313744-vux2jw0k",
    "model": "opendance-sandbox",
    "status": "succeeded",
    "error": None,
    "content": {"video_url": "https://video.example/v1/files/1761400144/sig/task.mp4"},
    "usage": {"completion_tokens": 108000, "total_tokens": 108000},
    "created_at": 1761313744,
    "updated_at": 1761313790,
    "seed": 42,
    "resolution": "720p",
    "ratio": "16:9",
    "duration": 5,
    "frames": 120,
    "framespersecond": 24,
}

_CREATE_BODY: Final[dict[str, Any]] = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["model", "content"],
                "properties": {
                    "model": {"type": "string"},
                    "content": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "type": {"type": "string", "enum": ["text", "image_url"]},
                                "text": {
                                    "type": "string",
                                    "description": "The prompt, with optional commands: "
                                    "--resolution/--rs, --ratio/--rt, --duration/--dur, "
                                    "--frames, --fps, --seed, --camerafixed/--cf, "
                                    "--watermark/--wm.",
                                },
                                "image_url": {
                                    "type": "object",
                                    "properties": {"url": {"type": "string"}},
                                },
                                "role": {"type": "string", "enum": ["first_frame"]},
                            },
                        },
                    },
                    "resolution": {"type": "string", "enum": ["480p", "720p", "1080p"]},
                    "ratio": {"type": "string", "enum": [*NAMED_RATIOS, "adaptive"]},
                    "duration": {"type": "integer", "minimum": -1, "maximum": 12},
                    "frames": {"type": "integer", "minimum": 29, "maximum": 289},
                    "seed": {"type": "integer", "minimum": -1, "maximum": 2**32 - 1},
                    "camera_fixed": {"type": "boolean"},
                    "watermark": {"type": "boolean"},
                    "callback_url": {"type": "string"},
                    "service_tier": {
                        "type": "string",
                        "enum": ["default", "flex"],
                        "description": "flex: runs when no default task of the model waits, "
                        "at a lower price.",
                    },
                    "execution_expires_after": {
                        "type": "integer",
                        "minimum": 3600,
                        "maximum": 259200,
                        "description": "Seconds from creation by which the task must have "
                        "started (default 172800), else it ends expired, refunded.",
                    },
                },
            }
        }
    },
}


@router.post(
    PREFIX,
    summary="Create a video generation task",
    responses={
        200: {"content": {"application/json": {"example": {"id": _TASK_EXAMPLE["id"]}}}},
        **error_responses(
            {
                403: "AccountOverdueError: not enough credits",
                404: "InvalidEndpointOrModel.NotFound: unknown model",
                413: "RequestTooLarge",
                503: "ServerOverloaded: queue full or shutting down",
            }
        ),
    },
    openapi_extra={"requestBody": _CREATE_BODY},
)
async def create_task(request: Request, key: CurrentKey) -> JSONResponse:
    runtime = runtime_of(request)
    raw = await read_body(request, body_limit(runtime.settings))
    data = json_object(raw)
    inbox = ImageInbox(runtime.uploads, key.id, runtime.settings)
    create = await run_in_threadpool(
        parse_create, data, runtime.router.models(), runtime.settings, inbox
    )
    view, headers = await guarded_create(request, key, create, hashlib.sha256(raw).hexdigest())
    return JSONResponse({"id": view.id}, headers=headers)


def _task_body(runtime: Runtime, view: TaskView) -> tuple[dict[str, Any], dict[str, str]]:
    return task_object(view, runtime.results), {}


TASK_READ = task_read_face("ark", PREFIX + "/{task_id}", _task_body)


# An unchanged task is answered from memory before routing (`faces/cached_reads.py`).
@router.get(
    TASK_READ.route,
    summary="Query a video generation task (ETag, If-None-Match, long-poll with `wait`)",
    responses={
        200: {"content": {"application/json": {"example": _TASK_EXAMPLE}}},
        **NOT_MODIFIED,
        **error_responses({404: "ResourceNotFound"}),
    },
    openapi_extra=BEARER_SECURITY,
)
async def get_task(
    task_id: str,
    request: Request,
    wait: WaitQuery = None,
    _if_none_match: IfNoneMatchHeader = None,
) -> Response:
    return await read_task(request, TASK_READ, task_id, wait)


@router.get(PREFIX, summary="List video generation tasks (numbered pages, filters)")
def list_tasks(
    key: CurrentKey,
    request: Request,
    page_num: Annotated[int, Query(ge=1, le=500)] = 1,
    page_size: Annotated[int, Query(ge=1, le=500)] = 10,
    status: Annotated[str | None, Query(alias="filter.status")] = None,
    task_ids: Annotated[list[str] | None, Query(alias="filter.task_ids")] = None,
    model: Annotated[str | None, Query(alias="filter.model")] = None,
    service_tier: Annotated[str | None, Query(alias="filter.service_tier")] = None,
) -> dict[str, Any]:
    runtime = runtime_of(request)
    statuses, expired = None, None
    if status is not None:
        if status not in (*FROM_ARK_STATUS, EXPIRED_STATUS):
            raise _invalid(
                "filter.status",
                "must be one of queued, running, cancelled, succeeded, failed, expired",
            )
        # An expired task is a failed one inside (error code `expired`), `expired` here.
        statuses = [FROM_ARK_STATUS.get(status, Status.FAILED)]
        if statuses == [Status.FAILED]:
            expired = status == EXPIRED_STATUS
    if service_tier is not None and service_tier not in SERVICE_TIERS:
        return {"total": 0, "items": []}  # no task has a tier unknown here
    views, total = runtime.service.page_tasks(
        key.id,
        offset=(page_num - 1) * page_size,
        limit=page_size,
        statuses=statuses,
        task_ids=task_ids,
        models=[model] if model else None,
        service_tier=service_tier,
        expired=expired,
    )
    return {"total": total, "items": [task_object(view, runtime.results) for view in views]}


@router.delete(
    PREFIX + "/{task_id}",
    summary="Cancel a queued or running task; delete a finished task (then it is a 404)",
    responses=error_responses(
        {
            404: "ResourceNotFound (also for a task already deleted)",
            409: "InvalidTaskStatus: the task is already cancelled",
        }
    ),
)
def delete_task(task_id: str, key: CurrentKey, request: Request) -> dict[str, Any]:
    """As Ark: a queued or running task is cancelled (and stays); a finished one is deleted.

    A deleted task, its video file gone, answers 404 on every face. A cancelled task: 409.
    """
    runtime = runtime_of(request)
    service = runtime.service
    view = service.get_task(key.id, task_id)
    if view.status in (Status.PENDING, Status.PROCESSING):
        try:
            service.cancel_task(key.id, task_id)
            return {}
        except TaskNotCancellable:
            view = service.get_task(key.id, task_id)  # it ended meanwhile
    if view.status == Status.CANCELLED:
        raise ApiError(
            409,
            "task_not_cancellable",
            f"Task '{task_id}' is already cancelled.",
            param="task_id",
        )
    service.delete_task(key.id, task_id, lambda name: remove_result(runtime.results, name))
    return {}
