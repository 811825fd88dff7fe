"""`wait` long-polls: one request per change of the task, plus one per wait period while it
stays as it is, counted at the SDK's transport against live servers; the conditional `get`
(304), the pacing for servers that do not hold reads, and the scheduling fields of `create`."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from opendance.client import (
    AsyncClient,
    Client,
    InvalidRequestError,
    Task,
    WaitTimeoutError,
)
from opendance.client._base import MAX_WAIT_PERIOD
from tests.helpers.clients import paced_routes, wire_client_faces
from tests.helpers.servers import LiveServer

ServerFactory = Callable[..., LiveServer]
FAST = {"duration": 2, "quality": "480p"}


@pytest.fixture(autouse=True)
def _client_faces(monkeypatch: pytest.MonkeyPatch) -> None:
    wire_client_faces(monkeypatch)


@dataclass
class Exchange:
    """One request the SDK sent, as its transport saw it."""

    request: httpx.Request
    status: int
    etag: str | None
    seconds: float

    @property
    def path(self) -> str:
        return self.request.url.path

    @property
    def wait(self) -> float | None:
        value = self.request.url.params.get("wait")
        return None if value is None else float(value)

    @property
    def sent_etag(self) -> str | None:
        return self.request.headers.get("if-none-match")

    @property
    def held(self) -> bool:
        """Answered at the end of its wait period (not because the task changed)."""
        return self.wait is not None and self.seconds >= self.wait * 0.9


class Recording(httpx.BaseTransport):
    """A real HTTP transport that records every exchange."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.exchanges: list[Exchange] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        started = time.monotonic()
        response = self.inner.handle_request(request)
        self.exchanges.append(
            Exchange(
                request, response.status_code, response.headers.get("etag"),
                time.monotonic() - started,
            )
        )  # fmt: skip
        return response

    def close(self) -> None:
        self.inner.close()

    def reads(self, task_id: str) -> list[Exchange]:
        return [e for e in self.exchanges if e.path == f"/v1/tasks/{task_id}"]


