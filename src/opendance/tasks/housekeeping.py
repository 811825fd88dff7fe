"""Periodic and audit work on all tasks: sweeps of expired results and idempotency keys,
status counts for metrics, ledger audits.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import delete, func, select, update

from opendance.store.tables import ApiKey, IdempotencyKey, Task
from opendance.tasks import ledger
from opendance.tasks.creation import TaskCreation
from opendance.tasks.states import Status


class Housekeeping(TaskCreation):
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
            self._changed(task_id)  # the result URL leaves the task's views
        return len(expired)

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
