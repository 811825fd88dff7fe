"""The evolink.ai aggregator, whose task API opendance itself implements.

`POST {base}/v1/videos/generations` (model, prompt, duration, quality, aspect_ratio, image_urls),
then `GET {base}/v1/tasks/{id}` until `completed` (`results[0]` is the video URL) or `failed`
(`error.code`, `error.message`). evolink documents no cancel endpoint; `cancel_path` names one
for upstreams that have it (another opendance: `/v1/tasks/{id}/cancel`). docs/upstreams.md has
the contract and its sources.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import urlsplit

from pydantic import Field

from opendance.engines.base import EngineError, VideoJob
from opendance.engines.upstream.base import UpstreamEngine
from opendance.engines.upstream.errors import (
    UPSTREAM_CANCELLED,
    UPSTREAM_CONTENT_REJECTED,
    UPSTREAM_FAILED,
    UPSTREAM_IMAGE_UNSUPPORTED,
    UPSTREAM_REJECTED,
    UPSTREAM_TIMEOUT,
)
from opendance.engines.upstream.options import UpstreamOptions
from opendance.engines.upstream.wire import MalformedAnswer, TaskSnapshot, quote_id

_CREATE_PATH: Final = "/v1/videos/generations"
# evolink's names -> ours. `cancelled` is not in evolink's documented enum, but opendance (and
# the "request_cancelled" error code) have it, so it ends the task rather than counting as unknown.
_STATUSES: Final = {
    "pending": "queued",
    "processing": "running",
    "completed": "succeeded",
    "failed": "failed",
    "cancelled": "cancelled",
}
# evolink's task error codes (their Error Codes Reference) that are not a plain model failure.
_FAILURE_CODES: Final = {
    "content_policy_violation": UPSTREAM_CONTENT_REJECTED,
    "invalid_parameters": UPSTREAM_REJECTED,
    "image_processing_error": UPSTREAM_REJECTED,
    "image_dimension_mismatch": UPSTREAM_REJECTED,
    "request_cancelled": UPSTREAM_CANCELLED,
    "generation_timeout": UPSTREAM_TIMEOUT,
}


class EvolinkOptions(UpstreamOptions):
    """One evolink route entry."""

    base_url: str = "https://api.evolink.ai"
    upstream_model: str = Field(default="doubao-seedance-1.0-pro-fast", min_length=1)
    cancel_path: str | None = Field(
        default=None,
        description="POST path that cancels a task, with {id}; evolink documents none",
    )


class EvolinkEngine(UpstreamEngine):
    """Runs jobs on evolink (or any server with its task API, opendance included)."""

    kind = "evolink"
    options: EvolinkOptions

    def __init__(self, options: EvolinkOptions, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)

    def create_request(self, job: VideoJob) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {
            "model": self.options.upstream_model,
            "prompt": job.prompt,
            "duration": job.duration,
            "quality": job.quality,
            "aspect_ratio": job.aspect_ratio,
        }
        image_url = job.extra.get("image_url")
        has_image = job.image is not None or job.source_image is not None
        if image_url is not None or has_image:
            # evolink fetches image_urls itself and documents no inline (data:/base64) form, so
            # only a public URL the core vouches for can go; never a data URL or our own file.
            if not isinstance(image_url, str) or urlsplit(image_url).scheme not in (
                "http",
                "https",
            ):
                raise EngineError(
                    UPSTREAM_IMAGE_UNSUPPORTED,
                    "this upstream takes the first frame only as a public image URL, "
                    "and the task has none",
                )
            body["image_urls"] = [image_url]
        return _CREATE_PATH, body

    def parse_created(self, body: Any) -> str | None:
        if isinstance(body, dict) and isinstance(body.get("id"), str):
            return str(body["id"])
        return None

    def task_path(self, upstream_id: str) -> str:
        return f"/v1/tasks/{quote_id(upstream_id)}"

    def parse_task(self, body: Any) -> TaskSnapshot:
        if not isinstance(body, dict) or not isinstance(body.get("status"), str):
            raise MalformedAnswer("no task object with a status")
        raw_status = str(body["status"])
        progress = body.get("progress")
        results = body.get("results")
        video_url = results[0] if isinstance(results, list) and results else None
        error = body.get("error")
        code = message = None
        if isinstance(error, dict):
            raw_code, raw_message = error.get("code"), error.get("message")
            code = str(raw_code) if raw_code is not None else None
            message = raw_message if isinstance(raw_message, str) else None
        return TaskSnapshot(
            status=_STATUSES.get(raw_status, raw_status),
            progress=(
                progress / 100.0
                if isinstance(progress, int | float) and not isinstance(progress, bool)
                else None
            ),
            video_url=video_url if isinstance(video_url, str) else None,
            error_code=code,
            error_message=message,
        )

    def cancel_request(self, upstream_id: str) -> tuple[str, str] | None:
        if self.options.cancel_path is None:
            return None
        return "POST", self.options.cancel_path.replace("{id}", quote_id(upstream_id))

    def is_content_rejection(self, code: str | None) -> bool:
        return code == "content_policy_violation"

    def failure_code(self, code: str | None) -> str:
        return _FAILURE_CODES.get(code or "", UPSTREAM_FAILED)

    def plan_ratio(self, aspect_ratio: str, image_size: tuple[int, int] | None) -> str:
        # evolink keeps the image's own ratio when asked to (image-to-video only).
        if aspect_ratio == "keep_ratio" and image_size is not None:
            return "keep_ratio"
        return super().plan_ratio(aspect_ratio, image_size)


def from_options(options: dict[str, Any]) -> EvolinkEngine:
    """Build the engine from a route's options (see `EvolinkOptions`; `api_key_env` reads the key
    from the environment)."""
    return EvolinkEngine(EvolinkOptions.model_validate(options))
