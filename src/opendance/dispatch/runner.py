"""Runs one claimed task on its engine: the bridge between the task service and an engine.

It builds the engine's job (fetching the input image where there is one), gives the engine a
context whose progress reports double as lease heartbeats and cancel checks, stores the result
file, and reports exactly one outcome under the task's lease. A heartbeat thread keeps the
lease alive through long engine steps and notices a cancel made by another process.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opendance.engines.base import (
    FATAL_EXIT_CODE,
    EngineError,
    EngineFatal,
    EngineResult,
    TaskCancelled,
    VideoJob,
    VideoRequest,
)
from opendance.engines.routing import EngineRouter
from opendance.media.blobs import StorageError
from opendance.media.storage import ResultStore
from opendance.media.uploads import UPLOAD_PREFIX, read_upload
from opendance.observability.context import task_id as task_context
from opendance.observability.metrics import Metrics
from opendance.settings import Settings
from opendance.tasks.models import Cancelled, ClaimedTask, Completed, Failed
from opendance.tasks.service import TaskService
from opendance.tasks.states import Status

if TYPE_CHECKING:
    from PIL.Image import Image

log = logging.getLogger(__name__)

#: Waits between tries to store a result before the attempt is given up (seconds).
STORE_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)


class WorkerContext:
    """The `EngineContext` of one attempt of one task."""

    #: Seconds between progress writes when the integer percent has not moved.
    MIN_REPORT_INTERVAL = 1.0

    def __init__(
        self,
        service: TaskService,
        claimed: ClaimedTask,
        work_dir: Path,
        on_step: Callable[[float], None] | None = None,
    ) -> None:
        self._service = service
        self._on_step = on_step
        self._last_step = time.monotonic()
        self._claimed = claimed
        self._work_dir = work_dir
        self._cancelled = threading.Event()
        self._lease_lost = False
        self.handing_back = False
        self._last_percent = -1
        self._last_report = 0.0
        self._state = claimed.engine_state

    @property
    def task_id(self) -> str:
        return self._claimed.id

    @property
    def work_dir(self) -> Path:
        return self._work_dir

    @property
    def resume_state(self) -> dict[str, Any] | None:
        return self._state

    def save_state(self, state: dict[str, Any]) -> None:
        if not self._service.save_engine_state(self.task_id, self._claimed.lease_token, state):
            self.lost()
            self.check_cancel()
        self._state = state

    def report_progress(self, fraction: float) -> None:
        percent = int(max(0.0, min(1.0, fraction)) * 99)
        now = time.monotonic()
        if self._on_step is not None:
            self._on_step(now - self._last_step)
        self._last_step = now
        if percent != self._last_percent or now - self._last_report >= self.MIN_REPORT_INTERVAL:
            self._last_percent = percent
            self._last_report = now
            if not self._service.heartbeat(self.task_id, self._claimed.lease_token, percent):
                self.lost()
        self.check_cancel()

    def check_cancel(self) -> None:
        if self._cancelled.is_set():
            raise TaskCancelled(self.task_id, lease_lost=self._lease_lost or self.handing_back)

    def lost(self) -> None:
        """The lease is gone: the task was cancelled, or it went back to the queue."""
        view = self._service.get_task_unscoped(self.task_id)
        if view is None or view.status != Status.CANCELLED:
            self._lease_lost = True
        self._cancelled.set()

    def is_cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Called when this process learns of a cancel (or a lost lease)."""
        self._cancelled.set()

    def hand_back(self) -> None:
        """Stop at the next safe point and give the task back to the queue (shutdown)."""
        self.handing_back = True
        self._cancelled.set()


