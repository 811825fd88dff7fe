"""Fake Ark and evolink servers on loopback, following each documented task API.

Each fake is a small FastAPI app run by uvicorn in a thread. Tasks advance by the number of
queries they get (queued for `queued_polls` answers, running for `running_polls`, then the
scenario's outcome), so tests are fast and never depend on timing. Every request is recorded,
and a scenario scripts what goes wrong: answers to return before the normal ones (429 with
Retry-After, 500s, malformed bodies), a create that answers only after a delay (the ambiguous
create), failed / cancelled / expired / unknown outcomes, and the bytes behind the video URL.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from opendance.media.video import encode_mp4


def make_mp4(path: Path, width: int = 96, height: int = 64, frames: int = 6) -> bytes:
    """A real, tiny H.264 MP4 (a moving gradient) for the fakes to serve as the result."""
    ramp = np.linspace(0, 255, width, dtype=np.uint8)

    def frame(i: int) -> np.ndarray[Any, np.dtype[np.uint8]]:
        rgb = np.zeros((height, width, 3), dtype=np.uint8)
        rgb[..., 0] = np.roll(ramp, i * 7)[None, :]
        rgb[..., 1] = 128
        return rgb

    encode_mp4((frame(i) for i in range(frames)), path, width, height)
    return path.read_bytes()


@dataclass
class Scripted:
    """One canned answer: a dict body goes out as JSON, a str body as it is (malformed)."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)

    def response(self) -> Response:
        if isinstance(self.body, str):
            return Response(
                self.body,
                status_code=self.status,
                headers=self.headers,
                media_type="application/json",
            )
        return JSONResponse(self.body or {}, status_code=self.status, headers=self.headers)


@dataclass
class Scenario:
    """What the fake does; tests change it before (or while) the engine runs."""

    queued_polls: int = 1
    running_polls: int = 2
    outcome: str = "succeeded"
    error_code: str | None = None
    error_message: str | None = None
    create_answers: list[Scripted] = field(default_factory=list)
    create_delay: float = 0.0
    poll_answers: list[Scripted] = field(default_factory=list)
    video_bytes: bytes = b""
    video_status: int = 200


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    json: Any
    query: list[tuple[str, str]]


@dataclass
class FakeTask:
    id: str
    body: dict[str, Any]
    polls: int = 0
    forced: str | None = None
    deleted: bool = False
    created: int = field(default_factory=lambda: int(time.time()))


