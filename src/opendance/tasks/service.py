"""The task service: one object the faces, workers and maintenance call.

It is built in layers, one concern a module, each adding to the one below:
`service_core` (shared state, listeners) < `estimates` (estimated times) < `reads`
(views and pages) < `lifecycle` (cancel, claim, heartbeat, finish, re-queue: the money moves
here) < `creation` (price, reserve, idempotency) < `housekeeping` (sweeps, audits).
"""

from __future__ import annotations

from opendance.tasks.housekeeping import Housekeeping
from opendance.tasks.service_core import Planner, TaskRow, new_task_id

__all__ = ["Planner", "TaskRow", "TaskService", "new_task_id"]


class TaskService(Housekeeping):
    """Every task operation; see the layers named in this module's docstring."""
