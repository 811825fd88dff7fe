"""Images for the tests, and the image site: a threaded HTTP server on loopback with scripted
routes (good images, redirects, errors, and hostile servers that stall, drip or never end).

    with ImageSite() as site:                       # or the `site` fixture of a test module
        site.routes["/cat.png"] = serve_bytes(encoded(image), "image/png")
        fetch(site.url("/cat.png"))
        assert site.requests == ["/cat.png"]

`ImageSite.with_image(body)` is the one-image case: the image at `site.url()`.
"""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

U8Array = npt.NDArray[np.uint8]

# ---------------------------------------------------------------------------------------------
# Image bytes


def encoded(image: Image.Image, fmt: str = "PNG", **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def decoded(data: bytes) -> Image.Image:
    """The image as RGB; its `format` says what the bytes were (for the tests to check)."""
    with Image.open(io.BytesIO(data)) as opened:
        opened.load()
        image = opened.convert("RGB")
        image.format = opened.format
        return image


def mean_abs_error(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> float:
    """Mean absolute difference (0..255) of two images of the same shape."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims `width` x `height`: a decompression bomb's calling card
    (Pillow reads the size, never the pixels)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


# ---------------------------------------------------------------------------------------------
# Routes: what the site answers on a path. `stopping` is set when the site closes.

Route = Callable[[BaseHTTPRequestHandler, threading.Event], None]


def serve_bytes(
    body: bytes, content_type: str = "application/octet-stream", *, announce_length: bool = True
) -> Route:
    """200 with `body`; without `announce_length` the body ends when the connection closes."""

    def route(handler: BaseHTTPRequestHandler, stopping: threading.Event) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        if announce_length:
            handler.send_header("Content-Length", str(len(body)))
        else:
            handler.close_connection = True
        handler.end_headers()
        view = memoryview(body)
        for start in range(0, len(body), 65536):
            if stopping.is_set():
                return
            handler.wfile.write(view[start : start + 65536])

    return route


def redirect(location: str) -> Route:
    def route(handler: BaseHTTPRequestHandler, stopping: threading.Event) -> None:
        handler.send_response(302)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return route


def status(code: int) -> Route:
    """An error page with status `code`."""

    def route(handler: BaseHTTPRequestHandler, stopping: threading.Event) -> None:
        body = b"<html><body>Not Found</body></html>"
        handler.send_response(code)
        handler.send_header("Content-Type", "text/html")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return route


def announce_then_stall(length: int = 50000, content_type: str = "image/png") -> Route:
    """Headers announcing `length` bytes, the first bytes of a PNG, then silence until the site
    closes (at most 60 s)."""

    def route(handler: BaseHTTPRequestHandler, stopping: threading.Event) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(length))
        handler.end_headers()
        handler.wfile.write(b"\x89PNG\r\n\x1a\n")
        handler.wfile.flush()
        stopping.wait(60)

    return route


def endless(*, chunked: bool) -> Route:
    """A body with no Content-Length (chunked, or delimited by closing) that never ends."""

    def route(handler: BaseHTTPRequestHandler, stopping: threading.Event) -> None:
        handler.close_connection = True
        handler.send_response(200)
        handler.send_header("Content-Type", "image/png")
        if chunked:
            handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        block = b"\x00" * 65536
        if chunked:
            block = b"%x\r\n%s\r\n" % (len(block), block)
        deadline = time.monotonic() + 15
        while not stopping.is_set() and time.monotonic() < deadline:
            handler.wfile.write(block)

    return route


def drip_body() -> Route:
    """Announces 100000 bytes, then sends one every 0.2 s."""

    def route(handler: BaseHTTPRequestHandler, stopping: threading.Event) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        for _ in range(75):
            if stopping.wait(0.2):
                return
            handler.wfile.write(b"\x00")
            handler.wfile.flush()

    return route


def drip_headers() -> Route:
    """A status line, then one header every 0.2 s, never the end of the headers."""

    def route(handler: BaseHTTPRequestHandler, stopping: threading.Event) -> None:
        handler.wfile.write(b"HTTP/1.1 200 OK\r\n")
        for index in range(75):
            if stopping.wait(0.2):
                return
            handler.wfile.write(b"X-Slow-%d: y\r\n" % index)
            handler.wfile.flush()

    return route


def silent() -> Route:
    """Accepts the request and never answers."""

    def route(handler: BaseHTTPRequestHandler, stopping: threading.Event) -> None:
        stopping.wait(15)

    return route


# ---------------------------------------------------------------------------------------------
# The site

#: Where `ImageSite.with_image` serves its image, and what `url()` points at by default.
IMAGE_PATH = "/image.png"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _SiteServer

    def do_GET(self) -> None:
        site = self.server.site
        site.requests.append(self.path)
        route = site.routes.get(self.path)
        if route is None:
            self.send_error(500, "no such route")
            return
        try:
            route(self, site.stopping)
        except OSError:
            self.close_connection = True  # the client hung up, as it should on hostile routes

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _SiteServer(ThreadingHTTPServer):
    daemon_threads = True
    site: ImageSite


class ImageSite:
    """A threaded HTTP server on 127.0.0.1 that answers each path with its route from `routes`
    and logs every requested path in `requests`.

    `host` is the name its URLs use by default (a test resolver may map a name to 127.0.0.1).
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.routes: dict[str, Route] = {}
        self.requests: list[str] = []
        self.stopping = threading.Event()
        self._server = _SiteServer(("127.0.0.1", 0), _Handler)
        self._server.site = self
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()

    @classmethod
    def with_image(cls, body: bytes, content_type: str = "image/png") -> ImageSite:
        """A site serving one image at `site.url()`."""
        site = cls()
        site.routes[IMAGE_PATH] = serve_bytes(body, content_type)
        return site

    def url(self, path: str = IMAGE_PATH, host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"

    def close(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ImageSite:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
