"""The state every part of the task service shares (store, settings, planner, prices, clock,
listeners) and the few helpers they all use: the base of the service's layers.
"""

from __future__ import annotations

import logging
import re
import secrets
import string
import threading
from collections.abc import Callable
from typing import Any, Protocol

from sqlalchemy import Connection, Row, update
from sqlalchemy.sql.elements import ColumnElement

from opendance.clock import Clock
from opendance.engines.base import VideoPlan, VideoRequest
from opendance.observability.metrics import Metrics
from opendance.settings import Settings
from opendance.store.db import Database
from opendance.store.tables import Task
from opendance.tasks.pricing import PriceTable
from opendance.tasks.queue_snapshot import QueuedWork
from opendance.tasks.states import Status

log = logging.getLogger(__name__)


_ID_CHARS = string.ascii_lowercase + string.digits


#: What `new_task_id` makes. Anything else is unknown without asking the database (which may
#: refuse the text: PostgreSQL rejects NUL characters with an error).
_TASK_ID = re.compile(r"task-unified-[0-9]{1,12}-[a-z0-9]{8}")


#: A task row: an ORM object, or a Core row of the tasks table (same attribute names).
TaskRow = Task | Row[Any]


#: What a task view copies from its row as is.
_VIEW_COLUMNS = (
    "id",
    "api_key_id",
    "requested_model",
    "model",
    "progress",
    "created",
    "updated_at",
    "started_at",
    "finished_at",
    "prompt",
    "duration",
    "quality",
    "aspect_ratio",
    "image_url",
    "callback_url",
    "seed",
    "width",
    "height",
    "fps",
    "frames",
    "credits",
    "user_group",
    "face",
    "expires_at",
)


class Planner(Protocol):
    """What the service needs to know about engines: which models exist and what they make."""

    def has_model(self, model: str) -> bool: ...

    def plan(
        self, model: str, request: VideoRequest, image_size: tuple[int, int] | None = None
    ) -> VideoPlan: ...

    def estimate_seconds(self, model: str, plan: VideoPlan) -> float: ...

    def concurrency(self, model: str) -> int: ...


def _held(task_id: str, lease_token: str | None) -> tuple[ColumnElement[bool], ...]:
    """The task is processing under this lease: the fence on every worker-side update."""
    return (Task.id == task_id, Task.status == Status.PROCESSING, Task.lease_token == lease_token)


def new_task_id(created: int) -> str:
    suffix = "".join(secrets.choice(_ID_CHARS) for _ in range(8))
    return f"task-unified-{created}-{suffix}"


class ServiceCore:
    """The service's shared state; the layers above add one concern each."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        planner: Planner,
        prices: PriceTable,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.db = db
        self.metrics = metrics
        self.settings = settings
        self.planner = planner
        self.prices = prices
        self.clock = clock or Clock()
        self._seq_lock = threading.Lock()
        self._last_seq = 0
        self.on_created: list[Callable[[str], None]] = []
        self.on_cancelled: list[Callable[[str], None]] = []
        self.on_changed: list[Callable[[str], None]] = []
        self.on_finished: list[Callable[[str], None]] = []
        #: Live lanes per model (the worker registry); the planner's figure when unset or 0.
        self.lanes_for: Callable[[str, Connection], int] | None = None
        self._speed_cache: dict[str, tuple[float, float]] = {}
        self._lanes_cache: dict[str, tuple[float, int]] = {}
        self.queued_work = QueuedWork(clock=self.clock.now)

    def _changed(self, task_id: str) -> None:
        self._notify(self.on_changed, task_id)

    @staticmethod
    def _notify(hooks: list[Callable[[str], None]], task_id: str) -> None:
        """Tell listeners after the commit; a failing listener never undoes or breaks it."""
        for hook in hooks:
            try:
                hook(task_id)
            except Exception:
                log.exception("task listener %r failed for %s", hook, task_id)

    def _update_leased(self, task_id: str, lease_token: str, **values: Any) -> bool:
        with self.db.write() as session:
            result = session.execute(
                update(Task)
                .where(*_held(task_id, lease_token))
                .values(updated_at=self.clock.now(), **values)
            )
            updated = bool(result.rowcount == 1)  # type: ignore[attr-defined]
        if updated:  # a plan's size, or the new `updated_at`, shows in the task's views
            self._changed(task_id)
        return updated
