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
"""

from __future__ import annotations

import base64
import email.utils
import io
import json
import logging
import os
import re
import time
import uuid
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote, urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

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
from opendance.media.safe_http import UnsafeAddressError, make_safe_client
from opendance.media.sizes import FPS, NAMED_RATIOS, keep_ratio_size, nearest_named_ratio, size_for
from opendance.media.video import InvalidVideo, probe_mp4

if TYPE_CHECKING:
    from pathlib import Path

    from PIL.Image import Image

# Stable error codes shown to the task's owner (docs/upstreams.md has the full table).
UPSTREAM_REJECTED: Final = "upstream_rejected"
UPSTREAM_CONTENT_REJECTED: Final = "upstream_content_rejected"
UPSTREAM_AUTH_FAILED: Final = "upstream_auth_failed"
UPSTREAM_MODEL_NOT_FOUND: Final = "upstream_model_not_found"
UPSTREAM_QUOTA_EXHAUSTED: Final = "upstream_quota_exhausted"
UPSTREAM_RATE_LIMITED: Final = "upstream_rate_limited"
UPSTREAM_UNAVAILABLE: Final = "upstream_unavailable"
UPSTREAM_AMBIGUOUS: Final = "upstream_ambiguous"
UPSTREAM_BAD_RESPONSE: Final = "upstream_bad_response"
UPSTREAM_BAD_STATUS: Final = "upstream_bad_status"
UPSTREAM_TASK_LOST: Final = "upstream_task_lost"
UPSTREAM_FAILED: Final = "upstream_failed"
UPSTREAM_CANCELLED: Final = "upstream_cancelled"
UPSTREAM_EXPIRED: Final = "upstream_expired"
UPSTREAM_TIMEOUT: Final = "upstream_timeout"
UPSTREAM_DOWNLOAD_FAILED: Final = "upstream_download_failed"
UPSTREAM_VIDEO_TOO_LARGE: Final = "upstream_video_too_large"
UPSTREAM_BAD_VIDEO: Final = "upstream_bad_video"
UPSTREAM_IMAGE_UNSUPPORTED: Final = "upstream_image_unsupported"
UPSTREAM_IMAGE_TOO_LARGE: Final = "upstream_image_too_large"
UPSTREAM_STATE_INVALID: Final = "upstream_state_invalid"

# An upstream task id goes into URL paths and our state: accept only plain ids.
_UPSTREAM_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")
# Gateways that answer these after the request was sent cannot tell whether the origin acted.
_AMBIGUOUS_HTTP: Final = frozenset({502, 504, 520, 521, 522, 523, 524, 525, 526, 527})
_CONTROL_CHARS: Final = re.compile(r"[\x00-\x1f\x7f]+")
_MAX_MESSAGE: Final = 300
_WAIT_SLICE: Final = 0.2
_CHUNK: Final = 1 << 20
CLIENT_REQUEST_ID_HEADER: Final = "X-Client-Request-Id"


class UpstreamOptions(BaseModel):
    """Settings shared by every upstream engine; one set per route entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = Field(
        description="API root, e.g. https://ark.ap-southeast.bytepluses.com/api/v3"
    )
    api_key: SecretStr = Field(description="The upstream key; sent only as a bearer token")
    upstream_model: str = Field(min_length=1, description="The model id the upstream knows")
    reported_model: str | None = Field(
        default=None, description="The model name our tasks report; the upstream id if unset"
    )
    connect_timeout_seconds: float = Field(default=10.0, gt=0)
    request_timeout_seconds: float = Field(
        default=30.0, gt=0, description="Read/write timeout of one API call (create, query)"
    )
    download_timeout_seconds: float = Field(default=120.0, gt=0)
    poll_initial_seconds: float = Field(default=2.0, gt=0)
    poll_max_seconds: float = Field(default=15.0, gt=0)
    poll_backoff: float = Field(default=1.5, ge=1.0)
    max_wait_seconds: float = Field(
        default=3600.0, gt=0, description="Give up (and cancel upstream) this long after submit"
    )
    max_poll_errors: int = Field(
        default=20, ge=1, description="Consecutive 5xx/429/network errors while polling"
    )
    max_malformed_responses: int = Field(default=3, ge=1)
    max_not_found: int = Field(
        default=3, ge=1, description="Consecutive 404s on a task query before it counts as lost"
    )
    create_rate_limit_retries: int = Field(
        default=2, ge=0, description="Create retries after a 429 (safe: nothing was created)"
    )
    max_retry_after_seconds: float = Field(default=60.0, ge=0)
    max_video_bytes: int = Field(default=512 * 1024 * 1024, gt=0)
    download_attempts: int = Field(default=3, ge=1)
    video_url_allow_loopback: bool = Field(
        default=False,
        description="Let the video URL the upstream hands back point at loopback (tests only)",
    )
    estimate_base_seconds: float = Field(default=45.0, ge=0)
    estimate_seconds_per_video_second: float = Field(default=24.0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _key_from_environment(cls, data: Any) -> Any:
        """`api_key_env: NAME` reads the key from the environment, so configs need not hold it."""
        if isinstance(data, dict) and "api_key_env" in data:
            data = dict(data)
            name = data.pop("api_key_env")
            if "api_key" not in data:
                value = os.environ.get(str(name))
                if not value:
                    raise ValueError(f"environment variable {name} (api_key_env) is not set")
                data["api_key"] = value
        return data


@dataclass(frozen=True)
class TaskSnapshot:
    """One query answer, in our terms. `status` is the engine's mapping (unknown names pass
    through unchanged so the poller can reject them)."""

    status: str
    progress: float | None = None
    video_url: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)


