"""Live workers, as they report themselves: the lanes behind each model's queue."""

from __future__ import annotations

from sqlalchemy import Connection, delete, select
from sqlalchemy.orm import Session

from opendance.clock import Clock
from opendance.store.db import Database
from opendance.store.tables import Worker


class WorkerRegistry:
    def __init__(self, db: Database, clock: Clock, stale_after: float) -> None:
        self.db = db
        self.clock = clock
        self.stale_after = stale_after

    def beat(self, worker_id: str, models: list[str], concurrency: int) -> None:
        """Register or refresh a worker (called at start and then periodically)."""
        now = self.clock.now()
        with self.db.write() as session:
            row = session.get(Worker, worker_id)
            if row is None:
                session.add(
                    Worker(
                        id=worker_id,
                        models=models,
                        concurrency=concurrency,
                        started_at=now,
                        heartbeat_at=now,
                    )
                )
            else:
                row.heartbeat_at = now
                row.models = models
                row.concurrency = concurrency

    def leave(self, worker_id: str) -> None:
        with self.db.write() as session:
            session.execute(delete(Worker).where(Worker.id == worker_id))

    def lanes(self, model: str, session: Session | Connection | None = None) -> int:
        """Tasks of `model` that live workers can run at once (0 if none is known).

        Pass the caller's open session or connection: a second checkout from inside one can
        exhaust the connection pool when every threadpool thread does it at once.
        """
        since = self.clock.now() - self.stale_after
        query = select(Worker.models, Worker.concurrency).where(Worker.heartbeat_at >= since)
        if session is not None:
            rows = session.execute(query).all()
        else:
            with self.db.read() as own:
                rows = own.execute(query).all()
        return sum(concurrency for models, concurrency in rows if model in models)

    def prune(self) -> int:
        """Forget workers silent for ten times the stale limit."""
        before = self.clock.now() - 10 * self.stale_after
        with self.db.write() as session:
            result = session.execute(delete(Worker).where(Worker.heartbeat_at < before))
            return int(result.rowcount)  # type: ignore[attr-defined]
