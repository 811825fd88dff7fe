"""Helpers of the client tests: the client faces on test servers, a paced sandbox engine, a
TCP proxy that cuts or refuses event streams, MP4 checks and small images."""

from __future__ import annotations

import io
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import av
import pytest
from fastapi import FastAPI
from PIL import Image

from opendance.engines.base import EngineContext, EngineResult, VideoJob
from opendance.engines.routing import ENGINE_FACTORIES
from opendance.engines.sandbox import SandboxEngine
from opendance.faces import account, playground, uploads
from opendance.faces.seedance import events
from opendance.settings import DEFAULT_MODEL, Route, RouteEngine
from tests.helpers import servers

CLIENT_ROUTERS = (events.router, uploads.router, account.router, playground.router)


def with_client_faces(app: FastAPI) -> FastAPI:
    """Include this issue's routers unless the app already has them (once the lead wires them
    into `create_app`, this adds nothing)."""
    paths = {getattr(route, "path", None) for route in app.router.routes}
    for router in CLIENT_ROUTERS:
        if not any(getattr(route, "path", None) in paths for route in router.routes):
            app.include_router(router)
    return app


def wire_client_faces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the shared `server_factory` build apps with the client faces, and offer the
    `paced_sandbox` engine kind."""
    original = servers.create_app

    def create_app(*args: Any, **kwargs: Any) -> FastAPI:
        return with_client_faces(original(*args, **kwargs))

    monkeypatch.setattr(servers, "create_app", create_app)
    monkeypatch.setitem(ENGINE_FACTORIES, "paced_sandbox", "tests.helpers.clients:paced_sandbox")


# ---------------------------------------------------------------------------------------------
# A sandbox that takes its time, so progress can be watched


class _PacedContext:
    def __init__(self, ctx: EngineContext, delay: float) -> None:
        self._ctx = ctx
        self._delay = delay

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)

    def report_progress(self, fraction: float) -> None:
        if fraction < 1:
            time.sleep(self._delay)
        self._ctx.report_progress(fraction)


class PacedSandbox(SandboxEngine):
    """The sandbox, sleeping `delay` seconds before each progress report (25/50/75% at 2 s)."""

    def __init__(self, delay: float, **options: Any) -> None:
        super().__init__(**options)
        self.delay = delay

    def generate(self, job: VideoJob, ctx: EngineContext) -> EngineResult:
        time.sleep(self.delay)
        return super().generate(job, _PacedContext(ctx, self.delay))  # type: ignore[arg-type]


def paced_sandbox(options: dict[str, Any]) -> PacedSandbox:
    return PacedSandbox(float(options.get("delay", 0.3)))


def paced_routes(delay: float = 0.3) -> dict[str, Route]:
    return {
        DEFAULT_MODEL: Route(
            engines=[RouteEngine(engine="paced_sandbox", options={"delay": delay})]
        )
    }


# ---------------------------------------------------------------------------------------------
# Media


def png_bytes(width: int = 320, height: int = 240) -> bytes:
    image = Image.new("RGB", (width, height))
    for x in range(width):
        for y in range(0, height, 8):
            image.putpixel((x, y), (x % 256, y % 256, 128))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def noise_png(width: int = 64, height: int = 64) -> bytes:
    """A PNG that does not compress: width x height x 3 bytes and more."""
    buffer = io.BytesIO()
    Image.frombytes("RGB", (width, height), os.urandom(width * height * 3)).save(buffer, "PNG")
    return buffer.getvalue()


def check_mp4(path: Path, *, width: int, height: int, frames: int) -> None:
    """Decode every frame with PyAV: an H.264 MP4 of the given size and frame count."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        decoded = 0
        for frame in container.decode(stream):
            assert (frame.width, frame.height) == (width, height)
            decoded += 1
    assert decoded == frames


# ---------------------------------------------------------------------------------------------
# A proxy in front of a server that breaks event streams on purpose


class StreamProxy:
    """A loopback TCP proxy. Every request goes upstream with `Connection: close` (one request
    per connection, so each can be judged). Event-stream requests (`/events`) are:
    - cut abruptly after their first task event, while `cuts` lasts ("cut" mode);
    - answered 404 as by a server without the route ("missing" mode)."""

    def __init__(self, upstream: str, *, cuts: int = 0, missing: bool = False) -> None:
        host, _, port = upstream.removeprefix("http://").partition(":")
        self.upstream = (host, int(port))
        self.cuts = cuts
        self.missing = missing
        self.cut_done = 0
        self.stream_requests = 0
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stopping = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.stopping = True
        self.listener.close()

    def _accept(self) -> None:
        while not self.stopping:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(65536)
                if not chunk:
                    return
                head += chunk
            header, _, rest = head.partition(b"\r\n\r\n")
            lines = [
                line
                for line in header.split(b"\r\n")
                if not line.lower().startswith(b"connection:")
            ]
            is_stream = b"/events " in lines[0]
            if is_stream:
                with self.lock:
                    self.stream_requests += 1
            if is_stream and self.missing:
                body = json.dumps(
                    {"error": {"code": "not_found", "message": "No such endpoint."}}
                ).encode()
                client.sendall(
                    b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
                    + body
                )
                return
            cut = False
            if is_stream:
                with self.lock:
                    if self.cut_done < self.cuts:
                        self.cut_done += 1
                        cut = True
            upstream = socket.create_connection(self.upstream)
            with upstream:
                upstream.sendall(b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n" + rest)
                pump = threading.Thread(target=self._pump, args=(client, upstream), daemon=True)
                pump.start()
                seen = b""
                while True:
                    try:
                        data = upstream.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    if cut:
                        seen += data
                        if b"event: task" in seen:
                            # Forward up to the end of the first event, then drop the line.
                            end = seen.index(b"event: task")
                            end = seen.find(b"\n\n", end)
                            if end >= 0:
                                keep = len(data) - (len(seen) - (end + 2))
                                client.sendall(data[: max(0, keep)])
                                client.shutdown(socket.SHUT_RDWR)
                                return
                    client.sendall(data)

    @staticmethod
    def _pump(client: socket.socket, upstream: socket.socket) -> None:
        try:
            while True:
                data = client.recv(65536)
                if not data:
                    return
                upstream.sendall(data)
        except OSError:
            return
