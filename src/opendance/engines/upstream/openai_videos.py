"""Engine `openai_videos`: inference servers that speak the OpenAI-style `/v1/videos` API.

SGLang diffusion (`sglang serve`), vLLM-Omni (`vllm serve --omni`) and FastVideo's server all
take `POST /v1/videos`, answer a video object (`id`, `status`, `progress` 0..100), serve it at
`GET /v1/videos/{id}` and the MP4 at `GET /v1/videos/{id}/content`, and `DELETE` the record.
They differ in the details, which the route's `flavor` names (docs/engines.md has the table and
the sources it was read from):

- sglang, fastvideo: a JSON create (multipart with an `input_reference` file for a first
  frame); statuses queued, completed, failed; DELETE forgets the record (it does not abort).
- vllm_omni: a multipart form only (fields as text, `input_reference` a file); statuses queued,
  in_progress, completed, failed; DELETE aborts the job.

`auto` sends JSON, and the same create as multipart when the server answers 415 or 422 (a
refused create made nothing, so sending it again is safe).
"""

from __future__ import annotations

import json
from typing import Any, Final, Literal

import httpx
from pydantic import Field

from opendance.engines.base import VideoJob
from opendance.engines.upstream.pooled import PooledEngine, PooledOptions
from opendance.engines.upstream.wire import MalformedAnswer, TaskSnapshot, png_bytes, quote_id

_VIDEOS: Final = "/v1/videos"
#: Their statuses in ours (`queued`, `running`, `succeeded`, `failed`, `cancelled`).
_STATUS: Final[dict[str, str]] = {
    "queued": "queued",
    "pending": "queued",
    "in_progress": "running",
    "processing": "running",
    "running": "running",
    "completed": "succeeded",
    "succeeded": "succeeded",
    "failed": "failed",
    "cancelled": "cancelled",
    "canceled": "cancelled",
}
Flavor = Literal["auto", "sglang", "vllm_omni", "fastvideo"]
#: Fields a multipart create carries as files, not text.
_FILE_FIELD: Final = "input_reference"


class OpenAIVideosOptions(PooledOptions):
    """A route entry of `openai_videos` servers."""

    flavor: Flavor = "auto"
    max_image_bytes: int = Field(default=10 * 1024 * 1024, gt=0)


class OpenAIVideosEngine(PooledEngine):
    """Jobs on a pool of OpenAI-style video servers; see the module for the dialects."""

    kind = "openai_videos"
    options: OpenAIVideosOptions

    def create_request(self, job: VideoJob) -> tuple[str, dict[str, Any]]:
        opts = self.options
        body: dict[str, Any] = {
            **opts.extra_params,
            "prompt": job.prompt,
            "size": f"{job.width}x{job.height}",
            "seconds": job.duration,
            "fps": job.fps,
            "num_frames": job.frames,
        }
        if opts.upstream_model != "default":
            body["model"] = opts.upstream_model
        if job.seed is not None:
            body["seed"] = job.seed
        image = job.image if job.image is not None else job.source_image
        if image is not None:
            data, mime = png_bytes(image, opts.max_image_bytes)
            body[_FILE_FIELD] = (f"first-frame.{mime.rsplit('/', 1)[-1]}", data, mime)
        return _VIDEOS, body

    def send_create(
        self, api: httpx.Client, path: str, body: dict[str, Any], headers: dict[str, str]
    ) -> httpx.Response:
        multipart = self.options.flavor == "vllm_omni" or _FILE_FIELD in body
        if multipart:
            return _post_multipart(api, path, body, headers)
        response = api.post(path, json=body, headers=headers)
        if self.options.flavor == "auto" and response.status_code in (415, 422):
            return _post_multipart(api, path, body, headers)
        return response

    def parse_created(self, body: Any) -> str | None:
        if isinstance(body, dict) and isinstance(body.get("id"), str):
            return str(body["id"])
        return None

    def task_path(self, upstream_id: str) -> str:
        return f"{_VIDEOS}/{quote_id(upstream_id)}"

    def parse_task(self, body: Any) -> TaskSnapshot:
        if not isinstance(body, dict) or not isinstance(body.get("status"), str):
            raise MalformedAnswer("no video object with a status")
        status = str(body["status"])
        raw_progress = body.get("progress")
        progress = (
            min(100.0, max(0.0, float(raw_progress))) / 100
            if isinstance(raw_progress, int | float) and not isinstance(raw_progress, bool)
            else None
        )
        error = body.get("error")
        code = message = None
        if isinstance(error, dict):
            code = str(error["code"]) if error.get("code") is not None else None
            message = error.get("message") if isinstance(error.get("message"), str) else None
        elif isinstance(error, str):
            message = error
        mapped = _STATUS.get(status, status)
        if mapped == "queued" and self.options.flavor != "vllm_omni" and not progress:
            # SGLang and FastVideo say `queued` (progress 0) until the job is done, also while it
            # runs; it holds only our jobs, so it is running, and progress follows the estimate.
            mapped, progress = "running", None
        return TaskSnapshot(
            status=mapped,
            progress=progress,
            error_code=code,
            error_message=message,
        )

    def cancel_request(self, upstream_id: str) -> tuple[str, str] | None:
        # vLLM-Omni aborts the job; SGLang and FastVideo only forget it (the GPU finishes it).
        return "DELETE", self.task_path(upstream_id)

    def content_path(self, upstream_id: str) -> str | None:
        return f"{self.task_path(upstream_id)}/content"

    def remove_request(self, upstream_id: str) -> tuple[str, str] | None:
        return "DELETE", self.task_path(upstream_id)


def _post_multipart(
    api: httpx.Client, path: str, body: dict[str, Any], headers: dict[str, str]
) -> httpx.Response:
    """The create as `multipart/form-data`: files as file parts, the rest as text fields (a
    part without a file name), so the body is multipart even without a file."""
    parts: dict[str, Any] = {}
    for name, value in body.items():
        if isinstance(value, tuple):
            parts[name] = value
        elif isinstance(value, dict | list):
            parts[name] = (None, json.dumps(value))
        else:
            parts[name] = (None, str(value))
    return api.post(path, files=parts, headers=headers)


def from_options(options: dict[str, Any]) -> OpenAIVideosEngine:
    """Build the engine from a route's options (see `OpenAIVideosOptions`)."""
    return OpenAIVideosEngine(OpenAIVideosOptions.model_validate(options))
