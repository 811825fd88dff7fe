"""The Python SDK: every method against a live server, error mapping, retries, and
`wait(stream=True)` when the event stream is cut mid-way or missing (the long-poll that `wait`
does by default: test_client_long_poll.py)."""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from opendance.client import (
    APIConnectionError,
    APITimeoutError,
    AsyncClient,
    AuthenticationError,
    Client,
    ConflictError,
    InsufficientCreditsError,
    InvalidRequestError,
    NotFoundError,
    OpenDanceError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    Task,
    TaskNotCompletedError,
    WaitTimeoutError,
)
from opendance.client._base import SSEDecoder, retry_after
from opendance.client._errors import error_class
from tests.helpers.clients import StreamProxy, check_mp4, paced_routes, png_bytes, wire_client_faces
from tests.helpers.servers import LiveServer

ServerFactory = Callable[..., LiveServer]


@pytest.fixture(autouse=True)
def _client_faces(monkeypatch: pytest.MonkeyPatch) -> None:
    wire_client_faces(monkeypatch)


@pytest.fixture
def client(server: LiveServer) -> Iterator[Client]:
    with Client(server.new_key(credits=1000), base_url=server.base_url) as sdk:
        yield sdk


def fast(**extra: Any) -> dict[str, Any]:
    return {"duration": 2, "quality": "480p", **extra}


# ---------------------------------------------------------------------------------------------
# Every method, sync


def test_create_wait_download_round_trip(client: Client, tmp_path: Path) -> None:
    task = client.create("A cat playing piano", **fast(aspect_ratio="16:9", seed=7))
    assert isinstance(task, Task)
    assert task.id.startswith("task-unified-")
    assert task.status == "pending" and task.progress == 0
    assert task.usage is not None and task.usage.credits_reserved == 2  # 0.6 x 2 s, rounded up
    assert task.task_info.video_duration == 2

    seen: list[tuple[str, int]] = []
    done = client.wait(task, on_progress=lambda t: seen.append((t.status, t.progress)))
    assert done.status == "completed" and done.progress == 100 and done.done
    assert done.video_url and done.video_url.endswith(".mp4")
    assert done.task_info.resolution == "864x480"
    assert seen[-1] == ("completed", 100)
    assert len(seen) == len(set(seen)), "each state is reported once"
    progress = [p for _, p in seen]
    assert progress == sorted(progress)

    saved = client.download(done.id, tmp_path / "out" / "cat.mp4")
    assert saved == tmp_path / "out" / "cat.mp4"
    check_mp4(saved, width=864, height=480, frames=48)
    assert not list(saved.parent.glob(".*.part")), "no temporary file left behind"
    again = client.download(done, tmp_path / "again.mp4")  # a Task works as well as an id
    assert again.read_bytes() == saved.read_bytes()

    fetched = client.get(done.id)
    assert fetched.status == "completed" and fetched.results == done.results


def test_list_pages_through_every_task(idle_server: LiveServer) -> None:
    key = idle_server.new_key()
    with Client(key, base_url=idle_server.base_url) as sdk:
        created = [sdk.create(f"scene {i}", **fast()).id for i in range(5)]
        first = sdk.list(limit=2)
        assert [t.id for t in first.data] == created[::-1][:2]
        assert first.has_more and first.last_id == created[3]
        assert [t.id for t in first] == created[::-1]  # iteration fetches the later pages
        pages = list(first.pages())
        assert [len(page) for page in pages] == [2, 2, 1]
        assert not pages[-1].has_more and pages[-1].next_page() is None
        after = sdk.list(limit=10, after=created[2])
        assert [t.id for t in after.data] == [created[1], created[0]]


def test_cancel_and_conflict(idle_server: LiveServer) -> None:
    with Client(idle_server.new_key(), base_url=idle_server.base_url) as sdk:
        task = sdk.create("a quiet lake", **fast())
        before = sdk.credits().balance
        cancelled = sdk.cancel(task.id)
        assert cancelled.status == "cancelled" and cancelled.task_info.can_cancel is False
        assert sdk.credits().balance == before + 2  # refunded
        with pytest.raises(ConflictError) as caught:
            sdk.cancel(task.id)
        assert caught.value.status == 409 and caught.value.code == "task_not_cancellable"
        with pytest.raises(TaskNotCompletedError):
            sdk.download(task.id, "never.mp4")


