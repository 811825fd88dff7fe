"""The OpenAI videos API face: `/v1/videos` as the official `openai` SDK's `client.videos` uses it.

A thin adapter over the one task service: a video is a task (same id, same store, same ledger),
so a video made here can be read through the Seedance and Ark faces and the other way round.
What it adds is the translation: `seconds` and `size` to the routed model's duration, quality
and aspect ratio; the task's status to the four OpenAI statuses; the OpenAI error body; the
`openai-poll-after-ms` header that paces the SDK's poller; thumbnail and spritesheet variants.

Uploaded first frames (a multipart `input_reference` file, or a base64 `data:` URL) are checked
here, stored under `data_dir/uploads` and recorded as `upload:<name>`, which the worker reads
from disk instead of fetching. The same helpers serve the Ark face's `data:` image URLs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
from collections.abc import AsyncGenerator, Callable
from dataclasses import fields, replace
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import FormParser, MultiPartException, MultiPartParser

from opendance.engines.base import VideoRequest
from opendance.faces.auth import CurrentKey
from opendance.faces.common import check_callback_url
from opendance.faces.errors import (
    ApiError,
    error_body,
    error_responses,
    route_class_answering_with,
)
from opendance.faces.guards import guarded_create
from opendance.faces.images import image_reference
from opendance.faces.images import save_upload as save_upload  # re-exported for uploads.py
from opendance.faces.images import uploads_dir as uploads_dir
from opendance.media import previews
from opendance.media.sizes import NAMED_RATIOS, QUALITIES, nearest_named_ratio, size_for
from opendance.settings import DEFAULT_MODEL, Settings
from opendance.tasks.errors import TaskNotCancellable
from opendance.tasks.models import CreateTask, TaskView
from opendance.tasks.states import TERMINAL, Status

TAG: Final[str] = "OpenAI videos API"
DEFAULT_SECONDS: Final[int] = 4
DEFAULT_SIZE: Final[str] = "720x1280"
MIN_SECONDS: Final[int] = 2
MAX_SECONDS: Final[int] = 12
MAX_PROMPT: Final[int] = 2000
_SIZE: Final = re.compile(r"^([1-9][0-9]{1,4})x([1-9][0-9]{1,4})$")
#: Ids that are paths of the Seedance face, not videos (`DELETE /v1/videos/generations` is a 405).
_RESERVED_IDS: Final[frozenset[str]] = frozenset({"generations"})
#: Bounds of the `openai-poll-after-ms` header: poll often for short jobs, never hammer.
POLL_MIN_MS: Final[int] = 200
POLL_MAX_MS: Final[int] = 5000


# ---------------------------------------------------------------------------------------------
# Errors in OpenAI's shape


def openai_error_response(error: ApiError) -> JSONResponse:
    """`{"error": {"message", "type", "param", "code"}}` with the status the SDK maps to a class.

    Two remaps: "not enough credits" is OpenAI's 429 `insufficient_quota` (RateLimitError, as
    OpenAI itself answers); and conflicts carry `x-should-retry: false`, because the SDK
    otherwise retries 409 and 429 twice.
    """
    status, code, message, param = error.status, error.code, error.message, error.param
    headers = dict(error.headers)
    body = error_body(status, code, message, param)
    if status == 402:
        status = 429
        body = {
            "error": {
                "message": message,
                "type": "insufficient_quota",
                "param": param,
                "code": "insufficient_quota",
            }
        }
    if status in (409, 429):
        headers["x-should-retry"] = "false"
    return JSONResponse(body, status_code=status, headers=headers)


OpenAIRoute = route_class_answering_with(openai_error_response)


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


# ---------------------------------------------------------------------------------------------
# Request bodies: multipart (what the SDK always sends), urlencoded or JSON, read with a cap


def body_limit(settings: Settings) -> int:
    """The largest create body: one image (base64 grows it by a third) plus small fields."""
    return settings.image_max_bytes * 4 // 3 + 64 * 1024


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "request_too_large", f"The request body is over {limit} bytes.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, "request_too_large", f"The request body is over {limit} bytes.")
    return bytes(body)


async def _once(data: bytes) -> AsyncGenerator[bytes, None]:
    yield data


async def parse_fields(request: Request, raw: bytes, limit: int) -> dict[str, Any]:
    """The create fields of a multipart, urlencoded or JSON body, as a dict (first value wins).

    Multipart bracket names (`input_reference[image_url]`, as the SDK encodes nested objects)
    are folded into nested dicts so all three encodings validate the same way.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form: FormData
        try:
            if content_type == "multipart/form-data":
                form = await MultiPartParser(
                    request.headers, _once(raw), max_files=4, max_fields=64, max_part_size=limit
                ).parse()
            else:
                form = await FormParser(
                    request.headers, _once(raw), max_fields=64, max_part_size=limit
                ).parse()
        except MultiPartException as error:
            raise ApiError(
                400, "invalid_request", f"Malformed form body: {error.message}"
            ) from None
        data: dict[str, Any] = {}
        for name, value in form.multi_items():
            outer, _, inner = name.partition("[")
            if inner:
                nested = data.setdefault(outer, {})
                if isinstance(nested, dict):
                    nested.setdefault(inner.rstrip("]"), value)
            else:
                data.setdefault(name, value)
        return data
    try:
        parsed = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(
            400,
            "invalid_json",
            "Send the request as multipart/form-data or as a JSON object.",
        ) from None
    if not isinstance(parsed, dict):
        raise ApiError(400, "invalid_json", "The request body must be a JSON object.")
    return parsed


