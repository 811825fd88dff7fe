"""Helpers of the face tests: SDK clients, images, a loopback image site and an HTTPS receiver."""

from __future__ import annotations

import http.server
import io
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import openai
import trustme
from byteplussdkarkruntime import Ark
from PIL import Image

from conftest import LiveServer

U8Array = npt.NDArray[np.uint8]

#: Whether the core records the face a task came through (callbacks then go out in its format).
#: Whether the worker reads `upload:` images (multipart uploads and data: URLs) from disk.


def openai_client(server: LiveServer, key: str) -> openai.OpenAI:
    """The official client with only the base URL and the key changed."""
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key)


def ark_client(server: LiveServer, key: str) -> Ark:
    """The official Ark runtime client with only the base URL and the key changed."""
    return Ark(base_url=f"{server.base_url}/api/v3", api_key=key)


def pattern(width: int, height: int) -> Image.Image:
    """A smooth, asymmetric picture: survives H.264 closely, and a wrong crop shows."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = x / max(1, width - 1), y / max(1, height - 1)
    rgb = np.stack([30 + 200 * u, 30 + 200 * v, 128 + 90 * np.sin(2 * np.pi * (u + 0.5 * v))], -1)
    distance = np.hypot(x - 0.3 * width, y - 0.35 * height)
    alpha = np.clip((0.18 * min(width, height) - distance) / 3, 0, 1)[..., None]
    rgb = rgb * (1 - alpha) + np.array([240, 40, 40], dtype=np.float32) * alpha
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def decoded(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as opened:
        opened.load()
        image = opened.convert("RGB")
        image.format = opened.format  # what the bytes were, for the tests to check
        return image


def mean_abs_error(a: U8Array, b: U8Array) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def wait_task(
    server: LiveServer, key: str, task_id: str, statuses: tuple[str, ...], timeout: float = 60
) -> dict[str, Any]:
    """Poll the Seedance face until the task is in one of `statuses`."""
    return server.wait_for(key, task_id, lambda t: t["status"] in statuses, timeout)


class ImageSite:
    """A loopback HTTP server that serves one image at /image.png (for image_url tests)."""

    def __init__(self, body: bytes) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/image.png"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Hook:
    headers: dict[str, str]
    body: bytes


@dataclass
class HookReceiver:
    """An HTTPS receiver on loopback (certificate from trustme) that records what it gets."""

    ca: trustme.CA
    received: list[Hook] = field(default_factory=list)

    def __post_init__(self) -> None:
        receiver = self
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                receiver.received.append(
                    Hook({k.lower(): v for k, v in self.headers.items()}, body)
                )
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://localhost:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def ca_file(self, folder: Path) -> Path:
        path = folder / "faces-ca.pem"
        self.ca.cert_pem.write_to_path(str(path))
        return path

    def wait(self, count: int, timeout: float = 60) -> list[Hook]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} callbacks, got {len(self.received)}")
            time.sleep(0.02)
        return list(self.received)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
