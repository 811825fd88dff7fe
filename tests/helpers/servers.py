"""A real opendance server on loopback (uvicorn in a thread), its settings, and a fresh database
per server when the suite runs on PostgreSQL."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from opendance.app import create_app
from opendance.clock import Clock
from opendance.runtime import Runtime, build_runtime
from opendance.settings import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: Set to a PostgreSQL URL (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test) to run the
#: suite on PostgreSQL: every server or runtime then gets a fresh database of its own.
TEST_DATABASE_URL = os.environ.get("OPENDANCE_TEST_DATABASE_URL", "")
_created_databases: list[str] = []


def fresh_database_url() -> str | None:
    """A new, empty PostgreSQL database when the suite runs on PostgreSQL; None on SQLite."""
    if not TEST_DATABASE_URL:
        return None
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(TEST_DATABASE_URL)
    name = f"od_test_{uuid.uuid4().hex[:12]}"
    admin = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    _created_databases.append(name)
    return url.set(database=name).render_as_string(hide_password=False)


def drop_test_databases() -> None:
    """Drop every database `fresh_database_url` made (at the end of the session)."""
    if not _created_databases:
        return
    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(TEST_DATABASE_URL).set(drivername="postgresql")
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
        for name in _created_databases:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    port = overrides.pop("port", None) or free_port()
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "host": "127.0.0.1",
        "port": port,
        "workers": 1,
        "lease_seconds": 5.0,
        "poll_interval_seconds": 0.05,
        "first_key_credits": 0,
    }
    if "database_url" not in overrides:
        values["database_url"] = fresh_database_url()
    values.update(overrides)
    return Settings(**values)


@dataclass
class LiveServer:
    """A running server: its base URL, its runtime (for white-box checks) and an HTTP client."""

    base_url: str
    runtime: Runtime
    client: httpx.Client
    _server: uvicorn.Server
    _thread: threading.Thread

    def new_key(self, credits: int = 1000, group: str = "default") -> str:
        return str(self.runtime.accounts.create_key(credits=credits, group=group).token)

    def auth(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def create(self, token: str, **body: Any) -> httpx.Response:
        payload = {"model": "doubao-seedance-1.0-pro-fast", "prompt": "a red fox in snow"}
        payload.update(body)
        return self.client.post("/v1/videos/generations", json=payload, headers=self.auth(token))

    def get(self, token: str, task_id: str) -> httpx.Response:
        return self.client.get(f"/v1/tasks/{task_id}", headers=self.auth(token))

    def wait_for(
        self,
        token: str,
        task_id: str,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float = 60.0,
    ) -> dict[str, Any]:
        """Poll the task until `predicate(task)` holds (or fail at the deadline)."""
        deadline = time.monotonic() + timeout
        while True:
            task: dict[str, Any] = self.get(token, task_id).json()
            if predicate(task):
                return task
            if time.monotonic() > deadline:
                raise AssertionError(f"task never reached the expected state: {task}")
            time.sleep(0.05)

    def wait_done(self, token: str, task_id: str, timeout: float = 60.0) -> dict[str, Any]:
        return self.wait_for(
            token,
            task_id,
            lambda t: t["status"] in ("completed", "failed", "cancelled"),
            timeout,
        )

    def stop(self) -> None:
        self.runtime.shutting_down = True  # open event streams end at once
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self.client.close()


def start_server(
    settings: Settings,
    prepare: Callable[[Runtime], None] | None = None,
    clock: Clock | None = None,
) -> LiveServer:
    runtime = build_runtime(settings, clock)
    if prepare is not None:
        prepare(runtime)
    app = create_app(settings, runtime=runtime)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.02)
    base_url = f"http://{settings.host}:{settings.port}"
    return LiveServer(
        base_url, runtime, httpx.Client(base_url=base_url, timeout=30), server, thread
    )