def test_credits_follow_the_ledger(client: Client) -> None:
    credits = client.credits()
    assert credits.balance == 1000 and credits.group == "default"
    task = client.create("a red fox in snow", **fast(duration=5))  # 0.6 x 5 = 3 credits
    assert client.credits().balance == 997
    client.wait(task)
    assert client.credits().balance == 997  # settled: the reservation is the price


def test_upload_returns_a_reference(client: Client, server: LiveServer, tmp_path: Path) -> None:
    image = tmp_path / "frame.png"
    image.write_bytes(png_bytes())
    reference = client.upload(image)
    assert reference.startswith("upload:") and reference.endswith(".png")
    stored = server.runtime.settings.data_dir / "uploads" / reference.removeprefix("upload:")
    assert stored.read_bytes() == image.read_bytes()
    info = client.upload_file(image)
    assert info.object == "file" and info.bytes == image.stat().st_size
    assert info.purpose == "image" and info.filename == "frame.png"

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image at all")
    with pytest.raises(InvalidRequestError) as caught:
        client.upload(broken)
    assert caught.value.status == 400 and caught.value.param == "file"
    with pytest.raises(OpenDanceError, match="Cannot read the image"):
        client.upload(tmp_path / "missing.png")


def test_generate_does_it_all(client: Client, tmp_path: Path) -> None:
    progress: list[int] = []
    task = client.generate(
        "a paper boat on a river",
        output=tmp_path / "boat.mp4",
        on_progress=lambda t: progress.append(t.progress),
        **fast(),
    )
    assert task.status == "completed" and progress[-1] == 100
    check_mp4(tmp_path / "boat.mp4", width=864, height=480, frames=48)


# ---------------------------------------------------------------------------------------------
# Errors


def test_errors_map_to_classes(server: LiveServer) -> None:
    with Client("od_bad_key", base_url=server.base_url) as bad:
        with pytest.raises(AuthenticationError) as auth:
            bad.get("task-unified-1-abcdefgh")
        assert auth.value.status == 401 and auth.value.code == "invalid_api_key"
        assert auth.value.type == "authentication_error"
    with Client(server.new_key(credits=0), base_url=server.base_url) as poor:
        with pytest.raises(InsufficientCreditsError) as money:
            poor.create("a lighthouse", **fast())
        assert money.value.status == 402 and money.value.code == "insufficient_credits"
        assert poor.list().data == [], "nothing was created"
    other = server.new_key()
    with Client(server.new_key(), base_url=server.base_url) as sdk:
        with pytest.raises(NotFoundError) as missing:
            sdk.get("task-unified-1-abcdefgh")
        assert missing.value.code == "task_not_found" and missing.value.param == "task_id"
        with Client(other, base_url=server.base_url) as stranger:
            foreign = stranger.create("someone else's", **fast())
        with pytest.raises(NotFoundError):
            sdk.get(foreign.id)
        with pytest.raises(InvalidRequestError) as invalid:
            sdk.create("too long", duration=30)
        assert invalid.value.param == "duration" and "duration" in invalid.value.message
        with pytest.raises(InvalidRequestError) as model:
            sdk.create("who", model="no-such-model")
        assert model.value.code == "unknown_model"
        assert "HTTP 400" in str(model.value)


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, InvalidRequestError),
        (401, AuthenticationError),
        (402, InsufficientCreditsError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (409, ConflictError),
        (410, NotFoundError),
        (413, InvalidRequestError),
        (429, RateLimitError),
        (500, ServerError),
        (503, ServerError),
    ],
)
def test_status_classes(status: int, cls: type[Exception]) -> None:
    assert error_class(status) is cls
    body = {"error": {"code": "c", "message": "m", "param": "p", "type": "t"}}
    sdk = Client("k", base_url="http://test", max_retries=0, http_client=mock(status, body))
    with sdk, pytest.raises(cls) as caught:
        sdk.get("x")
    error = caught.value
    assert isinstance(error, OpenDanceError)
    assert (error.status, error.code, error.param, error.type) == (status, "c", "p", "t")


def test_an_error_without_the_json_shape() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(502, text="<html>bad</html>"))
    with Client("k", base_url="http://test", max_retries=0, http_client=httpx.Client(
        transport=transport
    )) as sdk, pytest.raises(ServerError) as caught:  # fmt: skip
        sdk.get("x")
    assert caught.value.status == 502 and caught.value.code is None


# ---------------------------------------------------------------------------------------------
# Retries


def mock(status: int, body: Any, headers: dict[str, str] | None = None) -> httpx.Client:
    return httpx.Client(
        transport=httpx.MockTransport(
            lambda request: httpx.Response(status, json=body, headers=headers)
        )
    )


