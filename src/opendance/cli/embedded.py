"""A server for one command: `generate` with no server to talk to starts one in-process.

uvicorn runs in a thread on a free loopback port, with a temporary data folder (or the one
given), the engines of the configuration, and a key made for the call (kept in the data folder,
so a kept folder reuses its key).
"""

from __future__ import annotations

import contextlib
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Final

from opendance.cli.common import fail

if TYPE_CHECKING:
    from opendance.runtime import Runtime

#: Credits given to the key of an embedded server (its own temporary ledger).
EMBEDDED_CREDITS: Final[int] = 1_000_000
EMBEDDED_KEY_FILE: Final[str] = "embedded-cli.key"


def free_port() -> int:
    """A loopback port free at the time of asking."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def embedded_key(runtime: Runtime, data_dir: Path) -> str:
    """A key of the embedded server: reused from `data_dir` (topped up) or made now."""
    path = data_dir / EMBEDDED_KEY_FILE
    with contextlib.suppress(OSError):
        token = path.read_text().strip()
        key = runtime.accounts.authenticate(token)
        if key is not None:
            balance = runtime.accounts.get(key.id).balance
            if balance < EMBEDDED_CREDITS // 2:
                runtime.accounts.grant(key.id, EMBEDDED_CREDITS - balance, note="cli top-up")
            return token
    token = str(
        runtime.accounts.create_key(credits=EMBEDDED_CREDITS, name="opendance generate").token
    )
    path.write_text(token + "\n")
    path.chmod(0o600)
    return token


@contextlib.contextmanager
def embedded_server(data_dir: Path | None = None) -> Iterator[tuple[str, str]]:
    """Start a server on a free loopback port for the duration; yields (base URL, key).

    Its data (SQLite database, results) go to `data_dir`, or a temporary folder removed at
    the end. Engines and prices come from the configuration as for `opendance serve`.
    """
    import uvicorn

    from opendance.app import build_runtime, create_app
    from opendance.settings import Settings

    with contextlib.ExitStack() as stack:
        folder = data_dir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="opendance-"))
        )
        settings = Settings(
            data_dir=folder,
            database_url=None,
            host="127.0.0.1",
            port=free_port(),
            public_base_url=None,
            dispatch="local",
            workers=max(1, Settings().workers),
            shutdown_grace_seconds=2.0,
            log_level="warning",
        )
        runtime = build_runtime(settings)
        token = embedded_key(runtime, folder)
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(settings, runtime=runtime),
                host=settings.host,
                port=settings.port,
                log_level="warning",
                lifespan="on",
            )
        )
        thread = threading.Thread(target=server.run, name="opendance-embedded", daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise fail("the embedded server did not start")
            time.sleep(0.02)
        try:
            yield settings.base_url, token
        finally:
            server.should_exit = True
            thread.join(timeout=30)
