"""The work queued per model, as a snapshot: what `estimated_time` adds to a task's own time, and
`queue_position`, the number of tasks that will start before it.

Summing the pending queue in SQL on every create and every read made both cost time in
proportion to the queue (about 1 ms per request at 3,000 pending tasks). Here each model's
pending tasks are read once, in the order the claim takes them (tier, fair-queuing tag,
creation: `QueueKey`), with running sums, and the seconds and tasks ahead of a task are a
binary search. A snapshot lives for `max_age` seconds and tasks created by this process
are added to it at once, so a new task's estimate counts every task queued before it; tasks
that started or ended elsewhere show within `max_age`. It is an estimate either way.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Connection, bindparam, func, select

from opendance.store.tables import Task
from opendance.tasks.states import Status

_PENDING = (
    select(Task.tier, Task.fair_tag, Task.created_seq, Task.estimated_seconds)
    .where(Task.status == Status.PENDING, Task.requested_model == bindparam("model"))
    .order_by(Task.tier, Task.fair_tag, Task.created_seq)
)

#: A pending task's place in its model's queue: (tier, fair tag, creation sequence), the claim's
#: order (`opendance.tasks.fair_queue`).
QueueKey = tuple[int, float, int]
_RUNNING = select(
    func.coalesce(func.sum(Task.estimated_seconds * (100 - Task.progress) / 100.0), 0.0)
).where(Task.status == Status.PROCESSING, Task.requested_model == bindparam("model"))


@dataclass
class _Snapshot:
    taken_at: float
    #: Seconds still to run on the model's processing tasks.
    running: float
    #: Pending tasks in queue order, and the seconds of work up to and including each.
    keys: list[QueueKey] = field(default_factory=list)
    cumulative: list[float] = field(default_factory=list)

    def ahead_of(self, key: QueueKey) -> tuple[float, int]:
        """Seconds of pending work, and the number of tasks, that start before `key`."""
        index = bisect.bisect_left(self.keys, key)
        return (self.cumulative[index - 1] if index else 0.0), index

    def add(self, key: QueueKey, seconds: float) -> None:
        if self.keys and key <= self.keys[-1]:
            index = bisect.bisect_left(self.keys, key)
            if index < len(self.keys) and self.keys[index] == key:
                return  # read with the snapshot already
            # Fair queuing puts a new task of an idle key ahead of a backlog (and another
            # process's clock may run ahead): keep the order, and fix the sums behind it.
            self.keys.insert(index, key)
            previous = self.cumulative[index - 1] if index else 0.0
            self.cumulative.insert(index, previous + seconds)
            for later in range(index + 1, len(self.cumulative)):
                self.cumulative[later] += seconds
            return
        self.keys.append(key)
        self.cumulative.append((self.cumulative[-1] if self.cumulative else 0.0) + seconds)


class QueuedWork:
    """Per model: the work ahead of a pending task (pending before it, plus running), in
    seconds, and the number of pending tasks that start before it."""

    def __init__(self, max_age: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._snapshots: dict[str, _Snapshot] = {}
        #: One reader per model at a time: the others answer from the snapshot they have.
        self._loaders: dict[str, threading.Lock] = {}

    def _is_fresh(self, snapshot: _Snapshot) -> bool:
        return 0 <= self._clock() - snapshot.taken_at < self.max_age

    def _answer(self, snapshot: _Snapshot, key: QueueKey) -> tuple[float, int]:
        with self._lock:
            seconds, tasks = snapshot.ahead_of(key)
            return snapshot.running + seconds, tasks

    def _load(self, connection: Connection, model: str) -> _Snapshot:
        taken_at = self._clock()
        running = float(connection.execute(_RUNNING, {"model": model}).scalar_one())
        snapshot = _Snapshot(taken_at=taken_at, running=running)
        total = 0.0
        for tier, tag, seq, seconds in connection.execute(_PENDING, {"model": model}):
            total += float(seconds)
            snapshot.keys.append((int(tier), float(tag), int(seq)))
            snapshot.cumulative.append(total)
        return snapshot

    def ahead(self, connection: Connection, model: str, key: QueueKey) -> tuple[float, int]:
        """Seconds of the model's work, and pending tasks, before the pending task at `key`
        (read again if stale).

        While one thread reads a new snapshot, the others answer from the previous one rather
        than all reading the queue at once (which, under load, made every read late).
        """
        snapshot = self._snapshots.get(model)
        if snapshot is not None and self._is_fresh(snapshot):
            return self._answer(snapshot, key)
        with self._lock:
            loader = self._loaders.setdefault(model, threading.Lock())
        if not loader.acquire(blocking=snapshot is None):
            assert snapshot is not None
            return self._answer(snapshot, key)
        try:
            current = self._snapshots.get(model)
            if current is None or not self._is_fresh(current):
                current = self._load(connection, model)
                with self._lock:
                    self._snapshots[model] = current
            return self._answer(current, key)
        finally:
            loader.release()

    def added(self, model: str, key: QueueKey, seconds: float) -> None:
        """A task this process just queued (its transaction committed)."""
        with self._lock:
            snapshot = self._snapshots.get(model)
            if snapshot is not None and self._is_fresh(snapshot):
                snapshot.add(key, seconds)
