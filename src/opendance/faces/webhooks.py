"""Callback delivery records and the per-key signing secret."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from opendance.callbacks.signing import ROTATION_GRACE_SECONDS
from opendance.faces.auth import CurrentKey
from opendance.faces.deps import runtime_of
from opendance.faces.errors import KEY_ERRORS, error_responses

router = APIRouter(tags=["Callbacks"], responses=KEY_ERRORS)


@router.get(
    "/v1/tasks/{task_id}/callbacks",
    summary="The task's callback deliveries and attempts",
    responses=error_responses({404: "Unknown task"}),
)
def task_callbacks(task_id: str, key: CurrentKey, request: Request) -> dict[str, Any]:
    runtime = runtime_of(request)
    runtime.service.get_task(key.id, task_id)  # 404 unless it is this key's task
    records = runtime.outbox.deliveries_of(task_id)
    return {
        "object": "list",
        "data": [
            {
                "webhook_id": record.id,
                "url": record.url,
                "event": record.event,
                "status": record.status,
                "attempts": record.attempts,
                "next_attempt_at": record.next_attempt_at,
                "created_at": record.created_at,
                "finished_at": record.finished_at,
                "history": [
                    {
                        "attempt": a.number,
                        "at": a.started_at,
                        "duration_ms": a.duration_ms,
                        "status_code": a.status_code,
                        "error": a.error,
                        "succeeded": a.succeeded,
                    }
                    for a in record.history
                ],
            }
            for record in records
        ],
    }


@router.get("/v1/webhook-secret", summary="The secret that signs this key's callbacks")
def webhook_secret(key: CurrentKey, request: Request) -> dict[str, Any]:
    current, previous = runtime_of(request).accounts.webhook_secret(key.id)
    return {"secret": current, "previous_secret": previous, "scheme": "standard-webhooks v1"}


@router.post("/v1/webhook-secret/rotate", summary="Make a new signing secret")
def rotate_webhook_secret(key: CurrentKey, request: Request) -> dict[str, Any]:
    accounts = runtime_of(request).accounts
    accounts.rotate_webhook_secret(key.id)
    current, previous = accounts.webhook_secret(key.id)
    return {
        "secret": current,
        "previous_secret": previous,
        "previous_valid_for_seconds": ROTATION_GRACE_SECONDS,
    }
