"""Context variables that every log line carries: the request id and the task id."""

from __future__ import annotations

from contextvars import ContextVar

request_id: ContextVar[str | None] = ContextVar("opendance_request_id", default=None)
task_id: ContextVar[str | None] = ContextVar("opendance_task_id", default=None)
