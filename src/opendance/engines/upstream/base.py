"""What every engine that runs a hosted model through a task API shares (Ark, evolink).

Such an upstream always has the same shape: create a task (a POST that is not idempotent), poll it
until it ends, download the video it made. What must not go wrong is the same too, so it lives
here once and the engines only describe their wire format:

- one job is never created twice upstream: the submission is recorded (`ctx.save_state`) before
  the POST, a create whose outcome cannot be known (read timeout, 502/504 after sending, a 2xx
  without an id) fails as `upstream_ambiguous` instead of being retried, and a resumed attempt
  polls the recorded upstream task instead of creating another;
- an unknown upstream status is an error, never "still running"; `cancelled` and `expired` end
  the task;
- the upstream key goes only into the Authorization header of API calls: never into state,
  results, error messages or logs, and never to the host that serves the finished video.

The error codes and their mapping live in `errors`, the wire pieces in `wire`, the video
download in `download`.
"""

from __future__ import annotations

import logging
import time
import uuid
from abc import abstractmethod
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import urlsplit

import httpx

from opendance.engines.base import (
    Engine,
    EngineContext,
    EngineError,
    EngineResult,
    TaskCancelled,
    VideoJob,
    VideoPlan,
    VideoRequest,
)
from opendance.engines.upstream.download import checked_video, download_video
from opendance.engines.upstream.errors import (
    _MAX_MESSAGE,
    UPSTREAM_AMBIGUOUS,
    UPSTREAM_AUTH_FAILED,
    UPSTREAM_BAD_RESPONSE,
    UPSTREAM_BAD_STATUS,
    UPSTREAM_CONTENT_REJECTED,
    UPSTREAM_FAILED,
    UPSTREAM_STATE_INVALID,
    UPSTREAM_TASK_LOST,
    UPSTREAM_TIMEOUT,
    UPSTREAM_UNAVAILABLE,
    create_error,
    ended_error,
    is_ambiguous_status,
    sanitize,
)
from opendance.engines.upstream.options import UpstreamOptions
from opendance.engines.upstream.wire import (
    CLIENT_REQUEST_ID_HEADER,
    MalformedAnswer,
    TaskSnapshot,
    api_client,
    error_fields,
    json_body,
    retry_after_seconds,
    valid_upstream_id,
)
from opendance.media.sizes import FPS, NAMED_RATIOS, keep_ratio_size, nearest_named_ratio, size_for

_WAIT_SLICE: Final = 0.2


