"""What the sync and async clients share: configuration, request bodies, retry rules,
long-poll pacing, SSE."""

from __future__ import annotations

import email.utils
import importlib.metadata
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx

from opendance.client._errors import OpenDanceError
from opendance.client._models import Task

DEFAULT_BASE_URL: Final[str] = "http://127.0.0.1:8000"
DEFAULT_MODEL: Final[str] = "doubao-seedance-1.0-pro-fast"
DEFAULT_TIMEOUT: Final[httpx.Timeout] = httpx.Timeout(60.0, connect=10.0)
DEFAULT_MAX_RETRIES: Final[int] = 2
#: The longest `Retry-After` honoured; a server asking for more gets the error raised instead.
MAX_RETRY_AFTER: Final[float] = 60.0
#: Backoff without `Retry-After`: 0.5 s, 1 s, 2 s, ... (with jitter) up to this.
MAX_BACKOFF: Final[float] = 8.0
#: Statuses retried (the server took no work): rate limit, busy or shutting down.
RETRY_STATUSES: Final[frozenset[int]] = frozenset({429, 503})
#: The stream sends a comment every 15 s; no byte for this long means the connection is dead.
STREAM_READ_TIMEOUT: Final[float] = 45.0
#: Streams that break before any event, in a row, before `wait` settles for polling.
MAX_STREAM_FAILURES: Final[int] = 5
#: How long `wait` asks the server to hold each read (`?wait=`, an opendance extension).
DEFAULT_WAIT_PERIOD: Final[float] = 30.0
#: The longest hold the server grants.
MAX_WAIT_PERIOD: Final[float] = 60.0
#: A held read's HTTP read timeout is its hold plus this: the answer is due at the end of the
#: hold, not before, so the timeout must outlast it.
LONG_POLL_GRACE: Final[float] = 15.0


def _version() -> str:
    # Not `from opendance import __version__`: the package's __init__ re-exports this module.
    try:
        return importlib.metadata.version("opendance")
    except importlib.metadata.PackageNotFoundError:
        return "0"


USER_AGENT: Final[str] = f"opendance-python/{_version()}"
_REFERENCE_PREFIXES: Final[tuple[str, ...]] = ("http://", "https://", "upload:", "data:")


def resolve_base_url(base_url: str | None) -> str:
    """The argument, else `OPENDANCE_BASE_URL`, else http://127.0.0.1:8000; a trailing `/v1`
    is dropped (both `http://host:8000` and `http://host:8000/v1` work)."""
    url = (base_url or os.environ.get("OPENDANCE_BASE_URL") or DEFAULT_BASE_URL).strip()
    url = url.rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    return url


def resolve_api_key(api_key: str | None) -> str | None:
    return api_key or os.environ.get("OPENDANCE_KEY") or None


def is_reference(image: str | os.PathLike[str]) -> bool:
    """Whether `image` is something `image_urls` takes as it is (a URL or an upload id)."""
    return isinstance(image, str) and image.lower().startswith(_REFERENCE_PREFIXES)


def task_id_of(task: str | Task) -> str:
    return task.id if isinstance(task, Task) else task


def create_body(
    prompt: str,
    *,
    model: str,
    duration: int | None,
    quality: str | None,
    aspect_ratio: str | None,
    image_url: str | None,
    seed: int | None,
    callback_url: str | None,
    service_tier: str | None,
    execution_expires_after: int | None,
    extra_body: dict[str, Any] | None,
) -> dict[str, Any]:
    """The JSON of `POST /v1/videos/generations`; fields left at None are not sent."""
    body: dict[str, Any] = {"model": model, "prompt": prompt}
    optional: dict[str, Any] = {
        "duration": duration,
        "quality": quality,
        "aspect_ratio": aspect_ratio,
        "image_urls": [image_url] if image_url is not None else None,
        "seed": seed,
        "callback_url": callback_url,
        "service_tier": service_tier,
        "execution_expires_after": execution_expires_after,
    }
    body.update({name: value for name, value in optional.items() if value is not None})
    if extra_body:
        body.update(extra_body)
    return body


