# unasync: """`opendance.Client`: the blocking Python client of an opendance server."""
"""`opendance.AsyncClient`: the asyncio client of an opendance server (the same API, awaited)."""

# _sync.py is generated from this file by scripts/unasync.py.  # unasync: omit

from __future__ import annotations

import builtins
import contextlib
import inspect
import os
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import anyio
import httpx

from opendance.client import _base
from opendance.client._base import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_MODEL,
    DEFAULT_TIMEOUT,
    DEFAULT_WAIT_PERIOD,
    ProgressTracker,
    SSEDecoder,
    StreamBroken,
    StreamUnavailable,
)
from opendance.client._errors import (
    APIConnectionError,
    APITimeoutError,
    OpenDanceError,
    TaskNotCompletedError,
    WaitTimeoutError,
    error_from_response,
)
from opendance.client._models import Credits, FileObject, Task, TaskPage

# unasync: #: Called with the task once per change of status, progress or queue position.
#: Called with the task once per change of status, progress or queue position (awaited if async).
AsyncProgressCallback = Callable[[Task], object]
#: `flex` tasks start once no `default` task of their model waits, at a lower price.
ServiceTier = Literal["default", "flex"]


class AsyncTaskList:
    """A page of tasks (newest first). Iterating yields every task of this page and the pages
    after it, fetched as needed; `pages()` yields the pages themselves."""

    def __init__(self, client: AsyncClient, page: TaskPage, limit: int) -> None:
        self._client = client
        self.page = page
        self.limit = limit

    @property
    def data(self) -> builtins.list[Task]:
        return self.page.data

    @property
    def has_more(self) -> bool:
        return self.page.has_more

    @property
    def last_id(self) -> str | None:
        return self.page.last_id

    async def next_page(self) -> AsyncTaskList | None:
        if not self.page.has_more or self.page.last_id is None:
            return None
        return await self._client.list(limit=self.limit, after=self.page.last_id)

    async def pages(self) -> AsyncIterator[AsyncTaskList]:
        page: AsyncTaskList | None = self
        while page is not None:
            yield page
            page = await page.next_page()

    async def __aiter__(self) -> AsyncIterator[Task]:
        async for page in self.pages():
            for task in page.data:  # unasync: yield from page.data
                yield task  # unasync: omit

    def __len__(self) -> int:
        return len(self.page.data)


