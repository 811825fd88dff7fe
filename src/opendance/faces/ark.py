"""The Ark tasks API face: `/api/v3/contents/generations/tasks` as BytePlus's Ark SDK calls it.

A thin adapter over the one task service (same ids, store, ledger and lifecycle as the other
faces). The create body is Ark's: a `content` array (one text part, at most one first-frame
image) plus optional JSON fields, where the official SDK sends every optional key as `null`, so
`null` always means "not given". Text commands (`--rs 720p --dur 5` ...) are read from the text
and stripped from the prompt; where a JSON field and a command both set a value, the JSON field
wins. Errors use Ark's body and codes (`InvalidParameter`, `AuthenticationError`, ...).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from typing import Annotated, Any, Final

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from opendance.faces.auth import CurrentKey
from opendance.faces.common import check_callback_url
from opendance.faces.errors import ApiError, error_responses, route_class_answering_with
from opendance.faces.guards import guarded_create
from opendance.faces.images import image_reference
from opendance.faces.openai import (
    body_limit,
    read_body,
    remove_result,
    resolve_model,
    with_face,
)
from opendance.media.sizes import NAMED_RATIOS, QUALITIES, nearest_named_ratio
from opendance.media.storage import ResultStore
from opendance.settings import Settings
from opendance.tasks.errors import TaskNotCancellable
from opendance.tasks.models import CreateTask, TaskView
from opendance.tasks.states import Status

TAG: Final[str] = "Ark tasks API"
PREFIX: Final[str] = "/api/v3/contents/generations/tasks"
DEFAULT_DURATION: Final[int] = 5
DEFAULT_RESOLUTION: Final[str] = "1080p"
FPS: Final[int] = 24
#: Ark's default for `execution_expires_after` (48 h), reported as is.
EXECUTION_EXPIRES_AFTER: Final[int] = 172800
MAX_PROMPT: Final[int] = 2000
#: Ark model ids (and endpoint ids) that mean "the default route" when not configured by name.
MODEL_ALIASES: Final[tuple[str, ...]] = (
    "seedance",
    "doubao-seedance",
    "bytedance-seedance",
    "ep-",
)

#: Task status -> Ark status, and back (for `filter.status`).
ARK_STATUS: Final[dict[Status, str]] = {
    Status.PENDING: "queued",
    Status.PROCESSING: "running",
    Status.COMPLETED: "succeeded",
    Status.FAILED: "failed",
    Status.CANCELLED: "cancelled",
}
FROM_ARK_STATUS: Final[dict[str, Status]] = {name: status for status, name in ARK_STATUS.items()}

#: Text command (long and short names) -> the JSON field it sets.
COMMANDS: Final[dict[str, str]] = {
    "resolution": "resolution",
    "rs": "resolution",
    "ratio": "ratio",
    "rt": "ratio",
    "duration": "duration",
    "dur": "duration",
    "frames": "frames",
    "framespersecond": "framespersecond",
    "fps": "framespersecond",
    "seed": "seed",
    "camerafixed": "camera_fixed",
    "cf": "camera_fixed",
    "watermark": "watermark",
    "wm": "watermark",
}
_COMMAND: Final = re.compile(r"(?<!\S)--([A-Za-z]+)[ \t]+(\S+)")

# ---------------------------------------------------------------------------------------------
# Errors in Ark's shape

#: (HTTP status, core code) -> (HTTP status, Ark code, Ark type). Status-only keys use code "".
_ARK_ERRORS: Final[dict[tuple[int, str], tuple[int, str, str]]] = {
    (400, "missing_parameter"): (400, "MissingParameter", "BadRequest"),
    (400, "unknown_model"): (404, "InvalidEndpointOrModel.NotFound", "NotFound"),
    (400, ""): (400, "InvalidParameter", "BadRequest"),
    (401, ""): (401, "AuthenticationError", "Unauthorized"),
    (402, ""): (403, "AccountOverdueError", "Forbidden"),
    (403, ""): (403, "AccessDenied", "Forbidden"),
    (404, ""): (404, "ResourceNotFound", "NotFound"),
    (405, ""): (405, "MethodNotAllowed", "BadRequest"),
    (409, ""): (409, "InvalidTaskStatus", "Conflict"),
    (413, ""): (413, "RequestTooLarge", "BadRequest"),
    (429, ""): (429, "RateLimitExceeded", "TooManyRequests"),
    (503, ""): (503, "ServerOverloaded", "ServiceUnavailable"),
}


def ark_error_response(error: ApiError) -> JSONResponse:
    """`{"error": {"code", "message", "param", "type"}}` with Ark's codes and statuses.

    Conflicts carry `x-should-retry: false`: the SDK retries 409 otherwise.
    """
    status, code, kind = _ARK_ERRORS.get(
        (error.status, error.code),
        _ARK_ERRORS.get(
            (error.status, ""), (error.status, "InternalServiceError", "InternalError")
        ),
    )
    headers = dict(error.headers)
    headers.pop("WWW-Authenticate", None)
    if status == 409:
        headers["x-should-retry"] = "false"
    body = {
        "error": {"code": code, "message": error.message, "param": error.param or "", "type": kind}
    }
    return JSONResponse(body, status_code=status, headers=headers)


ArkRoute = route_class_answering_with(ark_error_response)


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


# ---------------------------------------------------------------------------------------------
# The create request


def _invalid(param: str, rule: str) -> ApiError:
    return ApiError(400, "invalid_parameter", f"Invalid '{param}': {rule}.", param=param)


def parse_commands(text: str) -> tuple[str, dict[str, str]]:
    """The prompt without its known `--name value` commands, and those commands by JSON field.

    Unknown `--words` stay in the prompt; a repeated command keeps its first value.
    """
    found: dict[str, str] = {}

    def take(match: re.Match[str]) -> str:
        field = COMMANDS.get(match[1].lower())
        if field is None:
            return match[0]
        found.setdefault(field, match[2])
        return ""

    prompt = _COMMAND.sub(take, text)
    return " ".join(prompt.split()), found


def _command_value(field: str, raw: str) -> object:
    """A command's text value as the JSON field's type (ints and bools), else left as text."""
    if field in ("duration", "frames", "framespersecond", "seed"):
        return int(raw) if re.fullmatch(r"-?[0-9]+", raw) else raw
    if field in ("camera_fixed", "watermark"):
        return {"true": True, "false": False}.get(raw.lower(), raw)
    return raw


def _int(value: object, param: str, low: int, high: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _invalid(param, f"must be an integer from {low} to {high}")
    return value


def _bool(value: object, param: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise _invalid(param, "must be true or false")
    return value


def _str(value: object, param: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise _invalid(param, "must be a string")
    return value


@dataclass(frozen=True)
class Content:
    """The `content` array, read: the text (commands included) and the first frame's URL."""

    text: str
    image_url: str | None


