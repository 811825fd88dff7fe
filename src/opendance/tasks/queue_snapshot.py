"""The work queued per model, as a snapshot: what `estimated_time` adds to a task's own time.

Summing the pending queue in SQL on every create and every read made both cost time in
proportion to the queue (about 1 ms per request at 3,000 pending tasks). Here each model's
pending tasks are read once, in queue order, with running sums, and the seconds ahead of a task
are a binary search. A snapshot lives for `max_age` seconds and tasks created by this process
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
    select(Task.created_seq, Task.estimated_seconds)
    .where(Task.status == Status.PENDING, Task.requested_model == bindparam("model"))
    .order_by(Task.created_seq)
)
_RUNNING = select(
    func.coalesce(func.sum(Task.estimated_seconds * (100 - Task.progress) / 100.0), 0.0)
).where(Task.status == Status.PROCESSING, Task.requested_model == bindparam("model"))


@dataclass
class _Snapshot:
    taken_at: float
    #: Seconds still to run on the model's processing tasks.
    running: float
    #: Pending tasks in queue order, and the seconds of work up to and including each.
    seqs: list[int] = field(default_factory=list)
    cumulative: list[float] = field(default_factory=list)

    def ahead_of(self, seq: int) -> float:
        """Seconds of pending work queued before `seq`."""
        index = bisect.bisect_left(self.seqs, seq)
        return self.cumulative[index - 1] if index else 0.0

    def add(self, seq: int, seconds: float) -> None:
        if self.seqs and seq <= self.seqs[-1]:
            index = bisect.bisect_left(self.seqs, seq)
            if index < len(self.seqs) and self.seqs[index] == seq:
                return  # read with the snapshot already
            # Another process's clock ran ahead; keep the order (rare, so fix the sums).
            self.seqs.insert(index, seq)
            previous = self.cumulative[index - 1] if index else 0.0
            self.cumulative.insert(index, previous + seconds)
            for later in range(index + 1, len(self.cumulative)):
                self.cumulative[later] += seconds
            return
        self.seqs.append(seq)
        self.cumulative.append((self.cumulative[-1] if self.cumulative else 0.0) + seconds)


class QueuedWork:
    """Per model: seconds of work ahead of a pending task (pending before it, plus running)."""

    def __init__(self, max_age: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._snapshots: dict[str, _Snapshot] = {}
        #: One reader per model at a time: the others answer from the snapshot they have.
        self._loaders: dict[str, threading.Lock] = {}

    def _is_fresh(self, snapshot: _Snapshot) -> bool:
        return 0 <= self._clock() - snapshot.taken_at < self.max_age

    def _answer(self, snapshot: _Snapshot, seq: int) -> float:
        with self._lock:
            return snapshot.running + snapshot.ahead_of(seq)

    def _load(self, connection: Connection, model: str) -> _Snapshot:
        taken_at = self._clock()
        running = float(connection.execute(_RUNNING, {"model": model}).scalar_one())
        snapshot = _Snapshot(taken_at=taken_at, running=running)
        total = 0.0
        for seq, seconds in connection.execute(_PENDING, {"model": model}):
            total += float(seconds)
            snapshot.seqs.append(int(seq))
            snapshot.cumulative.append(total)
        return snapshot

    def ahead(self, connection: Connection, model: str, seq: int) -> float:
        """Seconds of the model's work before the pending task `seq` (read again if stale).

        While one thread reads a new snapshot, the others answer from the previous one rather
        than all reading the queue at once (which, under load, made every read late).
        """
        snapshot = self._snapshots.get(model)
        if snapshot is not None and self._is_fresh(snapshot):
            return self._answer(snapshot, seq)
        with self._lock:
            loader = self._loaders.setdefault(model, threading.Lock())
        if not loader.acquire(blocking=snapshot is None):
            assert snapshot is not None
            return self._answer(snapshot, seq)
        try:
            current = self._snapshots.get(model)
            if current is None or not self._is_fresh(current):
                current = self._load(connection, model)
                with self._lock:
                    self._snapshots[model] = current
            return self._answer(current, seq)
        finally:
            loader.release()

    def added(self, model: str, seq: int, seconds: float) -> None:
        """A task this process just queued (its transaction committed)."""
        with self._lock:
            snapshot = self._snapshots.get(model)
            if snapshot is not None and self._is_fresh(snapshot):
                snapshot.add(seq, seconds)
