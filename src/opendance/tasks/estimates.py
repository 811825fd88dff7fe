"""How long a task will take: its own estimate, the work that starts before it, the live lanes
of its model and the measured speed of recent tasks (`estimated_time` on every face), and its
place in the queue (`queue_position`).
"""

from __future__ import annotations

import math

from sqlalchemy import Connection, select

from opendance.store.tables import Task
from opendance.tasks.queue_snapshot import QueueKey
from opendance.tasks.service_core import (
    ServiceCore,
    TaskRow,
)
from opendance.tasks.states import TERMINAL, Status


class TaskEstimates(ServiceCore):
    def _queue_place(self, connection: Connection, row: TaskRow) -> tuple[int, int | None]:
        """(`estimated_time`, `queue_position`): seconds until done (the engine's estimate, plus
        the work that starts before it), and for a pending task how many start before it."""
        if row.status in TERMINAL:
            return 0, None
        own = row.estimated_seconds
        if row.status == Status.PROCESSING:
            return max(1, math.ceil(own * (100 - row.progress) / 100)), None
        key: QueueKey = (row.tier, row.fair_tag, row.created_seq)
        return self._pending_estimate(connection, row.requested_model, key, own)

    def _pending_estimate(
        self, connection: Connection, model: str, key: QueueKey, own: float
    ) -> tuple[int, int]:
        """A pending task's estimate (the work ahead shared by the live lanes, then its own)
        and its queue position."""
        ahead, position = self.queued_work.ahead(connection, model, key)
        lanes = self._lanes(connection, model)
        factor = self._speed_factor(connection, model)
        return max(1, math.ceil((ahead / max(1, lanes) + own) * factor)), position

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