def _invalid(param: str, rule: str) -> ApiError:
    return ApiError(400, "invalid_parameter", f"Invalid '{param}': {rule}.", param=param)


def _text(data: dict[str, Any], name: str) -> str | None:
    """A text field; null or absent is None; a file or a number where text belongs is a 400."""
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _invalid(name, "must be a string")
    return value


# ---------------------------------------------------------------------------------------------
# Models, seconds and sizes


def default_model(models: list[str]) -> str | None:
    """The default route: the Seedance model name when routed, else the first configured one."""
    if DEFAULT_MODEL in models:
        return DEFAULT_MODEL
    return models[0] if models else None


def resolve_model(requested: str | None, models: list[str], *, aliases: tuple[str, ...]) -> str:
    """A configured route name as it is; a foreign name (`sora-2`...) to the default route."""
    if requested is not None and requested in models:
        return requested
    fallback = default_model(models)
    if fallback is not None and (requested is None or requested.lower().startswith(aliases)):
        return fallback
    raise ApiError(
        400,
        "unknown_model",
        f"Unknown model '{requested}'. Use one of: {', '.join(models)} "
        f"(or a name starting with {' / '.join(aliases)} for the default).",
        param="model",
    )


def parse_seconds(value: object) -> int:
    """`"4"`, `"8"`, `"12"` (any whole number 2..12, as a string or a JSON integer)."""
    if value is None:
        return DEFAULT_SECONDS
    if isinstance(value, bool):
        raise _invalid("seconds", f"must be a whole number of seconds from {MIN_SECONDS} to 12")
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or not MIN_SECONDS <= value <= MAX_SECONDS:
        raise _invalid(
            "seconds", f"must be a whole number of seconds from {MIN_SECONDS} to {MAX_SECONDS}"
        )
    return value


def parse_size(value: str | None) -> tuple[int, int]:
    size = DEFAULT_SIZE if value is None else value
    match = _SIZE.match(size)
    if match is None:
        raise _invalid("size", "must be WIDTHxHEIGHT in pixels, e.g. 1280x720 or 720x1280")
    width, height = int(match[1]), int(match[2])
    if not 1 / 4 <= width / height <= 4:
        raise _invalid("size", "must have an aspect ratio between 1:4 and 4:1")
    return width, height


def map_size(
    width: int,
    height: int,
    plan_size: Callable[[str, str], tuple[int, int] | None],
) -> tuple[str, str]:
    """The (quality, ratio) of the routed model nearest a requested WxH.

    The ratio is the named one nearest the request's (log scale); the quality is the one whose
    size, as the routed model would make it (`plan_size`), has the pixel count nearest the
    request's. So 1280x720 is 16:9 720p, 720x1280 is 9:16 720p, 1792x1024 is 16:9 1080p.
    """
    ratio = nearest_named_ratio(width, height)
    wanted = math.log(width * height)
    best: tuple[float, str] | None = None
    for quality in QUALITIES:
        made = plan_size(quality, ratio) or size_for(quality, ratio)
        distance = abs(math.log(made[0] * made[1]) - wanted)
        if best is None or distance < best[0]:
            best = (distance, quality)
    assert best is not None
    return best[1], ratio


def planner_sizes(
    runtime: Any, model: str, duration: int
) -> Callable[[str, str], tuple[int, int] | None]:
    """What the routed model makes for a quality and ratio (None where its plan fails)."""

    def plan_size(quality: str, ratio: str) -> tuple[int, int] | None:
        request = VideoRequest(prompt="", duration=duration, quality=quality, aspect_ratio=ratio)
        try:
            plan = runtime.router.plan(model, request, None)
        except Exception:  # a route that cannot plan a combination falls back to the table
            return None
        return int(plan.width), int(plan.height)

    return plan_size


