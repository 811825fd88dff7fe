"""The SSE stream `GET /v1/tasks/{id}/events`, the upload route, credits and the playground's
static files, over HTTP against live servers."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from opendance.faces.seedance import events
from opendance.runtime import build_runtime
from opendance.settings import DEFAULT_MODEL
from opendance.tasks.models import Failed
from tests.helpers.clients import noise_png, paced_routes, png_bytes, wire_client_faces
from tests.helpers.servers import LiveServer

ServerFactory = Callable[..., LiveServer]


@pytest.fixture(autouse=True)
def _client_faces(monkeypatch: pytest.MonkeyPatch) -> None:
    wire_client_faces(monkeypatch)


def read_events(
    server: LiveServer, key: str, task_id: str, *, limit_s: float = 60
) -> Iterator[tuple[float, str, Any]]:
    """(seconds since start, event name or ':' for a comment, parsed data) until the stream
    ends."""
    started = time.monotonic()
    with server.client.stream(
        "GET", f"/v1/tasks/{task_id}/events", headers=server.auth(key), timeout=limit_s
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"].startswith("no-cache")
        name, data = "message", []
        for line in response.iter_lines():
            if line.startswith(":"):
                yield time.monotonic() - started, ":", line
            elif line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data.append(line[len("data: ") :])
            elif line == "" and data:
                yield time.monotonic() - started, name, json.loads("\n".join(data))
                name, data = "message", []


def test_stream_follows_a_task_to_its_end(server_factory: ServerFactory) -> None:
    server = server_factory(routes=paced_routes(0.25))
    key = server.new_key()
    task = server.create(key, duration=2, quality="480p").json()
    got = [(name, body) for _, name, body in read_events(server, key, task["id"])]
    names = {name for name, _ in got}
    assert names == {"task"}
    tasks = [body for _, body in got]
    states = [(t["status"], t["progress"]) for t in tasks]
    assert states[0] in (("pending", 0), ("processing", 0))
    assert len([1 for status, p in states if status == "processing" and 0 < p < 100]) >= 3
    assert states[-1] == ("completed", 100), "the last event is the end, then the stream closes"
    assert len(states) == len(set(states)), "one event per change"
    assert [p for _, p in states] == sorted(p for _, p in states)
    last = tasks[-1]
    assert last["results"] and last == server.get(key, task["id"]).json()


def test_changes_in_this_process_arrive_at_once(
    server_factory: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With polling slowed to a crawl, only the in-process listener can deliver each step."""
    monkeypatch.setattr(events, "POLL_SECONDS", 30.0)
    server = server_factory(routes=paced_routes(0.4))
    key = server.new_key()
    task = server.create(key, duration=2, quality="480p").json()
    started = time.monotonic()
    got = list(read_events(server, key, task["id"]))
    assert time.monotonic() - started < 10
    progress = [body["progress"] for _, name, body in got if name == "task"]
    assert len({p for p in progress if 0 < p < 100}) >= 3 and progress[-1] == 100


