"""The task service: validate-free lifecycle and money, in one place.

Every state change is a conditional update on the old status (and, for workers, on the lease
token), in one transaction with its ledger entry. `_finish` is the only way into a terminal
state, whoever triggers it (worker, cancel, reaper), so a task is settled or refunded once.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import string
import threading
from collections.abc import Callable, Collection
from dataclasses import replace
from typing import Any, Protocol

from sqlalchemy import Connection, Row, bindparam, case, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from opendance.callbacks import outbox
from opendance.clock import Clock
from opendance.engines.base import EngineError, EngineUnavailable, VideoPlan, VideoRequest
from opendance.media.sizes import IMAGE_ONLY_RATIOS
from opendance.observability.metrics import Metrics
from opendance.settings import Settings
from opendance.store.db import Database
from opendance.store.tables import ApiKey, IdempotencyKey, Task
from opendance.tasks import ledger
from opendance.tasks.errors import (
    IdempotencyKeyReused,
    InvalidRequest,
    KeyRevoked,
    ServiceUnavailable,
    TaskNotCancellable,
    TaskNotFound,
    TooManyActiveTasks,
    UnknownModel,
)
from opendance.tasks.estimates import QueuedWork
from opendance.tasks.models import (
    Cancelled,
    ClaimedTask,
    Completed,
    CreateTask,
    Failed,
    KeyInfo,
    Outcome,
    TaskView,
)
from opendance.tasks.pricing import PriceTable
from opendance.tasks.states import TERMINAL, Status, sources_of

log = logging.getLogger(__name__)

_ID_CHARS = string.ascii_lowercase + string.digits
#: What `new_task_id` makes. Anything else is unknown without asking the database (which may
#: refuse the text: PostgreSQL rejects NUL characters with an error).
_TASK_ID = re.compile(r"task-unified-[0-9]{1,12}-[a-z0-9]{8}")

# Hot statements, built once and run on Core connections: building a statement per call (and
# its cache key), and the ORM's unit of work, cost more than running them on SQLite.
_COUNTS = select(
    # The key's group as it is now (a cached key may be a moment old): the price follows it.
    select(ApiKey.user_group).where(ApiKey.id == bindparam("key_id")).scalar_subquery(),
    select(func.count()).select_from(Task).where(Task.status == Status.PENDING).scalar_subquery(),
    select(func.count())
    .select_from(Task)
    .where(
        Task.api_key_id == bindparam("key_id"),
        Task.status.in_([Status.PENDING, Status.PROCESSING]),
    )
    .scalar_subquery(),
)
_INSERT_TASK = insert(Task)
_INSERT_IDEMPOTENCY_KEY = insert(IdempotencyKey)
_KEY_TASK = select(Task.__table__).where(
    Task.id == bindparam("task_id"),
    Task.api_key_id == bindparam("key_id"),
    Task.deleted_at.is_(None),
)

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


class TaskService:
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

    # ------------------------------------------------------------------ create and read

    def _next_seq(self) -> int:
        with self._seq_lock:
            self._last_seq = max(self._last_seq + 1, int(self.clock.now() * 1_000_000))
            return self._last_seq

    def quote(self, group: str, request: CreateTask) -> int:
        """The price of a request for a key of this price group, in whole credits."""
        # A routed model without its own price uses the default model's rates.
        model = self.prices.priced_as(request.model)
        return self.prices.price(model, request.quality, request.duration, group)

    def create_task(self, key: KeyInfo, request: CreateTask) -> TaskView:
        """Price, reserve and store a task, all in one transaction, before anyone hears of it."""
        return self.create_task_once(key, request)[0]

    def create_task_once(
        self,
        key: KeyInfo,
        request: CreateTask,
        *,
        idempotency_key: str | None = None,
        request_hash: str = "",
    ) -> tuple[TaskView, bool]:
        """`create_task` with Stripe's Idempotency-Key semantics; returns (task, replayed).

        The key is stored in the create's transaction: the same key with the same body gives
        the same task (nothing charged again, also for two requests at once); with another
        body, IdempotencyKeyReused.
        """
        if "\x00" in request.prompt:
            raise InvalidRequest(
                "Invalid 'prompt': must not contain NUL characters.", param="prompt"
            )
        if idempotency_key is not None:
            existing = self._idempotent_task(key.id, idempotency_key, request_hash)
            if existing is not None:
                return existing, True
        try:
            return self._create(key, request, idempotency_key, request_hash), False
        except IntegrityError:
            if idempotency_key is None:
                raise
            # A concurrent request with the same key committed first.
            existing = self._idempotent_task(key.id, idempotency_key, request_hash)
            if existing is None:
                raise
            return existing, True

    def _idempotent_task(
        self, key_id: str, idempotency_key: str, request_hash: str
    ) -> TaskView | None:
        cutoff = self.clock.now() - self.settings.idempotency_ttl_seconds
        with self.db.read() as session:
            row = session.get(IdempotencyKey, (key_id, idempotency_key))
            if row is None or row.created_at < cutoff:
                return None
            if row.request_hash != request_hash:
                raise IdempotencyKeyReused(
                    "This Idempotency-Key was already used with a different request body.",
                    param="Idempotency-Key",
                )
            task_id = row.task_id
        try:
            return self.get_task(key_id, task_id)
        except TaskNotFound:
            raise TaskNotFound(
                f"The task this Idempotency-Key made ('{task_id}') has been deleted.",
                param="Idempotency-Key",
            ) from None

    def _create(
        self, key: KeyInfo, request: CreateTask, idempotency_key: str | None, request_hash: str
    ) -> TaskView:
        if not self.planner.has_model(request.model):
            raise UnknownModel(
                f"Unknown model '{request.model}'. Configured models: "
                + ", ".join(sorted(self.settings.routes)),
                param="model",
            )
        video_request = VideoRequest(
            prompt=request.prompt,
            duration=request.duration,
            quality=request.quality,
            aspect_ratio=request.aspect_ratio,
            seed=request.seed,
            has_image=request.image_url is not None,
        )
        # Image-to-video sizes depend on the image, known when the task starts; until then a
        # same-quality 16:9 plan stands in for the estimate.
        provisional = video_request
        if request.aspect_ratio in IMAGE_ONLY_RATIOS:
            provisional = replace(video_request, aspect_ratio="16:9")
        try:
            plan = self.planner.plan(request.model, provisional, None)
            estimate = self.planner.estimate_seconds(request.model, plan)
        except EngineUnavailable as exc:
            raise ServiceUnavailable(exc.message, code=exc.code) from exc
        except EngineError as exc:  # the model cannot make this request (e.g. no image input)
            raise InvalidRequest(exc.message, code=exc.code) from exc
        now = self.clock.now()
        created = int(now)
        task_id = new_task_id(created)
        with self.db.transaction() as connection:
            # Taken inside the transaction: on SQLite (one writer) queue order is commit order.
            seq = self._next_seq()
            group, pending, active = connection.execute(_COUNTS, {"key_id": key.id}).one()
            if group is None:
                raise KeyRevoked("The API key is not valid (unknown, revoked or mistyped).")
            price = self.quote(group, request)
            if pending >= self.settings.max_queued_tasks:
                raise ServiceUnavailable("The queue is full; try again later.")
            if active >= self.settings.max_active_tasks_per_key:
                raise TooManyActiveTasks(
                    f"This key already has {active} unfinished tasks (the limit is "
                    f"{self.settings.max_active_tasks_per_key}); wait for some to finish."
                )
            if idempotency_key is not None:
                connection.execute(
                    delete(IdempotencyKey).where(
                        IdempotencyKey.api_key_id == key.id,
                        IdempotencyKey.key == idempotency_key,
                        IdempotencyKey.created_at < now - self.settings.idempotency_ttl_seconds,
                    )
                )
            ledger.reserve(connection, key.id, task_id, price, now)
            values: dict[str, Any] = {
                "id": task_id,
                "created_seq": seq,
                "api_key_id": key.id,
                "requested_model": request.model,
                "model": plan.model,
                "status": Status.PENDING,
                "progress": 0,
                "created": created,
                "updated_at": now,
                "started_at": None,
                "finished_at": None,
                "prompt": request.prompt,
                "duration": request.duration,
                "quality": request.quality,
                "aspect_ratio": request.aspect_ratio,
                "image_url": request.image_url,
                "callback_url": request.callback_url,
                "seed": request.seed,
                "width": None if video_request.has_image else plan.width,
                "height": None if video_request.has_image else plan.height,
                "fps": plan.fps,
                "frames": plan.frames,
                "credits": price,
                "user_group": group,
                "estimated_seconds": estimate,
                "attempts": 0,
                "face": request.face,
            }
            # The answer says pending, as created, before any worker hears of it; its estimate
            # counts the queue as it stands before this task joins it.
            estimated_time = self._pending_estimate(connection, request.model, seq, estimate)
            connection.execute(_INSERT_TASK, values)
            if idempotency_key is not None:
                connection.execute(
                    _INSERT_IDEMPOTENCY_KEY,
                    {
                        "api_key_id": key.id,
                        "key": idempotency_key,
                        "request_hash": request_hash,
                        "task_id": task_id,
                        "created_at": now,
                    },
                )
        self.queued_work.added(request.model, seq, estimate)
        view = TaskView(
            **{name: values[name] for name in _VIEW_COLUMNS},
            status=Status.PENDING,
            estimated_time=estimated_time,
            result_file=None,
            result_expires_at=None,
            error_code=None,
            error_message=None,
        )
        if self.metrics is not None:
            self.metrics.tasks_created.labels(request.model).inc()
            self.metrics.credits.labels("reserved").inc(price)
        self._notify(self.on_created, task_id)
        return view

    def get_task(self, key_id: str, task_id: str) -> TaskView:
        """A key's own task; another key's, or a deleted one, is as unknown as a missing one."""
        if not _TASK_ID.fullmatch(task_id):
            raise TaskNotFound(f"No task with id '{task_id}'.", param="task_id")
        with self.db.connect() as connection:
            row = connection.execute(_KEY_TASK, {"task_id": task_id, "key_id": key_id}).first()
            if row is None:
                raise TaskNotFound(f"No task with id '{task_id}'.", param="task_id")
            return self._view(connection, row)

    def get_task_unscoped(self, task_id: str) -> TaskView | None:
        """For internal callers (workers, result downloads), never for a face's read.

        Deleted tasks are returned too: workers and the callback sender still finish with them.
        """
        with self.db.read() as session:
            row = session.get(Task, task_id)
            return None if row is None else self._view(session.connection(), row)

    def list_tasks(
        self, key_id: str, *, limit: int = 20, after: str | None = None, newest_first: bool = True
    ) -> tuple[list[TaskView], bool]:
        """A page of a key's tasks (deleted ones left out) and whether more follow.

        A deleted task still works as the `after` cursor: a client that deletes what it lists,
        page by page, passes the last (now deleted) id of a page to get the next one.
        """
        with self.db.read() as session:
            query = select(Task).where(Task.api_key_id == key_id, Task.deleted_at.is_(None))
            if after is not None:
                if not _TASK_ID.fullmatch(after):
                    raise TaskNotFound(f"No task with id '{after}'.", param="after")
                anchor = session.execute(
                    select(Task.created_seq).where(Task.id == after, Task.api_key_id == key_id)
                ).scalar_one_or_none()
                if anchor is None:
                    raise TaskNotFound(f"No task with id '{after}'.", param="after")
                query = query.where(
                    Task.created_seq < anchor if newest_first else Task.created_seq > anchor
                )
            order = Task.created_seq.desc() if newest_first else Task.created_seq.asc()
            rows = session.execute(query.order_by(order).limit(limit + 1)).scalars().all()
            views = [self._view(session.connection(), row) for row in rows[:limit]]
            return views, len(rows) > limit

    def _view(self, connection: Connection, row: TaskRow) -> TaskView:
        return TaskView(
            **{name: getattr(row, name) for name in _VIEW_COLUMNS},
            status=Status(row.status),
            estimated_time=self._estimated_time(connection, row),
            result_file=row.result_file,
            result_expires_at=row.result_expires_at,
            error_code=row.error_code,
            error_message=row.error_message,
            usage=row.usage,
        )

    def _estimated_time(self, connection: Connection, row: TaskRow) -> int:
        """Seconds until done: the engine's estimate, plus the work queued ahead for the model."""
        if row.status in TERMINAL:
            return 0
        own = row.estimated_seconds
        if row.status == Status.PROCESSING:
            return max(1, math.ceil(own * (100 - row.progress) / 100))
        return self._pending_estimate(connection, row.requested_model, row.created_seq, own)

    def _pending_estimate(self, connection: Connection, model: str, seq: int, own: float) -> int:
        """A pending task's estimate: the work ahead shared by the live lanes, then its own."""
        ahead = self.queued_work.ahead(connection, model, seq)
        lanes = self._lanes(connection, model)
        factor = self._speed_factor(connection, model)
        return max(1, math.ceil((ahead / max(1, lanes) + own) * factor))

    def _lanes(self, connection: Connection, model: str) -> int:
        """Live lanes for the model (cached for a second: heartbeats are seconds apart)."""
        now = self.clock.now()
        cached = self._lanes_cache.get(model)
        if cached is not None and 0 <= now - cached[0] < 1.0:
            return cached[1]
        lanes = (self.lanes_for(model, connection) if self.lanes_for else 0) or (
            self.planner.concurrency(model)
        )
        self._lanes_cache[model] = (now, lanes)
        return lanes

    def _speed_factor(self, connection: Connection, model: str) -> float:
        """Measured run time over estimated run time for the model's recent tasks (median).

        Corrects every engine estimate with what this deployment's workers really achieve.
        """
        now = self.clock.now()
        cached = self._speed_cache.get(model)
        if cached is not None and now - cached[0] < 10:
            return cached[1]
        rows = connection.execute(
            select(Task.started_at, Task.finished_at, Task.estimated_seconds)
            .where(
                Task.requested_model == model,
                Task.status == Status.COMPLETED,
                Task.attempts == 1,
            )
            .order_by(Task.created_seq.desc())
            .limit(20)
        ).all()
        ratios = sorted(
            (finished - started) / estimate
            for started, finished, estimate in rows
            if started is not None and finished is not None and estimate > 0
        )
        factor = min(20.0, max(0.2, ratios[len(ratios) // 2])) if len(ratios) >= 3 else 1.0
        self._speed_cache[model] = (now, factor)
        return factor

    # ------------------------------------------------------------------ cancel

    def cancel_task(self, key_id: str, task_id: str) -> TaskView:
        """Cancel a pending task at once; a processing one stops at the engine's next safe point."""
        view = self.get_task(key_id, task_id)
        if view.status in TERMINAL:
            raise TaskNotCancellable(
                f"Task '{task_id}' is already {view.status} and cannot be cancelled.",
                param="task_id",
            )
        if not self._finish(task_id, Cancelled(), from_statuses=sources_of(Status.CANCELLED)):
            view = self.get_task(key_id, task_id)
            if view.status != Status.CANCELLED:
                raise TaskNotCancellable(
                    f"Task '{task_id}' is already {view.status} and cannot be cancelled.",
                    param="task_id",
                )
        self._notify(self.on_cancelled, task_id)
        return self.get_task(key_id, task_id)

    # ------------------------------------------------------------------ worker side

    def claim_next(self, worker_id: str, models: Collection[str]) -> ClaimedTask | None:
        """Take the oldest pending task of the given models, with a fresh lease."""
        if not models:
            return None
        with self.db.write() as session:
            candidate = (
                select(Task.id)
                .where(Task.status == Status.PENDING, Task.requested_model.in_(list(models)))
                .order_by(Task.created_seq)
                .limit(1)
            )
            if not self.db.is_sqlite:
                candidate = candidate.with_for_update(skip_locked=True)
            task_id = session.execute(candidate).scalar_one_or_none()
            claimed = None if task_id is None else self._claim(session, task_id, worker_id)
        if claimed is not None:
            self._changed(claimed.id)
        return claimed

    def claim_task(self, task_id: str, worker_id: str) -> ClaimedTask | None:
        """Take one given task if it is still pending (a queue engine delivered its job)."""
        with self.db.write() as session:
            claimed = self._claim(session, task_id, worker_id)
        if claimed is not None:
            self._changed(claimed.id)
        return claimed

    def _claim(self, session: Session, task_id: str, worker_id: str) -> ClaimedTask | None:
        now = self.clock.now()
        token = secrets.token_hex(16)
        row = session.execute(
            update(Task)
            .where(Task.id == task_id, Task.status == Status.PENDING)
            .values(
                status=Status.PROCESSING,
                attempts=Task.attempts + 1,
                worker_id=worker_id,
                lease_token=token,
                lease_expires_at=now + self.settings.lease_seconds,
                started_at=func.coalesce(Task.started_at, now),
                updated_at=now,
            )
            .returning(Task)
        ).scalar_one_or_none()
        if row is None:
            return None
        if self.metrics is not None and row.attempts == 1:
            waited = now - row.created_seq / 1_000_000
            self.metrics.task_queue_seconds.labels(row.requested_model).observe(max(0.0, waited))
        return ClaimedTask(
            id=row.id,
            lease_token=token,
            attempt=row.attempts,
            requested_model=row.requested_model,
            prompt=row.prompt,
            duration=row.duration,
            quality=row.quality,
            aspect_ratio=row.aspect_ratio,
            image_url=row.image_url,
            seed=row.seed,
            width=row.width,
            height=row.height,
            fps=row.fps,
            frames=row.frames,
            engine_state=row.engine_state,
        )

    def pending_task_ids(self, limit: int = 1000, quiet_for: float = 0.0) -> list[tuple[str, str]]:
        """(task id, model) of tasks pending, unchanged for `quiet_for` s, oldest first."""
        with self.db.read() as session:
            rows = session.execute(
                select(Task.id, Task.requested_model)
                .where(
                    Task.status == Status.PENDING,
                    Task.updated_at <= self.clock.now() - quiet_for,
                )
                .order_by(Task.created_seq)
                .limit(limit)
            ).all()
            return [(row[0], row[1]) for row in rows]

    def heartbeat(self, task_id: str, lease_token: str, progress: int | None = None) -> bool:
        """Extend the lease (and raise progress, never lower it). False: stop, the task is gone."""
        now = self.clock.now()
        values: dict[str, Any] = {
            "lease_expires_at": now + self.settings.lease_seconds,
            "updated_at": now,
        }
        if progress is not None:
            bounded = max(0, min(99, progress))
            values["progress"] = case((Task.progress < bounded, bounded), else_=Task.progress)
        with self.db.write() as session:
            result = session.execute(
                update(Task).where(*_held(task_id, lease_token)).values(**values)
            )
            alive = bool(result.rowcount == 1)  # type: ignore[attr-defined]
        if alive and progress is not None:
            self._changed(task_id)
        return alive

    def save_engine_state(self, task_id: str, lease_token: str, state: dict[str, Any]) -> bool:
        """Persist an engine's resume state (e.g. an upstream task id) under the lease."""
        return self._update_leased(task_id, lease_token, engine_state=state)

    def set_plan(self, task_id: str, lease_token: str, plan: VideoPlan) -> bool:
        """Record the size and model an engine will really make (image-to-video, routes)."""
        return self._update_leased(
            task_id,
            lease_token,
            width=plan.width,
            height=plan.height,
            fps=plan.fps,
            frames=plan.frames,
            model=plan.model,
        )

    def _update_leased(self, task_id: str, lease_token: str, **values: Any) -> bool:
        with self.db.write() as session:
            result = session.execute(
                update(Task)
                .where(*_held(task_id, lease_token))
                .values(updated_at=self.clock.now(), **values)
            )
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def complete(self, task_id: str, lease_token: str, outcome: Outcome) -> bool:
        """A worker's final word on its task; ignored (False) if it lost the lease meanwhile."""
        return self._finish(
            task_id, outcome, from_statuses={Status.PROCESSING}, lease_token=lease_token
        )

    def release(self, task_id: str, lease_token: str) -> bool:
        """Hand a task back to the queue (graceful shutdown): the attempt does not count."""
        now = self.clock.now()
        with self.db.write() as session:
            result = session.execute(
                update(Task)
                .where(*_held(task_id, lease_token))
                .values(
                    status=Status.PENDING,
                    attempts=Task.attempts - 1,
                    worker_id=None,
                    lease_token=None,
                    lease_expires_at=None,
                    updated_at=now,
                )
            )
            released = bool(result.rowcount == 1)  # type: ignore[attr-defined]
        if released:
            self._notify(self.on_created, task_id)
        return released

    def reap_expired_leases(self) -> int:
        """Re-queue tasks whose worker went silent; fail (and refund) them past max_attempts."""
        now = self.clock.now()
        with self.db.read() as session:
            stale = session.execute(
                select(Task.id, Task.attempts, Task.lease_token).where(
                    Task.status == Status.PROCESSING, Task.lease_expires_at < now
                )
            ).all()
        handled = 0
        for task_id, attempts, token in stale:
            if attempts >= self.settings.max_attempts:
                failed = Failed(
                    "worker_lost",
                    f"The task's worker stopped responding {attempts} times; giving up.",
                )
                if self._finish(
                    task_id, failed, from_statuses={Status.PROCESSING}, lease_token=token
                ):
                    handled += 1
                continue
            with self.db.write() as session:
                result = session.execute(
                    update(Task)
                    .where(*_held(task_id, token))
                    .values(
                        status=Status.PENDING,
                        worker_id=None,
                        lease_token=None,
                        lease_expires_at=None,
                        updated_at=now,
                    )
                )
                requeued = result.rowcount == 1  # type: ignore[attr-defined]
            if requeued:
                handled += 1
                log.warning("re-queued task %s after its worker went silent", task_id)
                self._notify(self.on_created, task_id)
        return handled

    # ------------------------------------------------------------------ the one terminal path

    def _finish(
        self,
        task_id: str,
        outcome: Outcome,
        *,
        from_statuses: Collection[Status],
        lease_token: str | None = None,
    ) -> bool:
        """Move a task to its terminal state with its ledger entry, atomically, at most once."""
        now = self.clock.now()
        values: dict[str, Any] = {
            "status": outcome.status,
            "finished_at": now,
            "updated_at": now,
            "lease_token": None,
            "lease_expires_at": None,
        }
        if isinstance(outcome, Completed):
            values.update(
                progress=100,
                result_file=outcome.result_file,
                result_expires_at=now + self.settings.result_ttl_seconds,
                model=outcome.model,
                width=outcome.width,
                height=outcome.height,
                fps=outcome.fps,
                frames=outcome.frames,
                usage=outcome.usage or None,
            )
        elif isinstance(outcome, Failed):
            values.update(error_code=outcome.code, error_message=outcome.message)
        statement = update(Task).where(
            Task.id == task_id, Task.status.in_([str(s) for s in from_statuses])
        )
        if lease_token is not None:
            statement = statement.where(Task.lease_token == lease_token)
        with self.db.write() as session:
            row = session.execute(
                statement.values(**values).returning(
                    Task.api_key_id,
                    Task.credits,
                    Task.callback_url,
                    Task.requested_model,
                    Task.started_at,
                )
            ).first()
            if row is None:
                return False
            key_id, credits, callback_url, model, started_at = row
            if isinstance(outcome, Completed):
                ledger.settle(session, key_id, task_id, credits, now)
            else:
                ledger.refund(session, key_id, task_id, credits, now)
            if callback_url:
                # The outbox row commits with the terminal change and its ledger entry.
                outbox.enqueue(
                    session,
                    task_id=task_id,
                    api_key_id=key_id,
                    url=callback_url,
                    event=f"task.{outcome.status}",
                    now=now,
                )
        log.info("task %s %s", task_id, outcome.status)
        if self.metrics is not None:
            status = str(outcome.status)
            self.metrics.tasks_finished.labels(model, status).inc()
            kind = "settled" if isinstance(outcome, Completed) else "refunded"
            self.metrics.credits.labels(kind).inc(credits)
            if started_at is not None:
                self.metrics.task_run_seconds.labels(model, status).observe(now - started_at)
        self._notify(self.on_finished, task_id)
        self._changed(task_id)
        return True

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

    def status_counts(self) -> list[tuple[str, str, int]]:
        """(status, model, count) of every task (for metrics gauges)."""
        with self.db.read() as session:
            rows = session.execute(
                select(Task.status, Task.requested_model, func.count()).group_by(
                    Task.status, Task.requested_model
                )
            ).all()
            return [(str(s), str(m), int(c)) for s, m, c in rows]

    def sweep_idempotency_keys(self) -> int:
        cutoff = self.clock.now() - self.settings.idempotency_ttl_seconds
        with self.db.write() as session:
            result = session.execute(
                delete(IdempotencyKey).where(IdempotencyKey.created_at < cutoff)
            )
            return int(result.rowcount)  # type: ignore[attr-defined]

    def sweep_expired_results(self, delete: Callable[[str], None]) -> int:
        """Delete result files past expiry; the task stays completed, its URL stops working."""
        now = self.clock.now()
        with self.db.read() as session:
            expired = session.execute(
                select(Task.id, Task.result_file).where(
                    Task.result_file.is_not(None), Task.result_expires_at < now
                )
            ).all()
        for task_id, result_file in expired:
            with self.db.write() as session:
                session.execute(
                    update(Task)
                    .where(Task.id == task_id, Task.result_file == result_file)
                    .values(result_file=None)
                )
            if result_file:
                delete(result_file)
        return len(expired)

    # ------------------------------------------------------------------ audits

    def ledger_audit(self, key_id: str) -> ledger.LedgerAudit:
        with self.db.read() as session:
            open_credits = session.execute(
                select(func.coalesce(func.sum(Task.credits), 0)).where(
                    Task.api_key_id == key_id,
                    Task.status.in_([Status.PENDING, Status.PROCESSING]),
                )
            ).scalar_one()
            return ledger.audit(session, key_id, int(open_credits))

    def key_ids(self) -> list[str]:
        with self.db.read() as session:
            return list(session.execute(select(ApiKey.id)).scalars())

    # ------------------------------------------------------------------ for the other faces

    def page_tasks(
        self,
        key_id: str,
        *,
        offset: int = 0,
        limit: int = 20,
        statuses: Collection[Status] | None = None,
        task_ids: Collection[str] | None = None,
        models: Collection[str] | None = None,
    ) -> tuple[list[TaskView], int]:
        """A page of a key's tasks, newest first, filtered; and how many match in all.

        For faces with numbered pages and filters (Ark). `models` matches the requested model
        name or the model that ran the task.
        """
        from sqlalchemy import or_

        conditions = [Task.api_key_id == key_id, Task.deleted_at.is_(None)]
        if statuses:
            conditions.append(Task.status.in_([str(s) for s in statuses]))
        if task_ids:
            ids = [task_id for task_id in task_ids if _TASK_ID.fullmatch(task_id)]
            if not ids:
                return [], 0
            conditions.append(Task.id.in_(ids))
        if models:
            names = [name for name in models if "\x00" not in name]
            if not names:
                return [], 0
            conditions.append(or_(Task.requested_model.in_(names), Task.model.in_(names)))
        with self.db.read() as session:
            total = session.execute(
                select(func.count()).select_from(Task).where(*conditions)
            ).scalar_one()
            rows = (
                session.execute(
                    select(Task)
                    .where(*conditions)
                    .order_by(Task.created_seq.desc())
                    .offset(offset)
                    .limit(limit)
                )
                .scalars()
                .all()
            )
            return [self._view(session.connection(), row) for row in rows], int(total)

    def delete_task(self, key_id: str, task_id: str, delete: Callable[[str], None]) -> None:
        """Delete a key's finished task: every face then answers it as unknown (404).

        For faces whose API deletes videos (OpenAI, Ark). The row stays, marked deleted and
        without its result, because the ledger, the outbox and internal readers refer to it;
        `delete` then removes the result file (and anything cached beside it). A task still
        pending or processing must be cancelled first: 409. Unknown or already deleted: 404.
        """
        if not _TASK_ID.fullmatch(task_id):
            raise TaskNotFound(f"No task with id '{task_id}'.", param="task_id")
        now = self.clock.now()
        live = (Task.id == task_id, Task.api_key_id == key_id, Task.deleted_at.is_(None))
        with self.db.write() as session:
            # The row lock (PostgreSQL; SQLite's write transaction is exclusive already) keeps
            # the result file read here the one the update below clears.
            row = session.execute(
                select(Task.status, Task.result_file).where(*live).with_for_update()
            ).first()
            if row is None:
                raise TaskNotFound(f"No task with id '{task_id}'.", param="task_id")
            status, result_file = Status(row.status), row.result_file
            if status not in TERMINAL:
                raise TaskNotCancellable(
                    f"Task '{task_id}' is still {status}; cancel it before deleting it.",
                    param="task_id",
                    code="task_not_finished",
                )
            session.execute(
                update(Task).where(*live).values(deleted_at=now, result_file=None, updated_at=now)
            )
        log.info("task %s deleted", task_id)
        if result_file is not None:
            delete(result_file)
        self._changed(task_id)  # open event streams of the task end
