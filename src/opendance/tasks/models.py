"""Domain types of the task service (no HTTP, no SQL rows leak out of the service)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from opendance.tasks.states import Status

#: The error code of a task that did not start by its deadline (Ark's status `expired`).
EXPIRED = "expired"


@dataclass(frozen=True)
class KeyInfo:
    """An authenticated API key."""

    id: str
    group: str
    name: str | None = None


@dataclass(frozen=True)
class CreateTask:
    """A validated create request (every face maps its wire format to this)."""

    model: str
    prompt: str
    duration: int
    quality: str
    aspect_ratio: str
    image_url: str | None = None
    callback_url: str | None = None
    seed: int | None = None
    #: The API face the task came through: "seed", "openai" or "ark" (its callback's format).
    face: str = "seed"
    #: "default", or "flex": runs only when no default task of its model waits, cheaper.
    service_tier: str = "default"
    #: Seconds from creation by which the task must have started, else it expires (refunded);
    #: None: the server's default for the tier, if any.
    execution_expires_after: int | None = None


@dataclass(frozen=True)
class TaskView:
    """A task as its owner sees it, with the live estimate."""

    id: str
    api_key_id: str
    requested_model: str
    model: str
    status: Status
    progress: int
    created: int
    updated_at: float
    started_at: float | None
    finished_at: float | None
    prompt: str
    duration: int
    quality: str
    aspect_ratio: str
    image_url: str | None
    callback_url: str | None
    seed: int | None
    width: int | None
    height: int | None
    fps: int | None
    frames: int | None
    credits: int
    user_group: str
    estimated_time: int
    result_file: str | None
    result_expires_at: float | None
    error_code: str | None
    error_message: str | None
    usage: dict[str, Any] | None = None
    face: str = "seed"
    service_tier: str = "default"
    #: The deadline to start by (unix seconds), if any.
    expires_at: float | None = None
    #: Pending tasks of the model that start before this one (None unless pending).
    queue_position: int | None = None

    @property
    def execution_expires_after(self) -> int | None:
        """The deadline as Ark states it: seconds from creation."""
        return None if self.expires_at is None else round(self.expires_at - self.created)

    @property
    def expired(self) -> bool:
        """Ended because it did not start by its deadline (refunded)."""
        return self.status == Status.FAILED and self.error_code == EXPIRED

    @property
    def can_cancel(self) -> bool:
        return self.status in (Status.PENDING, Status.PROCESSING)

    @property
    def credits_charged(self) -> int:
        """The reservation, once settled: a completed task (0 until then)."""
        return self.credits if self.status == Status.COMPLETED else 0

    @property
    def credits_refunded(self) -> int:
        """The reservation, once given back: a failed or cancelled task (0 until then).

        Read from the status: the terminal change and its ledger entry commit together.
        """
        return self.credits if self.status in (Status.FAILED, Status.CANCELLED) else 0


@dataclass(frozen=True)
class ClaimedTask:
    """What a worker gets when it takes a task: the request plus its lease (fencing token)."""

    id: str
    lease_token: str
    attempt: int
    requested_model: str
    prompt: str
    duration: int
    quality: str
    aspect_ratio: str
    image_url: str | None
    seed: int | None
    width: int | None
    height: int | None
    fps: int | None
    frames: int | None
    engine_state: dict[str, Any] | None


@dataclass(frozen=True)
class Completed:
    result_file: str
    model: str
    width: int
    height: int
    fps: int
    frames: int
    usage: dict[str, Any] = field(default_factory=dict)
    status: Status = Status.COMPLETED


@dataclass(frozen=True)
class Failed:
    code: str
    message: str
    status: Status = Status.FAILED


@dataclass(frozen=True)
class Cancelled:
    status: Status = Status.CANCELLED


Outcome = Completed | Failed | Cancelled