# ---------------------------------------------------------------------------------------------
# First-frame images: URLs pass through, uploads and data: URLs are stored on disk


def with_face(create: CreateTask, face: str) -> CreateTask:
    """Tag a request with the face it came through, once the core records faces (callbacks)."""
    if any(field.name == "face" for field in fields(create)):
        changes: dict[str, Any] = {"face": face}
        return replace(create, **changes)
    return create


# ---------------------------------------------------------------------------------------------
# The create request


async def parse_create(request: Request, runtime: Any) -> CreateTask:
    """A create body (multipart, urlencoded or JSON) -> a validated CreateTask, or a 400."""
    settings: Settings = runtime.settings
    limit = body_limit(settings)
    data = await parse_fields(request, await read_body(request, limit), limit)
    prompt = _text(data, "prompt")
    if prompt is None:
        raise ApiError(400, "missing_parameter", "Missing required field 'prompt'.", param="prompt")
    if not prompt.strip() or len(prompt) > MAX_PROMPT:
        raise _invalid("prompt", f"must be a non-empty string of at most {MAX_PROMPT} characters")
    model = resolve_model(_text(data, "model"), runtime.router.models(), aliases=("sora",))
    duration = parse_seconds(data.get("seconds"))
    width, height = parse_size(_text(data, "size"))
    quality, ratio = await run_in_threadpool(
        map_size, width, height, planner_sizes(runtime, model, duration)
    )
    callback_url = check_callback_url(_text(data, "callback_url"), settings)
    image_url = await _input_reference(data.get("input_reference"), settings)
    return with_face(
        CreateTask(
            model=model,
            prompt=prompt,
            duration=duration,
            quality=quality,
            aspect_ratio=ratio,
            image_url=image_url,
            callback_url=callback_url,
        ),
        "openai",
    )


async def _input_reference(value: object, settings: Settings) -> str | None:
    """`input_reference`: an uploaded file, or `{"image_url": ...}`; `file_id` is not served."""
    param = "input_reference"
    if value is None:
        return None
    if isinstance(value, UploadFile):
        try:
            data = await value.read(settings.image_max_bytes + 1)
        finally:
            await value.close()
        return await run_in_threadpool(
            save_upload,
            uploads_dir(settings),
            data,
            max_bytes=settings.image_max_bytes,
            max_pixels=settings.image_max_pixels,
            param=param,
        )
    if not isinstance(value, dict):
        raise _invalid(param, "must be an image file or an object with image_url")
    if value.get("file_id") is not None:
        raise _invalid(param, "file_id is not supported here; upload the file or give image_url")
    url = value.get("image_url")
    if url is None:
        raise _invalid(param, "must be an image file or an object with image_url")
    if not isinstance(url, str):
        raise _invalid(param, "image_url must be a string")
    return await run_in_threadpool(image_reference, url, settings, param=param)


# ---------------------------------------------------------------------------------------------
# The video object


def status_of(status: Status) -> str:
    """queued | in_progress | completed | failed (cancelled is failed, with code `cancelled`)."""
    return {
        Status.PENDING: "queued",
        Status.PROCESSING: "in_progress",
        Status.COMPLETED: "completed",
        Status.FAILED: "failed",
        Status.CANCELLED: "failed",
    }[status]


def size_of(view: TaskView) -> str:
    """What the task makes; before an image task starts, the table's size for its ratio."""
    if view.width and view.height:
        return f"{view.width}x{view.height}"
    if view.aspect_ratio in NAMED_RATIOS and view.quality in QUALITIES:
        width, height = size_for(view.quality, view.aspect_ratio)
        return f"{width}x{height}"
    return "auto"


def video_object(view: TaskView) -> dict[str, Any]:
    """OpenAI's `Video` for a task."""
    error: dict[str, Any] | None = None
    if view.status == Status.FAILED:
        error = {"code": view.error_code or "failed", "message": view.error_message or "Failed."}
    elif view.status == Status.CANCELLED:
        error = {"code": "cancelled", "message": "The video was cancelled before it finished."}
    finished = view.finished_at if view.status in TERMINAL else None
    return {
        "id": view.id,
        "object": "video",
        "model": view.model,
        "status": status_of(view.status),
        "progress": view.progress,
        "created_at": view.created,
        "completed_at": int(finished) if finished is not None else None,
        "expires_at": int(view.result_expires_at) if view.result_expires_at else None,
        "prompt": view.prompt,
        "remixed_from_video_id": None,
        "seconds": str(view.duration),
        "size": size_of(view),
        "error": error,
        # opendance extensions (the SDK keeps unknown fields): what was chosen and billed.
        "seed": view.seed,
        "usage": {
            "credits_reserved": view.credits,
            "credits_charged": view.credits_charged,
            "credits_refunded": view.credits_refunded,
        },
    }


