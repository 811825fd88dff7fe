"""The Seedance task API face: `POST /v1/videos/generations`, `GET /v1/tasks/{id}`, cancel.

The request is parsed here (auth first, then JSON, then the contract's rules) so every bad
input gets the contract's error shape naming the field and the rule. Unknown fields are ignored;
fields the contract names are checked strictly (no "5" for 5, no 5.5, no "1080P").
"""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError
from starlette.concurrency import run_in_threadpool

from opendance.faces.auth import (
    BEARER_SECURITY,
    CurrentKey,
    authenticate_async,
    bearer_token,
    read_key,
)
from opendance.faces.common import (
    check_callback_url,
    guarded_create,
    run_on,
)
from opendance.faces.deps import runtime_of
from opendance.faces.errors import KEY_ERRORS, ApiError, error_responses
from opendance.faces.images import ImageInbox, image_reference
from opendance.faces.seedance.objects import task_object
from opendance.media.sizes import IMAGE_ONLY_RATIOS
from opendance.settings import DEFAULT_MODEL, Settings
from opendance.tasks.models import CreateTask

router = APIRouter(
    tags=["Seedance task API"],
    responses={
        **error_responses({400: "Invalid request (the field is named in `error.param`)"}),
        **KEY_ERRORS,
    },
)

AspectRatio = Literal["16:9", "9:16", "1:1", "4:3", "3:4", "21:9", "keep_ratio", "adaptive"]


class CreateVideoRequest(BaseModel):
    """The body of `POST /v1/videos/generations`, as the contract defines it."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "model": DEFAULT_MODEL,
                    "prompt": "A cat playing piano in a jazz bar, warm light",
                    "duration": 5,
                    "quality": "720p",
                    "aspect_ratio": "16:9",
                }
            ]
        },
    )

    model: StrictStr = Field(description=f"The model; `{DEFAULT_MODEL}` unless more are routed.")
    prompt: StrictStr = Field(min_length=1, max_length=2000, description="What the video shows.")
    duration: StrictInt | None = Field(
        default=None, ge=2, le=12, description="Seconds, 2 to 12; default 5."
    )
    quality: Literal["480p", "720p", "1080p"] | None = Field(
        default=None, description="Default 1080p."
    )
    aspect_ratio: AspectRatio | None = Field(
        default=None,
        description="Default 16:9 (text-to-video) or adaptive (image-to-video). keep_ratio and "
        "adaptive need an image.",
    )
    image_urls: list[StrictStr] | None = Field(
        default=None,
        max_length=1,
        description="At most one image URL (JPEG, PNG, WebP, 10 MB): the first frame.",
    )
    callback_url: StrictStr | None = Field(
        default=None, max_length=2048, description="HTTPS URL called when the task ends."
    )
    seed: StrictInt | None = Field(
        default=None,
        ge=-1,
        le=2**32 - 1,
        description="opendance extension: same seed, same video (where the engine allows). "
        "-1 picks a random seed.",
    )


RULES: dict[str, str] = {
    "model": "must be a string naming a configured model, e.g. doubao-seedance-1.0-pro-fast",
    "prompt": "must be a non-empty string of at most 2000 characters",
    "duration": "must be a whole number of seconds from 2 to 12",
    "quality": "must be one of 480p, 720p, 1080p",
    "aspect_ratio": "must be one of 16:9, 9:16, 1:1, 4:3, 3:4, 21:9 (keep_ratio and adaptive "
    "only with image_urls)",
    "image_urls": "must be an array of at most 1 URL string",
    "callback_url": "must be an https URL of at most 2048 characters",
    "seed": "must be an integer from -1 to 4294967295",
}


def validation_error(error: ValidationError) -> ApiError:
    first = error.errors()[0]
    loc = first.get("loc", ())
    field = str(loc[0]) if loc else "body"
    if first.get("type") == "missing":
        return ApiError(400, "missing_parameter", f"Missing required field '{field}'.", param=field)
    rule = RULES.get(field, "is invalid")
    return ApiError(400, "invalid_parameter", f"Invalid '{field}': {rule}.", param=field)


def parse_create_request(
    raw: bytes, settings: Settings, inbox: ImageInbox | None = None
) -> CreateTask:
    """Bytes of a create request -> a validated CreateTask, or an ApiError(400)."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "invalid_json", "The request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "The request body must be a JSON object.")
    try:
        body = CreateVideoRequest.model_validate(data)
    except ValidationError as error:
        raise validation_error(error) from None
    if not body.prompt.strip():
        raise ApiError(
            400, "invalid_parameter", f"Invalid 'prompt': {RULES['prompt']}.", param="prompt"
        )
    image_url = body.image_urls[0] if body.image_urls else None
    if image_url is not None:
        # An http(s) URL (checked as written, fetched by the worker), or opendance's
        # extensions: `upload:<id>` from POST /v1/files, or a base64 data: URL (stored now).
        image_url = image_reference(image_url, settings, param="image_urls", inbox=inbox)
    aspect_ratio = body.aspect_ratio or ("adaptive" if image_url else "16:9")
    if aspect_ratio in IMAGE_ONLY_RATIOS and image_url is None:
        raise ApiError(
            400,
            "invalid_parameter",
            f"Invalid 'aspect_ratio': {aspect_ratio} needs an image in image_urls.",
            param="aspect_ratio",
        )
    check_callback_url(body.callback_url, settings)
    seed = body.seed
    if seed == -1:
        seed = secrets.randbelow(2**32)
    return CreateTask(
        model=body.model,
        prompt=body.prompt,
        duration=body.duration if body.duration is not None else 5,
        quality=body.quality or "1080p",
        aspect_ratio=aspect_ratio,
        image_url=image_url,
        callback_url=body.callback_url,
        seed=seed,
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


# The hottest read: the key is checked in the handler (no dependency injection) and the task
# object goes out as a JSONResponse (no generic encoder); together they cost more than the
# database read behind them.
@router.get(
    "/v1/tasks/{task_id}",
    summary="Query a task",
    responses={**_TASK_ANSWER, **error_responses({404: "Unknown task"})},
    openapi_extra=BEARER_SECURITY,
)
async def get_task(task_id: str, request: Request) -> JSONResponse:
    runtime = runtime_of(request)
    key, headers = await read_key(request)
    view = await run_on(runtime.db.read_executor, runtime.service.get_task, key.id, task_id)
    return JSONResponse(task_object(view, runtime.results), headers=headers)


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