class Script:
    """A mock transport answering from a list (an exception is raised instead of answered)."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def client(self, **options: Any) -> tuple[Client, list[float]]:
        sdk = Client(
            "od_test", base_url="http://test", http_client=httpx.Client(
                transport=httpx.MockTransport(self)), **options
        )  # fmt: skip
        sleeps: list[float] = []
        sdk._sleep = sleeps.append
        return sdk, sleeps


TASK = {"id": "task-unified-1-aaaaaaaa", "status": "pending", "progress": 0, "created": 1}
BUSY = {"error": {"code": "server_busy", "message": "busy"}}


def test_retry_after_is_honoured_on_429_and_503() -> None:
    script = Script(
        httpx.Response(429, json=BUSY, headers={"Retry-After": "2"}),
        httpx.Response(503, json=BUSY, headers={"Retry-After": "1.5"}),
        httpx.Response(200, json=TASK),
    )
    sdk, sleeps = script.client(max_retries=2)
    assert sdk.create("x").id == TASK["id"]  # a create is retried: the server took no work
    assert sleeps == [2.0, 1.5]
    assert len(script.requests) == 3


def test_retries_are_bounded() -> None:
    script = Script(*(httpx.Response(429, json=BUSY) for _ in range(4)))
    sdk, sleeps = script.client(max_retries=3)
    with pytest.raises(RateLimitError):
        sdk.get("x")
    assert len(script.requests) == 4 and len(sleeps) == 3
    assert all(0 < s <= 8 for s in sleeps) and sleeps[2] > sleeps[0]  # backoff grows


def test_a_long_retry_after_is_not_waited_for() -> None:
    script = Script(httpx.Response(503, json=BUSY, headers={"Retry-After": "3600"}))
    sdk, sleeps = script.client()
    with pytest.raises(ServerError) as caught:
        sdk.get("x")
    assert caught.value.status == 503 and sleeps == []
    assert caught.value.headers["retry-after"] == "3600"


def test_other_errors_are_not_retried() -> None:
    script = Script(httpx.Response(500, json={"error": {"code": "internal_error"}}))
    sdk, sleeps = script.client()
    with pytest.raises(ServerError):
        sdk.get("x")
    assert len(script.requests) == 1 and sleeps == []


def test_retry_after_as_a_date() -> None:
    later = email.utils.format_datetime(email.utils.localtime().astimezone().replace(microsecond=0))
    assert retry_after(httpx.Response(429, headers={"Retry-After": later})) == pytest.approx(
        0, abs=1.5
    )
    soon = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert retry_after(httpx.Response(429, headers={"Retry-After": soon})) == pytest.approx(
        30, abs=1.5
    )
    assert retry_after(httpx.Response(429, headers={"retry-after-ms": "250"})) == 0.25
    assert retry_after(httpx.Response(429, headers={"Retry-After": "soon"})) is None


def test_a_create_that_timed_out_after_sending_is_not_retried() -> None:
    script = Script(httpx.ReadTimeout("slow"), httpx.Response(200, json=TASK))
    sdk, _ = script.client()
    with pytest.raises(APITimeoutError):
        sdk.create("x")
    assert len(script.requests) == 1, "the task may exist: never sent twice"


def test_a_cancel_that_broke_after_sending_is_not_retried() -> None:
    script = Script(httpx.RemoteProtocolError("gone"), httpx.Response(200, json=TASK))
    sdk, _ = script.client()
    with pytest.raises(APIConnectionError):
        sdk.cancel("x")
    assert len(script.requests) == 1


def test_a_create_that_never_connected_is_retried() -> None:
    script = Script(httpx.ConnectError("refused"), httpx.Response(200, json=TASK))
    sdk, sleeps = script.client()
    assert sdk.create("x").id == TASK["id"]
    assert len(script.requests) == 2 and len(sleeps) == 1


def test_reads_are_retried_after_a_timeout() -> None:
    script = Script(httpx.ReadTimeout("slow"), httpx.Response(200, json=TASK))
    sdk, _ = script.client()
    assert sdk.get("x").status == "pending"
    assert len(script.requests) == 2


def test_an_unreachable_server() -> None:
    from tests.helpers.servers import free_port

    with Client("k", base_url=f"http://127.0.0.1:{free_port()}", max_retries=1) as sdk:
        sdk._sleep = lambda _s: None
        with pytest.raises(APIConnectionError, match="Cannot reach"):
            sdk.get("x")


def test_the_key_is_sent_to_the_api_but_not_with_downloads(tmp_path: Path) -> None:
    done = {**TASK, "status": "completed", "progress": 100,
            "results": ["https://cdn.example/v1/files/9/sig/t.mp4"]}  # fmt: skip
    script = Script(httpx.Response(200, json=done), httpx.Response(200, content=b"mp4 bytes"))
    sdk, _ = script.client()
    path = sdk.download("t", tmp_path / "t.mp4")
    assert path.read_bytes() == b"mp4 bytes"
    api, download = script.requests
    assert api.headers["authorization"] == "Bearer od_test"
    assert str(download.url) == done["results"][0]
    assert "authorization" not in download.headers


def test_configuration_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENDANCE_BASE_URL", "http://example.test:9000/v1/")
    monkeypatch.setenv("OPENDANCE_KEY", "od_from_env")
    with Client() as sdk:
        assert sdk.base_url == "http://example.test:9000"
        assert sdk.api_key == "od_from_env"
    with Client("od_arg", base_url="http://other:1") as sdk:
        assert (sdk.base_url, sdk.api_key) == ("http://other:1", "od_arg")
    monkeypatch.delenv("OPENDANCE_BASE_URL")
    with Client() as sdk:
        assert sdk.base_url == "http://127.0.0.1:8000"


def test_sse_decoder() -> None:
    decoder = SSEDecoder()
    lines = [
        "retry: 2000",
        "",
        ": keep-alive",
        "",
        "event: task",
        'data: {"a":',
        "data: 1}",
        "id: 7",
        "",
        "data:plain",
        "",
    ]
    events = [event for line in lines if (event := decoder.feed(line)) is not None]
    assert [(e.event, e.data) for e in events] == [("task", '{"a":\n1}'), ("message", "plain")]
    assert events[0].id == "7" and events[0].retry == 2000


# ---------------------------------------------------------------------------------------------
# wait: live stream (stream=True), cut stream, missing stream, timeout


def test_wait_resumes_a_stream_cut_mid_way(server_factory: ServerFactory) -> None:
    server = server_factory(routes=paced_routes(0.3))
    proxy = StreamProxy(server.base_url, cuts=2)
    try:
        with Client(server.new_key(), base_url=proxy.url) as sdk:
            task = sdk.create("a slow sunrise", **fast())
            seen: list[Task] = []
            done = sdk.wait(task, on_progress=seen.append, timeout=60, stream=True)
    finally:
        proxy.close()
    assert done.status == "completed"
    assert proxy.cut_done == 2, "two streams were cut after their first event"
    assert proxy.stream_requests >= 3, "and the stream was resumed, not given up for polling"
    progress = [t.progress for t in seen]
    assert progress == sorted(progress) and progress[-1] == 100
    assert any(0 < p < 100 for p in progress), "progress was seen in between"
    assert len({(t.status, t.progress) for t in seen}) == len(seen)


def test_wait_long_polls_when_the_server_has_no_stream(server_factory: ServerFactory) -> None:
    server = server_factory(routes=paced_routes(0.2))
    proxy = StreamProxy(server.base_url, missing=True)
    reads: list[httpx.Request] = []
    http = httpx.Client(event_hooks={"request": [reads.append]})
    try:
        with Client(server.new_key(), base_url=proxy.url, http_client=http) as sdk:
            task = sdk.create("a windmill", **fast())
            seen: list[str] = []
            done = sdk.wait(task, on_progress=lambda t: seen.append(t.status), stream=True)
    finally:
        proxy.close()
        http.close()
    assert done.status == "completed" and seen[-1] == "completed"
    assert proxy.stream_requests == 1, "after a 404 for the route, no stream again"
    polls = [r for r in reads if r.url.path == f"/v1/tasks/{task.id}" and "wait" in r.url.params]
    assert polls, "it long-polls instead"
    assert all(r.headers.get("if-none-match") for r in polls), "with the last ETag"


def test_wait_times_out(idle_server: LiveServer) -> None:
    with Client(idle_server.new_key(), base_url=idle_server.base_url) as sdk:
        task = sdk.create("never starts", **fast())
        started = time.monotonic()
        with pytest.raises(WaitTimeoutError) as caught:
            sdk.wait(task, timeout=1.0)
        assert 0.9 <= time.monotonic() - started < 5
        assert isinstance(caught.value, TimeoutError)
        assert caught.value.task is not None and caught.value.task.status == "pending"
        with pytest.raises(NotFoundError):
            sdk.wait("task-unified-1-zzzzzzzz", timeout=5)


def test_wait_on_a_failed_task_returns_it(server_factory: ServerFactory) -> None:
    """A failed task is an answer, not an exception: its error is in the task."""
    server = server_factory(allow_loopback_for_tests=True)
    key = server.new_key()
    with Client(key, base_url=server.base_url) as sdk:
        task = sdk.create("a bad frame", image="http://127.0.0.1:9/none.png", **fast())
        done = sdk.wait(task, timeout=60)
    assert done.status == "failed" and done.error is not None
    assert done.error.code is not None and done.error.code.startswith("image_")


# ---------------------------------------------------------------------------------------------
# AsyncClient


def test_async_client_round_trip(server_factory: ServerFactory, tmp_path: Path) -> None:
    server = server_factory(routes=paced_routes(0.1))
    key = server.new_key(credits=100)
    image = tmp_path / "frame.png"
    image.write_bytes(png_bytes())

    async def scenario() -> None:
        async with AsyncClient(key, base_url=server.base_url) as sdk:
            assert (await sdk.credits()).balance == 100
            reference = await sdk.upload(image)
            assert reference.startswith("upload:")
            task = await sdk.create("an async cat", **fast())
            seen: list[int] = []

            async def report(t: Task) -> None:
                seen.append(t.progress)

            done = await sdk.wait(task.id, on_progress=report, timeout=60)
            assert done.status == "completed" and seen[-1] == 100 and seen == sorted(seen)
            assert (await sdk.get(task.id)).results == done.results
            path = await sdk.download(done, tmp_path / "async.mp4")
            check_mp4(path, width=864, height=480, frames=48)

            second = await sdk.create("to be cancelled", **fast(duration=12, quality="1080p"))
            cancelled = await sdk.cancel(second.id)
            assert cancelled.status == "cancelled"
            with pytest.raises(ConflictError):
                await sdk.cancel(second.id)

            page = await sdk.list(limit=1)
            assert [t.id for t in page.data] == [second.id] and page.has_more
            everything = [t.id async for t in page]
            assert everything == [second.id, task.id]
            assert [len(p) async for p in page.pages()] == [1, 1]

            with pytest.raises(NotFoundError):
                await sdk.get("task-unified-1-zzzzzzzz")
            async with AsyncClient("od_bad", base_url=server.base_url) as bad:
                with pytest.raises(AuthenticationError):
                    await bad.credits()

            generated = await sdk.generate("one call", output=tmp_path / "gen.mp4", **fast())
            assert generated.status == "completed" and (tmp_path / "gen.mp4").stat().st_size

    asyncio.run(scenario())


def test_async_wait_resumes_a_cut_stream(server_factory: ServerFactory) -> None:
    server = server_factory(routes=paced_routes(0.3))
    proxy = StreamProxy(server.base_url, cuts=1)
    key = server.new_key()

    async def scenario() -> list[int]:
        async with AsyncClient(key, base_url=proxy.url) as sdk:
            task = await sdk.create("an async sunrise", **fast())
            seen: list[int] = []
            done = await sdk.wait(task, on_progress=lambda t: seen.append(t.progress), stream=True)
            assert done.status == "completed"
            return seen

    try:
        seen = asyncio.run(scenario())
    finally:
        proxy.close()
    assert proxy.cut_done == 1 and proxy.stream_requests >= 2
    assert seen == sorted(seen) and seen[-1] == 100


def test_async_retries_honour_retry_after() -> None:
    script = Script(
        httpx.Response(429, json=BUSY, headers={"Retry-After": "0.5"}),
        httpx.ReadTimeout("slow"),
    )

    async def scenario() -> tuple[list[float], int]:
        sleeps: list[float] = []

        async def record(seconds: float) -> None:
            sleeps.append(seconds)

        http = httpx.AsyncClient(transport=httpx.MockTransport(script))
        async with AsyncClient("k", base_url="http://test", http_client=http) as sdk:
            sdk._sleep = record
            with pytest.raises(APITimeoutError):
                await sdk.create("x")
        await http.aclose()
        return sleeps, len(script.requests)

    sleeps, requests = asyncio.run(scenario())
    assert sleeps == [0.5] and requests == 2, "429 retried, the timeout after sending not"


def test_task_model_keeps_unknown_fields() -> None:
    task = Task.model_validate({**TASK, "new_field": {"x": 1}, "task_info": {"eta2": 3}})
    assert task.model_extra == {"new_field": {"x": 1}}
    assert json.loads(task.model_dump_json())["new_field"] == {"x": 1}
    assert not task.done and task.video_url is None
