"""The application: builds the runtime (store, service, engines, workers) and the HTTP app."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI

from opendance import __version__
from opendance.callbacks.deliver import CallbackSender
from opendance.callbacks.outbox import Outbox
from opendance.clock import Clock
from opendance.dispatch.local import LocalDispatcher
from opendance.dispatch.runner import TaskRunner
from opendance.engines.registry import EngineRouter
from opendance.faces import files, health, seed, webhooks
from opendance.faces.errors import install_error_handlers
from opendance.media.safe_http import Resolver
from opendance.media.storage import ResultStore, load_or_create_secret
from opendance.settings import Settings
from opendance.store import migrate
from opendance.store.db import Database
from opendance.tasks.accounts import Accounts
from opendance.tasks.pricing import PriceTable
from opendance.tasks.service import TaskService

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
    sender: CallbackSender | None = None
    dispatcher: LocalDispatcher | None = None
    shutting_down: bool = False
    #: Tests inject a resolver they control; production uses the system's.
    callback_resolver: Resolver | None = None
    extras: dict[str, object] = field(default_factory=dict)

    def start_workers(self) -> None:
        if self.settings.workers <= 0:
            return
        self.dispatcher = LocalDispatcher(
            self.service,
            self.runner,
            workers=self.settings.workers,
            models=self.router.models(),
            poll_interval=self.settings.poll_interval_seconds,
            periodic=[
                (max(0.2, self.settings.lease_seconds / 2), self.service.reap_expired_leases),
                (
                    self.settings.sweep_interval_seconds,
                    lambda: self.service.sweep_expired_results(self.results.delete),
                ),
            ],
        )
        self.dispatcher.start()

    def start_callbacks(self) -> None:
        def render(task_id: str) -> str | None:
            view = self.service.get_task_unscoped(task_id)
            if view is None:
                return None
            return json.dumps(seed.task_object(view, self.results), separators=(",", ":"))

        self.sender = CallbackSender(
            self.outbox, render, self.settings, self.clock, resolver=self.callback_resolver
        )
        self.service.on_finished.append(self.sender.notify)
        self.sender.start()

    def close(self) -> None:
        self.shutting_down = True
        if self.dispatcher is not None:
            self.dispatcher.stop()
        if self.sender is not None:
            self.sender.stop()
        self.router.close()
        self.db.dispose()


def build_runtime(settings: Settings, clock: Clock | None = None) -> Runtime:
    """Migrate the database and wire the parts together (no threads started yet)."""
    clock = clock or Clock()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate.upgrade(settings.db_url)
    db = Database(settings.db_url)
    router = EngineRouter(settings)
    service = TaskService(db, settings, router, PriceTable(settings), clock)
    secret = (
        settings.url_signing_secret.get_secret_value().encode()
        if settings.url_signing_secret
        else load_or_create_secret(settings.data_dir / "url-signing.key")
    )
    results = ResultStore(settings.results_dir, secret, settings.base_url)
    runner = TaskRunner(service, router, results, settings)
    return Runtime(
        settings=settings,
        clock=clock,
        db=db,
        accounts=Accounts(db, clock),
        service=service,
        router=router,
        results=results,
        runner=runner,
        outbox=Outbox(db),
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
        rt.start_workers()
        rt.start_callbacks()
        try:
            yield
        finally:
            rt.close()

    app = FastAPI(
        title="opendance",
        version=__version__,
        description="Self-hosted video generation: the Seedance task API on your own machines.",
        lifespan=lifespan,
    )
    rt = runtime or build_runtime(settings)
    state["runtime"] = rt
    app.state.runtime = rt
    install_error_handlers(app)
    app.include_router(seed.router)
    app.include_router(webhooks.router)
    app.include_router(files.router)
    app.include_router(health.router)
    return app
