"""Scale-out dispatch on procrastinate (PostgreSQL): API replicas defer, GPU workers run.

procrastinate carries one job per queued task: one queue per model (so a worker takes only the
models it has loaded), LISTEN/NOTIFY for low dispatch latency, worker heartbeats, concurrency
and graceful shutdown. The task row stays the source of truth, and a job means "a task of this
model is waiting", not "run task X": the worker that takes it claims the model's *fairest*
pending task (`TaskService.claim_next`, the single-machine dispatcher's claim: tier, then fair
share between keys), which may be another key's. So the order is the database's, not the order
the jobs were deferred in, and:

- never lost: every pending task was deferred one job, and a job claims at most one task, so
  while a task waits some job of its model waits too (the one deferred with it, or that of the
  task it stood in for, whose own job it consumed);
- never run twice: the claim is a conditional update, so a duplicate, stale or surplus job
  (its task cancelled, expired or claimed by an earlier job) finds nothing and returns.

Task leases, cancel and re-queue after a lost worker work exactly as on one machine; a
re-queued task is simply deferred again, and a periodic pass re-defers any pending task left
waiting (a crash between the commit and the defer), with procrastinate's queueing lock keeping
one waiting job per task id.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from typing import Any

import procrastinate
from procrastinate import exceptions as procrastinate_errors
from sqlalchemy import func, inspect, select, text
from sqlalchemy.engine import make_url

from opendance.dispatch.runner import TaskRunner
from opendance.store.db import Database
from opendance.store.tables import Task
from opendance.tasks.service import TaskService
from opendance.tasks.states import Status

log = logging.getLogger(__name__)

TASK_NAME = "opendance.run_task"


def queue_for(model: str) -> str:
    """A queue name per model: readable, unique, and short enough for PostgreSQL's 63-byte
    NOTIFY channel names (procrastinate prefixes 23 bytes)."""
    slug = re.sub(r"[^a-z0-9.-]+", "-", model.lower())[:24]
    digest = hashlib.sha1(model.encode()).hexdigest()[:6]
    return f"m.{slug}.{digest}"


def libpq_url(database_url: str) -> str:
    """SQLAlchemy's `postgresql+psycopg://...` as the plain URL psycopg wants."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        raise ValueError("procrastinate dispatch needs PostgreSQL (set database_url)")
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def ensure_schema(db: Database) -> None:
    """Install procrastinate's tables once (its own schema, next to ours)."""
    with db.engine.connect() as conn:
        if inspect(conn).has_table("procrastinate_jobs"):
            return
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=libpq_url(db.url)))
    with app.open():
        app.schema_manager.apply_schema()
    log.info("installed the procrastinate schema")


def _make_app(conninfo: str) -> tuple[procrastinate.App, Any]:
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=conninfo))

    @app.task(name=TASK_NAME, pass_context=True)
    async def run_task(context: Any, task_id: str, model: str | None = None) -> None:
        handler = context.additional_context.get("opendance_handler")
        if handler is None:
            raise RuntimeError("this app defers jobs; it cannot run them")
        await handler(task_id, model)

    return app, run_task


