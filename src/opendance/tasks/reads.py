"""Reading tasks: one task as its owner sees it, pages of a key's tasks, the view every face
renders from; and a pending task's place in its queue again, from memory (cached views).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, NoReturn, cast

from sqlalchemy import Connection, bindparam, func, or_, select

from opendance.settings import SERVICE_TIERS
from opendance.store.tables import Task
from opendance.tasks.errors import (
    TaskNotFound,
)
from opendance.tasks.estimates import TaskEstimates
from opendance.tasks.models import (
    EXPIRED,
    TaskView,
)
from opendance.tasks.queue_snapshot import QueueKey
from opendance.tasks.service_core import (
    _TASK_ID,
    _VIEW_COLUMNS,
    TaskRow,
)
from opendance.tasks.states import Status

_KEY_TASK = select(Task.__table__).where(
    Task.id == bindparam("task_id"),
    Task.api_key_id == bindparam("key_id"),
    Task.deleted_at.is_(None),
)


@dataclass(frozen=True)
class TaskRead:
    """A task as its owner sees it, and what places a pending one in its model's queue again
    later (`TaskReads.pending_place`) without reading its row."""

    view: TaskView
    #: Where a pending task sits in its model's queue; None for any other status.
    queue_key: QueueKey | None
    #: The engine's own estimate of the task's run time, in seconds.
    own_seconds: float


class _NeedsDatabase(Exception):
    pass


class _NoDatabase:
    """Stands in for a connection where the estimate must come from memory: the estimate's
    caches answer while fresh, and a query (a cache gone stale) ends the attempt."""

    def execute(self, *_args: Any, **_kwargs: Any) -> NoReturn:
        raise _NeedsDatabase


_NO_DATABASE = cast(Connection, _NoDatabase())


def not_found(task_id: str) -> TaskNotFound:
    return TaskNotFound(f"No task with id '{task_id}'.", param="task_id")


class TaskReads(TaskEstimates):
    def get_task(self, key_id: str, task_id: str) -> TaskView:
        """A key's own task; another key's, or a deleted one, is as unknown as a missing one."""
        return self.read_task(key_id, task_id).view

    def read_task(self, key_id: str, task_id: str) -> TaskRead:
        """`get_task`, with what a cached view needs to place a pending task again."""
        if not _TASK_ID.fullmatch(task_id):
            raise not_found(task_id)
        with self.db.connect() as connection:
            row = connection.execute(_KEY_TASK, {"task_id": task_id, "key_id": key_id}).first()
            if row is None:
                raise not_found(task_id)
            view = self._view(connection, row)
        pending = view.status == Status.PENDING
        key: QueueKey | None = (row.tier, row.fair_tag, row.created_seq) if pending else None
        return TaskRead(view=view, queue_key=key, own_seconds=row.estimated_seconds)

    def pending_place(
        self, model: str, key: QueueKey, own: float, *, offline: bool = True
    ) -> tuple[int, int] | None:
        """A pending task's (`estimated_time`, `queue_position`) again, without reading its row.

        `offline`: from the queue snapshot and the estimate's caches alone, no database (None
        when one of them is stale); else reading what is stale (blocking).
        """
        if not offline:
            with self.db.connect() as connection:
                return self._pending_estimate(connection, model, key, own)
        try:
            return self._pending_estimate(_NO_DATABASE, model, key, own)
        except _NeedsDatabase:
            return None

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
        estimated_time, queue_position = self._queue_place(connection, row)
        return TaskView(
            **{name: getattr(row, name) for name in _VIEW_COLUMNS},
            status=Status(row.status),
            service_tier=SERVICE_TIERS[row.tier],
            estimated_time=estimated_time,
            queue_position=queue_position,
            result_file=row.result_file,
            result_expires_at=row.result_expires_at,
            error_code=row.error_code,
            error_message=row.error_message,
            usage=row.usage,
        )

    def page_tasks(
        self,
        key_id: str,
        *,
        offset: int = 0,
        limit: int = 20,
        statuses: Collection[Status] | None = None,
        task_ids: Collection[str] | None = None,
        models: Collection[str] | None = None,
        service_tier: str | None = None,
        expired: bool | None = None,
    ) -> tuple[list[TaskView], int]:
        """A page of a key's tasks, newest first, filtered; and how many match in all.

        For faces with numbered pages and filters (Ark). `models` matches the requested model
        name or the model that ran the task; `expired` True keeps only the tasks that expired
        before they started, False leaves them out.
        """
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
        if service_tier is not None:
            conditions.append(Task.tier == SERVICE_TIERS.index(service_tier))
        if expired is not None:
            is_expired = Task.error_code == EXPIRED
            conditions.append(
                is_expired if expired else or_(Task.error_code.is_(None), ~is_expired)
            )
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
