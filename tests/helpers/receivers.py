"""A real callback receiver on loopback: HTTPS with a certificate made by trustme in the test,
or plain HTTP (local development, with `allow_loopback_for_tests`). It records every delivery
(time, headers, body) and answers as its script says."""

from __future__ import annotations

import http.server
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import trustme


@dataclass
class Received:
    at: float
    headers: dict[str, str]
    body: bytes


@dataclass
class Script:
    """What the receiver answers, request by request (the last entry repeats)."""

    answers: list[tuple[int, float]] = field(default_factory=lambda: [(200, 0.0)])


class _Server(http.server.ThreadingHTTPServer):
    # A burst of callbacks must not overflow the default backlog of 5 (dropped SYNs are
    # retried a second later, which would read as a second of latency).
    request_queue_size = 128


class Receiver:
    def __init__(self, ca: trustme.CA | None, script: Script | None = None) -> None:
        """`ca` None: plain HTTP on 127.0.0.1. No script: every delivery gets a 200."""
        self.ca = ca
        self.script = script or Script()
        self.received: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                with receiver._lock:
                    index = len(receiver.received)
                    receiver.received.append(
                        Received(
                            time.monotonic(), {k.lower(): v for k, v in self.headers.items()}, body
                        )
                    )
                    answers = receiver.script.answers
                    status, delay = answers[min(index, len(answers) - 1)]
                if delay:
                    time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("content-length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        if ca is None:
            self.url = f"http://127.0.0.1:{self.port}/hooks/video"
        else:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            self.url = f"https://localhost:{self.port}/hooks/video"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def ca_file(self, folder: Path) -> Path:
        """The receiver's CA as a PEM file in `folder` (for the server's `extra_ca_file`)."""
        assert self.ca is not None, "a plain HTTP receiver has no CA"
        return ca_bundle(self.ca, folder)

    def wait_for(self, count: int, timeout: float = 60) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.02)
        raise AssertionError(f"expected {count} callbacks, got {len(self.received)}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def ca_bundle(ca: trustme.CA, folder: Path) -> Path:
    path = folder / "test-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path