class MalformedAnswer(ValueError):
    """An answer that is not the documented JSON shape."""


def json_body(response: httpx.Response) -> Any:
    """The response's JSON, or None when it is not JSON."""
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def error_fields(body: Any) -> tuple[str | None, str | None]:
    """`(code, message)` from an error body; both Ark and evolink wrap them in `error`."""
    if not isinstance(body, dict):
        return None, None
    inner = body.get("error", body)
    if not isinstance(inner, dict):
        return None, inner if isinstance(inner, str) else None
    code = inner.get("code")
    message = inner.get("message")
    return (
        str(code) if code is not None else None,
        message if isinstance(message, str) else None,
    )


def valid_upstream_id(value: Any) -> str | None:
    """The id if it is a plain task id we can safely put in a URL path and in state."""
    if isinstance(value, str) and _UPSTREAM_ID.fullmatch(value):
        return value
    return None


def retry_after_seconds(response: httpx.Response) -> float | None:
    """`Retry-After` as seconds (delta-seconds or an HTTP date), or None."""
    raw = response.headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def png_data_url(image: Image, max_bytes: int) -> str:
    """The image as a `data:` URL: PNG, or JPEG when the PNG would be larger than `max_bytes`.

    Sending the bytes we already fetched and checked means the upstream never reaches out to
    a URL of the client's choosing.
    """
    picture = image if image.mode in ("RGB", "RGBA", "L") else image.convert("RGB")
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    mime = "image/png"
    if buffer.tell() > max_bytes:
        buffer = io.BytesIO()
        picture.convert("RGB").save(buffer, format="JPEG", quality=92)
        mime = "image/jpeg"
    if buffer.tell() > max_bytes:
        raise EngineError(
            UPSTREAM_IMAGE_TOO_LARGE,
            f"the input image is larger than the upstream accepts ({max_bytes} bytes)",
        )
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


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
        with self._api_client() as api:
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
        suffix = f": {detail}" if detail else ""
        if status in _AMBIGUOUS_HTTP:
            return EngineError(
                UPSTREAM_AMBIGUOUS,
                f"the upstream gateway answered HTTP {status} after the create was sent; "
                "the task may exist there, so it is not sent again",
            )
        self._not_submitted(ctx)
        if status in (401, 403):
            return EngineError(
                UPSTREAM_AUTH_FAILED,
                f"the upstream refused our credentials (HTTP {status}); check the route's api_key",
            )
        if status == 402:
            return EngineError(
                UPSTREAM_QUOTA_EXHAUSTED,
                f"the upstream account has no quota left (HTTP 402){suffix}",
                retryable=True,
            )
        if status == 404:
            return EngineError(
                UPSTREAM_MODEL_NOT_FOUND,
                f"the upstream does not know this model or endpoint (HTTP 404){suffix}",
            )
        if status == 429:
            return EngineError(
                UPSTREAM_RATE_LIMITED, "the upstream is rate limiting us (HTTP 429)", retryable=True
            )
        if status >= 500 or status == 408:
            return EngineError(
                UPSTREAM_UNAVAILABLE,
                f"the upstream failed to take the task (HTTP {status})",
                retryable=True,
            )
        if 400 <= status < 500:
            our_code = (
                UPSTREAM_CONTENT_REJECTED
                if self.is_content_rejection(code)
                else (UPSTREAM_REJECTED)
            )
            return EngineError(our_code, f"the upstream refused the task (HTTP {status}){suffix}")
        return EngineError(
            UPSTREAM_BAD_RESPONSE,
            f"the upstream answered the create with HTTP {status}",
            retryable=True,
        )

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
        status = snapshot.status
        if status == "failed":
            detail = self._sanitize(snapshot.error_message or "", (upstream_id,))
            code = self._sanitize(snapshot.error_code or "", (upstream_id,), limit=80)
            parts = [p for p in (code, detail) if p]
            reason = ": " + " - ".join(parts) if parts else ""
            return EngineError(
                self.failure_code(snapshot.error_code), f"the upstream model failed{reason}"
            )
        if status == "cancelled":
            return EngineError(UPSTREAM_CANCELLED, "the task was cancelled upstream")
        if status == "expired":
            return EngineError(UPSTREAM_EXPIRED, "the upstream task expired before it finished")
        return EngineError(
            UPSTREAM_BAD_STATUS,
            f"the upstream reported an unknown task status "
            f"{self._sanitize(status, (upstream_id,), limit=40)!r}",
        )

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
        self._download(ctx, url, target)
        try:
            info = probe_mp4(target)
        except InvalidVideo:
            target.unlink(missing_ok=True)
            raise EngineError(
                UPSTREAM_BAD_VIDEO, "the video the upstream made could not be decoded"
            ) from None
        if info.frames < 1:
            raise EngineError(UPSTREAM_BAD_VIDEO, "the video the upstream made has no frames")
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

    def _download(self, ctx: EngineContext, url: str, target: Path) -> None:
        """Stream the video into `target` (atomically), within the size cap, with a few retries.

        A separate client without our Authorization header (the video host is not the API),
        through the SSRF guard: the URL comes from the upstream, not from our configuration.
        """
        opts = self.options
        host = urlsplit(url).hostname or "?"
        timeout = httpx.Timeout(opts.download_timeout_seconds, connect=opts.connect_timeout_seconds)
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
        last_problem = "no attempt"
        client = make_safe_client(
            timeout=timeout,
            allow_loopback=opts.video_url_allow_loopback,
            follow_redirects=True,
        )
        with client:
            for attempt in range(1, opts.download_attempts + 1):
                ctx.check_cancel()
                try:
                    with client.stream("GET", url) as response:
                        status = response.status_code
                        if status != 200:
                            last_problem = f"HTTP {status}"
                            if status < 500 and status not in (408, 429):
                                break
                        else:
                            self._stream_to(ctx, response, partial)
                            os.replace(partial, target)
                            return
                except UnsafeAddressError:
                    raise EngineError(
                        UPSTREAM_DOWNLOAD_FAILED,
                        "the upstream's video URL points to an internal address; not fetched",
                    ) from None
                except httpx.TransportError as exc:
                    last_problem = type(exc).__name__
                finally:
                    partial.unlink(missing_ok=True)
                self._log.warning(
                    "task %s: video download from %s failed (%s), attempt %d",
                    ctx.task_id,
                    host,
                    last_problem,
                    attempt,
                )
                if attempt < opts.download_attempts:
                    self._wait(ctx, opts.poll_initial_seconds * attempt)
        raise EngineError(
            UPSTREAM_DOWNLOAD_FAILED,
            f"the finished video could not be downloaded from the upstream ({last_problem})",
        )

    def _stream_to(self, ctx: EngineContext, response: httpx.Response, partial: Path) -> None:
        cap = self.options.max_video_bytes
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            raise EngineError(
                UPSTREAM_VIDEO_TOO_LARGE, f"the upstream video is larger than {cap} bytes"
            )
        received = 0
        with partial.open("wb") as out:
            for chunk in response.iter_bytes(_CHUNK):
                received += len(chunk)
                if received > cap:
                    raise EngineError(
                        UPSTREAM_VIDEO_TOO_LARGE, f"the upstream video is larger than {cap} bytes"
                    )
                out.write(chunk)
                ctx.check_cancel()

    # -- plumbing ----------------------------------------------------------------------------------

    def _api_client(self) -> httpx.Client:
        opts = self.options
        return httpx.Client(
            base_url=opts.base_url,
            headers={
                "Authorization": f"Bearer {opts.api_key.get_secret_value()}",
                "Accept": "application/json",
            },
            timeout=httpx.Timeout(
                opts.request_timeout_seconds, connect=opts.connect_timeout_seconds
            ),
            follow_redirects=False,
        )

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
        cleaned = _CONTROL_CHARS.sub(" ", text).strip()
        for secret in (self.options.api_key.get_secret_value(), *extra_secrets):
            if secret:
                cleaned = cleaned.replace(secret, "[redacted]")
        if len(cleaned) > limit:
            cleaned = cleaned[: limit - 1] + "…"
        return cleaned

    def _host(self) -> str:
        return urlsplit(self.options.base_url).hostname or self.options.base_url


def quote_id(upstream_id: str) -> str:
    """An upstream id as one URL path segment."""
    return quote(upstream_id, safe="")
