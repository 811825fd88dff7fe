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

import contextlib
import logging
import time
import uuid
from abc import abstractmethod
from collections.abc import Callable, Iterator
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
    UPSTREAM_BAD_RESPONSE,
    UPSTREAM_BAD_STATUS,
    UPSTREAM_CONTENT_REJECTED,
    UPSTREAM_FAILED,
    UPSTREAM_STATE_INVALID,
    UPSTREAM_TASK_LOST,
    UPSTREAM_UNAVAILABLE,
    create_error,
    ended_error,
    is_ambiguous_status,
    sanitize,
)
from opendance.engines.upstream.options import UpstreamOptions
from opendance.engines.upstream.polling import look_up_named, poll_until_done
from opendance.engines.upstream.wire import (
    CLIENT_REQUEST_ID_HEADER,
    TaskSnapshot,
    api_client,
    error_fields,
    json_body,
    retry_after_seconds,
    valid_upstream_id,
)
from opendance.media.sizes import FPS, NAMED_RATIOS, keep_ratio_size, nearest_named_ratio, size_for

_WAIT_SLICE: Final = 0.2
#: Extra fields every saved state of a job carries (e.g. the server that owns it).
State = dict[str, Any]


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
        with self.session(job, ctx) as (api, extra):
            upstream_id, submitted_at = self._submit_or_resume(api, job, ctx, extra)
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
            return self._fetch_result(api, ctx, snapshot, upstream_id)

    @contextlib.contextmanager
    def session(self, job: VideoJob, ctx: EngineContext) -> Iterator[tuple[httpx.Client, State]]:
        """The API client for this job and what its saved state must also hold (a pool of
        servers records which server owns the job). One upstream: its client, nothing more."""
        with api_client(self.options) as api:
            yield api, {}

    def send_create(
        self, api: httpx.Client, path: str, body: dict[str, Any], headers: dict[str, str]
    ) -> httpx.Response:
        """POST the create; a JSON body unless the upstream wants another encoding."""
        return api.post(path, json=body, headers=headers)

    def client_task_id(self, client_request_id: str) -> str | None:
        """The id this upstream will give the task when we name it ourselves (an upstream that
        takes a client-chosen id and refuses a second create with it), so a create whose answer
        never came can be looked up and sent again safely. None: the upstream names its tasks."""
        return None

    def content_path(self, upstream_id: str) -> str | None:
        """Where the API itself serves the finished video (with our key), for upstreams that
        hand back no URL; None: the snapshot's `video_url` is fetched instead."""
        return None

    def remove_request(self, upstream_id: str) -> tuple[str, str] | None:
        """`(method, path)` that deletes the upstream's copy once ours is stored, if any."""
        return None

    # -- submit ------------------------------------------------------------------------------------

    def _submit_or_resume(
        self, api: httpx.Client, job: VideoJob, ctx: EngineContext, extra: State
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
            request_id = state.get("client_request_id")
            if isinstance(request_id, str) and self.client_task_id(request_id) is not None:
                # We named the task: look it up; if it never arrived, sending it again under
                # the same name is safe (the upstream refuses a second task of that name).
                found = self._look_up(api, ctx, request_id, extra)
                if found is not None:
                    return found
                return self._create(api, job, ctx, extra, request_id=request_id)
            # The create may or may not have reached the upstream; sending it again could make
            # (and bill) a second video, so this attempt fails and the task is refunded.
            raise EngineError(
                UPSTREAM_AMBIGUOUS,
                "an earlier attempt sent this task upstream and stopped before the answer came; "
                "it is not sent again",
            )
        if phase not in (None, "not_submitted"):
            raise EngineError(UPSTREAM_STATE_INVALID, "the saved upstream task record is invalid")
        return self._create(api, job, ctx, extra)

    def _create(
        self,
        api: httpx.Client,
        job: VideoJob,
        ctx: EngineContext,
        extra: State,
        *,
        request_id: str | None = None,
    ) -> tuple[str, float]:
        path, body = self.create_request(job)
        request_id = request_id or uuid.uuid4().hex
        named = self.client_task_id(request_id)
        if named is not None:
            body = {**body, "task_id": named}
        ctx.save_state({**extra, "phase": "submitting", "client_request_id": request_id})
        rate_limited = 0
        unanswered = 0
        while True:
            ctx.check_cancel()
            try:
                response = self.send_create(api, path, body, {CLIENT_REQUEST_ID_HEADER: request_id})
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                # Nothing left this machine, so nothing can exist upstream.
                self._not_submitted(ctx, extra)
                raise EngineError(
                    UPSTREAM_UNAVAILABLE,
                    f"could not connect to the upstream ({type(exc).__name__})",
                    retryable=True,
                ) from None
            except httpx.TransportError as exc:
                self._log.warning(
                    "task %s: create outcome unknown (%s)", ctx.task_id, type(exc).__name__
                )
                if named is not None and unanswered < 2:
                    unanswered += 1
                    self._wait(ctx, 1.0)
                    found = self._look_up(api, ctx, request_id, extra)
                    if found is not None:
                        return found
                    continue  # it never arrived: the same named create again
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
                            **extra,
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
            raise self._create_failure(response, ctx, extra)

    def _look_up(
        self, api: httpx.Client, ctx: EngineContext, request_id: str, extra: State
    ) -> tuple[str, float] | None:
        return look_up_named(self, api, ctx, request_id, extra)

    def _create_failure(
        self, response: httpx.Response, ctx: EngineContext, extra: State
    ) -> EngineError:
        status = response.status_code
        code, message = error_fields(json_body(response))
        detail = self._sanitize(message or "", ())
        if not is_ambiguous_status(status):
            self._not_submitted(ctx, extra)
        return create_error(status, code, detail, self.is_content_rejection)

    def _not_submitted(self, ctx: EngineContext, extra: State) -> None:
        """Record that nothing exists upstream, so a resumed attempt may create it."""
        ctx.save_state({**extra, "phase": "not_submitted"})

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
        return poll_until_done(self, api, job, ctx, upstream_id, submitted_at)

    def _ended_error(self, snapshot: TaskSnapshot, upstream_id: str) -> EngineError:
        def clean(text: str, limit: int) -> str:
            return self._sanitize(text, (upstream_id,), limit=limit)

        return ended_error(snapshot, self.failure_code, clean)

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
        self, api: httpx.Client, ctx: EngineContext, snapshot: TaskSnapshot, upstream_id: str
    ) -> EngineResult:
        content = self.content_path(upstream_id)
        url = content or snapshot.video_url
        if not url or (content is None and urlsplit(url).scheme not in ("http", "https")):
            raise EngineError(UPSTREAM_BAD_RESPONSE, "the finished upstream task has no video URL")
        target = ctx.work_dir / "upstream.mp4"
        download_video(
            ctx,
            url,
            target,
            self.options,
            wait=self._wait,
            log=self._log,
            api=api if content is not None else None,
        )
        info = checked_video(target)
        self._log.info(
            "task %s: upstream task %s done: %dx%d, %d frames",
            ctx.task_id,
            upstream_id,
            info.width,
            info.height,
            info.frames,
        )
        self._remove_upstream_copy(api, ctx, upstream_id)
        return EngineResult(
            path=target,
            width=info.width,
            height=info.height,
            fps=round(info.fps) or FPS,
            frames=info.frames,
            model=self.model_name,
            usage=self.usage(snapshot),
        )

    def _remove_upstream_copy(
        self, api: httpx.Client, ctx: EngineContext, upstream_id: str
    ) -> None:
        request = self.remove_request(upstream_id)
        if request is None:
            return
        try:
            api.request(*request)
        except httpx.TransportError as exc:
            self._log.info(
                "task %s: the upstream copy of %s stays (%s)",
                ctx.task_id,
                upstream_id,
                type(exc).__name__,
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