def poll_after_ms(view: TaskView) -> int:
    """How long the SDK's poller should wait: a twentieth of the estimate, within bounds."""
    return max(POLL_MIN_MS, min(POLL_MAX_MS, view.estimated_time * 1000 // 20))


def webhook_event(view: TaskView) -> dict[str, Any] | None:
    """The OpenAI webhook event for a finished video (`video.completed` / `video.failed`).

    The event id and time derive from the task's end, so every retry of one delivery carries
    the same event; the core signs it the Standard Webhooks way, as OpenAI does.
    """
    if view.status not in TERMINAL:
        return None
    kind = "video.completed" if view.status == Status.COMPLETED else "video.failed"
    digest = hashlib.sha256(f"{view.id}:{view.status}".encode()).hexdigest()[:24]
    return {
        "id": f"evt_{digest}",
        "object": "event",
        "created_at": int(view.finished_at or view.updated_at),
        "type": kind,
        "data": {"id": view.id},
    }


def webhook_body(view: TaskView) -> str | None:
    """`webhook_event` as the compact JSON text a callback posts."""
    event = webhook_event(view)
    return None if event is None else json.dumps(event, separators=(",", ":"))


# ---------------------------------------------------------------------------------------------
# Routes

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
    runtime = request.app.state.runtime
    create = await parse_create(request, runtime)
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
    runtime = request.app.state.runtime
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


@router.get(
    "/v1/videos/{video_id}",
    summary="Retrieve a video (with the openai-poll-after-ms header while it runs)",
    responses={**_NOT_FOUND, **_RESERVED},
)
def retrieve_video(video_id: VideoId, key: CurrentKey, request: Request) -> JSONResponse:
    view = request.app.state.runtime.service.get_task(key.id, video_id)
    headers = {} if view.status in TERMINAL else {"openai-poll-after-ms": str(poll_after_ms(view))}
    return JSONResponse(video_object(view), headers=headers)


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
) -> FileResponse:
    runtime = request.app.state.runtime
    view = await run_in_threadpool(runtime.service.get_task, key.id, video_id)
    if view.status != Status.COMPLETED:
        raise ApiError(
            404,
            "video_not_ready",
            f"Video '{video_id}' is {status_of(view.status)}; content exists once it is completed.",
            param="video_id",
        )
    path = runtime.results.path_of(view.result_file) if view.result_file else None
    if path is None or not path.exists():
        raise ApiError(
            404,
            "video_content_gone",
            f"The content of video '{video_id}' was deleted or has expired.",
            param="video_id",
        )
    if variant == "video":
        return FileResponse(path, media_type="video/mp4", filename=f"{video_id}.mp4")
    preview = await run_in_threadpool(previews.ensure_preview, path, variant)
    if not path.exists():  # deleted while the preview was being made: leave nothing behind
        previews.delete_previews(path)
        raise ApiError(404, "video_content_gone", f"Video '{video_id}' was just deleted.")
    return FileResponse(
        preview,
        media_type=previews.MEDIA_TYPES[variant],
        filename=f"{video_id}{previews.SUFFIXES[variant]}",
    )


@router.delete(
    "/v1/videos/{video_id}",
    summary="Delete a video (cancelled first if it is still running); then it is a 404",
    responses={**_NOT_FOUND, **_RESERVED},
)
def delete_video(video_id: VideoId, key: CurrentKey, request: Request) -> dict[str, Any]:
    """As OpenAI: the video is gone afterwards (retrieve, content and a second delete: 404).

    Its credits are settled (or refunded by the cancel) as for any task; the ledger keeps them.
    """
    runtime = request.app.state.runtime
    service = runtime.service
    view = service.get_task(key.id, video_id)
    if view.status not in TERMINAL:
        with contextlib.suppress(TaskNotCancellable):  # if it ended meanwhile, delete below
            service.cancel_task(key.id, video_id)
    service.delete_task(key.id, video_id, lambda name: remove_result(runtime.results, name))
    return {"id": video_id, "object": "video.deleted", "deleted": True}


def remove_result(results: Any, relative: str) -> None:
    """Delete a result file and its cached previews."""
    try:
        path = results.path_of(relative)
    except ValueError:
        return
    previews.delete_previews(path)
    results.delete(relative)
