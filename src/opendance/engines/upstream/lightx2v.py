"""Engine `lightx2v`: LightX2V's own task API (`lightx2v/server`), the home of the 4-step
distilled Wan models.

`POST /v1/tasks/video/` with a JSON `VideoTaskRequest` (`prompt`, `negative_prompt`,
`image_path` as base64, `infer_steps`, `seed`, `target_video_length` in frames, `target_fps`)
answers `{"task_id", "task_status": "pending", "save_result_path"}`; 503 when its in-memory
queue is full (nothing was made). `GET /v1/tasks/{id}/status` gives `status` (pending,
processing, completed, failed, cancelled) and `error`; the request may name the task
(`task_id`, refused when it exists), so opendance names it and a create whose answer never came
is looked up, and sent again only if it never arrived; `GET /v1/tasks/{id}/result` streams the
MP4; `DELETE /v1/tasks/{id}` stops a task. It reports no progress, so progress follows the
estimate. The size comes from the server's own config (or the first frame), and the task
reports what the file really holds.
"""

from __future__ import annotations

import base64
from typing import Any, Final

from pydantic import Field

from opendance.engines.base import VideoJob
from opendance.engines.upstream.pooled import PooledEngine, PooledOptions
from opendance.engines.upstream.wire import MalformedAnswer, TaskSnapshot, png_bytes, quote_id

_CREATE: Final = "/v1/tasks/video/"
_TASKS: Final = "/v1/tasks"
_STATUS: Final[dict[str, str]] = {
    "pending": "queued",
    "processing": "running",
    "completed": "succeeded",
    "failed": "failed",
    "cancelled": "cancelled",
}


class LightX2VOptions(PooledOptions):
    """A route entry of LightX2V servers."""

    max_image_bytes: int = Field(default=10 * 1024 * 1024, gt=0)


class LightX2VEngine(PooledEngine):
    """Jobs on a pool of LightX2V servers."""

    kind = "lightx2v"
    options: LightX2VOptions
    health_path = "/v1/service/status"

    def create_request(self, job: VideoJob) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {
            **self.options.extra_params,
            "prompt": job.prompt,
            "target_video_length": job.frames,
            "target_fps": job.fps,
        }
        if job.seed is not None:
            body["seed"] = job.seed
        image = job.image if job.image is not None else job.source_image
        if image is not None:
            data, _mime = png_bytes(image, self.options.max_image_bytes)
            body["image_path"] = base64.b64encode(data).decode("ascii")
        return _CREATE, body

    def client_task_id(self, client_request_id: str) -> str | None:
        # LightX2V takes the task id from the request and refuses a second task with it.
        return f"od-{client_request_id}"

    def parse_created(self, body: Any) -> str | None:
        if isinstance(body, dict) and isinstance(body.get("task_id"), str):
            return str(body["task_id"])
        return None

    def task_path(self, upstream_id: str) -> str:
        return f"{_TASKS}/{quote_id(upstream_id)}/status"

    def parse_task(self, body: Any) -> TaskSnapshot:
        if not isinstance(body, dict) or not isinstance(body.get("status"), str):
            raise MalformedAnswer("no task status")
        status = str(body["status"])
        error = body.get("error")
        return TaskSnapshot(
            status=_STATUS.get(status, status),
            error_message=error if isinstance(error, str) else None,
        )

    def cancel_request(self, upstream_id: str) -> tuple[str, str] | None:
        return "DELETE", f"{_TASKS}/{quote_id(upstream_id)}"

    def content_path(self, upstream_id: str) -> str | None:
        return f"{_TASKS}/{quote_id(upstream_id)}/result"


def from_options(options: dict[str, Any]) -> LightX2VEngine:
    """Build the engine from a route's options (see `LightX2VOptions`)."""
    return LightX2VEngine(LightX2VOptions.model_validate(options))
