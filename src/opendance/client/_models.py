"""Typed results of the SDK. Unknown fields are kept (newer servers send more)."""

from __future__ import annotations

from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

#: Statuses after which a task never changes again.
TERMINAL_STATUSES: Final[frozenset[str]] = frozenset({"completed", "failed", "cancelled"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class TaskInfo(_Model):
    can_cancel: bool = False
    #: Seconds until done, as the server estimates it now (0 once finished).
    estimated_time: int | None = None
    video_duration: int | None = None
    quality: str | None = None
    aspect_ratio: str | None = None
    #: `"864x480"` once the size is known.
    resolution: str | None = None
    fps: int | None = None
    frames: int | None = None
    #: `default` or `flex` (opendance extension: flex waits for the default tasks, for less).
    service_tier: str | None = None
    #: Seconds from creation by which the task must have started (when it has a deadline).
    execution_expires_after: int | None = None
    #: While pending: how many tasks of its model start before it (0: it is next).
    queue_position: int | None = None


class Usage(_Model):
    billing_rule: str | None = None
    credits_reserved: int | None = None
    user_group: str | None = None


class TaskError(_Model):
    code: str | None = None
    message: str | None = None


class Task(_Model):
    """A video generation task, as `GET /v1/tasks/{id}` answers it."""

    id: str
    object: str = "video.generation.task"
    type: str = "video"
    model: str = ""
    #: pending, processing, completed, failed or cancelled.
    status: str
    #: 0 to 100, never going down; 100 only when completed.
    progress: int = 0
    created: int = 0
    task_info: TaskInfo = Field(default_factory=TaskInfo)
    usage: Usage | None = None
    #: The signed URL of the MP4 when completed (empty once expired).
    results: list[str] = Field(default_factory=list)
    #: When `results` stop working (Unix seconds).
    expires_at: int | None = None
    #: Why it failed (`failed` only).
    error: TaskError | None = None

    _etag: str | None = PrivateAttr(default=None)

    @property
    def etag(self) -> str | None:
        """The ETag of the task read this copy came from (None from a create, a list or an
        event): `get(task)` sends it as If-None-Match."""
        return self._etag

    def __eq__(self, other: Any) -> bool:  # `object` is a field here
        # Where a copy came from is not what the task is: equal fields, equal tasks.
        if not isinstance(other, Task):
            return NotImplemented
        return self.__dict__ == other.__dict__ and self.model_extra == other.model_extra

    @property
    def done(self) -> bool:
        """Whether the task ended (completed, failed or cancelled)."""
        return self.status in TERMINAL_STATUSES

    @property
    def video_url(self) -> str | None:
        return self.results[0] if self.results else None


class TaskPage(_Model):
    """One page of `GET /v1/tasks`, newest first."""

    object: str = "list"
    data: list[Task] = Field(default_factory=list)
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None


class Credits(_Model):
    """The key's balance (credits of running tasks are already taken) and price group."""

    object: str = "credits"
    balance: int
    group: str = "default"
    key_id: str | None = None


class FileObject(_Model):
    """An uploaded image; `id` (`upload:<name>`) goes in `image_urls`."""

    id: str
    object: str = "file"
    bytes: int = 0
    purpose: str = "image"
    filename: str | None = None
    created_at: int | None = None
