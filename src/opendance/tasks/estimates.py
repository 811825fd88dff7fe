"""How long a task will take: its own estimate, the work queued before it, the live lanes of
its model and the measured speed of recent tasks (`estimated_time` on every face).
"""

from __future__ import annotations

import math

from sqlalchemy import Connection, select

from opendance.store.tables import Task
from opendance.tasks.service_core import (
    ServiceCore,
    TaskRow,
)
from opendance.tasks.states import TERMINAL, Status


class TaskEstimates(ServiceCore):
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
