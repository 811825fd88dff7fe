"""Periodic jobs every opendance process runs: lease reaper, result sweeper, heartbeats."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Maintenance:
    def __init__(self, jobs: list[tuple[float, Callable[[], object]]]) -> None:
        self.jobs = jobs
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="opendance-maintenance", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        if not self.jobs:
            return
        due = [0.0 for _ in self.jobs]  # every job runs once at start
        tick = min(1.0, min(interval for interval, _ in self.jobs))
        while True:
            now = time.monotonic()
            for index, (interval, job) in enumerate(self.jobs):
                if now < due[index]:
                    continue
                due[index] = now + interval
                try:
                    job()
                except Exception:
                    log.exception("periodic job %s failed", getattr(job, "__name__", job))
            if self._stopping.wait(tick):
                return
