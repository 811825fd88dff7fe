"""The Seedance face's create request: the contract's body, checked strictly (no "5" for 5,
no 5.5, no "1080P") and read as the core's `CreateTask`; every bad input is a 400 naming the
field and its rule. Unknown fields are ignored.
"""

from __future__ import annotations

import secrets
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from opendance.faces.common import check_callback_url, json_object
from opendance.faces.errors import ApiError
from opendance.faces.images import ImageInbox, image_reference
from opendance.media.sizes import IMAGE_ONLY_RATIOS
from opendance.settings import (
    DEADLINE_MAX_SECONDS,
    DEADLINE_MIN_SECONDS,
    DEFAULT_MODEL,
    Settings,
)
from opendance.tasks.models import CreateTask

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
    service_tier: Literal["default", "flex"] | None = Field(
        default=None,
        description="opendance extension: `flex` runs only when no `default` task of the model "
        "waits, at a lower price (half by default).",
    )
    execution_expires_after: StrictInt | None = Field(
        default=None,
        ge=DEADLINE_MIN_SECONDS,
        le=DEADLINE_MAX_SECONDS,
        description="opendance extension: seconds from creation by which the task must have "
        "started; else it fails with `error.code` `expired` and is refunded.",
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
    "service_tier": "must be default or flex",
    "execution_expires_after": f"must be an integer from {DEADLINE_MIN_SECONDS} to "
    f"{DEADLINE_MAX_SECONDS} (seconds)",
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
    data = json_object(raw)
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
        service_tier=body.service_tier or "default",
        execution_expires_after=body.execution_expires_after,
    )
