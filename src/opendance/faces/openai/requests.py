"""The OpenAI face's requests: its error shape, reading multipart / urlencoded / JSON
bodies with a cap, `seconds` and `size` mapped to the routed model, first-frame images, and
the create request as the core's `CreateTask`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from functools import partial
from typing import Any, Final

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import FormParser, MultiPartException, MultiPartParser

from opendance.engines.base import VideoRequest
from opendance.faces.common import (
    body_limit,
    check_callback_url,
    read_body,
    replay,
    resolve_model,
    with_face,
)
from opendance.faces.errors import (
    ApiError,
    error_body,
    route_class_answering_with,
)
from opendance.faces.images import ImageInbox, image_reference, save_upload
from opendance.media.sizes import QUALITIES, nearest_named_ratio, size_for
from opendance.runtime import Runtime
from opendance.settings import (
    DEADLINE_MAX_SECONDS,
    DEADLINE_MIN_SECONDS,
    SERVICE_TIERS,
    Settings,
)
from opendance.tasks.models import CreateTask

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


def owns_path(path: str) -> bool:
    """`/v1/videos` and `/v1/videos/{id}...` are this face's; `/v1/videos/generations` is the
    Seedance face's."""
    if path == "/v1/videos":
        return True
    return path.startswith("/v1/videos/") and not path.startswith("/v1/videos/generations")


# ---------------------------------------------------------------------------------------------
# Request bodies: multipart (what the SDK always sends), urlencoded or JSON, read with a cap


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
                    request.headers, replay(raw), max_files=4, max_fields=64, max_part_size=limit
                ).parse()
            else:
                form = await FormParser(
                    request.headers, replay(raw), max_fields=64, max_part_size=limit
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


def _bounded_int(data: dict[str, Any], name: str, low: int, high: int) -> int | None:
    """A whole number: a JSON integer, or its digits in a form field; null or absent is None."""
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,12}", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _invalid(name, f"must be an integer from {low} to {high}")
    return value


def parse_scheduling(data: dict[str, Any]) -> tuple[str, int | None]:
    """opendance extensions: `service_tier` (default or flex) and `execution_expires_after`."""
    tier = _text(data, "service_tier") or "default"
    if tier not in SERVICE_TIERS:
        raise _invalid("service_tier", "must be one of " + ", ".join(SERVICE_TIERS))
    after = _bounded_int(
        data, "execution_expires_after", DEADLINE_MIN_SECONDS, DEADLINE_MAX_SECONDS
    )
    return tier, after


# ---------------------------------------------------------------------------------------------
# Models, seconds and sizes


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
    runtime: Runtime, model: str, duration: int
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


# ---------------------------------------------------------------------------------------------
# The create request


async def parse_create(request: Request, runtime: Runtime, key_id: str) -> CreateTask:
    """A create body (multipart, urlencoded or JSON) -> a validated CreateTask, or a 400."""
    settings: Settings = runtime.settings
    inbox = ImageInbox(runtime.uploads, key_id, settings)
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
    tier, expires_after = parse_scheduling(data)
    image_url = await _input_reference(data.get("input_reference"), inbox)
    return with_face(
        CreateTask(
            model=model,
            prompt=prompt,
            duration=duration,
            quality=quality,
            aspect_ratio=ratio,
            image_url=image_url,
            callback_url=callback_url,
            service_tier=tier,
            execution_expires_after=expires_after,
        ),
        "openai",
    )


async def _input_reference(value: object, inbox: ImageInbox) -> str | None:
    """`input_reference`: an uploaded file, or `{"image_url": ...}`; `file_id` is not served."""
    param = "input_reference"
    if value is None:
        return None
    if isinstance(value, UploadFile):
        try:
            data = await value.read(inbox.settings.image_max_bytes + 1)
        finally:
            await value.close()
        record = await run_in_threadpool(
            partial(save_upload, inbox, data, param=param, filename=value.filename)
        )
        return record.reference
    if not isinstance(value, dict):
        raise _invalid(param, "must be an image file or an object with image_url")
    if value.get("file_id") is not None:
        raise _invalid(param, "file_id is not supported here; upload the file or give image_url")
    url = value.get("image_url")
    if url is None:
        raise _invalid(param, "must be an image file or an object with image_url")
    if not isinstance(url, str):
        raise _invalid(param, "image_url must be a string")
    return await run_in_threadpool(
        partial(image_reference, url, inbox.settings, param=param, inbox=inbox)
    )
