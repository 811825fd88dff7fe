"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from opendance import __version__
from opendance.faces.deps import runtime_of
from opendance.media.blobs import StorageError
from opendance.store.migrate import is_current

router = APIRouter(tags=["Health"])


@router.get("/healthz", summary="The process is alive")
def healthz() -> dict[str, Any]:
    return {"status": "ok", "version": __version__}


@router.get(
    "/readyz",
    summary="The server can take work (database reachable and migrated)",
    responses={503: {"description": "Not ready: `checks` names what is not ok"}},
)
def readyz(request: Request) -> JSONResponse:
    runtime = runtime_of(request)
    checks: dict[str, str] = {}
    try:
        with runtime.db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
        checks["migrations"] = "ok" if is_current(runtime.db.engine, runtime.db.url) else "pending"
    except Exception as error:  # the probe reports, it does not raise
        checks["database"] = f"error: {type(error).__name__}"
    try:
        runtime.results.check()
        checks["storage"] = "ok"
    except StorageError as error:
        checks["storage"] = f"error: {error}"
    if runtime.dispatcher is not None:
        checks["workers"] = "ok" if runtime.dispatcher.running else "stopped"
    if runtime.shutting_down:
        checks["shutdown"] = "in progress"
    ready = all(value == "ok" for value in checks.values()) and not runtime.shutting_down
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status_code=200 if ready else 503,
    )
