"""The application: builds the runtime (store, service, engines, workers) and the HTTP app."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from opendance import __version__
from opendance.callbacks.deliver import CallbackSender
from opendance.callbacks.outbox import Outbox
from opendance.clock import Clock
from opendance.dispatch.local import LocalDispatcher
from opendance.dispatch.maintenance import Maintenance
from opendance.dispatch.registry import WorkerRegistry
from opendance.dispatch.runner import TaskRunner
from opendance.engines.catalog import ModelCatalog
from opendance.engines.registry import EngineRouter
from opendance.faces import (
    account,
    api_docs,
    ark,
    events,
    files,
    health,
    openai,
    playground,
    seed,
    uploads,
    webhooks,
)
from opendance.faces import metrics as metrics_face
from opendance.faces import models as models_face
from opendance.faces.errors import install_error_handlers
from opendance.faces.limits import KeyRateLimiter
from opendance.media.safe_http import Resolver
from opendance.media.storage import ResultStore, load_or_create_secret
from opendance.media.uploads import sweep_uploads
from opendance.observability.metrics import Metrics
from opendance.observability.middleware import RequestContextMiddleware
from opendance.settings import Settings
from opendance.store import migrate
from opendance.store.changes import key_epoch_for
from opendance.store.db import Database
from opendance.tasks.accounts import Accounts
from opendance.tasks.pricing import PriceTable
from opendance.tasks.service import TaskService

if TYPE_CHECKING:
    from opendance.dispatch.distributed import JobDeferrer

log = logging.getLogger(__name__)


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
    #: When this runtime was built (Unix seconds): the `created` of the models it lists.
    started_at: float = 0.0
    sender: CallbackSender | None = None
    dispatcher: LocalDispatcher | None = None
    deferrer: JobDeferrer | None = None
    maintenance: Maintenance | None = None
    shutting_down: bool = False
    #: Tests inject a resolver they control; production uses the system's.
    callback_resolver: Resolver | None = None
    extras: dict[str, object] = field(default_factory=dict)

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
            (3600.0, self.service.sweep_idempotency_keys),
            (3600.0, lambda: sweep_uploads(self.settings, self.clock.now())),
            *(extra_jobs or []),
        ]
        if settings.dispatch == "procrastinate":
            from opendance.dispatch.distributed import JobDeferrer

            self.deferrer = JobDeferrer(self.service, settings.db_url)
            self.deferrer.start()
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

    def start_callbacks(self) -> None:
        def render(task_id: str) -> str | None:
            view = self.service.get_task_unscoped(task_id)
            if view is None:
                return None
            if view.face == "openai":
                return openai.webhook_body(view)
            if view.face == "ark":
                return ark.callback_body(view, self.results)
            return json.dumps(seed.task_object(view, self.results), separators=(",", ":"))

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
    results = ResultStore(settings.results_dir, secret, settings.base_url)
    runner = TaskRunner(service, router, results, settings, metrics)
    registry = WorkerRegistry(db, clock, stale_after=max(5.0, settings.lease_seconds))
    service.lanes_for = registry.lanes
    if settings.dispatch == "procrastinate":
        from opendance.dispatch.distributed import ensure_schema

        ensure_schema(db)
    return Runtime(
        settings=settings,
        clock=clock,
        db=db,
        accounts=Accounts(db, clock, key_epoch_for(settings.db_url)),
        service=service,
        router=router,
        results=results,
        runner=runner,
        outbox=Outbox(db),
        registry=registry,
        metrics=metrics,
        limiter=KeyRateLimiter(settings),
        catalog=ModelCatalog(router, settings),
        started_at=clock.now(),
    )


def create_app(settings: Settings | None = None, *, runtime: Runtime | None = None) -> FastAPI:
    """The ASGI app. Workers start with the app and stop (gracefully) with it."""
    settings = settings or (runtime.settings if runtime else Settings())
    state: dict[str, Runtime] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        rt = state["runtime"]
        if settings.allow_loopback_for_tests:
            log.warning(
                "allow_loopback_for_tests is ON: callbacks and image URLs may reach loopback. "
                "Never use this in production."
            )
        rt.start_background(local_workers=settings.workers)
        rt.start_callbacks()
        try:
            yield
        finally:
            rt.close()

    # Swagger UI and ReDoc from assets shipped in a package, not a CDN: the docs work offline.
    app = FastAPIOffline(
        title="opendance",
        version=__version__,
        description="Self-hosted video generation: the Seedance task API on your own machines.",
        lifespan=lifespan,
        favicon_url="/favicon.ico",
        static_url=api_docs.STATIC_URL,
        redoc_url=None,  # faces/api_docs.py serves it, with a policy that keeps it offline
        # Swagger UI would otherwise send the document to an online validator for a badge.
        swagger_ui_parameters={"validatorUrl": None},
    )
    rt = runtime or build_runtime(settings)
    state["runtime"] = rt
    app.state.runtime = rt
    install_error_handlers(app)
    app.add_middleware(
        RequestContextMiddleware, max_body_bytes=settings.max_body_bytes, metrics=rt.metrics
    )
    app.include_router(metrics_face.router)
    app.include_router(seed.router)
    app.include_router(webhooks.router)
    app.include_router(events.router)
    app.include_router(uploads.router)
    app.include_router(account.router)
    app.include_router(models_face.router)
    app.include_router(files.router)
    app.include_router(health.router)
    app.include_router(api_docs.router)
    app.include_router(openai.router)
    app.include_router(ark.router)
    app.include_router(playground.router)  # last: it owns / and /static/{name}
    return app