def parse_content(value: object) -> Content:
    if value is None:
        raise ApiError(
            400, "missing_parameter", "Missing required field 'content'.", param="content"
        )
    if not isinstance(value, list) or not value:
        raise _invalid("content", "must be a non-empty array of content parts")
    texts: list[str] = []
    images: list[str] = []
    for index, part in enumerate(value):
        where = f"content[{index}]"
        if not isinstance(part, dict):
            raise _invalid(where, "must be an object with a type")
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise _invalid(f"{where}.text", "must be a string")
            texts.append(text)
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else None
            if not isinstance(url, str):
                raise _invalid(f"{where}.image_url.url", "must be a URL string")
            role = part.get("role")
            if role not in (None, "first_frame"):
                raise _invalid(
                    f"{where}.role",
                    "only first_frame is supported (last_frame and reference_image are not)",
                )
            images.append(url)
        else:
            raise _invalid(f"{where}.type", "must be text or image_url")
    if len(texts) > 1:
        raise _invalid("content", "must have at most one text part")
    if len(images) > 1:
        raise _invalid("content", "must have at most one image_url part (the first frame)")
    return Content(texts[0] if texts else "", images[0] if images else None)


def parse_create(data: dict[str, Any], models: list[str], settings: Settings) -> CreateTask:
    """An Ark create body -> a validated CreateTask (null is "not given" for every key)."""
    requested = _str(data.get("model"), "model")
    if requested is None:
        raise ApiError(400, "missing_parameter", "Missing required field 'model'.", param="model")
    model = resolve_model(requested, models, aliases=MODEL_ALIASES)
    content = parse_content(data.get("content"))
    prompt, commands = parse_commands(content.text)
    if not prompt or len(prompt) > MAX_PROMPT:
        raise _invalid(
            "content",
            f"the text part must hold a prompt of 1 to {MAX_PROMPT} characters "
            "(besides its --commands)",
        )
    fields: dict[str, object] = {f: _command_value(f, raw) for f, raw in commands.items()}
    for name in ("resolution", "ratio", "duration", "frames", "seed", "camera_fixed", "watermark"):
        if data.get(name) is not None:
            fields[name] = data[name]  # the JSON field wins over a text command

    resolution = _str(fields.get("resolution"), "resolution")
    quality = (resolution or DEFAULT_RESOLUTION).lower()
    if quality not in QUALITIES:
        raise _invalid("resolution", "must be one of 480p, 720p, 1080p")
    image = content.image_url
    ratio = _str(fields.get("ratio"), "ratio") or ("adaptive" if image else "16:9")
    if ratio not in (*NAMED_RATIOS, "adaptive"):
        raise _invalid("ratio", "must be one of 16:9, 4:3, 1:1, 3:4, 9:16, 21:9, adaptive")
    if ratio == "adaptive" and image is None:
        ratio = "16:9"  # text-to-video has no image to adapt to: Ark's text-to-video default
    duration = _int(fields.get("duration"), "duration", -1, 12)
    if duration is not None and 0 <= duration < 2:
        raise _invalid("duration", "must be an integer from 2 to 12, or -1 (the default)")
    frames = _int(fields.get("frames"), "frames", 29, 289)
    if frames is not None:
        if (frames - 25) % 4:
            raise _invalid("frames", "must be 25 + 4n, from 29 to 289")
        duration = max(2, min(12, round(frames / FPS)))  # frames win over duration
    fps = _int(fields.get("framespersecond"), "framespersecond", FPS, FPS)
    del fps  # only 24 is accepted, and 24 is what every engine makes
    seed = _int(fields.get("seed"), "seed", -1, 2**32 - 1)
    if seed == -1:
        seed = secrets.randbelow(2**32)
    for flag in ("camera_fixed", "watermark", "return_last_frame", "generate_audio", "draft"):
        _bool(fields.get(flag, data.get(flag)), flag)
    callback_url = check_callback_url(_str(data.get("callback_url"), "callback_url"), settings)
    image_url = (
        image_reference(image, settings, param="content.image_url") if image is not None else None
    )
    return with_face(
        CreateTask(
            model=model,
            prompt=prompt,
            duration=DEFAULT_DURATION if duration in (None, -1) else int(duration),
            quality=quality,
            aspect_ratio=ratio,
            image_url=image_url,
            callback_url=callback_url,
            seed=seed,
        ),
        "ark",
    )


