"""Hearing that a task changed in another process (another API replica, a worker), within
about a second, without a query per request.

A process keeps task views in memory and holds long-polls open; both must learn of a change
made elsewhere. A feed calls its handlers with the task id of every change it hears of, and
says through `epoch()` whether it can be trusted now:

- PostgreSQL: a trigger on `tasks` (migration 0012) NOTIFYs `opendance_tasks` with the task
  id; the process's one LISTEN connection (`opendance.store.changes.PostgresListener`, shared
  with the key cache) hears it at commit. While that connection is down, `epoch()` is None.
- SQLite (several processes may share one file): a thread reads `PRAGMA data_version`
  every half second, which moves only when another connection committed, and then the rows
  whose `updated_at` is past a watermark (`ix_tasks_updated_at`). The watermark trails the
  poller's own clock by `overlap` seconds, so a change stamped a little before it commits,
  or by a clock a little behind, is still read; rows read again are told apart by
  `(id, updated_at)`. Idle, a poll is one pragma: microseconds.
- An in-memory SQLite database is private to its process: there is nothing to hear.

The poller also reads this process's own commits; it hands on each row's `updated_at`, so a
view already read at that version is kept (no second read of a change heard in-process).

`epoch()` moves whenever the feed may have missed news (a reconnection, a failed poll), so
whatever was cached under an older epoch is dropped.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Protocol

from opendance.store.changes import TASKS_CHANNEL, PostgresListener, sqlite_path

log = logging.getLogger(__name__)

#: Told of a change: the task id, and the row's `updated_at` where the feed knows it.
TaskHandler = Callable[[str, float | None], None]


class TaskFeed(Protocol):
    """Task changes made by other processes, and whether they can be trusted now."""

    def on_change(self, handler: TaskHandler) -> None:
        """Call `handler(task_id, updated_at)` for every change heard (in the feed's thread)."""
        ...

    def start(self) -> None:
        """Begin listening (idempotent; cheap to call on every use)."""
        ...

    def epoch(self) -> int | None:
        """Moves whenever news may have been missed; None while nothing can be trusted."""
        ...

    def close(self) -> None: ...


class PrivateDatabase:
    """The feed of a database no other process can open (in-memory SQLite): always current."""

    def on_change(self, handler: TaskHandler) -> None:
        pass

    def start(self) -> None:
        pass

    def epoch(self) -> int | None:
        return 0

    def close(self) -> None:
        pass


class PostgresTaskFeed:
    """Task changes as NOTIFYs on a shared `PostgresListener` (its owner starts and stops it)."""

    def __init__(self, listener: PostgresListener) -> None:
        self._listener = listener

    def on_change(self, handler: TaskHandler) -> None:
        # The payload is the task id alone: a change made by hand may leave `updated_at` be.
        self._listener.on(TASKS_CHANNEL, lambda task_id: handler(task_id, None))

    def start(self) -> None:
        pass

    def epoch(self) -> int | None:
        return self._listener.epoch()

    def close(self) -> None:
        pass


class SqliteTaskFeed:
    """Polls an SQLite file for task rows that other connections changed.

    The thread starts on first use (`start`), so processes that never serve reads (workers,
    CLI commands) never run it.
    """

    INTERVAL = 0.5
    #: How far the watermark trails the poller's clock: it bounds the time between a change's
    #: `updated_at` and its commit, and the clock skew between processes, that are tolerated.
    OVERLAP = 2.0
    #: Trusted this long after the last successful poll.
    STALE_AFTER = 2.5

    def __init__(
        self,
        path: str,
        *,
        interval: float = INTERVAL,
        overlap: float = OVERLAP,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._path = path
        self._interval = interval
        self._overlap = overlap
        self._clock = clock
        self._handlers: list[TaskHandler] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._epoch = 0
        self._polled_at: float | None = None
        self._first_poll = threading.Event()
        #: Polls that ran the query (tests and metrics: an idle feed runs none).
        self.queries = 0

    def on_change(self, handler: TaskHandler) -> None:
        self._handlers.append(handler)

    def start(self, wait: float = 2.0) -> None:
        """Start polling, and wait (up to `wait` s) for the first poll: from then on what is
        read can be kept."""
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                thread = threading.Thread(target=self._run, name="opendance-task-feed", daemon=True)
                thread.start()
                self._thread = thread
        self._first_poll.wait(wait)

    def epoch(self) -> int | None:
        polled_at = self._polled_at
        if polled_at is None or time.monotonic() - polled_at > self.STALE_AFTER:
            return None
        return self._epoch

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout=self._interval * 4 + 1)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with contextlib.closing(
                    sqlite3.connect(self._path, timeout=5, isolation_level=None)
                ) as connection:
                    self._follow(connection)
            except sqlite3.Error as error:
                log.warning("task change feed: %s", error)
            self._polled_at = None
            self._first_poll.set()  # no one waits for a feed that fails
            self._stop.wait(1.0)

    def _follow(self, connection: sqlite3.Connection) -> None:
        """Poll until stopped or an error; a new epoch first (what came before is unknown)."""
        self._epoch += 1
        version: int | None = None
        since = self._clock() - self._overlap
        seen: dict[str, float] = {}
        while not self._stop.is_set():
            polled_at = self._clock()
            current = connection.execute("PRAGMA data_version").fetchone()[0]
            if current != version:
                rows = connection.execute(
                    "SELECT id, updated_at FROM tasks WHERE updated_at > ?", (since,)
                ).fetchall()
                self.queries += 1
                version = current
                changed = [
                    (task_id, stamp) for task_id, stamp in rows if seen.get(task_id) != stamp
                ]
                seen.update(rows)
                since = polled_at - self._overlap
                seen = {task_id: stamp for task_id, stamp in seen.items() if stamp > since}
                for task_id, stamp in changed:
                    self._tell(task_id, stamp)
            self._polled_at = time.monotonic()
            self._first_poll.set()
            self._stop.wait(self._interval)

    def _tell(self, task_id: str, stamp: float) -> None:
        for handler in self._handlers:
            try:
                handler(task_id, stamp)
            except Exception:
                log.exception("task change handler failed for %s", task_id)


def task_feed_for(url: str, listener: PostgresListener | None) -> TaskFeed:
    """The feed for a database URL: NOTIFYs on PostgreSQL (heard by `listener`), a poller on
    an SQLite file, nothing to hear for an in-memory database."""
    if listener is not None:
        return PostgresTaskFeed(listener)
    path = sqlite_path(url)
    return PrivateDatabase() if path is None else SqliteTaskFeed(path)
