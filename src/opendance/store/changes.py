"""Knowing that rows changed in another process, without a database query per request.

A process caches what every request needs (authenticated keys) and must never serve it after
another process changed it: a key revoked with the CLI must fail on every replica at once. Each
watched change bumps a counter in the database (a trigger keeps `key_epoch`), and a process
trusts its cache only while the counter it was filled at is still the current one.

- SQLite: a private `sqlite3` connection reads the one-row counter. It is a page already in
  memory, no network: microseconds, so it is read on every request.
- PostgreSQL: reading it per request would be a network round trip, so one connection per
  process LISTENs instead; the trigger's NOTIFY bumps a local generation. While that
  connection is down (or has not answered a ping for a moment), `current()` is None and
  nothing cached is trusted; after it comes back the generation moves on, so entries cached
  before the gap are dropped too. The same connection carries the task changes
  (`opendance.store.task_feed`).

No queue or broker: the database that holds the rows carries the news of their change.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Protocol

from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

#: The NOTIFY channel of the `key_epoch` trigger (migration 0008).
KEYS_CHANNEL = "opendance_keys"
#: The `application_name` of the listening connection (as `pg_stat_activity` shows it).
LISTENER_NAME = "opendance-listen"
#: The NOTIFY channel of the task change trigger (migration 0012); the payload is the task id.
TASKS_CHANNEL = "opendance_tasks"


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
    `generation(channel)` counts the channel's notifications and the (re)connections, and
    `epoch()` the (re)connections alone; both are None while not listening, or while the
    connection has not answered for `ALIVE_SECONDS` (a silent network loses notifications as
    surely as a closed socket does).
    """

    RECONNECT_SECONDS = 1.0
    POLL_SECONDS = 0.5
    #: Trusted this long after the connection last answered (a ping follows every poll).
    ALIVE_SECONDS = 2.5

    def __init__(self, conninfo: str, channels: list[str]) -> None:
        self._conninfo = conninfo
        self._channels = channels
        self._handlers: dict[str, list[Callable[[str], None]]] = {name: [] for name in channels}
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._generations = dict.fromkeys(channels, 0)
        self._connections = 0
        self._alive_at = 0.0
        self._thread: threading.Thread | None = None

    def on(self, channel: str, handler: Callable[[str], None]) -> None:
        """Call `handler(payload)` on each notification of `channel` (in the listener thread)."""
        self._handlers[channel].append(handler)

    def _listening(self) -> bool:
        return self._connected.is_set() and time.monotonic() - self._alive_at < self.ALIVE_SECONDS

    def generation(self, channel: str) -> int | None:
        return self._generations[channel] if self._listening() else None

    def epoch(self) -> int | None:
        """Moves on every (re)connection: what was heard before a gap may have missed news."""
        return self._connections if self._listening() else None

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
                with psycopg.connect(
                    self._conninfo, autocommit=True, application_name=LISTENER_NAME
                ) as connection:
                    for channel in self._channels:
                        connection.execute(f'LISTEN "{channel}"')
                    for channel in self._channels:  # what was missed while away is stale
                        self._generations[channel] += 1
                    self._connections += 1
                    self._alive_at = time.monotonic()
                    self._connected.set()
                    while not self._stop.is_set():
                        for notify in connection.notifies(timeout=self.POLL_SECONDS):
                            if notify.channel in self._generations:
                                self._generations[notify.channel] += 1
                            for handler in self._handlers.get(notify.channel, ()):
                                with contextlib.suppress(Exception):
                                    handler(notify.payload)
                        connection.execute("SELECT 1")
                        self._alive_at = time.monotonic()
            except Exception as error:
                if not self._stop.is_set():
                    log.warning("change listener lost its connection: %s", error)
            finally:
                self._connected.clear()
            self._stop.wait(self.RECONNECT_SECONDS)


class PostgresKeyEpoch:
    """The key counter of a PostgreSQL database, as heard by a `PostgresListener`."""

    def __init__(self, listener: PostgresListener, *, owns_listener: bool = True) -> None:
        self._listener = listener
        self._owns_listener = owns_listener

    def current(self) -> int | None:
        return self._listener.generation(KEYS_CHANNEL)

    def close(self) -> None:
        if self._owns_listener:  # a shared listener is stopped by whoever started it
            self._listener.stop()


def sqlite_path(url: str) -> str | None:
    """The file of an SQLite URL; None for PostgreSQL and for an in-memory database."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database
    return None if not database or database == ":memory:" else database


def listener_for(url: str) -> PostgresListener | None:
    """This process's one listener on a PostgreSQL database (keys and tasks), started; None
    on SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return None
    conninfo = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    listener = PostgresListener(conninfo, [KEYS_CHANNEL, TASKS_CHANNEL])
    listener.start()
    return listener


def key_epoch_for(url: str, listener: PostgresListener | None = None) -> ChangeCounter | None:
    """The key counter for a database URL; None where there is none to watch (in-memory).

    On PostgreSQL it hears `listener` when given (shared, stopped by its owner), else a
    listener of its own.
    """
    if make_url(url).get_backend_name() == "sqlite":
        path = sqlite_path(url)
        return None if path is None else SqliteKeyEpoch(path)
    if listener is not None:
        return PostgresKeyEpoch(listener, owns_listener=False)
    own = listener_for(url)
    assert own is not None
    return PostgresKeyEpoch(own)
