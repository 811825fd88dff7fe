"""The task state machine, written down once.

The service does not consult this table at run time: each of its updates names the statuses it
may start from in its `WHERE` (`sources_of` gives them for cancel; the lease fence for the rest),
so the database enforces the table; `check` lets tests hold a transition against it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class Status(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL: Final = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})
ACTIVE: Final = frozenset({Status.PENDING, Status.PROCESSING})

#: Allowed transitions. processing -> pending is a re-queue (lost worker, graceful hand-back).
TRANSITIONS: Final[dict[Status, frozenset[Status]]] = {
    Status.PENDING: frozenset({Status.PROCESSING, Status.FAILED, Status.CANCELLED}),
    Status.PROCESSING: frozenset(
        {Status.PENDING, Status.COMPLETED, Status.FAILED, Status.CANCELLED}
    ),
    Status.COMPLETED: frozenset(),
    Status.FAILED: frozenset(),
    Status.CANCELLED: frozenset(),
}


def sources_of(target: Status) -> frozenset[Status]:
    """The statuses from which `target` may be reached (used in conditional updates)."""
    return frozenset(s for s, targets in TRANSITIONS.items() if target in targets)


def check(source: Status, target: Status) -> None:
    """Raise ValueError on a transition the table does not allow."""
    if target not in TRANSITIONS[source]:
        raise ValueError(f"task cannot go from {source} to {target}")
