"""The two floors of bench/api.py: what Starlette alone and FastAPI alone cost per request.

No `from __future__ import annotations` here: FastAPI reads the route annotations at runtime.
"""

from typing import Any

from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from opendance.faces.seedance import CreateVideoRequest


def starlette_app(answer: dict[str, Any]) -> Starlette:
    """The floor: one Starlette route for GET and POST (a POST reads its body), a fixed answer."""

    async def endpoint(request: Request) -> JSONResponse:
        if request.method == "POST":
            await request.body()
        return JSONResponse(answer)

    return Starlette(routes=[Route("/{path:path}", endpoint, methods=["GET", "POST"])])


def fastapi_app(answer: dict[str, Any]) -> FastAPI:
    """The framework's own floor: the two routes as an idiomatic FastAPI app writes them.

    The create validates opendance's request model from the body; both return the fixed
    answer as a dict for FastAPI to serialize. No auth, no database: what FastAPI alone costs
    for these two requests, which opendance (a FastAPI app) cannot go below.
    """
    app = FastAPI()

    @app.post("/v1/videos/generations")
    async def create(body: CreateVideoRequest) -> dict[str, Any]:
        return answer

    @app.get("/v1/tasks/{task_id}")
    async def get(task_id: str) -> dict[str, Any]:
        return answer

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
