"""The hosted Seedance itself: BytePlus ModelArk / Volcengine Ark's video generation task API.

`POST {base}/contents/generations/tasks` with a `content` array (a text part, and the first
frame as an `image_url` part), then `GET {base}/contents/generations/tasks/{id}` until the task is
`succeeded` (`content.video_url`, `usage` tokens), `failed`, `cancelled` or `expired`;
`DELETE` the same path cancels a queued or running task. docs/upstreams.md has the contract and
its sources.
"""

from __future__ import annotations

import re
from typing import Any, Final

from pydantic import Field

from opendance.engines.base import VideoJob
from opendance.engines.upstream.base import UpstreamEngine
from opendance.engines.upstream.options import UpstreamOptions
from opendance.engines.upstream.wire import MalformedAnswer, TaskSnapshot, png_data_url, quote_id

_TASKS_PATH: Final = "/contents/generations/tasks"
# Ark's refusals of unsafe input or output: `InputTextSensitiveContentDetected`,
# `OutputVideoSensitiveContentDetected`, `InputImageRiskDetection`, `...PrivacyInformation`.
_CONTENT_CODE: Final = re.compile(r"Sensitive|RiskDetection|PrivacyInformation", re.IGNORECASE)
# Ark reads `--resolution 1080p`, `--dur 12`, `--wm true` ... out of the prompt text. A client's
# prompt must not change what we priced, so such commands are defused (`--x` -> `–x`).
_TEXT_COMMAND: Final = re.compile(r"(?<!\S)--(?=[A-Za-z])")


class ArkOptions(UpstreamOptions):
    """One Ark route entry: where, with which key, which model, and the polling limits."""

    base_url: str = "https://ark.ap-southeast.bytepluses.com/api/v3"
    upstream_model: str = Field(
        default="seedance-1-0-pro-fast-251015", min_length=1, description="Model or endpoint id"
    )
    reported_model: str | None = "doubao-seedance-1.0-pro-fast"
    watermark: bool = False
    max_image_bytes: int = Field(
        default=20 * 1024 * 1024, gt=0, description="Largest first-frame image sent inline"
    )


def defuse_text_commands(prompt: str) -> str:
    """The prompt with Ark's `--param value` text commands made inert."""
    return _TEXT_COMMAND.sub("\u2013", prompt)


class ArkEngine(UpstreamEngine):
    """Runs jobs on Ark with the route's own key; see `UpstreamEngine` for the state it keeps."""

    kind = "ark"
    options: ArkOptions

    def __init__(self, options: ArkOptions, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)

    def create_request(self, job: VideoJob) -> tuple[str, dict[str, Any]]:
        content: list[dict[str, Any]] = [{"type": "text", "text": defuse_text_commands(job.prompt)}]
        image = job.source_image if job.source_image is not None else job.image
        ratio = job.aspect_ratio
        if image is not None:
            content.append(
                {
                    "type": "image_url",
                    "image_url": {"url": png_data_url(image, self.options.max_image_bytes)},
                    "role": "first_frame",
                }
            )
            if ratio == "keep_ratio":
                ratio = "adaptive"
        body: dict[str, Any] = {
            "model": self.options.upstream_model,
            "content": content,
            "resolution": job.quality,
            "ratio": ratio,
            "duration": job.duration,
            "watermark": self.options.watermark,
        }
        if job.seed is not None:
            body["seed"] = job.seed
        return _TASKS_PATH, body

    def parse_created(self, body: Any) -> str | None:
        if isinstance(body, dict) and isinstance(body.get("id"), str):
            return str(body["id"])
        return None

    def task_path(self, upstream_id: str) -> str:
        return f"{_TASKS_PATH}/{quote_id(upstream_id)}"

    def parse_task(self, body: Any) -> TaskSnapshot:
        if not isinstance(body, dict) or not isinstance(body.get("status"), str):
            raise MalformedAnswer("no task object with a status")
        content = body.get("content")
        video_url = content.get("video_url") if isinstance(content, dict) else None
        error = body.get("error")
        code = message = None
        if isinstance(error, dict):
            raw_code, raw_message = error.get("code"), error.get("message")
            code = str(raw_code) if raw_code is not None else None
            message = raw_message if isinstance(raw_message, str) else None
        raw_usage = body.get("usage")
        usage = {
            key: raw_usage[key]
            for key in ("completion_tokens", "total_tokens")
            if isinstance(raw_usage, dict) and isinstance(raw_usage.get(key), int)
        }
        return TaskSnapshot(
            status=str(body["status"]),
            video_url=video_url if isinstance(video_url, str) else None,
            error_code=code,
            error_message=message,
            usage=usage,
        )

    def cancel_request(self, upstream_id: str) -> tuple[str, str] | None:
        return "DELETE", self.task_path(upstream_id)

    def is_content_rejection(self, code: str | None) -> bool:
        return bool(code and _CONTENT_CODE.search(code))

    def plan_ratio(self, aspect_ratio: str, image_size: tuple[int, int] | None) -> str:
        # Ark has no "keep the image's ratio": keep_ratio goes as adaptive (nearest ratio).
        if aspect_ratio == "keep_ratio":
            aspect_ratio = "adaptive"
        return super().plan_ratio(aspect_ratio, image_size)


def from_options(options: dict[str, Any]) -> ArkEngine:
    """Build the engine from a route's options (see `ArkOptions`; `api_key_env` reads the key
    from the environment)."""
    return ArkEngine(ArkOptions.model_validate(options))
