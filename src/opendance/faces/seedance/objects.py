"""The Seedance face's task object (`GET /v1/tasks/{id}`, the event stream, callbacks): the
contract's fields, with the signed result URL.
"""

from __future__ import annotations

import json
from typing import Any

from opendance.media.storage import ResultStore
from opendance.tasks.models import TaskView
from opendance.tasks.states import Status


def task_object(view: TaskView, results: ResultStore) -> dict[str, Any]:
    """The contract's task object for a task (also the body of its callback)."""
    task_info: dict[str, Any] = {
        "can_cancel": view.can_cancel,
        "estimated_time": view.estimated_time,
        "video_duration": view.duration,
        "quality": view.quality,
        "aspect_ratio": view.aspect_ratio,
        # opendance extensions: the tier, the deadline, and the place in the queue.
        "service_tier": view.service_tier,
    }
    if view.execution_expires_after is not None:
        task_info["execution_expires_after"] = view.execution_expires_after
    if view.queue_position is not None:
        task_info["queue_position"] = view.queue_position
    if view.width and view.height:
        task_info["resolution"] = f"{view.width}x{view.height}"
        task_info["fps"] = view.fps
        task_info["frames"] = view.frames
    body: dict[str, Any] = {
        "id": view.id,
        "object": "video.generation.task",
        "type": "video",
        "model": view.model,
        "status": str(view.status),
        "progress": view.progress,
        "created": view.created,
        "prompt": view.prompt,
        "seed": view.seed,
        "task_info": task_info,
        "usage": {
            "billing_rule": "per_call",
            "credits_reserved": view.credits,
            "credits_charged": view.credits_charged,
            "credits_refunded": view.credits_refunded,
            "user_group": view.user_group,
        },
    }
    if view.status == Status.COMPLETED:
        urls = []
        if view.result_file and view.result_expires_at:
            urls.append(results.url(view.id, int(view.result_expires_at)))
        body["results"] = urls
        if view.result_expires_at:
            body["expires_at"] = int(view.result_expires_at)
    if view.status == Status.FAILED:
        body["error"] = {"code": view.error_code, "message": view.error_message}
    return body


def callback_body(view: TaskView, results: ResultStore) -> str:
    """The callback this face registers with the runtime: the task object, as `GET` shows it."""
    return json.dumps(task_object(view, results), separators=(",", ":"))
