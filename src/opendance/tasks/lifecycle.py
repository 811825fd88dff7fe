"""A task's life after it is created, and its money: cancel, claim, heartbeat, plan, finish,
hand back, reap. Every change is a conditional update on the old status (and, for workers,
on the lease token) in one transaction with its ledger entry; `_finish` is the only way into
a terminal state, so a task is settled or refunded once.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Collection
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from opendance.callbacks import outbox
from opendance.engines.base import VideoPlan
from opendance.store.tables import Task
from opendance.tasks import fair_queue, ledger
from opendance.tasks.errors import (
    TaskNotCancellable,
    TaskNotFound,
)
from opendance.tasks.models import (
    EXPIRED,
    Cancelled,
    ClaimedTask,
    Completed,
    Failed,
    Outcome,
    TaskView,
)
from opendance.tasks.reads import TaskReads
from opendance.tasks.service_core import (
    _TASK_ID,
    _held,
    log,
)
from opendance.tasks.states import TERMINAL, Status, sources_of


class TaskLifecycle(TaskReads):
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

    def claim_next(self, worker_id: str, models: Collection[str]) -> ClaimedTask | None:
        """Take the next pending task of the given models, with a fresh lease.

        Within a model, fair order (`fair_queue`: tier, then the key's share); between models,
        the one whose next task has waited longest.
        """
        if not models:
            return None
        now = self.clock.now()
        with self.db.write() as session:
            heads = []
            for model in dict.fromkeys(models):
                query = fair_queue.next_pending(model, now, for_update=not self.db.is_sqlite)
                head = session.execute(query).first()
                if head is not None:
                    heads.append(head)
            if not heads:
                return None
            task_id = min(heads, key=lambda head: (head.tier, head.created_seq)).id
            claimed = self._claim(session, task_id, worker_id)
        if claimed is not None:
            self._changed(claimed.id)
        return claimed

    def claim_task(self, task_id: str, worker_id: str) -> ClaimedTask | None:
        """Take one given task if it is still pending."""
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
        fair_queue.advance_clock(
            session.connection(), model=row.requested_model, tier=row.tier, tag=row.fair_tag
        )
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
        if alive:  # progress, and `updated_at` (Ark's task shows it), changed
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

    def complete(self, task_id: str, lease_token: str, outcome: Outcome) -> bool:
        """A worker's final word on its task; ignored (False) if it lost the lease meanwhile."""
        return self._finish(
            task_id, outcome, from_statuses={Status.PROCESSING}, lease_token=lease_token
        )

    def release(self, task_id: str, lease_token: str) -> bool:
        """Hand a task back to the queue (graceful shutdown): the attempt does not count."""
        return self._requeue(task_id, lease_token, attempt_counts=False)

    def retry_later(self, task_id: str, lease_token: str, code: str, message: str) -> bool:
        """Back to the queue after a failure that another attempt may not meet (the device was
        lost, the store refused the result); the attempt counts, and past `max_attempts` the
        task fails with `code` and a refund, as a lost worker's does."""
        with self.db.read() as session:
            attempts = session.execute(
                select(Task.attempts).where(Task.id == task_id)
            ).scalar_one_or_none()
        if attempts is not None and attempts >= self.settings.max_attempts:
            return self._finish(
                task_id,
                Failed(code, f"{message} (after {attempts} attempts)"),
                from_statuses={Status.PROCESSING},
                lease_token=lease_token,
            )
        return self._requeue(task_id, lease_token, attempt_counts=True)

    def _requeue(self, task_id: str, lease_token: str | None, *, attempt_counts: bool) -> bool:
        """Put a processing task back in the queue (fenced by its lease) and wake the workers;
        the one way back to pending, for `release` and the reaper."""
        values: dict[str, Any] = {
            "status": Status.PENDING,
            "worker_id": None,
            "lease_token": None,
            "lease_expires_at": None,
            "updated_at": self.clock.now(),
        }
        if not attempt_counts:
            values["attempts"] = Task.attempts - 1
        with self.db.write() as session:
            result = session.execute(
                update(Task).where(*_held(task_id, lease_token)).values(**values)
            )
            requeued = bool(result.rowcount == 1)  # type: ignore[attr-defined]
        if requeued:
            self._notify(self.on_created, task_id)
        return requeued

    def expire_overdue(self, limit: int = 500) -> int:
        """End the tasks that did not start by their deadline: failed `expired`, refunded, with
        their callback. A task that started (running, or handed back) never expires."""
        now = self.clock.now()
        overdue = (Task.status == Status.PENDING, Task.started_at.is_(None), Task.expires_at < now)
        with self.db.read() as session:
            task_ids = list(
                session.execute(
                    select(Task.id).where(*overdue).order_by(Task.expires_at).limit(limit)
                ).scalars()
            )
        expired = 0
        for task_id in task_ids:
            outcome = Failed(
                EXPIRED, "The task did not start before its deadline (execution_expires_after)."
            )
            if self._finish(task_id, outcome, from_statuses={Status.PENDING}, only_if=overdue):
                expired += 1
        return expired

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
            if self._requeue(task_id, token, attempt_counts=True):
                handled += 1
                log.warning("re-queued task %s after its worker went silent", task_id)
        return handled

    def _finish(
        self,
        task_id: str,
        outcome: Outcome,
        *,
        from_statuses: Collection[Status],
        lease_token: str | None = None,
        only_if: Collection[ColumnElement[bool]] = (),
    ) -> bool:
        """Move a task to its terminal state with its ledger entry, atomically, at most once
        (and only while the conditions `only_if` hold, if any)."""
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
            Task.id == task_id, Task.status.in_([str(s) for s in from_statuses]), *only_if
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