def read_image(path: str | os.PathLike[str]) -> tuple[str, bytes]:
    """A local image's file name and bytes (read whole, so a retry can send it again)."""
    source = Path(path).expanduser()
    try:
        return source.name, source.read_bytes()
    except OSError as error:
        raise OpenDanceError(f"Cannot read the image {source}: {error.strerror}") from None


def retry_after(response: httpx.Response) -> float | None:
    """The wait a response asks for (`retry-after-ms`, `Retry-After` seconds or HTTP date)."""
    headers = response.headers
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, float(when.timestamp()) - time.time())


def backoff(attempt: int) -> float:
    """Exponential with full jitter in its upper half: attempt 0 -> 0.25..0.5 s."""
    base = min(MAX_BACKOFF, 0.5 * 2.0**attempt)
    return base / 2 + random.random() * base / 2


def status_delay(response: httpx.Response, attempt: int) -> float | None:
    """How long to wait before retrying this response; None: do not retry it."""
    if response.status_code not in RETRY_STATUSES:
        return None
    asked = retry_after(response)
    if asked is None:
        return backoff(attempt)
    if asked > MAX_RETRY_AFTER:
        return None
    return asked


def before_sending(error: httpx.TransportError) -> bool:
    """Whether the request surely never reached the server (safe to retry even a create)."""
    return isinstance(error, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


def stream_timeout(remaining: float | None) -> httpx.Timeout:
    read = (
        STREAM_READ_TIMEOUT if remaining is None else max(0.1, min(STREAM_READ_TIMEOUT, remaining))
    )
    return httpx.Timeout(read, connect=10.0)


def remaining(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


def wait_period(period: float, left: float | None) -> float:
    """The hold of the next long-poll: `period`, at most 60 s, and never past the deadline."""
    hold = min(period, MAX_WAIT_PERIOD)
    if left is not None:
        hold = min(hold, left)
    return max(0.001, hold)


def wait_param(seconds: float) -> str:
    """The `wait` query value: `30`, `0.25` (to the millisecond, never 0)."""
    return f"{max(seconds, 0.001):.3f}".rstrip("0").rstrip(".")


def long_poll_timeout(seconds: float) -> httpx.Timeout:
    return httpx.Timeout(seconds + LONG_POLL_GRACE, connect=10.0)


def ignored_wait(current: Task, sent: Task | None, elapsed: float, hold: float) -> bool:
    """Whether a long-poll's answer shows a server that does not hold reads (one older than
    `?wait=`, or a proxy answering for it): no ETag, or the copy it was sent unchanged, and
    back before half the hold. `wait` then paces itself with `poll_interval`."""
    unchanged = current.etag is None or (
        sent is not None and (current is sent or current.etag == sent.etag)
    )
    return unchanged and elapsed < hold / 2


@dataclass
class ServerSentEvent:
    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None


@dataclass
class SSEDecoder:
    """Turns the lines of a `text/event-stream` body into events (the WHATWG rules)."""

    _event: str = ""
    _data: list[str] = field(default_factory=list)
    _id: str | None = None
    _retry: int | None = None

    def feed(self, line: str) -> ServerSentEvent | None:
        if not line:
            if not self._data and not self._event:
                return None
            event = ServerSentEvent(
                self._event or "message", "\n".join(self._data), self._id, self._retry
            )
            self._event, self._data = "", []
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
        return None


class ProgressTracker:
    """Says which tasks `on_progress` hears of: one per distinct (status, progress, place in
    the queue); keeps the latest seen."""

    def __init__(self, on_progress: Callable[[Task], object] | None, latest: Task | None) -> None:
        self.on_progress = on_progress
        self.last: tuple[str, int, int | None] | None = None
        self.latest = latest

    def changed(self, task: Task) -> bool:
        """Record `task`; True if it differs from the last one seen (the caller reports it)."""
        self.latest = task
        state = (task.status, task.progress, task.task_info.queue_position)
        if state == self.last:
            return False
        self.last = state
        return True


class StreamUnavailable(Exception):
    """The server has no event stream (an older server, or a proxy in the way): poll."""


class StreamBroken(Exception):
    """The stream answered with a transient error (busy, restarting): try it again later."""


def stream_unavailable(status: int, code: str | None, content_type: str) -> bool:
    if status in (404, 405) and code != "task_not_found":
        return True
    return status == 200 and not content_type.startswith("text/event-stream")
