"""What every face's create goes through: the create rate limit and `Idempotency-Key`."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from functools import partial

from fastapi import Request

from opendance.faces.errors import ApiError
from opendance.faces.offload import run_on
from opendance.tasks.models import CreateTask, KeyInfo, TaskView


def idempotency_key_of(request: Request) -> str | None:
    """The `Idempotency-Key` header, checked: 1 to 255 printable characters."""
    value = request.headers.get("idempotency-key")
    if value is None:
        return None
    if not 1 <= len(value) <= 255 or not value.isprintable():
        raise ApiError(
            400,
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 255 printable characters.",
            param="Idempotency-Key",
        )
    return value


def request_fingerprint(create: CreateTask) -> str:
    """A hash of what a create asks for (for faces whose raw body is not at hand)."""
    return hashlib.sha256(json.dumps(asdict(create), sort_keys=True).encode()).hexdigest()


async def guarded_create(
    request: Request, key: KeyInfo, create: CreateTask, fingerprint: str | None = None
) -> tuple[TaskView, dict[str, str]]:
    """Create a task under the key's create limit and the request's Idempotency-Key.

    Returns the task and the headers to send (rate-limit headers, `Idempotent-Replayed`).
    """
    runtime = request.app.state.runtime
    headers: dict[str, str] = dict(runtime.limiter.check(key.id, "create"))
    view, replayed = await run_on(
        runtime.db.create_executor,
        partial(
            runtime.service.create_task_once,
            key,
            create,
            idempotency_key=idempotency_key_of(request),
            request_hash=fingerprint or request_fingerprint(create),
        ),
    )
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return view, headers
