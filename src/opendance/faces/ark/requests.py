"""The Ark face's requests: its error shape and codes, the `content` array, text commands
(`--rs 720p --dur 5`), and the create request as the core's `CreateTask`.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any, Final

from fastapi.responses import JSONResponse

from opendance.faces.common import (
    check_callback_url,
    resolve_model,
    with_face,
)
from opendance.faces.errors import ApiError, route_class_answering_with
from opendance.faces.images import ImageInbox, image_reference
from opendance.media.sizes import NAMED_RATIOS, QUALITIES
from opendance.settings import (
    DEADLINE_MAX_SECONDS,
    DEADLINE_MIN_SECONDS,
    SERVICE_TIERS,
    Settings,
)
from opendance.tasks.models import CreateTask
from opendance.tasks.states import Status

TAG: Final[str] = "Ark tasks API"
PREFIX: Final[str] = "/api/v3/contents/generations/tasks"
DEFAULT_DURATION: Final[int] = 5
DEFAULT_RESOLUTION: Final[str] = "1080p"
FPS: Final[int] = 24
#: Ark's default for `execution_expires_after` (48 h), where the server sets no default.
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
#: A task that did not start by its deadline: failed (code `expired`) inside, `expired` here.
EXPIRED_STATUS: Final[str] = "expired"

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


def parse_create(
    data: dict[str, Any],
    models: list[str],
    settings: Settings,
    inbox: ImageInbox | None = None,
) -> CreateTask:
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
    tier = _str(data.get("service_tier"), "service_tier") or "default"
    if tier not in SERVICE_TIERS:
        raise _invalid("service_tier", "must be one of " + ", ".join(SERVICE_TIERS))
    expires_after = _int(
        data.get("execution_expires_after"),
        "execution_expires_after",
        DEADLINE_MIN_SECONDS,
        DEADLINE_MAX_SECONDS,
    )
    if expires_after is None:
        expires_after = settings.execution_expires_after.get(tier, EXECUTION_EXPIRES_AFTER)
    callback_url = check_callback_url(_str(data.get("callback_url"), "callback_url"), settings)
    image_url = (
        image_reference(image, settings, param="content.image_url", inbox=inbox)
        if image is not None
        else None
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
            service_tier=tier,
            execution_expires_after=expires_after,
        ),
        "ark",
    )