class FakeUpstream:
    """Common machinery: the thread, the recording, bearer auth, the task clock, the video."""

    api_prefix = ""

    def __init__(self, api_key: str, video_bytes: bytes) -> None:
        self.api_key = api_key
        self.scenario = Scenario(video_bytes=video_bytes)
        self.requests: list[Recorded] = []
        self.tasks: dict[str, FakeTask] = {}
        self._lock = threading.Lock()
        self._counter = itertools.count(1)
        self.app = FastAPI()
        self.app.middleware("http")(self._record)
        self.app.get("/files/{name}")(self._video)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.root = ""

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app, log_level="warning", lifespan="off", timeout_graceful_shutdown=2
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("fake upstream did not start")
            time.sleep(0.01)
        self.root = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)

    @property
    def base_url(self) -> str:
        return self.root + self.api_prefix

    # -- what tests look at --------------------------------------------------------------------

    def calls(self, method: str, path_part: str = "") -> list[Recorded]:
        return [r for r in self.requests if r.method == method and path_part in r.path]

    def creates(self) -> list[Recorded]:
        return self.calls("POST", self.create_path)

    def add_task(self, body: dict[str, Any] | None = None) -> str:
        """A task that exists upstream already (as if an earlier attempt had created it)."""
        task = self._new_task(body or {"model": "m"})
        return task.id

    # -- the parts every fake shares ------------------------------------------------------------

    create_path = ""

    async def _record(self, request: Request, call_next: Any) -> Response:
        raw = await request.body()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        with self._lock:
            self.requests.append(
                Recorded(
                    method=request.method,
                    path=request.url.path,
                    headers={k.lower(): v for k, v in request.headers.items()},
                    json=parsed,
                    query=list(request.query_params.multi_items()),
                )
            )
        response: Response = await call_next(request)
        return response

    def _authorized(self, request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {self.api_key}"

    def _new_task(self, body: dict[str, Any]) -> FakeTask:
        task = FakeTask(id=self._make_id(), body=body)
        with self._lock:
            self.tasks[task.id] = task
        return task

    def _make_id(self) -> str:
        raise NotImplementedError

    def _advance(self, task: FakeTask) -> str:
        """Our status of a task after one more query: queued, running, then the outcome."""
        task.polls += 1
        if task.forced is not None:
            return task.forced
        scenario = self.scenario
        if task.polls <= scenario.queued_polls:
            return "queued"
        if task.polls <= scenario.queued_polls + scenario.running_polls:
            return "running"
        return scenario.outcome

    def _video_url(self, task: FakeTask) -> str:
        return f"{self.root}/files/{task.id}.mp4?X-Tos-Expires=86400&sig={secrets.token_hex(4)}"

    async def _video(self, name: str) -> Response:
        if self.scenario.video_status != 200:
            return Response(b"", status_code=self.scenario.video_status)
        return Response(self.scenario.video_bytes, media_type="video/mp4")

    def _next_scripted(self, queue: list[Scripted]) -> Scripted | None:
        with self._lock:
            return queue.pop(0) if queue else None


class FakeArk(FakeUpstream):
    """BytePlus ModelArk `contents/generations/tasks`: create, get, list, delete."""

    api_prefix = "/api/v3"
    create_path = "/api/v3/contents/generations/tasks"

    def __init__(self, api_key: str, video_bytes: bytes) -> None:
        super().__init__(api_key, video_bytes)
        tasks = "/api/v3/contents/generations/tasks"
        self.app.post(tasks)(self._create)
        self.app.get(tasks)(self._list)
        self.app.get(tasks + "/{task_id}")(self._get)
        self.app.delete(tasks + "/{task_id}")(self._delete)

    def _make_id(self) -> str:
        return f"cgt-{time.strftime('%Y%m%d%H%M%S')}-{next(self._counter):05d}"

    @staticmethod
    def _error(status: int, code: str, message: str, kind: str) -> JSONResponse:
        body = {"error": {"code": code, "message": message, "param": "", "type": kind}}
        return JSONResponse(body, status_code=status)

    def _unauthorized(self) -> JSONResponse:
        return self._error(
            401,
            "AuthenticationError",
            "The API key or AK/SK in the request is missing or invalid. Request ID: fake",
            "Unauthorized",
        )

    async def _create(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._unauthorized()
        scripted = self._next_scripted(self.scenario.create_answers)
        if scripted is not None:
            return scripted.response()
        body = await request.json()
        content = body.get("content")
        if not body.get("model") or not isinstance(content, list) or not content:
            return self._error(
                400, "MissingParameter", "model and content are required", "BadRequest"
            )
        images = [c for c in content if c.get("type") == "image_url"]
        if len(images) > 1 and any("role" not in c for c in images):
            return self._error(400, "InvalidParameter", "expected at most one image", "BadRequest")
        task = self._new_task(body)
        if self.scenario.create_delay:
            # Accepted and created, but the answer comes too late: an ambiguous create.
            await asyncio.sleep(self.scenario.create_delay)
        return JSONResponse({"id": task.id})

    def _task_object(self, task: FakeTask, status: str) -> dict[str, Any]:
        body = task.body
        obj: dict[str, Any] = {
            "id": task.id,
            "model": body.get("model"),
            "status": status,
            "created_at": task.created,
            "updated_at": int(time.time()),
            "resolution": body.get("resolution") or "1080p",
            "ratio": body.get("ratio") or "16:9",
            "duration": body.get("duration") or 5,
            "framespersecond": 24,
            "seed": body.get("seed") if body.get("seed") is not None else 42,
            "service_tier": "default",
            "execution_expires_after": 172800,
        }
        if status == "succeeded":
            obj["content"] = {"video_url": self._video_url(task)}
            obj["usage"] = {"completion_tokens": 48600, "total_tokens": 48600}
        if status == "failed":
            obj["error"] = {
                "code": self.scenario.error_code or "InternalServiceError",
                "message": (
                    self.scenario.error_message or "The service encountered an error."
                ).replace("{id}", task.id),
            }
        return obj

    async def _get(self, task_id: str, request: Request) -> Response:
        if not self._authorized(request):
            return self._unauthorized()
        scripted = self._next_scripted(self.scenario.poll_answers)
        if scripted is not None:
            return scripted.response()
        task = self.tasks.get(task_id)
        if task is None or task.deleted:
            return self._error(404, "ResourceNotFound", "task not found", "NotFound")
        return JSONResponse(self._task_object(task, self._advance(task)))

    async def _list(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._unauthorized()
        params = request.query_params
        page_num = int(params.get("page_num") or 1)
        page_size = int(params.get("page_size") or 10)
        wanted_ids = set(params.getlist("filter.task_ids"))
        status = params.get("filter.status")
        items = []
        for task in self.tasks.values():
            if task.deleted or (wanted_ids and task.id not in wanted_ids):
                continue
            current = task.forced or ("queued" if task.polls == 0 else "running")
            if status and current != status:
                continue
            items.append(self._task_object(task, current))
        start = (page_num - 1) * page_size
        return JSONResponse({"total": len(items), "items": items[start : start + page_size]})

    async def _delete(self, task_id: str, request: Request) -> Response:
        if not self._authorized(request):
            return self._unauthorized()
        task = self.tasks.get(task_id)
        if task is None or task.deleted:
            return self._error(404, "ResourceNotFound", "task not found", "NotFound")
        if task.forced == "cancelled":
            return self._error(
                409, "InvalidAction", "a cancelled task cannot be deleted", "Conflict"
            )
        if task.forced is None and task.polls <= (
            self.scenario.queued_polls + self.scenario.running_polls
        ):
            task.forced = "cancelled"  # queued or running -> cancelled
        else:
            task.deleted = True  # finished: the record goes
        return JSONResponse({})


class FakeEvolink(FakeUpstream):
    """evolink `POST /v1/videos/generations` + `GET /v1/tasks/{id}` (+ opendance's cancel)."""

    create_path = "/v1/videos/generations"

    _STATUS = {
        "queued": "pending",
        "running": "processing",
        "succeeded": "completed",
    }

    def __init__(self, api_key: str, video_bytes: bytes) -> None:
        super().__init__(api_key, video_bytes)
        self.app.post("/v1/videos/generations")(self._create)
        self.app.get("/v1/tasks/{task_id}")(self._get)
        self.app.post("/v1/tasks/{task_id}/cancel")(self._cancel)

    def _make_id(self) -> str:
        return f"task-unified-{int(time.time())}-{secrets.token_hex(4)}"

    @staticmethod
    def _error(status: int, message: str, kind: str, code: Any = None) -> JSONResponse:
        body = {
            "error": {
                "code": code if code is not None else status,
                "message": message,
                "type": kind,
            }
        }
        return JSONResponse(body, status_code=status)

    async def _create(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._error(401, "Invalid or expired token", "authentication_error")
        scripted = self._next_scripted(self.scenario.create_answers)
        if scripted is not None:
            return scripted.response()
        body = await request.json()
        if not body.get("model") or not body.get("prompt"):
            return self._error(400, "model and prompt are required", "invalid_request_error")
        task = self._new_task(body)
        if self.scenario.create_delay:
            await asyncio.sleep(self.scenario.create_delay)
        return JSONResponse(self._task_object(task, "queued", progress=0))

    def _task_object(
        self, task: FakeTask, status: str, progress: int | None = None
    ) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "id": task.id,
            "object": "video.generation.task",
            "type": "video",
            "model": task.body.get("model"),
            "created": task.created,
            "status": self._STATUS.get(status, status),
            "progress": progress if progress is not None else {"succeeded": 100}.get(status, 40),
            "task_info": {"can_cancel": status in ("queued", "running"), "video_duration": 5},
        }
        if status == "succeeded":
            obj["results"] = [self._video_url(task)]
        if status == "failed":
            obj["progress"] = 0
            obj["error"] = {
                "code": self.scenario.error_code or "service_error",
                "message": self.scenario.error_message or "Internal service error",
            }
        return obj

    async def _get(self, task_id: str, request: Request) -> Response:
        if not self._authorized(request):
            return self._error(401, "Invalid or expired token", "authentication_error")
        scripted = self._next_scripted(self.scenario.poll_answers)
        if scripted is not None:
            return scripted.response()
        task = self.tasks.get(task_id)
        if task is None:
            return self._error(404, "task not found", "not_found_error", "resource_not_found")
        return JSONResponse(self._task_object(task, self._advance(task)))

    async def _cancel(self, task_id: str, request: Request) -> Response:
        if not self._authorized(request):
            return self._error(401, "Invalid or expired token", "authentication_error")
        task = self.tasks.get(task_id)
        if task is None:
            return self._error(404, "task not found", "not_found_error")
        task.forced = "cancelled"
        return JSONResponse(self._task_object(task, "cancelled"))


@contextmanager
def running(fake: FakeUpstream) -> Iterator[FakeUpstream]:
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()