class UpstreamEngine(Engine):
    """Create, poll, download: the template every task-API engine fills in.

    Subclasses say how to build the create request and how to read answers; they never touch
    state, retries or the key. State saved per attempt (all JSON, no secret):
    `{"phase": "submitting", "client_request_id"}` before the create is sent,
    `{"phase": "submitted", "upstream_id", "client_request_id", "submitted_at"}` after it,
    `{"phase": "not_submitted"}` when the create certainly created nothing.
    """

    options: UpstreamOptions

    def __init__(
        self, options: UpstreamOptions, *, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.options = options
        self._sleep = sleep
        self._log = logging.getLogger(type(self).__module__)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model_name!r}, upstream={self._host()!r})"

    # -- what the upstream's wire format looks like (subclasses) --------------------------------

    @abstractmethod
    def create_request(self, job: VideoJob) -> tuple[str, dict[str, Any]]:
        """The create path (relative to base_url) and JSON body; whitelisted fields only."""

    @abstractmethod
    def parse_created(self, body: Any) -> str | None:
        """The upstream task id from a 2xx create answer, or None when there is none."""

    @abstractmethod
    def task_path(self, upstream_id: str) -> str:
        """The query path of one task."""

    @abstractmethod
    def parse_task(self, body: Any) -> TaskSnapshot:
        """A query answer in our terms; raises `MalformedAnswer` when it has the wrong shape."""

    @abstractmethod
    def cancel_request(self, upstream_id: str) -> tuple[str, str] | None:
        """`(method, path)` that cancels a task upstream, or None when the upstream has none."""

    @abstractmethod
    def is_content_rejection(self, code: str | None) -> bool:
        """Whether an upstream error code means the input or output was refused as unsafe."""

    def failure_code(self, code: str | None) -> str:
        """Our code for a task that ended `failed` upstream with their `code`."""
        return UPSTREAM_CONTENT_REJECTED if self.is_content_rejection(code) else UPSTREAM_FAILED

    def usage(self, snapshot: TaskSnapshot) -> dict[str, Any]:
        """What the result reports as usage (token counts for Ark)."""
        return dict(snapshot.usage)

    def plan_ratio(self, aspect_ratio: str, image_size: tuple[int, int] | None) -> str:
        """The named ratio the upstream will really make (image modes resolve to one)."""
        if aspect_ratio in NAMED_RATIOS:
            return aspect_ratio
        if image_size is not None:
            return nearest_named_ratio(*image_size)
        return "16:9"

    # -- Engine ------------------------------------------------------------------------------------

    @property
    def model_name(self) -> str:
        return self.options.reported_model or self.options.upstream_model

    def plan(self, request: VideoRequest, image_size: tuple[int, int] | None = None) -> VideoPlan:
        ratio = self.plan_ratio(request.aspect_ratio, image_size)
        if ratio == "keep_ratio" and image_size is not None:
            width, height = keep_ratio_size(request.quality, *image_size)
        else:
            width, height = size_for(request.quality, ratio)
        # Seedance 1.0 makes 24 fps and `frames = 25 + 4n`; d seconds is 24*d + 1 frames.
        return VideoPlan(
            width=width,
            height=height,
            fps=FPS,
            frames=request.duration * FPS + 1,
            model=self.model_name,
        )

    def estimate_seconds(self, plan: VideoPlan) -> float:
        seconds = plan.frames / plan.fps if plan.fps else 0.0
        return (
            self.options.estimate_base_seconds
            + self.options.estimate_seconds_per_video_second * seconds
        )

    def generate(self, job: VideoJob, ctx: EngineContext) -> EngineResult:
        with api_client(self.options) as api:
            upstream_id, submitted_at = self._submit_or_resume(api, job, ctx)
            try:
                snapshot = self._poll(api, job, ctx, upstream_id, submitted_at)
            except TaskCancelled as stop:
                # A lost lease means another attempt now owns the task and will resume polling
                # this very upstream task: it must keep running. Only a real cancel stops it.
                if not getattr(stop, "lease_lost", False):
                    self._cancel_upstream(api, ctx, upstream_id, "the task was cancelled")
                raise
            except EngineError as exc:
                if exc.code != UPSTREAM_TASK_LOST:
                    self._cancel_upstream(api, ctx, upstream_id, f"we gave up ({exc.code})")
                raise
            if snapshot.status != "succeeded":
                error = self._ended_error(snapshot, upstream_id)
                if error.code == UPSTREAM_BAD_STATUS:
                    # We cannot tell what it is doing, and we are walking away from it.
                    self._cancel_upstream(api, ctx, upstream_id, "its status is unknown")
                raise error
        return self._fetch_result(ctx, snapshot, upstream_id)

    # -- submit ------------------------------------------------------------------------------------

    def _submit_or_resume(
        self, api: httpx.Client, job: VideoJob, ctx: EngineContext
    ) -> tuple[str, float]:
        state = ctx.resume_state or {}
        phase = state.get("phase")
        if phase == "submitted":
            upstream_id = valid_upstream_id(state.get("upstream_id"))
            submitted_at = state.get("submitted_at")
            if upstream_id is None or not isinstance(submitted_at, int | float):
                raise EngineError(
                    UPSTREAM_STATE_INVALID, "the saved upstream task record is invalid"
                )
            self._log.info("task %s: resuming upstream task %s", ctx.task_id, upstream_id)
            return upstream_id, float(submitted_at)
        if phase == "submitting":
            # The create may or may not have reached the upstream; sending it again could make
            # (and bill) a second video, so this attempt fails and the task is refunded.
            raise EngineError(
                UPSTREAM_AMBIGUOUS,
                "an earlier attempt sent this task upstream and stopped before the answer came; "
                "it is not sent again",
            )
        if phase not in (None, "not_submitted"):
            raise EngineError(UPSTREAM_STATE_INVALID, "the saved upstream task record is invalid")
        return self._create(api, job, ctx)

    def _create(self, api: httpx.Client, job: VideoJob, ctx: EngineContext) -> tuple[str, float]:
        path, body = self.create_request(job)
        request_id = uuid.uuid4().hex
        ctx.save_state({"phase": "submitting", "client_request_id": request_id})
        rate_limited = 0
        while True:
            ctx.check_cancel()
            try:
                response = api.post(path, json=body, headers={CLIENT_REQUEST_ID_HEADER: request_id})
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                # Nothing left this machine, so nothing can exist upstream.
                self._not_submitted(ctx)
                raise EngineError(
                    UPSTREAM_UNAVAILABLE,
                    f"could not connect to the upstream ({type(exc).__name__})",
                    retryable=True,
                ) from None
            except httpx.TransportError as exc:
                self._log.warning(
                    "task %s: create outcome unknown (%s)", ctx.task_id, type(exc).__name__
                )
                raise EngineError(
                    UPSTREAM_AMBIGUOUS,
                    f"the upstream did not answer the create in time ({type(exc).__name__}); "
                    "it may have started the task, so it is not sent again",
                ) from None
            status = response.status_code
            if 200 <= status < 300:
                upstream_id = valid_upstream_id(self.parse_created(json_body(response)))
                if upstream_id is None:
                    raise EngineError(
                        UPSTREAM_AMBIGUOUS,
                        f"the upstream accepted the create (HTTP {status}) without a usable task "
                        "id; it is not sent again",
                    )
                submitted_at = time.time()
                try:
                    ctx.save_state(
                        {
                            "phase": "submitted",
                            "upstream_id": upstream_id,
                            "client_request_id": request_id,
                            "submitted_at": submitted_at,
                        }
                    )
                except BaseException:
                    # We cannot track it, so it must not run on unseen.
                    self._cancel_upstream(api, ctx, upstream_id, "its record could not be saved")
                    raise
                self._log.info("task %s: created upstream task %s", ctx.task_id, upstream_id)
                return upstream_id, submitted_at
            if status == 429 and rate_limited < self.options.create_rate_limit_retries:
                rate_limited += 1
                delay = retry_after_seconds(response)
                if delay is None:
                    delay = self.options.poll_initial_seconds * rate_limited
                delay = min(delay, self.options.max_retry_after_seconds)
                self._log.info(
                    "task %s: upstream rate limit on create, retrying in %.1f s", ctx.task_id, delay
                )
                self._wait(ctx, delay)
                continue
            raise self._create_failure(response, ctx)

    def _create_failure(self, response: httpx.Response, ctx: EngineContext) -> EngineError:
        status = response.status_code
        code, message = error_fields(json_body(response))
        detail = self._sanitize(message or "", ())
        if not is_ambiguous_status(status):
            self._not_submitted(ctx)
        return create_error(status, code, detail, self.is_content_rejection)

    def _not_submitted(self, ctx: EngineContext) -> None:
        """Record that nothing exists upstream, so a resumed attempt may create it."""
        ctx.save_state({"phase": "not_submitted"})

    # -- poll --------------------------------------------------------------------------------------

    def _poll(
        self,
        api: httpx.Client,
        job: VideoJob,
        ctx: EngineContext,
        upstream_id: str,
        submitted_at: float,
    ) -> TaskSnapshot:
        """Query until the task leaves queued/running; returns that last answer."""
        opts = self.options
        path = self.task_path(upstream_id)
        estimate = max(
            1.0, opts.estimate_base_seconds + opts.estimate_seconds_per_video_second * job.duration
        )
        deadline = submitted_at + opts.max_wait_seconds
        interval = opts.poll_initial_seconds
        errors = malformed = not_found = 0
        last_status: str | None = None
        while True:
            ctx.check_cancel()
            if time.time() > deadline:
                raise EngineError(
                    UPSTREAM_TIMEOUT,
                    f"the upstream did not finish within {opts.max_wait_seconds:.0f} s",
                )
            delay = interval
            try:
                response = api.get(path)
            except httpx.TransportError as exc:
                errors += 1
                self._log.warning(
                    "task %s: query of %s failed (%s)", ctx.task_id, upstream_id, type(exc).__name__
                )
            else:
                status = response.status_code
                if status == 200:
                    try:
                        snapshot = self.parse_task(json_body(response))
                    except MalformedAnswer as exc:
                        malformed += 1
                        self._log.warning(
                            "task %s: malformed answer for %s: %s", ctx.task_id, upstream_id, exc
                        )
                        if malformed >= opts.max_malformed_responses:
                            raise EngineError(
                                UPSTREAM_BAD_RESPONSE,
                                f"the upstream sent {malformed} malformed task answers in a row",
                            ) from None
                    else:
                        errors = malformed = not_found = 0
                        if snapshot.status != last_status:
                            self._log.info(
                                "task %s: upstream task %s is %s",
                                ctx.task_id,
                                upstream_id,
                                self._sanitize(snapshot.status, (), limit=40),
                            )
                            last_status = snapshot.status
                        if snapshot.status not in ("queued", "running"):
                            return snapshot
                        ctx.report_progress(self._progress(snapshot, submitted_at, estimate))
                elif status == 429 or status == 408 or status >= 500:
                    errors += 1
                    if status == 429:
                        after = retry_after_seconds(response)
                        if after is not None:
                            delay = max(delay, min(after, opts.max_retry_after_seconds))
                    self._log.warning(
                        "task %s: query of %s answered HTTP %d", ctx.task_id, upstream_id, status
                    )
                elif status == 404:
                    not_found += 1
                    if not_found >= opts.max_not_found:
                        raise EngineError(
                            UPSTREAM_TASK_LOST, "the upstream no longer knows this task (HTTP 404)"
                        )
                elif status in (401, 403):
                    raise EngineError(
                        UPSTREAM_AUTH_FAILED,
                        f"the upstream refused our credentials (HTTP {status}) while polling",
                    )
                else:
                    raise EngineError(
                        UPSTREAM_BAD_RESPONSE,
                        f"the upstream answered a task query with HTTP {status}",
                    )
            if errors >= opts.max_poll_errors:
                raise EngineError(
                    UPSTREAM_UNAVAILABLE,
                    f"the upstream failed {errors} task queries in a row",
                )
            self._wait(ctx, min(delay, max(0.0, deadline - time.time()) + _WAIT_SLICE))
            interval = min(interval * opts.poll_backoff, opts.poll_max_seconds)

    def _ended_error(self, snapshot: TaskSnapshot, upstream_id: str) -> EngineError:
        def clean(text: str, limit: int) -> str:
            return self._sanitize(text, (upstream_id,), limit=limit)

        return ended_error(snapshot, self.failure_code, clean)

    @staticmethod
    def _progress(snapshot: TaskSnapshot, submitted_at: float, estimate: float) -> float:
        """Queued ~0.05; running rises with the upstream's own figure or elapsed/estimate."""
        if snapshot.status == "queued":
            fraction = 0.05
        elif snapshot.progress is not None:
            fraction = 0.05 + 0.9 * min(1.0, max(0.0, snapshot.progress))
        else:
            elapsed = max(0.0, time.time() - submitted_at)
            fraction = 0.1 + 0.85 * min(1.0, elapsed / estimate)
        return min(0.95, fraction)

    def _cancel_upstream(
        self, api: httpx.Client, ctx: EngineContext, upstream_id: str, why: str
    ) -> None:
        """Best effort: a failure here is logged, never raised over the real outcome."""
        request = self.cancel_request(upstream_id)
        if request is None:
            self._log.warning(
                "task %s: upstream task %s left running (%s; the upstream has no cancel)",
                ctx.task_id,
                upstream_id,
                why,
            )
            return
        method, path = request
        try:
            response = api.request(method, path, json={})
        except httpx.TransportError as exc:
            self._log.warning(
                "task %s: cancel of upstream task %s failed (%s)",
                ctx.task_id,
                upstream_id,
                type(exc).__name__,
            )
            return
        if response.is_success:
            self._log.info(
                "task %s: cancelled upstream task %s (%s)", ctx.task_id, upstream_id, why
            )
        else:
            self._log.warning(
                "task %s: cancel of upstream task %s answered HTTP %d",
                ctx.task_id,
                upstream_id,
                response.status_code,
            )

    # -- download ----------------------------------------------------------------------------------

    def _fetch_result(
        self, ctx: EngineContext, snapshot: TaskSnapshot, upstream_id: str
    ) -> EngineResult:
        url = snapshot.video_url
        if not url or urlsplit(url).scheme not in ("http", "https"):
            raise EngineError(UPSTREAM_BAD_RESPONSE, "the finished upstream task has no video URL")
        target = ctx.work_dir / "upstream.mp4"
        download_video(ctx, url, target, self.options, wait=self._wait, log=self._log)
        info = checked_video(target)
        self._log.info(
            "task %s: upstream task %s done: %dx%d, %d frames",
            ctx.task_id,
            upstream_id,
            info.width,
            info.height,
            info.frames,
        )
        return EngineResult(
            path=target,
            width=info.width,
            height=info.height,
            fps=round(info.fps) or FPS,
            frames=info.frames,
            model=self.model_name,
            usage=self.usage(snapshot),
        )

    # -- plumbing ----------------------------------------------------------------------------------

    def _wait(self, ctx: EngineContext, seconds: float) -> None:
        """Sleep in short slices, so a cancel is seen within a fraction of a second."""
        remaining = seconds
        while True:
            ctx.check_cancel()
            if remaining <= 0:
                return
            step = min(remaining, _WAIT_SLICE)
            self._sleep(step)
            remaining -= step

    def _sanitize(
        self, text: str, extra_secrets: tuple[str, ...], limit: int = _MAX_MESSAGE
    ) -> str:
        """Upstream text made safe to show: one line, bounded, without our key or their ids."""
        return sanitize(text, (self.options.api_key.get_secret_value(), *extra_secrets), limit)

    def _host(self) -> str:
        return urlsplit(self.options.base_url).hostname or self.options.base_url
