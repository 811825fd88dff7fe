"""The OpenAI face's routes: create, list, retrieve, download content (and thumbnail and
spritesheet variants), delete.
"""

from __future__ import annotations

import contextlib
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from opendance.faces.auth import BEARER_SECURITY, CurrentKey
from opendance.faces.common import (
    guarded_create,
    remove_result,
)
from opendance.faces.deps import runtime_of
from opendance.faces.downloads import serve_result
from opendance.faces.errors import (
    ApiError,
    error_responses,
)
from opendance.faces.openai.objects import (
    poll_after_ms,
    status_of,
    video_object,
)
from opendance.faces.openai.requests import (
    _RESERVED_IDS,
    DEFAULT_SIZE,
    MAX_PROMPT,
    TAG,
    OpenAIRoute,
    parse_create,
)
from opendance.faces.polling import (
    NOT_MODIFIED,
    IfNoneMatchHeader,
    WaitQuery,
    read_task,
    task_read_face,
)
from opendance.media import previews
from opendance.runtime import Runtime
from opendance.tasks.errors import TaskNotCancellable
from opendance.tasks.models import TaskView
from opendance.tasks.states import TERMINAL, Status

# ---------------------------------------------------------------------------------------------
# Routes

router = APIRouter(
    tags=[TAG],
    route_class=OpenAIRoute,
    responses=error_responses(
        {
            400: "Invalid request (`error.param` names the field)",
            401: "Missing or invalid API key",
            429: "Rate limit, too many unfinished videos, or not enough credits "
            "(`insufficient_quota`)",
        }
    ),
)

_VIDEO_EXAMPLE: Final[dict[str, Any]] = {
    "id": "task-unified-1761313744-vux2jw0k",
    "object": "video",
    "model": "opendance-sandbox",
    "status": "queued",
    "progress": 0,
    "created_at": 1761313744,
    "completed_at": None,
    "expires_at": None,
    "prompt": "A calico cat playing a piano on stage",
    "remixed_from_video_id": None,
    "seconds": "4",
    "size": "704x1248",
    "error": None,
}

_CREATE_FIELDS: Final[dict[str, Any]] = {
    "prompt": {"type": "string", "maxLength": MAX_PROMPT},
    "model": {
        "type": "string",
        "description": "A configured model, or sora-2 / sora-2-pro (any sora-*): the default "
        "route.",
        "default": "sora-2",
    },
    "seconds": {
        "type": "string",
        "description": "Whole seconds, 2 to 12 (the SDK offers 4, 8, 12).",
        "default": "4",
    },
    "size": {
        "type": "string",
        "description": "WIDTHxHEIGHT; mapped to the nearest ratio and quality of the model.",
        "default": DEFAULT_SIZE,
    },
    "callback_url": {
        "type": "string",
        "description": "opendance extension: https URL sent a video.completed / video.failed "
        "event when the video ends.",
    },
    "service_tier": {
        "type": "string",
        "enum": ["default", "flex"],
        "description": "opendance extension: flex runs when no default task of the model "
        "waits, at a lower price.",
    },
    "execution_expires_after": {
        "type": "integer",
        "minimum": 3600,
        "maximum": 259200,
        "description": "opendance extension: seconds from creation by which the video must "
        "have started, else it fails with error code expired, refunded.",
    },
}

_CREATE_BODY: Final[dict[str, Any]] = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["prompt"],
                "properties": {
                    **_CREATE_FIELDS,
                    "input_reference": {
                        "type": "string",
                        "format": "binary",
                        "description": "The first frame (JPEG, PNG or WebP).",
                    },
                    "input_reference[image_url]": {
                        "type": "string",
                        "description": "Or the first frame's http(s) or base64 data: URL.",
                    },
                },
            }
        },
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["prompt"],
                "properties": {
                    **_CREATE_FIELDS,
                    "input_reference": {
                        "type": "object",
                        "properties": {"image_url": {"type": "string"}},
                    },
                },
            }
        },
    },
}

_NOT_FOUND = error_responses({404: "No such video (deleted, or another key's)"})
#: GET/DELETE /v1/videos/generations: a Seedance path, not a video id.
_RESERVED = error_responses({405: "A Seedance path under /v1/videos, not a video id"})
_CREATE_ERRORS = error_responses(
    {413: "The request body is too large", 503: "Queue full or shutting down"}
)


def _video_id(video_id: str) -> str:
    """The path's video id; Seedance paths under /v1/videos are a 405 (before auth, as there)."""
    if video_id in _RESERVED_IDS:
        raise ApiError(405, "method_not_allowed", "This endpoint does not support that method.")
    return video_id


VideoId = Annotated[str, Depends(_video_id)]