class AsyncClient:
    """A client of an opendance server (the Seedance task API, plus opendance's extensions).

    `api_key` defaults to `OPENDANCE_KEY`, `base_url` to `OPENDANCE_BASE_URL` (else
    http://127.0.0.1:8000). Rate limits (429) and busy servers (503) are retried up to
    `max_retries` times, waiting what `Retry-After` asks; so are requests that never reached
    the server. Reads are also retried after a timeout; a create is not (it may exist).
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        default_model: str = DEFAULT_MODEL,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.api_key = _base.resolve_api_key(api_key)
        self.base_url = _base.resolve_base_url(base_url)
        self.max_retries = max(0, max_retries)
        self.default_model = default_model
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(timeout=timeout)
        #: Replaced in tests to record waits instead of sleeping.
        self._sleep: Callable[[float], Awaitable[None]] = anyio.sleep

    # ------------------------------------------------------------------ plumbing

    async def close(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        return self.base_url + path

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"User-Agent": _base.USER_AGENT, "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        headers.update(extra or {})
        return headers

    async def _send(
        self,
        build: Callable[[], httpx.Request],
        *,
        retry_after_sending: bool,
        stream: bool = False,
    ) -> httpx.Response:
        """Send with the retry rules; an error status raises its exception."""
        attempt = 0
        while True:
            try:
                response = await self._http.send(build(), stream=stream)
            except httpx.TransportError as error:
                if attempt < self.max_retries and (
                    _base.before_sending(error) or retry_after_sending
                ):
                    await self._sleep(_base.backoff(attempt))
                    attempt += 1
                    continue
                if isinstance(error, httpx.TimeoutException):
                    raise APITimeoutError(f"The request timed out: {error!r}") from error
                raise APIConnectionError(f"Cannot reach {self.base_url}: {error!r}") from error
            if response.is_success or response.status_code == 304:
                return response  # a 304 only answers a conditional read: the caller's copy
            delay = _base.status_delay(response, attempt) if attempt < self.max_retries else None
            if delay is None:
                await response.aread()
                raise error_from_response(response)
            await response.aclose()
            await self._sleep(delay)
            attempt += 1

    async def _json(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        retry_after_sending: bool = True,
    ) -> Any:
        def build() -> httpx.Request:
            return self._http.build_request(
                method, self._url(path), json=json, params=params, headers=self._headers()
            )

        response = await self._send(build, retry_after_sending=retry_after_sending)
        return _decode(response, method, path)

    # ------------------------------------------------------------------ the API

    async def create(
        self,
        prompt: str,
        *,
        model: str | None = None,
        duration: int | None = None,
        quality: str | None = None,
        aspect_ratio: str | None = None,
        image: str | os.PathLike[str] | None = None,
        seed: int | None = None,
        callback_url: str | None = None,
        service_tier: ServiceTier | None = None,
        execution_expires_after: int | None = None,
        extra_body: dict[str, Any] | None = None,
    ) -> Task:
        """Create a task. `image` is the first frame: an http(s) URL, an `upload:` id, or a
        local file (uploaded first). `service_tier="flex"` waits for the default tasks of the
        model, at a lower price; `execution_expires_after` (seconds) is the deadline for it to
        start, else it fails `expired`, refunded (both opendance extensions). Fields left at
        None take the server's defaults."""
        image_url: str | None = None
        if image is not None:
            image_url = str(image) if _base.is_reference(image) else await self.upload(image)
        body = _base.create_body(
            prompt,
            model=model or self.default_model,
            duration=duration,
            quality=quality,
            aspect_ratio=aspect_ratio,
            image_url=image_url,
            seed=seed,
            callback_url=callback_url,
            service_tier=service_tier,
            execution_expires_after=execution_expires_after,
            extra_body=extra_body,
        )
        data = await self._json(
            "POST", "/v1/videos/generations", json=body, retry_after_sending=False
        )
        return Task.model_validate(data)

    async def get(self, task_id: str | Task, *, wait: float | None = None) -> Task:
        """The task now.

        Given a Task from an earlier `get` instead of an id (it keeps the answer's ETag,
        `task.etag`), the read is conditional: while the task is unchanged the server answers
        304 and that same Task comes back. `wait` (seconds, at most 60; an opendance
        extension) long-polls: the server holds the read until the task differs from that copy
        (from what it is now, given an id) or `wait` seconds pass; a finished task answers at
        once.
        """
        path = f"/v1/tasks/{_base.task_id_of(task_id)}"
        known = task_id if isinstance(task_id, Task) else None
        condition = {"If-None-Match": known.etag} if known is not None and known.etag else None
        params = None if wait is None else {"wait": _base.wait_param(wait)}
        timeout = httpx.USE_CLIENT_DEFAULT if wait is None else _base.long_poll_timeout(wait)

        def build() -> httpx.Request:
            return self._http.build_request(
                "GET", self._url(path), params=params, headers=self._headers(condition),
                timeout=timeout,
            )  # fmt: skip

        response = await self._send(build, retry_after_sending=True)
        if response.status_code == 304 and known is not None:
            return known
        current = Task.model_validate(_decode(response, "GET", path))
        current._etag = response.headers.get("etag")
        return current

    async def list(self, *, limit: int = 20, after: str | None = None) -> AsyncTaskList:
        """The key's tasks, newest first: one page, iterable across all of them."""
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params["after"] = after
        page = TaskPage.model_validate(await self._json("GET", "/v1/tasks", params=params))
        return AsyncTaskList(self, page, limit)

    async def cancel(self, task_id: str) -> Task:
        """Cancel a pending or processing task (ConflictError if it already ended)."""
        return Task.model_validate(
            await self._json("POST", f"/v1/tasks/{task_id}/cancel", retry_after_sending=False)
        )

    async def credits(self) -> Credits:
        return Credits.model_validate(await self._json("GET", "/v1/credits"))

    async def upload_file(self, path: str | os.PathLike[str]) -> FileObject:
        """Upload a local image (JPEG, PNG, WebP) for `image_urls`."""
        name, content = await anyio.to_thread.run_sync(_base.read_image, path)

        def build() -> httpx.Request:
            return self._http.build_request(
                "POST",
                self._url("/v1/files"),
                files={"file": (name, content)},
                data={"purpose": "image"},
                headers=self._headers(),
            )

        response = await self._send(build, retry_after_sending=True)
        return FileObject.model_validate(response.json())

    async def upload(self, path: str | os.PathLike[str]) -> str:
        """Upload a local image; returns the reference (`upload:<name>`) for `image_urls`."""
        uploaded = await self.upload_file(path)
        return uploaded.id

    async def events(
        self, task: str | Task, *, timeout: float | None = None
    ) -> AsyncGenerator[Task, None]:
        """The task's live events: one Task per status or progress change, until it ends or
        the connection does. One connection, no retry (`wait` resumes cut streams)."""
        task_id = _base.task_id_of(task)
        request = self._http.build_request(
            "GET",
            self._url(f"/v1/tasks/{task_id}/events"),
            headers=self._headers({"Accept": "text/event-stream", "Cache-Control": "no-cache"}),
            timeout=_base.stream_timeout(timeout),
        )
        try:
            response = await self._http.send(request, stream=True)
        except httpx.TransportError as error:
            raise APIConnectionError(f"Cannot reach {self.base_url}: {error!r}") from error
        try:
            content_type = response.headers.get("content-type", "")
            if response.status_code != 200:
                await response.aread()
                failure = error_from_response(response)
                if _base.stream_unavailable(failure.status or 0, failure.code, content_type):
                    raise StreamUnavailable(str(failure))
                if failure.status in _base.RETRY_STATUSES or (failure.status or 0) >= 500:
                    raise StreamBroken(str(failure))
                raise failure
            if _base.stream_unavailable(200, None, content_type):
                raise StreamUnavailable(f"not an event stream: {content_type}")
            decoder = SSEDecoder()
            async for line in response.aiter_lines():
                event = decoder.feed(line)
                if event is not None and event.event == "task":
                    yield Task.model_validate_json(event.data)
        finally:
            await response.aclose()

    async def _report(self, on_progress: AsyncProgressCallback | None, task: Task) -> None:
        if on_progress is None:
            return
        result = on_progress(task)  # unasync: on_progress(task)
        if inspect.isawaitable(result):  # unasync: omit
            await result  # unasync: omit

    async def wait(
        self,
        task: str | Task,
        *,
        on_progress: AsyncProgressCallback | None = None,
        timeout: float | None = None,
        poll_interval: float = 1.0,
        stream: bool = False,
        wait_period: float = DEFAULT_WAIT_PERIOD,
    ) -> Task:
        """Wait until the task ends; returns it (completed, failed or cancelled).

        Long-polls `GET /v1/tasks/{id}?wait=...` with the last ETag as If-None-Match: one
        request per change of the task, plus one per `wait_period` (at most 60 s) while it
        stays as it is. A server that answers at once anyway (one without `?wait=`) is read
        every `poll_interval` seconds instead. `stream=True` follows the event stream instead
        (resumed when cut; long-polls if the server has none).
        `on_progress(task)` is called once per status, progress or queue position. Past
        `timeout` seconds: WaitTimeoutError (the task goes on).
        """
        if not wait_period > 0:
            raise ValueError(f"wait_period is a number of seconds above 0, not {wait_period}")
        task_id = _base.task_id_of(task)
        deadline = None if timeout is None else time.monotonic() + timeout
        tracker = ProgressTracker(on_progress, task if isinstance(task, Task) else None)
        #: The copy the next long-poll holds against (None: read the task as it is first).
        known = task if isinstance(task, Task) else None
        streaming = stream
        failures = 0

        async def seen(current: Task) -> bool:
            if tracker.changed(current):
                await self._report(on_progress, current)
            return current.done

        def check_deadline() -> float | None:
            left = _base.remaining(deadline)
            if left is not None and left <= 0:
                raise WaitTimeoutError(
                    f"Task {task_id} did not end within {timeout} s.", task=tracker.latest
                )
            return left

        async def pause(seconds: float) -> None:
            left = check_deadline()
            await self._sleep(seconds if left is None else max(0.0, min(seconds, left)))

        while True:
            left = check_deadline()
            if not streaming:
                slow_down = False
                if known is None:
                    current = await self.get(task_id)
                else:
                    hold = _base.wait_period(wait_period, left)
                    started = time.monotonic()
                    current = await self.get(known, wait=hold)
                    slow_down = _base.ignored_wait(current, known, time.monotonic() - started, hold)
                known = current
                if await seen(current):
                    return current
                if slow_down:
                    await pause(poll_interval)
                continue
            got_event = False
            try:
                async with contextlib.aclosing(self.events(task_id, timeout=left)) as events:
                    async for current in events:
                        got_event = True
                        if await seen(current):
                            return current
                        check_deadline()
            except StreamUnavailable:
                streaming = False
            except (StreamBroken, APIConnectionError, httpx.TransportError):
                pass  # cut mid-way, a read timeout, a restart: resume below
            failures = 0 if got_event else failures + 1
            if failures >= _base.MAX_STREAM_FAILURES:
                streaming = False
            # Whatever happened while no stream was open is read now, then the stream resumes.
            check_deadline()
            current = known = await self.get(task_id)
            if await seen(current):
                return current
            if failures:
                await pause(_base.backoff(failures - 1))

    async def download(self, task: str | Task, path: str | os.PathLike[str]) -> Path:
        """Stream the task's video to `path` (written whole or not at all); returns the path."""
        current = (
            task
            if isinstance(task, Task) and task.results
            else await self.get(_base.task_id_of(task))
        )
        url = current.video_url
        if current.status != "completed" or url is None:
            raise TaskNotCompletedError(
                f"Task {current.id} has no video to download (it is {current.status}"
                + (", and its result expired)" if current.status == "completed" else ")")
            )
        target = Path(path).expanduser()
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")

        def build() -> httpx.Request:
            # Signed URL: the API key is not sent (the URL may point at another host).
            return self._http.build_request(
                "GET", self._url(url), headers={"User-Agent": _base.USER_AGENT}
            )

        try:
            response = await self._send(build, retry_after_sending=True, stream=True)
            try:
                async with await anyio.open_file(temp, "wb") as out:
                    async for chunk in response.aiter_bytes(1 << 16):
                        await out.write(chunk)
            finally:
                await response.aclose()
            os.replace(temp, target)
        except httpx.TransportError as error:
            raise APIConnectionError(f"The download of {current.id} broke: {error!r}") from error
        finally:
            temp.unlink(missing_ok=True)
        return target

    async def generate(
        self,
        prompt: str,
        *,
        output: str | os.PathLike[str] | None = None,
        on_progress: AsyncProgressCallback | None = None,
        timeout: float | None = None,
        **create: Any,
    ) -> Task:
        """Create, wait, and (with `output`) download: the whole round trip in one call."""
        task = await self.create(prompt, **create)
        done = await self.wait(task, on_progress=on_progress, timeout=timeout)
        if output is not None and done.status == "completed":
            await self.download(done, output)
        return done


def _decode(response: httpx.Response, method: str, path: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise OpenDanceError(
            f"The server answered {method} {path} with a body that is not JSON.",
            status=response.status_code,
        ) from None