class TaskRunner:
    """Runs claimed tasks; one instance is shared by the worker threads of a process."""

    def __init__(
        self,
        service: TaskService,
        router: EngineRouter,
        results: ResultStore,
        settings: Settings,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics
        self.service = service
        self.router = router
        self.results = results
        self.settings = settings
        #: How the process ends on a fatal device error (tests replace it).
        self.exit_process: Callable[[int], object] = os._exit
        self._active: dict[str, WorkerContext] = {}
        self._lock = threading.Lock()

    def notify_cancelled(self, task_id: str) -> None:
        with self._lock:
            ctx = self._active.get(task_id)
        if ctx is not None:
            ctx.cancel()

    def active_tasks(self) -> list[str]:
        with self._lock:
            return list(self._active)

    def hand_back_all(self) -> None:
        """Shutdown past its grace period: running tasks stop and go back to the queue."""
        with self._lock:
            contexts = list(self._active.values())
        for ctx in contexts:
            ctx.hand_back()

    def run(self, claimed: ClaimedTask) -> None:
        work_dir = self.settings.work_dir / f"{claimed.id}-{claimed.attempt}"
        work_dir.mkdir(parents=True, exist_ok=True)
        on_step = None
        if self.metrics is not None:
            kind = self.router.engine(claimed.requested_model).kind
            on_step = self.metrics.engine_step_seconds.labels(kind).observe
        ctx = WorkerContext(self.service, claimed, work_dir, on_step)
        task_token = task_context.set(claimed.id)
        with self._lock:
            self._active[claimed.id] = ctx
        stop_heartbeat = threading.Event()
        beat = threading.Thread(
            target=self._heartbeat, args=(claimed, ctx, stop_heartbeat), daemon=True
        )
        beat.start()
        try:
            self._run(claimed, ctx)
        finally:
            stop_heartbeat.set()
            beat.join(timeout=5)
            with self._lock:
                self._active.pop(claimed.id, None)
            shutil.rmtree(work_dir, ignore_errors=True)
            task_context.reset(task_token)

    def _heartbeat(self, claimed: ClaimedTask, ctx: WorkerContext, stop: threading.Event) -> None:
        interval = max(0.05, self.settings.lease_seconds / 3)
        while not stop.wait(interval):
            if not self.service.heartbeat(claimed.id, claimed.lease_token):
                ctx.lost()
                return

    def _run(self, claimed: ClaimedTask, ctx: WorkerContext) -> None:
        token = claimed.lease_token
        try:
            engine = self.router.started_engine(claimed.requested_model)
            request = VideoRequest(
                prompt=claimed.prompt,
                duration=claimed.duration,
                quality=claimed.quality,
                aspect_ratio=claimed.aspect_ratio,
                seed=claimed.seed,
                has_image=claimed.image_url is not None,
            )
            image = source_image = None
            image_size: tuple[int, int] | None = None
            if claimed.image_url is not None:
                source_image = self._fetch_image(claimed.image_url)
                image_size = source_image.size
            plan = engine.plan(request, image_size)
            if not self.service.set_plan(claimed.id, token, plan):
                raise TaskCancelled(claimed.id)
            if source_image is not None:
                from opendance.media.fetch import fit_image

                image = fit_image(source_image, plan.width, plan.height)
            job = VideoJob(
                task_id=claimed.id,
                prompt=claimed.prompt,
                width=plan.width,
                height=plan.height,
                fps=plan.fps,
                frames=plan.frames,
                duration=claimed.duration,
                quality=claimed.quality,
                aspect_ratio=claimed.aspect_ratio,
                seed=claimed.seed,
                image=image,
                source_image=source_image,
                extra={"image_url": claimed.image_url} if claimed.image_url else {},
            )
            ctx.check_cancel()
            result = engine.generate(job, ctx)
            self._deliver(claimed, result)
        except TaskCancelled:
            if ctx.handing_back:
                log.info("task %s handed back to the queue", claimed.id)
                self.service.release(claimed.id, token)
            else:
                log.info("task %s stopped (cancelled or lease lost)", claimed.id)
                self.service.complete(claimed.id, token, Cancelled())
        except EngineFatal as error:
            log.critical(
                "task %s: the engine's device is lost (%s); the task goes back to the queue "
                "and this process exits (%d) for its supervisor to restart it",
                claimed.id,
                error.message,
                FATAL_EXIT_CODE,
            )
            self.service.retry_later(
                claimed.id, token, "engine_fatal", f"The engine's device failed: {error.message}"
            )
            self.exit_process(FATAL_EXIT_CODE)
        except StorageError as error:
            log.warning("task %s: the result could not be stored (%s)", claimed.id, error)
            self.service.retry_later(
                claimed.id, token, "storage_unavailable", f"The result could not be stored: {error}"
            )
        except EngineError as error:
            log.info("task %s failed: %s %s", claimed.id, error.code, error.message)
            self.service.complete(claimed.id, token, Failed(error.code, error.message))
        except Exception:
            log.exception("engine crashed on task %s", claimed.id)
            self.service.complete(
                claimed.id,
                token,
                Failed("engine_error", "The engine failed unexpectedly; the task was refunded."),
            )

    def _fetch_image(self, url: str) -> Image:
        from opendance.media.fetch import ImageFetchError, fetch_image

        try:
            if url.startswith(UPLOAD_PREFIX):
                return read_upload(
                    self.results.blobs, url, max_pixels=self.settings.image_max_pixels
                )
            return fetch_image(
                url,
                max_bytes=self.settings.image_max_bytes,
                max_pixels=self.settings.image_max_pixels,
                connect_timeout=self.settings.image_connect_timeout_seconds,
                total_timeout=self.settings.image_total_timeout_seconds,
                allow_loopback=self.settings.allow_loopback_for_tests,
                extra_ca_file=self.settings.extra_ca_file,
            ).image
        except ImageFetchError as error:
            raise EngineError(error.code, error.message) from error

    def _store(self, claimed: ClaimedTask, path: Path) -> str:
        """Put the result in the store, trying again a few times (a bucket may be briefly
        away); a StorageError after the last try."""
        for delay in (*STORE_RETRY_DELAYS, None):
            try:
                return self.results.store(claimed.id, path)
            except StorageError as error:
                if delay is None:
                    raise
                log.warning("task %s: storing the result failed (%s); retrying", claimed.id, error)
                time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _deliver(self, claimed: ClaimedTask, result: EngineResult) -> None:
        relative = self._store(claimed, result.path)
        outcome = Completed(
            result_file=relative,
            model=result.model,
            width=result.width,
            height=result.height,
            fps=result.fps,
            frames=result.frames,
            usage=result.usage,
        )
        if not self.service.complete(claimed.id, claimed.lease_token, outcome):
            # Cancelled or re-queued meanwhile: this attempt's file is not the task's result.
            self.results.delete(relative)