class AsyncRecording(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.exchanges: list[Exchange] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        started = time.monotonic()
        response = await self.inner.handle_async_request(request)
        self.exchanges.append(
            Exchange(
                request, response.status_code, response.headers.get("etag"),
                time.monotonic() - started,
            )
        )  # fmt: skip
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
def recording() -> Iterator[Recording]:
    transport = Recording()
    yield transport
    transport.close()


def sdk_for(server: LiveServer, transport: Recording, key: str | None = None) -> Client:
    http = httpx.Client(transport=transport, timeout=30)
    return Client(key or server.new_key(), base_url=server.base_url, http_client=http)


def account(reads: list[Exchange]) -> tuple[int, int]:
    """(changes, periods): each read either ended a wait period or, before that, brought a
    new version of the task (an ETag not seen before); a read that did neither fails the
    test."""
    changes = periods = 0
    seen: set[str] = set()
    for read in reads:
        new = read.status == 200 and read.etag is not None and read.etag not in seen
        if read.etag:
            seen.add(read.etag)
        if read.held:
            periods += 1
        elif new:
            changes += 1
        else:
            raise AssertionError(f"a wasted read: {read}")
    return changes, periods


# ---------------------------------------------------------------------------------------------
# Live servers


def test_wait_asks_once_per_change(server_factory: ServerFactory, recording: Recording) -> None:
    server = server_factory(routes=paced_routes(0.3))
    with sdk_for(server, recording) as sdk:
        task = sdk.create("a slow sunrise", **FAST)
        seen: list[Task] = []
        done = sdk.wait(task, on_progress=seen.append, timeout=60)
    assert done.status == "completed" and seen[-1] == done
    assert [t.progress for t in seen] == sorted(t.progress for t in seen)
    assert any(0 < t.progress < 100 for t in seen), "progress was seen in between"
    assert not [e for e in recording.exchanges if e.path.endswith("/events")], "no stream"

    reads = recording.reads(task.id)
    assert all(read.wait == 30 for read in reads), "every read is a long-poll of 30 s"
    # Each one names the version the one before brought (the first: none, it has the create).
    assert [read.sent_etag for read in reads] == [None, *(read.etag for read in reads[:-1])]
    changes, periods = account(reads)
    assert (changes, periods) == (len(reads), 0), "steps 0.3 s apart: each read is a change"
    assert len(reads) >= len(seen)


def test_a_quiet_task_costs_one_read_per_wait_period(
    idle_server: LiveServer, recording: Recording
) -> None:
    with sdk_for(idle_server, recording) as sdk:
        task = sdk.create("never starts", **FAST)
        started = time.monotonic()
        with pytest.raises(WaitTimeoutError) as caught:
            sdk.wait(task, wait_period=0.5, timeout=2.2)
        spent = time.monotonic() - started
    assert 2.2 <= spent < 3.5, "the timeout is kept: no hold goes past it"
    assert caught.value.task is not None and caught.value.task.status == "pending"
    reads = recording.reads(task.id)
    changes, periods = account(reads)
    assert periods >= 3 and len(reads) <= changes + math.ceil(2.2 / 0.5)
    assert [read.status for read in reads[1:]].count(304) >= 3, "unchanged: 304, no body"
    assert all(read.wait is not None and read.wait <= 0.5 for read in reads)
    assert reads[-1].wait is not None and reads[-1].wait < 0.5, "the last hold is what is left"
    assert all(read.sent_etag for read in reads[1:]), "after the first, every read names one"


def test_get_is_conditional_given_a_task(idle_server: LiveServer, recording: Recording) -> None:
    key = idle_server.new_key()
    with sdk_for(idle_server, recording, key) as sdk:
        task_id = sdk.create("a quiet lake", **FAST).id
        first = sdk.get(task_id)
        assert first.etag is not None and first.etag == recording.exchanges[-1].etag
        assert sdk.get(first) is first, "304: the copy held is current"
        assert recording.exchanges[-1].status == 304
        assert recording.exchanges[-1].sent_etag == first.etag

        started = time.monotonic()
        assert sdk.get(first, wait=0.5) is first
        assert time.monotonic() - started >= 0.45, "held for the wait"

        started = time.monotonic()
        plain = sdk.get(task_id, wait=0.3)  # no copy named: held, then the task as it is
        assert time.monotonic() - started >= 0.25
        assert plain == first and plain is not first and plain.etag == first.etag

        canceller = threading.Timer(0.3, lambda: idle_server.client.post(
            f"/v1/tasks/{task_id}/cancel", headers=idle_server.auth(key)))  # fmt: skip
        canceller.start()
        started = time.monotonic()
        changed = sdk.get(first, wait=20)
        canceller.join()
        assert changed.status == "cancelled" and time.monotonic() - started < 5
        assert changed.etag not in (None, first.etag) and changed != first

        with pytest.raises(InvalidRequestError) as caught:
            sdk.get(task_id, wait=MAX_WAIT_PERIOD + 1)
        assert caught.value.param == "wait"


def test_async_wait_long_polls(server_factory: ServerFactory) -> None:
    server = server_factory(routes=paced_routes(0.2))
    key = server.new_key()
    transport = AsyncRecording()

    async def scenario() -> tuple[str, list[int]]:
        http = httpx.AsyncClient(transport=transport, timeout=30)
        async with AsyncClient(key, base_url=server.base_url, http_client=http) as sdk:
            task = await sdk.create("an async sunrise", **FAST)
            seen: list[int] = []

            async def report(current: Task) -> None:
                seen.append(current.progress)

            done = await sdk.wait(task.id, on_progress=report, timeout=60)
            assert done.status == "completed"
            assert await sdk.get(done) is done  # a finished task: 304 from then on
        await http.aclose()
        return task.id, seen

    task_id, seen = asyncio.run(scenario())
    assert seen == sorted(seen) and seen[-1] == 100
    reads = [e for e in transport.exchanges if e.path == f"/v1/tasks/{task_id}"]
    assert reads[0].wait is None, "given an id, the first read is the task as it is"
    assert all(read.wait == 30 for read in reads[1:-1])
    assert reads[-1].status == 304
    changes, periods = account(reads[:-1])
    assert (changes, periods) == (len(reads) - 1, 0)


def test_create_takes_a_tier_and_a_deadline(idle_server: LiveServer) -> None:
    with Client(idle_server.new_key(), base_url=idle_server.base_url) as sdk:
        flex = sdk.create("offline work", service_tier="flex", execution_expires_after=3600, **FAST)
        assert flex.task_info.service_tier == "flex"
        assert flex.task_info.execution_expires_after == 3600
        first = sdk.create("urgent", **FAST)
        second = sdk.create("urgent too", service_tier="default", **FAST)
        assert first.task_info.service_tier == "default"
        assert (first.task_info.queue_position, second.task_info.queue_position) == (0, 1)
        assert sdk.get(flex).task_info.queue_position == 2, "flex starts after the default ones"
        with pytest.raises(InvalidRequestError) as tier:
            sdk.create("x", service_tier="turbo", **FAST)  # type: ignore[arg-type]
        assert tier.value.param == "service_tier"
        with pytest.raises(InvalidRequestError) as deadline:
            sdk.create("x", execution_expires_after=5, **FAST)
        assert deadline.value.param == "execution_expires_after"


# ---------------------------------------------------------------------------------------------
# Servers that do not hold reads (scripted)


PENDING = {"id": "task-unified-1-aaaaaaaa", "status": "pending", "progress": 0, "created": 1}


def at(status: str, progress: int) -> dict[str, Any]:
    return {**PENDING, "status": status, "progress": progress}


class Script:
    """Answers from a list at once, recording the requests."""

    def __init__(self, *answers: httpx.Response) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answers.pop(0)

    def client(self) -> tuple[Client, list[float]]:
        http = httpx.Client(transport=httpx.MockTransport(self))
        sdk = Client("od_test", base_url="http://test", http_client=http)
        sleeps: list[float] = []
        sdk._sleep = sleeps.append
        return sdk, sleeps


def test_an_older_server_is_read_every_poll_interval() -> None:
    """No ETag and answered at once: `?wait=` was ignored, so `wait` paces itself."""
    script = Script(
        httpx.Response(200, json=at("pending", 0)),
        httpx.Response(200, json=at("pending", 0)),
        httpx.Response(200, json=at("processing", 40)),
        httpx.Response(200, json=at("completed", 100)),
    )
    sdk, sleeps = script.client()
    seen: list[str] = []
    done = sdk.wait(PENDING["id"], on_progress=lambda t: seen.append(t.status), poll_interval=0.7)
    assert done.status == "completed"
    # The first read is the task as it is; each long-poll answered at once then waits.
    assert sleeps == [0.7, 0.7], "a pause after each early answer, none after the last"
    assert seen == ["pending", "processing", "completed"]
    assert all("if-none-match" not in r.headers for r in script.requests)


def test_a_server_that_answers_304_at_once_is_not_hammered() -> None:
    tag = '"v1"'
    script = Script(
        httpx.Response(200, json=at("processing", 10), headers={"ETag": tag}),
        httpx.Response(304, headers={"ETag": tag}),
        httpx.Response(304, headers={"ETag": tag}),
        httpx.Response(200, json=at("processing", 60), headers={"ETag": '"v2"'}),
        httpx.Response(200, json=at("completed", 100), headers={"ETag": '"v3"'}),
    )
    sdk, sleeps = script.client()
    done = sdk.wait(PENDING["id"], poll_interval=0.4)
    assert done.status == "completed"
    assert sleeps == [0.4, 0.4], "after each early 304; a change is asked after at once"
    assert [r.headers.get("if-none-match") for r in script.requests] == [
        None, tag, tag, tag, '"v2"',
    ]  # fmt: skip


def test_the_wait_period_is_capped_and_the_read_timeout_outlasts_it() -> None:
    script = Script(
        httpx.Response(200, json=at("processing", 6), headers={"ETag": '"v1"'}),
        httpx.Response(200, json=at("completed", 100), headers={"ETag": '"v2"'}),
    )
    sdk, sleeps = script.client()
    held = Task.model_validate(at("processing", 5))  # from a create: no ETag
    sdk.wait(held, wait_period=600, timeout=3600)
    first, second = script.requests
    assert first.url.params["wait"] == "60" and "if-none-match" not in first.headers
    assert first.extensions["timeout"]["read"] > 60
    assert second.url.params["wait"] == "60" and second.headers["if-none-match"] == '"v1"'
    assert sleeps == [], "changes are asked after at once"

    script = Script(httpx.Response(200, json=at("completed", 100), headers={"ETag": '"v2"'}))
    sdk, _ = script.client()
    sdk.wait(held, timeout=5)
    (only,) = script.requests
    assert 4 < float(only.url.params["wait"]) <= 5, "never past the timeout"
    assert only.extensions["timeout"]["read"] > float(only.url.params["wait"])
    with pytest.raises(ValueError, match="wait_period"):
        sdk.wait(held, wait_period=0)


def test_the_etag_is_not_part_of_the_task() -> None:
    script = Script(httpx.Response(200, json=PENDING, headers={"ETag": '"v1"'}))
    sdk, _ = script.client()
    read = sdk.get(PENDING["id"])
    assert read.etag == '"v1"'
    plain = Task.model_validate(PENDING)
    assert plain.etag is None and plain == read, "equal fields, equal tasks"
    assert "etag" not in read.model_dump() and "_etag" not in read.model_dump_json()