def test_changes_made_by_another_process_arrive_by_polling(
    server_factory: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second runtime on the same database stands for a worker process: its changes fire no
    listener of the server, and still reach the stream within the polling interval."""
    monkeypatch.setattr(events, "POLL_SECONDS", 0.1)
    server = server_factory(workers=0)
    key = server.new_key()
    task_id = server.create(key, duration=2, quality="480p").json()["id"]
    other = build_runtime(server.runtime.settings)
    received: list[tuple[float, dict[str, Any]]] = []

    def listen() -> None:
        for at, name, body in read_events(server, key, task_id, limit_s=30):
            if name == "task":
                received.append((at, body))

    reader = threading.Thread(target=listen)
    reader.start()
    try:
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            time.sleep(0.02)
        claimed = other.service.claim_next("other-process", [DEFAULT_MODEL])
        assert claimed is not None
        for progress in (30, 60):
            time.sleep(0.5)
            assert other.service.heartbeat(claimed.id, claimed.lease_token, progress)
        time.sleep(0.5)
        assert other.service.complete(claimed.id, claimed.lease_token, Failed("engine_error", "x"))
        reader.join(timeout=10)
        assert not reader.is_alive(), "the stream ended after the terminal event"
    finally:
        other.close()
    states = [(body["status"], body["progress"]) for _, body in received]
    expected = [
        ("pending", 0),
        ("processing", 0),
        ("processing", 30),
        ("processing", 60),
        ("failed", 60),
    ]
    # Each state stood for 0.5 s against a 0.1 s poll: all are seen (a heavily loaded machine
    # may merge the first two, never lose the steps or the end).
    assert states in (expected, [expected[0], *expected[2:]]), states
    assert received[-1][1]["error"]["code"] == "engine_error"


def test_heartbeats_keep_a_quiet_stream_open(
    idle_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "POLL_SECONDS", 0.05)
    monkeypatch.setattr(events, "HEARTBEAT_SECONDS", 0.2)
    key = idle_server.new_key()
    task_id = idle_server.create(key).json()["id"]
    comments = 0
    for at, name, _ in read_events(idle_server, key, task_id, limit_s=10):
        comments += name == ":"
        if at > 1.0:
            break
    assert comments >= 3


def test_stream_ends_by_itself_after_its_time_limit(
    idle_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "MAX_STREAM_SECONDS", 0.5)
    key = idle_server.new_key()
    task_id = idle_server.create(key).json()["id"]
    got = list(read_events(idle_server, key, task_id, limit_s=10))
    assert [body["status"] for _, name, body in got if name == "task"] == ["pending"]
    assert got[-1][0] < 5


def test_streams_end_when_the_server_shuts_down(idle_server: LiveServer) -> None:
    """Open streams must not hold a graceful shutdown: they end once the runtime says so."""
    key = idle_server.new_key()
    task_id = idle_server.create(key).json()["id"]
    got = []
    try:
        for at, name, body in read_events(idle_server, key, task_id, limit_s=10):
            got.append((at, name, body))
            idle_server.runtime.shutting_down = True
    finally:
        idle_server.runtime.shutting_down = False
    assert [name for _, name, _ in got] == ["task"]


def test_a_finished_task_gives_one_event(server: LiveServer) -> None:
    key = server.new_key()
    task_id = server.create(key, duration=2, quality="480p").json()["id"]
    server.wait_done(key, task_id)
    got = list(read_events(server, key, task_id))
    assert [(name, body["status"]) for _, name, body in got] == [("task", "completed")]


def test_stream_is_for_the_owner_only(idle_server: LiveServer) -> None:
    key, other = idle_server.new_key(), idle_server.new_key()
    task_id = idle_server.create(key).json()["id"]
    path = f"/v1/tasks/{task_id}/events"
    denied = idle_server.client.get(path, headers=idle_server.auth(other))
    unknown = idle_server.client.get(
        "/v1/tasks/task-unified-1-zzzzzzzz/events", headers=idle_server.auth(key)
    )
    for response in (denied, unknown):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "task_not_found"
    anonymous = idle_server.client.get(path)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "missing_api_key"


def test_a_closed_stream_lets_go_of_its_listener(
    idle_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "POLL_SECONDS", 0.05)
    key = idle_server.new_key()
    task_id = idle_server.create(key).json()["id"]
    hub = idle_server.runtime.events
    for _, name, _body in read_events(idle_server, key, task_id, limit_s=10):
        assert name == "task"
        assert hub.watching() == 1
        break  # the client hangs up mid-stream
    deadline = time.monotonic() + 5
    while hub.watching() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert hub.watching() == 0
    # The hub is woken by one listener of the service (the runtime's, which also drops the
    # task's cached view), however many streams come and go.
    runtime = idle_server.runtime
    assert runtime.service.on_changed.count(runtime.task_changed) == 1
    assert hub.notify not in runtime.service.on_changed


# ---------------------------------------------------------------------------------------------
# POST /v1/files


def upload(server: LiveServer, key: str | None, **kwargs: Any) -> httpx.Response:
    headers = server.auth(key) if key else {}
    return server.client.post("/v1/files", headers=headers, **kwargs)


def test_upload_stores_a_checked_image(server: LiveServer) -> None:
    key = server.new_key()
    data = png_bytes(64, 48)
    response = upload(server, key, files={"file": ("a.png", data, "image/png")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "file" and body["purpose"] == "image"
    assert body["bytes"] == len(data) and body["filename"] == "a.png"
    assert body["id"].startswith("upload:") and body["id"].endswith(".png")
    name = body["id"].removeprefix("upload:")
    assert (server.runtime.settings.data_dir / "uploads" / name).read_bytes() == data


@pytest.mark.parametrize(
    ("kwargs", "status", "code", "param"),
    [
        ({"files": {"file": ("x.png", b"GIF89a not really", "image/png")}}, 400,
         "invalid_parameter", "file"),
        ({"files": {"other": ("x.png", b"x", "image/png")}}, 400, "missing_parameter", "file"),
        ({"data": {"file": "just text"}, "files": {"x": ("x", b"x")}}, 400,
         "missing_parameter", "file"),
        ({"json": {"file": "x"}}, 400, "invalid_request", "file"),
        ({"files": {"file": ("x.png", png_bytes(64, 48), "image/png")},
          "data": {"purpose": "video"}}, 400, "invalid_parameter", "purpose"),
    ],
)  # fmt: skip
def test_upload_refusals(
    idle_server: LiveServer, kwargs: dict[str, Any], status: int, code: str, param: str
) -> None:
    response = upload(idle_server, idle_server.new_key(), **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, param)


def test_upload_needs_a_key_and_has_a_size_cap(server_factory: ServerFactory) -> None:
    server = server_factory(workers=0, image_max_bytes=2000)
    files = {"file": ("a.png", png_bytes(), "image/png")}
    assert upload(server, None, files=files).status_code == 401
    huge = upload(server, server.new_key(), files={"file": ("a.png", b"\0" * 200_000)})
    assert huge.status_code == 413
    large = upload(server, server.new_key(), files={"file": ("a.png", noise_png())})
    assert large.status_code == 400 and "larger than" in large.json()["error"]["message"]
    assert not list((server.runtime.settings.data_dir / "uploads").glob("*.png"))


def test_an_uploaded_image_is_the_first_frame(server: LiveServer) -> None:
    key = server.new_key()
    reference = upload(server, key, files={"file": ("a.png", png_bytes(640, 360))}).json()["id"]
    task = server.create(key, duration=2, quality="480p", image_urls=[reference]).json()
    done = server.wait_done(key, task["id"])
    assert done["status"] == "completed", done
    assert done["task_info"]["resolution"] == "864x480"  # adaptive: 16:9 from the image


# ---------------------------------------------------------------------------------------------
# GET /v1/credits and the playground's files


def test_credits(idle_server: LiveServer) -> None:
    key = idle_server.new_key(credits=50, group="default")
    response = idle_server.client.get("/v1/credits", headers=idle_server.auth(key))
    assert response.status_code == 200
    body = response.json()
    assert body["balance"] == 50 and body["group"] == "default" and body["object"] == "credits"
    assert key.startswith(f"od_{body['key_id']}_")
    idle_server.create(key, duration=5, quality="1080p")  # 8 credits reserved
    after = idle_server.client.get("/v1/credits", headers=idle_server.auth(key)).json()
    assert after["balance"] == 42
    assert idle_server.client.get("/v1/credits").status_code == 401


def test_playground_files(idle_server: LiveServer) -> None:
    page = idle_server.client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert '<script src="/static/playground.js"' in page.text
    assert '<label for="prompt">' in page.text
    script = idle_server.client.get("/static/playground.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "/v1/tasks/" in script.text and "/events" in script.text
    style = idle_server.client.get("/static/playground.css")
    assert style.status_code == 200 and style.headers["content-type"].startswith("text/css")
    for name in ("playground.html", "../settings.py", "nope.js"):
        assert idle_server.client.get(f"/static/{name}").status_code == 404
