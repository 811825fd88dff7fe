"""The Ark face's answers: a task as an Ark task object (statuses, content, usage in
tokens), and the callback body (the task object itself).
"""

from __future__ import annotations

import json
from typing import Any

from opendance.faces.ark.requests import (
    ARK_STATUS,
    EXPIRED_STATUS,
    FPS,
)
from opendance.media.sizes import NAMED_RATIOS, nearest_named_ratio
from opendance.media.storage import ResultStore
from opendance.tasks.models import TaskView
from opendance.tasks.states import Status

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
        "status": EXPIRED_STATUS if view.expired else ARK_STATUS[view.status],
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
        "service_tier": view.service_tier,
        "execution_expires_after": view.execution_expires_after,
        "generate_audio": False,
        "draft": False,
    }
    if view.status == Status.COMPLETED and view.result_file and view.result_expires_at:
        body["content"] = {"video_url": results.url(view.id, int(view.result_expires_at))}
    if view.status == Status.FAILED:
        body["error"] = {"code": view.error_code, "message": view.error_message}
    if view.queue_position is not None:
        body["queue_position"] = view.queue_position  # opendance extension
    return body


def callback_body(view: TaskView, results: ResultStore) -> str:
    """Ark posts the task object itself to `callback_url`; the core signs it."""
    return json.dumps(task_object(view, results), separators=(",", ":"))
