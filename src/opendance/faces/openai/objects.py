"""The OpenAI face's answers: a task as an OpenAI video object (four statuses, progress,
size, seconds), the `openai-poll-after-ms` pacing, and the webhook event a callback posts.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from opendance.faces.openai.requests import (
    POLL_MAX_MS,
    POLL_MIN_MS,
)
from opendance.media.sizes import NAMED_RATIOS, QUALITIES, size_for
from opendance.media.storage import ResultStore
from opendance.tasks.models import TaskView
from opendance.tasks.states import TERMINAL, Status

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
    body: dict[str, Any] = {
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
        "service_tier": view.service_tier,
    }
    if view.execution_expires_after is not None:
        body["execution_expires_after"] = view.execution_expires_after
    if view.queue_position is not None:
        body["queue_position"] = view.queue_position
    return body


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


def callback_body(view: TaskView, _results: ResultStore) -> str | None:
    """The callback this face registers with the runtime: an OpenAI webhook event."""
    return webhook_body(view)
