"""Asking an upstream about a task: polling it until it ends (backoff, `Retry-After`,
malformed answers, lost tasks, the deadline, progress in our terms), and looking up a task we
named ourselves after its create went unanswered."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Final

import httpx

from opendance.engines.base import EngineContext, EngineError, VideoJob
from opendance.engines.upstream.errors import (
    UPSTREAM_AMBIGUOUS,
    UPSTREAM_AUTH_FAILED,
    UPSTREAM_BAD_RESPONSE,
    UPSTREAM_TASK_LOST,
    UPSTREAM_TIMEOUT,
    UPSTREAM_UNAVAILABLE,
)
from opendance.engines.upstream.wire import (
    MalformedAnswer,
    TaskSnapshot,
    json_body,
    retry_after_seconds,
)

if TYPE_CHECKING:
    from opendance.engines.upstream.base import UpstreamEngine

_WAIT_SLICE: Final = 0.2


def poll_until_done(
    engine: UpstreamEngine,
    api: httpx.Client,
    job: VideoJob,
    ctx: EngineContext,
    upstream_id: str,
    submitted_at: float,
) -> TaskSnapshot:
    """Query until the task leaves queued/running; returns that last answer."""
    opts = engine.options
    path = engine.task_path(upstream_id)
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
            engine._log.warning(
                "task %s: query of %s failed (%s)", ctx.task_id, upstream_id, type(exc).__name__
            )
        else:
            status = response.status_code
            if status == 200:
                try:
                    snapshot = engine.parse_task(json_body(response))
                except MalformedAnswer as exc:
                    malformed += 1
                    engine._log.warning(
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
                        engine._log.info(
                            "task %s: upstream task %s is %s",
                            ctx.task_id,
                            upstream_id,
                            engine._sanitize(snapshot.status, (), limit=40),
                        )
                        last_status = snapshot.status
                    if snapshot.status not in ("queued", "running"):
                        return snapshot
                    ctx.report_progress(progress_of(snapshot, submitted_at, estimate))
            elif status == 429 or status == 408 or status >= 500:
                errors += 1
                if status == 429:
                    after = retry_after_seconds(response)
                    if after is not None:
                        delay = max(delay, min(after, opts.max_retry_after_seconds))
                engine._log.warning(
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
        engine._wait(ctx, min(delay, max(0.0, deadline - time.time()) + _WAIT_SLICE))
        interval = min(interval * opts.poll_backoff, opts.poll_max_seconds)


def progress_of(snapshot: TaskSnapshot, submitted_at: float, estimate: float) -> float:
    """Queued ~0.05; running rises with the upstream's own figure or elapsed/estimate."""
    if snapshot.status == "queued":
        fraction = 0.05
    elif snapshot.progress is not None:
        fraction = 0.05 + 0.9 * min(1.0, max(0.0, snapshot.progress))
    else:
        elapsed = max(0.0, time.time() - submitted_at)
        fraction = 0.1 + 0.85 * min(1.0, elapsed / estimate)
    return min(0.95, fraction)


def look_up_named(
    engine: UpstreamEngine,
    api: httpx.Client,
    ctx: EngineContext,
    request_id: str,
    extra: dict[str, Any],
) -> tuple[str, float] | None:
    """The task we named `client_task_id(request_id)`, if the upstream has it: recorded as
    submitted and returned; None when the upstream answers that it has no such task."""
    upstream_id = engine.client_task_id(request_id)
    assert upstream_id is not None
    try:
        response = api.get(engine.task_path(upstream_id))
    except httpx.TransportError as exc:
        raise EngineError(
            UPSTREAM_AMBIGUOUS,
            f"the upstream did not answer whether it has the task ({type(exc).__name__})",
        ) from None
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        raise EngineError(
            UPSTREAM_AMBIGUOUS,
            f"the upstream answered HTTP {response.status_code} when asked for the task",
        )
    submitted_at = time.time()
    ctx.save_state(
        {**extra, "phase": "submitted", "upstream_id": upstream_id,
         "client_request_id": request_id, "submitted_at": submitted_at}
    )  # fmt: skip
    engine._log.info("task %s: found upstream task %s by its name", ctx.task_id, upstream_id)
    return upstream_id, submitted_at