class JobDeferrer:
    """The API side: offer tasks to the workers of their model's queue."""

    def __init__(self, service: TaskService, database_url: str) -> None:
        self.service = service
        self.app, self._task = _make_app(libpq_url(database_url))
        self._opened = False

    def start(self) -> None:
        self.app.open()
        self._opened = True

    def stop(self) -> None:
        if self._opened:
            self.app.close()
            self._opened = False

    def offer(self, task_id: str) -> None:
        view = self.service.get_task_unscoped(task_id)
        if view is None:
            return
        self.defer(task_id, view.requested_model)

    def defer(self, task_id: str, model: str) -> None:
        # AlreadyEnqueued: a job for this task is already waiting, which is all we want.
        with contextlib.suppress(procrastinate_errors.AlreadyEnqueued):
            self._task.configure(queue=queue_for(model), queueing_lock=task_id).defer(
                task_id=task_id, model=model
            )

    def redefer_pending(self) -> None:
        """Offer pending tasks again where a model has fewer waiting jobs than waiting tasks
        (a lost defer is found here; waiting jobs are kept).

        A job stands for any task of its model, so what must hold is a count: per model, at
        least as many `todo` jobs as pending tasks. Where it holds (nearly always) nothing is
        deferred, so a deep queue costs two indexed counts, not a defer per task. Where it
        does not, tasks left pending for a while and without a job of their own are offered
        (a fresh task has its job on the way).
        """
        with self.service.db.engine.connect() as connection:
            pending = {str(m): int(n) for m, n in connection.execute(_PENDING_PER_MODEL)}
            if not pending:
                return
            todo = {str(q): int(n) for q, n in connection.execute(_TODO_PER_QUEUE)}
            short = {
                model: count - todo.get(queue_for(model), 0)
                for model, count in pending.items()
                if count > todo.get(queue_for(model), 0)
            }
            if not short:
                return
            locked = set(connection.execute(_TODO_LOCKS).scalars())
        for task_id, model in self.service.pending_task_ids(quiet_for=10.0):
            if short.get(model, 0) > 0 and task_id not in locked:
                self.defer(task_id, model)
                short[model] -= 1


_PENDING_PER_MODEL = (
    select(Task.requested_model, func.count())
    .where(Task.status == Status.PENDING)
    .group_by(Task.requested_model)
)
_TODO_PER_QUEUE = text(
    "SELECT queue_name, count(*) FROM procrastinate_jobs WHERE status = 'todo' GROUP BY 1"
)
_TODO_LOCKS = text(
    "SELECT queueing_lock FROM procrastinate_jobs "
    "WHERE status = 'todo' AND queueing_lock IS NOT NULL"
)


class ProcrastinateWorker:
    """The worker side: run jobs of the given models' queues on this process's engines."""

    def __init__(
        self,
        service: TaskService,
        runner: TaskRunner,
        database_url: str,
        *,
        worker_id: str,
        models: list[str],
        concurrency: int,
        shutdown_grace_seconds: float,
    ) -> None:
        self.service = service
        self.runner = runner
        self.worker_id = worker_id
        self.models = models
        self.concurrency = concurrency
        self.shutdown_grace_seconds = shutdown_grace_seconds
        self.app, _ = _make_app(libpq_url(database_url))

    async def _handle(self, task_id: str, model: str | None) -> None:
        """A job of `model`'s queue: claim that model's next task in fair order (the job's own
        `task_id`, or the task that is due before it)."""
        if model is None:  # a job deferred before jobs named their model
            view = await asyncio.to_thread(self.service.get_task_unscoped, task_id)
            model = view.requested_model if view is not None else None
        if model is None or model not in self.models:
            return
        claimed = await asyncio.to_thread(self.service.claim_next, self.worker_id, [model])
        if claimed is None:
            log.debug("job for %s: no %s task is waiting, nothing to do", task_id, model)
            return
        log.info("worker %s runs task %s (attempt %d)", self.worker_id, claimed.id, claimed.attempt)
        try:
            await asyncio.shield(asyncio.to_thread(self.runner.run, claimed))
        except asyncio.CancelledError:
            # Shutdown outlived its grace period: hand the task back rather than lose it.
            self.runner.hand_back_all()
            raise

    async def run(self) -> None:
        """Run until SIGINT/SIGTERM: then take no new job and finish the running ones."""
        async with self.app.open_async():
            await self.app.run_worker_async(
                queues=[queue_for(model) for model in self.models],
                concurrency=self.concurrency,
                name=self.worker_id,
                additional_context={"opendance_handler": self._handle},
                shutdown_graceful_timeout=self.shutdown_grace_seconds,
                delete_jobs="successful",
                install_signal_handlers=True,
            )
