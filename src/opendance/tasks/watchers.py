"""Who waits on a task in this process: the hub that wakes event streams and long-polls when
a task changes.

It lives below the faces (a face's stream or long-poll subscribes; the runtime wires `notify`
to the task service and to the feed of other processes' changes), so the service never learns
about HTTP and the faces never wire listeners. A waiter is an `asyncio.Event`: it holds no
thread and no database connection, so thousands can wait at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator


class TaskEvents:
    """Wakes the streams of this process when the task service changes one of their tasks.

    The runtime registers `notify` on the service's `on_changed` and `on_created` listeners
    (a task handed back to the queue goes through `on_created`); listeners run in worker
    threads after the commit, so waking is a thread-safe `call_soon_threadsafe` per waiter.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}

    def notify(self, task_id: str) -> None:
        with self._lock:
            waiters = list(self._waiters.get(task_id, ()))
        self._wake(waiters)

    def wake_all(self) -> None:
        """Wake every waiter (the server is stopping: they answer now)."""
        with self._lock:
            waiters = [waiter for group in self._waiters.values() for waiter in group]
        self._wake(waiters)

    @staticmethod
    def _wake(waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]) -> None:
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(event.set)

    @contextlib.contextmanager
    def subscribe(self, task_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever the task changes in this process (call inside the loop)."""
        waiter = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._waiters.setdefault(task_id, set()).add(waiter)
        try:
            yield waiter[1]
        finally:
            with self._lock:
                waiters = self._waiters.get(task_id)
                if waiters is not None:
                    waiters.discard(waiter)
                    if not waiters:
                        del self._waiters[task_id]

    def watching(self) -> int:
        """How many streams are open (for tests and metrics)."""
        with self._lock:
            return sum(len(waiters) for waiters in self._waiters.values())
