"""The HTTP application: the faces' routes, error handlers and middleware over a runtime.

The runtime (store, service, engines, workers) is built in `opendance.runtime`; this module
only assembles the app and hands each face's callback body to the runtime.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import Response
from fastapi_offline import FastAPIOffline

from opendance import __version__
from opendance.faces import (
    account,
    api_docs,
    ark,
    downloads,
    health,
    openai,
    playground,
    seedance,
    uploads,
    webhooks,
)
from opendance.faces import metrics as metrics_face
from opendance.faces import models as models_face
from opendance.faces.errors import ApiError, error_response, install_error_handlers
from opendance.faces.middleware import RequestContextMiddleware
from opendance.runtime import CallbackBody, Runtime, build_runtime
from opendance.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_FACE", "Runtime", "build_runtime", "callback_bodies", "create_app"]


#: Each face's callback body, by the `face` a task was created through.
def callback_bodies() -> dict[str, CallbackBody]:
    return {
        "seed": seedance.callback_body,
        "openai": openai.callback_body,
        "ark": ark.callback_body,
    }


DEFAULT_FACE = "seed"


def error_response_for(path: str) -> Callable[[ApiError], Response]:
    """The error shape of the face that owns `path` (for errors raised outside its routes)."""
    if path.startswith(ark.PREFIX):
        return ark.ark_error_response
    if openai.owns_path(path):
        return openai.openai_error_response
    return error_response


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
        rt.start_callbacks(callback_bodies(), DEFAULT_FACE)
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
        RequestContextMiddleware,
        max_body_bytes=settings.max_body_bytes,
        metrics=rt.metrics,
        error_response_for=error_response_for,
    )
    app.include_router(metrics_face.router)
    app.include_router(seedance.router)
    app.include_router(webhooks.router)
    app.include_router(seedance.events_router)
    app.include_router(uploads.router)
    app.include_router(account.router)
    app.include_router(models_face.router)
    app.include_router(downloads.router)
    app.include_router(health.router)
    app.include_router(api_docs.router)
    app.include_router(openai.router)
    app.include_router(ark.router)
    app.include_router(playground.router)  # last: it owns / and /static/{name}
    return app
