"""Knowing that rows changed in another process, without a database query per request.

A process caches what every request needs (authenticated keys) and must never serve it after
another process changed it: a key revoked with the CLI must fail on every replica at once. Each
watched change bumps a counter in the database (a trigger keeps `key_epoch`), and a process
trusts its cache only while the counter it was filled at is still the current one.

- SQLite: a private `sqlite3` connection reads the one-row counter. It is a page already in
  memory, no network: microseconds, so it is read on every request.
- PostgreSQL: reading it per request would be a network round trip, so one connection per
  process LISTENs instead; the trigger's NOTIFY bumps a local generation. While that
  connection is down, `current()` is None and nothing cached is trusted; after it comes back
  the generation moves on, so entries cached before the gap are dropped too.

No queue or broker: the database that holds the rows carries the news of their change.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable
from typing import Protocol

from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

#: The NOTIFY channel of the `key_epoch` trigger (migration 0008).
KEYS_CHANNEL = "opendance_keys"


class ChangeCounter(Protocol):
    """A value that moves whenever the watched rows change, in any process."""

    def current(self) -> int | None:
        """The value now; None when it cannot be known (then trust no cache)."""
        ...

    def close(self) -> None: ...


class SqliteKeyEpoch:
    """The `key_epoch` counter of an SQLite file, read on a connection of its own."""

    def __init__(self, path: str) -> None:
        self._connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()

    def current(self) -> int | None:
        with self._lock:
            try:
                row = self._connection.execute(
                    "SELECT value FROM key_epoch WHERE id = 1"
                ).fetchone()
            except sqlite3.Error:
                return None
        return None if row is None else int(row[0])

    def close(self) -> None:
        with self._lock:
            self._connection.close()


class PostgresListener:
    """One connection that LISTENs on channels and calls a function per notification.

    Runs in a daemon thread and reconnects after a lost connection (with a short backoff).
    `generation(channel)` counts the channel's notifications and the (re)connections; None
    while not listening.
    """

    RECONNECT_SECONDS = 1.0
    POLL_SECONDS = 0.5

    def __init__(self, conninfo: str, channels: list[str]) -> None:
        self._conninfo = conninfo
        self._channels = channels
        self._handlers: dict[str, list[Callable[[str], None]]] = {name: [] for name in channels}
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._generations = dict.fromkeys(channels, 0)
        self._thread: threading.Thread | None = None

    def on(self, channel: str, handler: Callable[[str], None]) -> None:
        """Call `handler(payload)` on each notification of `channel` (in the listener thread)."""
        self._handlers[channel].append(handler)

    def generation(self, channel: str) -> int | None:
        return self._generations[channel] if self._connected.is_set() else None

    def start(self, wait: float = 5.0) -> None:
        self._thread = threading.Thread(target=self._run, name="opendance-listen", daemon=True)
        self._thread.start()
        self._connected.wait(wait)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.POLL_SECONDS * 4)

    def _run(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as connection:
                    for channel in self._channels:
                        connection.execute(f'LISTEN "{channel}"')
                    for channel in self._channels:  # what was missed while away is stale
                        self._generations[channel] += 1
                    self._connected.set()
                    while not self._stop.is_set():
                        for notify in connection.notifies(timeout=self.POLL_SECONDS):
                            if notify.channel in self._generations:
                                self._generations[notify.channel] += 1
                            for handler in self._handlers.get(notify.channel, ()):
                                with contextlib.suppress(Exception):
                                    handler(notify.payload)
            except Exception as error:
                if not self._stop.is_set():
                    log.warning("change listener lost its connection: %s", error)
            finally:
                self._connected.clear()
            self._stop.wait(self.RECONNECT_SECONDS)


class PostgresKeyEpoch:
    """The key counter of a PostgreSQL database, as heard by a `PostgresListener`."""

    def __init__(self, listener: PostgresListener) -> None:
        self._listener = listener

    def current(self) -> int | None:
        return self._listener.generation(KEYS_CHANNEL)

    def close(self) -> None:
        self._listener.stop()


def key_epoch_for(url: str) -> ChangeCounter | None:
    """The key counter for a database URL; None where there is none to watch (in-memory)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if not database or database == ":memory:":
            return None
        return SqliteKeyEpoch(database)
    conninfo = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    listener = PostgresListener(conninfo, [KEYS_CHANNEL])
    listener.start()
    return PostgresKeyEpoch(listener)
