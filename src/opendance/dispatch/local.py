"""The single-machine dispatcher: worker threads in the server process.

The database is the source of truth: a worker claims the oldest pending task with a
conditional update (and a lease), so several processes on one SQLite file never run a task
twice. Creates wake an idle worker at once; a short poll covers tasks made by other processes.
(Lease reaping and result sweeping run in `dispatch.maintenance`, in every process.)
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid

from opendance.dispatch.runner import TaskRunner
from opendance.tasks.service import TaskService

log = logging.getLogger(__name__)


def new_worker_id() -> str:
    """host:pid:random, unique per process start (the lease owner shown in logs)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class LocalDispatcher:
    def __init__(
        self,
        service: TaskService,
        runner: TaskRunner,
        *,
        workers: int,
        models: list[str],
        poll_interval: float,
    ) -> None:
        self.service = service
        self.runner = runner
        self.workers = workers
        self.models = models
        self.poll_interval = poll_interval
        self.worker_id = new_worker_id()
        self._wake = threading.Condition()
        self._pending_wakeups = 0
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for index in range(self.workers):
            thread = threading.Thread(
                target=self._work, name=f"opendance-worker-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        log.info("dispatcher %s started with %d worker(s)", self.worker_id, self.workers)

    def notify(self, _task_id: str = "") -> None:
        with self._wake:
            self._pending_wakeups += 1
            self._wake.notify()

    @property
    def running(self) -> bool:
        return bool(self._threads) and not self._stopping.is_set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking work; running tasks finish (or are left to their lease past the timeout)."""
        self._stopping.set()
        with self._wake:
            self._wake.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in self._threads):
            self.runner.hand_back_all()
            for thread in self._threads:
                thread.join(timeout=10)
        self._threads.clear()

    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                claimed = self.service.claim_next(self.worker_id, self.models)
            except Exception:
                log.exception("claiming a task failed")
                claimed = None
            if claimed is None:
                with self._wake:
                    if self._pending_wakeups == 0 and not self._stopping.is_set():
                        self._wake.wait(self.poll_interval)
                    self._pending_wakeups = max(0, self._pending_wakeups - 1)
                continue
            self.runner.run(claimed)
