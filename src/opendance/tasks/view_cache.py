"""Task views kept in memory, so that polling a task costs no database read while it has not
changed.

An async video API is read far more than it is written: every client polls its tasks every
few seconds. A view read from the database is kept until the task changes; a change is heard
from this process's task service (`invalidate`, wired by the runtime) or from another process
through the task feed (`opendance.store.task_feed`). Rules that keep it exact:

- a view is only served while the feed is trusted and still in the epoch it was read in (a
  feed that reconnected may have missed news: everything older is dropped);
- a read that raced with a change is never stored: `load` takes a ticket before reading, a
  change tears it up, and a torn ticket stores nothing;
- a completed task's view ends when its result expires (the sweep that removes the file is
  silent);
- a pending task's `estimated_time` and `queue_position` depend on the other tasks of its
  model: `place` recomputes them from the queue snapshot on every read.

Faces keep what they rendered from a view (`renders`), so an unchanged task is not rendered
again either. Key scoping is the caller's: an entry holds the owner's key id.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from opendance.clock import Clock
from opendance.store.task_feed import TaskFeed
from opendance.tasks.models import TaskView
from opendance.tasks.queue_snapshot import QueueKey
from opendance.tasks.reads import TaskRead, TaskReads
from opendance.tasks.states import Status

#: (`estimated_time`, `queue_position`): what a pending task's view owes to the other tasks.
Place = tuple[int, int | None]


@dataclass(frozen=True)
class RenderedBody:
    """A face's answer for a view at one place: the body's bytes, their validator (ETag), the
    answer's own headers, and the same headers encoded as sent (for raw ASGI answers)."""

    place: Place
    body: bytes
    etag: str
    headers: tuple[tuple[str, str], ...] = ()
    raw_headers: tuple[tuple[bytes, bytes], ...] = ()


@dataclass(eq=False)
class CachedTask:
    """A task's view as read, and what is needed to serve it again from memory."""

    view: TaskView
    queue_key: QueueKey | None
    own_seconds: float
    #: The feed's epoch when it was read (None: not storable).
    epoch: int | None
    #: The service clock's time after which the view is stale by itself (a result expiring).
    valid_until: float | None = None
    #: Each face's rendering of it, by face name (only the loop thread writes).
    renders: dict[str, RenderedBody] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.view.status in (Status.COMPLETED, Status.FAILED, Status.CANCELLED)

    @property
    def read_place(self) -> Place:
        return self.view.estimated_time, self.view.queue_position


@dataclass(frozen=True)
class _Ticket:
    epoch: int


class TaskViews:
    """Task id -> its latest view, for as long as nothing says it changed."""

    CAPACITY = 10_000

    def __init__(
        self, service: TaskReads, feed: TaskFeed, clock: Clock, capacity: int = CAPACITY
    ) -> None:
        self.service = service
        self.feed = feed
        self.clock = clock
        self.capacity = capacity
        self._lock = threading.Lock()
        self._entries: dict[str, CachedTask] = {}
        self._tickets: dict[str, _Ticket] = {}
        self.hits = 0
        self.loads = 0

    def lookup(self, task_id: str) -> CachedTask | None:
        """The task's view if it is known to be current; no database. Any thread."""
        entry = self._entries.get(task_id)
        if entry is None:
            return None
        if entry.epoch != self.feed.epoch():
            return None
        if entry.valid_until is not None and self.clock.now() >= entry.valid_until:
            return None
        self.hits += 1
        return entry

    def place(self, entry: CachedTask) -> Place | None:
        """The place to show now; None when it needs the database (then `place_read`)."""
        if entry.queue_key is None:
            return entry.read_place
        return self.service.pending_place(
            entry.view.requested_model, entry.queue_key, entry.own_seconds
        )

    def place_read(self, entry: CachedTask) -> Place:
        """`place`, reading from the database what is stale (blocking; the row is not read)."""
        if entry.queue_key is None:
            return entry.read_place
        found = self.service.pending_place(
            entry.view.requested_model, entry.queue_key, entry.own_seconds, offline=False
        )
        assert found is not None
        return found

    def load(self, key_id: str, task_id: str) -> CachedTask:
        """Read the task from the database (blocking), and keep it unless it changed meanwhile.

        Raises `TaskNotFound` as `TaskService.get_task` does (another key's, deleted, none).
        """
        self.feed.start()
        ticket = self._ticket(task_id)
        try:
            read = self.service.read_task(key_id, task_id)
        except BaseException:
            if ticket is not None:
                with self._lock:
                    if self._tickets.get(task_id) is ticket:
                        del self._tickets[task_id]
            raise
        self.loads += 1
        entry = self._entry(read, ticket)
        if ticket is not None:
            self._keep(task_id, ticket, entry)
        return entry

    def invalidate(self, task_id: str) -> None:
        """The task changed (committed): forget its view, and any read of it under way."""
        with self._lock:
            self._entries.pop(task_id, None)
            self._tickets.pop(task_id, None)

    def holds(self, task_id: str, updated_at: float) -> bool:
        """Whether the view kept of the task was read at this version of its row."""
        entry = self._entries.get(task_id)
        return entry is not None and entry.view.updated_at == updated_at

    def __len__(self) -> int:
        return len(self._entries)

    def _ticket(self, task_id: str) -> _Ticket | None:
        epoch = self.feed.epoch()
        if epoch is None:
            return None
        ticket = _Ticket(epoch)
        with self._lock:
            self._tickets[task_id] = ticket
        return ticket

    def _entry(self, read: TaskRead, ticket: _Ticket | None) -> CachedTask:
        view = read.view
        valid_until = None
        if view.result_file and view.result_expires_at is not None:
            valid_until = view.result_expires_at
        return CachedTask(
            view=view,
            queue_key=read.queue_key,
            own_seconds=read.own_seconds,
            epoch=None if ticket is None else ticket.epoch,
            valid_until=valid_until,
        )

    def _keep(self, task_id: str, ticket: _Ticket, entry: CachedTask) -> None:
        if entry.valid_until is not None and self.clock.now() >= entry.valid_until:
            return  # expired, not yet swept: read it until the sweep has run
        with self._lock:
            if self._tickets.get(task_id) is not ticket:
                return  # changed while it was read (or another read took over)
            del self._tickets[task_id]
            if self.feed.epoch() != ticket.epoch:
                return
            self._entries.pop(task_id, None)
            while len(self._entries) >= self.capacity:
                del self._entries[next(iter(self._entries))]  # the oldest read
            self._entries[task_id] = entry
