"""Creating a task: price, caps, reservation and the row, in one transaction, with Stripe's
Idempotency-Key semantics.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, select
from sqlalchemy.exc import IntegrityError

from opendance.engines.base import EngineError, EngineUnavailable, VideoRequest
from opendance.media.sizes import IMAGE_ONLY_RATIOS
from opendance.settings import DEADLINE_MAX_SECONDS, DEADLINE_MIN_SECONDS, SERVICE_TIERS
from opendance.store.tables import ApiKey, IdempotencyKey, Task
from opendance.tasks import fair_queue, ledger
from opendance.tasks.errors import (
    IdempotencyKeyReused,
    InvalidRequest,
    KeyRevoked,
    ServiceUnavailable,
    TaskNotFound,
    TooManyActiveTasks,
    UnknownModel,
)
from opendance.tasks.lifecycle import TaskLifecycle
from opendance.tasks.models import (
    CreateTask,
    KeyInfo,
    TaskView,
)
from opendance.tasks.service_core import (
    _VIEW_COLUMNS,
    new_task_id,
)
from opendance.tasks.states import Status

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


class TaskCreation(TaskLifecycle):
    def _next_seq(self) -> int:
        with self._seq_lock:
            self._last_seq = max(self._last_seq + 1, int(self.clock.now() * 1_000_000))
            return self._last_seq

    def quote(self, group: str, request: CreateTask) -> int:
        """The price of a request for a key of this price group, in whole credits (a flex
        task: `flex_price_ratio` of the default tier's price, rounded up)."""
        # A routed model without its own price uses the default model's rates.
        model = self.prices.priced_as(request.model)
        price = self.prices.price(model, request.quality, request.duration, group)
        if request.service_tier == "flex":
            return int(math.ceil(price * self.settings.flex_price_ratio))
        return price

    def _deadline(self, request: CreateTask, created: int) -> float | None:
        """When the task must have started by: the request's, else the tier's default."""
        after = request.execution_expires_after
        if after is None:
            after = self.settings.execution_expires_after.get(request.service_tier)
        return None if after is None else float(created + after)

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
        if request.service_tier not in SERVICE_TIERS:
            raise InvalidRequest(
                f"Invalid 'service_tier': must be one of {', '.join(SERVICE_TIERS)}.",
                param="service_tier",
            )
        after = request.execution_expires_after
        if after is not None and not DEADLINE_MIN_SECONDS <= after <= DEADLINE_MAX_SECONDS:
            raise InvalidRequest(
                "Invalid 'execution_expires_after': must be an integer from "
                f"{DEADLINE_MIN_SECONDS} to {DEADLINE_MAX_SECONDS} (seconds).",
                param="execution_expires_after",
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
            tier = SERVICE_TIERS.index(request.service_tier)
            weight = self.settings.fair_share_weights.get(group, 1.0)
            tag = fair_queue.start_tag(
                connection,
                model=request.model,
                tier=tier,
                key_id=key.id,
                cost=fair_queue.cost_of(estimate, weight),
            )
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
                "tier": tier,
                "fair_tag": tag,
                "expires_at": self._deadline(request, created),
            }
            # The answer says pending, as created, before any worker hears of it; its estimate
            # counts the tasks that start before it.
            place = (tier, tag, seq)
            estimated_time, position = self._pending_estimate(
                connection, request.model, place, estimate
            )
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
        self.queued_work.added(request.model, place, estimate)
        view = TaskView(
            **{name: values[name] for name in _VIEW_COLUMNS},
            status=Status.PENDING,
            service_tier=request.service_tier,
            estimated_time=estimated_time,
            queue_position=position,
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