# ---------------------------------------------------------------------------------------------
# The task object


def ratio_of(view: TaskView) -> str:
    """The ratio made: as asked, or for adaptive the named ratio nearest the real size."""
    if view.aspect_ratio in NAMED_RATIOS:
        return view.aspect_ratio
    if view.width and view.height:
        return nearest_named_ratio(view.width, view.height)
    return "adaptive"


def tokens_of(view: TaskView) -> int:
    """Ark bills tokens = width x height x frames / 1024; an upstream's own count wins."""
    usage = view.usage or {}
    reported = usage.get("completion_tokens")
    if isinstance(reported, int) and not isinstance(reported, bool):
        return reported
    if view.status == Status.COMPLETED and view.width and view.height and view.frames:
        return view.width * view.height * view.frames // 1024
    return 0


def task_object(view: TaskView, results: ResultStore) -> dict[str, Any]:
    """Ark's `ContentGenerationTask` for a task (also its callback body)."""
    tokens = tokens_of(view)
    body: dict[str, Any] = {
        "id": view.id,
        "model": view.model,
        "status": ARK_STATUS[view.status],
        "error": None,
        "content": None,
        "usage": {
            "completion_tokens": tokens,
            "total_tokens": tokens,
            # opendance extensions: the credits this server reserved, charged and refunded.
            "credits_reserved": view.credits,
            "credits_charged": view.credits_charged,
            "credits_refunded": view.credits_refunded,
        },
        "created_at": view.created,
        "updated_at": int(view.updated_at),
        "seed": view.seed,
        "resolution": view.quality,
        "ratio": ratio_of(view),
        "duration": view.duration,
        "frames": view.frames,
        "framespersecond": view.fps or FPS,
        "service_tier": "default",
        "execution_expires_after": EXECUTION_EXPIRES_AFTER,
        "generate_audio": False,
        "draft": False,
    }
    if view.status == Status.COMPLETED and view.result_file and view.result_expires_at:
        body["content"] = {"video_url": results.url(view.id, int(view.result_expires_at))}
    if view.status == Status.FAILED:
        body["error"] = {"code": view.error_code, "message": view.error_message}
    return body


def callback_body(view: TaskView, results: ResultStore) -> str:
    """Ark posts the task object itself to `callback_url`; the core signs it."""
    return json.dumps(task_object(view, results), separators=(",", ":"))


# ---------------------------------------------------------------------------------------------
# Routes

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
    runtime = request.app.state.runtime
    raw = await read_body(request, body_limit(runtime.settings))
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "invalid_json", "The request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "The request body must be a JSON object.")
    create = await run_in_threadpool(parse_create, data, runtime.router.models(), runtime.settings)
    view, headers = await guarded_create(request, key, create, hashlib.sha256(raw).hexdigest())
    return JSONResponse({"id": view.id}, headers=headers)


@router.get(
    PREFIX + "/{task_id}",
    summary="Query a video generation task",
    responses={
        200: {"content": {"application/json": {"example": _TASK_EXAMPLE}}},
        **error_responses({404: "ResourceNotFound"}),
    },
)
def get_task(task_id: str, key: CurrentKey, request: Request) -> dict[str, Any]:
    runtime = request.app.state.runtime
    return task_object(runtime.service.get_task(key.id, task_id), runtime.results)


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
    runtime = request.app.state.runtime
    statuses = None
    if status is not None:
        if status not in (*FROM_ARK_STATUS, "expired"):
            raise _invalid(
                "filter.status", "must be one of queued, running, cancelled, succeeded, failed"
            )
        if status == "expired":  # opendance tasks never expire before they end
            return {"total": 0, "items": []}
        statuses = [FROM_ARK_STATUS[status]]
    if service_tier not in (None, "default"):
        return {"total": 0, "items": []}  # every task here runs on the default tier
    views, total = runtime.service.page_tasks(
        key.id,
        offset=(page_num - 1) * page_size,
        limit=page_size,
        statuses=statuses,
        task_ids=task_ids,
        models=[model] if model else None,
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
    runtime = request.app.state.runtime
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