@router.post(
    "/v1/videos",
    summary="Create a video",
    responses={
        200: {"content": {"application/json": {"example": _VIDEO_EXAMPLE}}},
        **_CREATE_ERRORS,
    },
    openapi_extra={"requestBody": _CREATE_BODY},
)
async def create_video(request: Request, key: CurrentKey) -> JSONResponse:
    runtime = runtime_of(request)
    create = await parse_create(request, runtime, key.id)
    view, headers = await guarded_create(request, key, create)
    return JSONResponse(video_object(view), headers=headers)


@router.get(
    "/v1/videos",
    summary="List videos, newest first (cursor pagination)",
    responses=error_responses({404: "Unknown `after` video"}),
)
def list_videos(
    key: CurrentKey,
    request: Request,
    after: Annotated[
        str | None, Query(description="Id of the last video of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Annotated[Literal["asc", "desc"], Query()] = "desc",
) -> dict[str, Any]:
    runtime = runtime_of(request)
    views, has_more = runtime.service.list_tasks(
        key.id, limit=limit, after=after, newest_first=order == "desc"
    )
    data = [video_object(view) for view in views]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def _video_body(_runtime: Runtime, view: TaskView) -> tuple[dict[str, Any], dict[str, str]]:
    headers = {} if view.status in TERMINAL else {"openai-poll-after-ms": str(poll_after_ms(view))}
    return video_object(view), headers


VIDEO_READ = task_read_face("openai", "/v1/videos/{video_id}", _video_body)


# An unchanged video is answered from memory before routing (`faces/cached_reads.py`).
@router.get(
    VIDEO_READ.route,
    summary="Retrieve a video (openai-poll-after-ms while it runs; ETag, long-poll with `wait`)",
    responses={**NOT_MODIFIED, **_NOT_FOUND, **_RESERVED},
    openapi_extra=BEARER_SECURITY,
)
async def retrieve_video(
    video_id: VideoId,
    request: Request,
    wait: WaitQuery = None,
    _if_none_match: IfNoneMatchHeader = None,
) -> Response:
    return await read_task(request, VIDEO_READ, video_id, wait)


@router.get(
    "/v1/videos/{video_id}/content",
    summary="Download the video, its thumbnail (WebP) or its spritesheet (JPEG)",
    response_class=FileResponse,
    responses={
        200: {"content": {"video/mp4": {}, "image/webp": {}, "image/jpeg": {}}},
        **error_responses(
            {404: "No such video (or deleted), or it has no content (not finished, expired)"}
        ),
        **_RESERVED,
    },
)
async def download_content(
    video_id: VideoId,
    key: CurrentKey,
    request: Request,
    variant: Annotated[Literal["video", "thumbnail", "spritesheet"], Query()] = "video",
) -> Response:
    runtime = runtime_of(request)
    view = await run_in_threadpool(runtime.service.get_task, key.id, video_id)
    if view.status != Status.COMPLETED:
        raise ApiError(
            404,
            "video_not_ready",
            f"Video '{video_id}' is {status_of(view.status)}; content exists once it is completed.",
            param="video_id",
        )
    gone = ApiError(
        404,
        "video_content_gone",
        f"The content of video '{video_id}' was deleted or has expired.",
        param="video_id",
    )
    if not view.result_file:
        raise gone
    suffix = ".mp4" if variant == "video" else previews.SUFFIXES[variant]
    response = await serve_result(
        runtime,
        view.result_file,
        request,
        filename=f"{video_id}{suffix}",
        variant=variant,
        missing=gone,
        disposition="attachment",
    )
    if runtime.results.is_local and variant != "video":
        path = runtime.results.path_of(view.result_file)
        if not path.exists():  # deleted while the preview was being made: leave nothing behind
            previews.delete_previews(path)
            raise ApiError(404, "video_content_gone", f"Video '{video_id}' was just deleted.")
    return response


@router.delete(
    "/v1/videos/{video_id}",
    summary="Delete a video (cancelled first if it is still running); then it is a 404",
    responses={**_NOT_FOUND, **_RESERVED},
)
def delete_video(video_id: VideoId, key: CurrentKey, request: Request) -> dict[str, Any]:
    """As OpenAI: the video is gone afterwards (retrieve, content and a second delete: 404).

    Its credits are settled (or refunded by the cancel) as for any task; the ledger keeps them.
    """
    runtime = runtime_of(request)
    service = runtime.service
    view = service.get_task(key.id, video_id)
    if view.status not in TERMINAL:
        with contextlib.suppress(TaskNotCancellable):  # if it ended meanwhile, delete below
            service.cancel_task(key.id, video_id)
    service.delete_task(key.id, video_id, lambda name: remove_result(runtime.results, name))
    return {"id": video_id, "object": "video.deleted", "deleted": True}
