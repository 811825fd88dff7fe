"""The runtime: everything a running server holds (store, service, engines, workers, callback
sender, event hub, task views and the feed of other processes' changes), built once and
shared by the faces and the workers, and wired here.

The faces reach it through `opendance.faces.deps.RuntimeDep`; it imports no face. What differs
by face (the body of a callback) is handed in by the app (`start_callbacks`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from opendance.callbacks.deliver import CallbackSender
from opendance.callbacks.outbox import Outbox
from opendance.clock import Clock
from opendance.dispatch.local import LocalDispatcher
from opendance.dispatch.maintenance import Maintenance
from opendance.dispatch.runner import TaskRunner
from opendance.dispatch.worker_registry import WorkerRegistry
from opendance.engines.catalog import ModelCatalog
from opendance.engines.routing import EngineRouter
from opendance.media.blobs import open_blobs
from opendance.media.safe_http import Resolver
from opendance.media.storage import ResultStore, load_or_create_secret
from opendance.observability.metrics import Metrics
from opendance.settings import Settings
from opendance.store import migrate
from opendance.store.changes import PostgresListener, key_epoch_for, listener_for
from opendance.store.db import Database
from opendance.store.task_feed import TaskFeed, task_feed_for
from opendance.tasks.accounts import Accounts
from opendance.tasks.models import TaskView
from opendance.tasks.pricing import PriceTable
from opendance.tasks.rate_limits import KeyRateLimiter
from opendance.tasks.service import TaskService
from opendance.tasks.uploads import Uploads
from opendance.tasks.view_cache import TaskViews
from opendance.tasks.watchers import TaskEvents

if TYPE_CHECKING:
    from opendance.dispatch.distributed import JobDeferrer

log = logging.getLogger(__name__)

#: A face's callback body for a finished task (None: nothing to send).
CallbackBody = Callable[[TaskView, ResultStore], "str | None"]


@dataclass
class Runtime:
    """Everything a running server holds; built once, shared by faces and workers."""

    settings: Settings
    clock: Clock
    db: Database
    accounts: Accounts
    service: TaskService
    router: EngineRouter
    results: ResultStore
    runner: TaskRunner
    outbox: Outbox
    registry: WorkerRegistry
    metrics: Metrics
    limiter: KeyRateLimiter
    catalog: ModelCatalog
    uploads: Uploads
    #: Task views served from memory until the task changes (here or in another process).
    views: TaskViews
    #: Task changes made by other processes (NOTIFY on PostgreSQL, a poller on SQLite).
    task_feed: TaskFeed
    #: This process's LISTEN connection on PostgreSQL (keys and tasks); None on SQLite.
    listener: PostgresListener | None = None
    #: When this runtime was built (Unix seconds): the `created` of the models it lists.
    started_at: float = 0.0
    sender: CallbackSender | None = None
    dispatcher: LocalDispatcher | None = None
    deferrer: JobDeferrer | None = None
    maintenance: Maintenance | None = None
    #: Tests inject a resolver they control; production uses the system's.
    callback_resolver: Resolver | None = None
    #: Wakes this process's event streams and long-polls when one of their tasks changes.
    events: TaskEvents = field(default_factory=TaskEvents)
    _shutting_down: bool = field(default=False, repr=False)

    @property
    def shutting_down(self) -> bool:
        """Set when the server starts to stop: streams end, long-polls answer at once."""
        return self._shutting_down

    @shutting_down.setter
    def shutting_down(self, value: bool) -> None:
        self._shutting_down = value
        if value:
            self.events.wake_all()

    def task_changed(self, task_id: str) -> None:
        """A task changed (committed, here or elsewhere): drop its view, then wake its waiters
        (in that order, so a woken waiter never reads the old view)."""
        self.views.invalidate(task_id)
        self.events.notify(task_id)

    def task_changed_elsewhere(self, task_id: str, updated_at: float | None) -> None:
        """The task feed's news: a change, unless it is the version already kept (a change of
        this process, heard in-process first)."""
        if updated_at is None or not self.views.holds(task_id, updated_at):
            self.task_changed(task_id)

    def start_background(
        self,
        *,
        local_workers: int,
        models: list[str] | None = None,
        extra_jobs: list[tuple[float, Callable[[], object]]] | None = None,
    ) -> None:
        """Start what this process runs besides HTTP: maintenance, job offers, local workers."""
        settings = self.settings
        jobs: list[tuple[float, Callable[[], object]]] = [
            (max(0.2, settings.lease_seconds / 2), self.service.reap_expired_leases),
            (
                settings.sweep_interval_seconds,
                lambda: self.service.sweep_expired_results(self.results.delete),
            ),
            (60.0, self.registry.prune),
            # Deadlines are an hour or more; a task expires within seconds of its deadline.
            (5.0, self.service.expire_overdue),
            (3600.0, self.service.sweep_idempotency_keys),
            (3600.0, self.uploads.sweep),
            *(extra_jobs or []),
        ]
        if settings.dispatch == "procrastinate":
            from opendance.dispatch.distributed import JobDeferrer

            self.deferrer = JobDeferrer(self.service, settings.db_url)
            self.deferrer.start()
            self.service.on_created.append(self.deferrer.offer)
            jobs.append((5.0, self.deferrer.redefer_pending))
        elif local_workers > 0:
            served = models or self.router.models()
            self.dispatcher = LocalDispatcher(
                self.service,
                self.runner,
                workers=local_workers,
                models=served,
                poll_interval=settings.poll_interval_seconds,
            )
            self.service.on_created.append(self.dispatcher.notify)
            self.dispatcher.start()
            worker_id = self.dispatcher.worker_id
            jobs.append(
                (
                    max(0.2, settings.lease_seconds / 3),
                    lambda: self.registry.beat(worker_id, served, local_workers),
                )
            )
        self.maintenance = Maintenance(jobs)
        self.maintenance.start()

    def start_callbacks(self, bodies: Mapping[str, CallbackBody], default_face: str) -> None:
        """Start delivering callbacks; each face hands in the body of its own callbacks
        (`bodies[view.face]`), so the runtime renders none itself and imports no face."""

        def render(task_id: str) -> str | None:
            view = self.service.get_task_unscoped(task_id)
            if view is None:
                return None
            body = bodies.get(view.face) or bodies[default_face]
            return body(view, self.results)

        self.sender = CallbackSender(
            self.outbox,
            render,
            self.settings,
            self.clock,
            resolver=self.callback_resolver,
            metrics=self.metrics,
        )
        self.service.on_finished.append(self.sender.notify)
        self.sender.start()

    def close(self) -> None:
        self.shutting_down = True
        if self.dispatcher is not None:
            self.dispatcher.stop(timeout=self.settings.shutdown_grace_seconds)
            self.registry.leave(self.dispatcher.worker_id)
        if self.maintenance is not None:
            self.maintenance.stop()
        if self.deferrer is not None:
            self.deferrer.stop()
        if self.sender is not None:
            self.sender.stop()
        self.router.close()
        self.accounts.close()
        self.task_feed.close()
        if self.listener is not None:
            self.listener.stop()
        self.db.dispose()


def build_runtime(settings: Settings, clock: Clock | None = None) -> Runtime:
    """Migrate the database and wire the parts together (no threads started yet)."""
    clock = clock or Clock()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate.upgrade(settings.db_url)
    db = Database(settings.db_url)
    router = EngineRouter(settings)
    metrics = Metrics()
    service = TaskService(db, settings, router, PriceTable(settings), clock, metrics)
    metrics.watch_tasks(service.status_counts)
    secret = (
        settings.url_signing_secret.get_secret_value().encode()
        if settings.url_signing_secret
        else load_or_create_secret(settings.data_dir / "url-signing.key")
    )
    blobs = open_blobs(settings.storage_url, settings.data_dir, settings.s3_endpoint_url)
    results = ResultStore(blobs, secret, settings.base_url, settings.result_urls)
    runner = TaskRunner(service, router, results, settings, metrics)
    registry = WorkerRegistry(db, clock, stale_after=max(5.0, settings.lease_seconds))
    service.lanes_for = registry.lanes
    if settings.dispatch == "procrastinate":
        from opendance.dispatch.distributed import ensure_schema

        ensure_schema(db)
    listener = listener_for(settings.db_url)
    task_feed = task_feed_for(settings.db_url, listener)
    runtime = Runtime(
        settings=settings,
        clock=clock,
        db=db,
        accounts=Accounts(db, clock, key_epoch_for(settings.db_url, listener)),
        service=service,
        router=router,
        results=results,
        runner=runner,
        outbox=Outbox(db),
        registry=registry,
        metrics=metrics,
        limiter=KeyRateLimiter(settings),
        catalog=ModelCatalog(router, settings),
        uploads=Uploads(db, blobs, clock, settings.result_ttl_seconds),
        views=TaskViews(service, task_feed, clock),
        task_feed=task_feed,
        listener=listener,
        started_at=clock.now(),
    )
    _wire(runtime)
    return runtime


def _wire(runtime: Runtime) -> None:
    """The listeners that live as long as the runtime, in one place. (The dispatcher, the job
    offers and the callback sender are wired where they start: `start_background`,
    `start_callbacks`.)"""
    service = runtime.service
    service.on_cancelled.append(runtime.runner.notify_cancelled)
    service.on_changed.append(runtime.task_changed)
    # A task handed back to the queue (re-queued or released) goes through on_created.
    service.on_created.append(runtime.task_changed)
    # Changes made by other processes (replicas, workers) on the same database.
    runtime.task_feed.on_change(runtime.task_changed_elsewhere)
