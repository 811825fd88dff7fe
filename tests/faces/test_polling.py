"""Polling a task on every face: the ETag follows the body, If-None-Match gets 304, and
long-polls (`?wait=N`) answer when the task changes or when N seconds pass.

Changes are made the way a worker of the server makes them (the task service's claim,
heartbeat and complete), so the server hears of them in-process.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from opendance.faces.polling import ANY, etag_of, if_none_match, is_current
from opendance.tasks.models import Completed
from tests.helpers.servers import LiveServer

ServerFactory = Callable[..., LiveServer]
MODEL = "doubao-seedance-1.0-pro-fast"
#: Each face's task read.
FACES = {
    "seed": "/v1/tasks/{}",
    "openai": "/v1/videos/{}",
    "ark": "/api/v3/contents/generations/tasks/{}",
}
#: Faces whose body shows `progress` (Ark's task object has none).
SHOWS_PROGRESS = ("seed", "openai")


@pytest.fixture
def polled(idle_server: LiveServer) -> Iterator[tuple[LiveServer, str]]:
    """A server whose tasks stay pending until the test moves them, and a key on it."""
    yield idle_server, idle_server.new_key(credits=10_000)


def _create(server: LiveServer, token: str) -> str:
    response = server.create(token, model=MODEL, duration=5, quality="480p")
    assert response.status_code == 200, response.text
    task_id: str = response.json()["id"]
    return task_id


def _read(
    server: LiveServer,
    token: str,
    face: str,
    task_id: str,
    *,
    tag: str | None = None,
    wait: float | str | None = None,
) -> httpx.Response:
    headers = server.auth(token)
    if tag is not None:
        headers["If-None-Match"] = tag
    params = {} if wait is None else {"wait": str(wait)}
    return server.client.get(FACES[face].format(task_id), headers=headers, params=params)


def _claim(server: LiveServer, task_id: str) -> str:
    claimed = server.runtime.service.claim_task(task_id, "test-worker")
    assert claimed is not None
    return claimed.lease_token


def _complete(server: LiveServer, task_id: str, lease: str) -> None:
    done = Completed(f"{task_id}.mp4", MODEL, 864, 480, 24, 120)
    assert server.runtime.service.complete(task_id, lease, done)


# -- If-None-Match, by the rules of RFC 9110 ---------------------------------------------------


def test_if_none_match_is_read_as_rfc_9110_writes_it() -> None:
    assert if_none_match([]) is None
    assert if_none_match(["*"]) is ANY
    assert if_none_match(['"a", W/"b"', '"c,d"']) == {'"a"', '"b"', '"c,d"'}
    assert is_current(if_none_match(['W/"x"']), '"x"')  # weak comparison
    assert not is_current(if_none_match(['"y"']), '"x"')
    assert not is_current(if_none_match(["not a tag"]), '"x"')
    assert not is_current(None, '"x"')
    assert etag_of(b"{}") == etag_of(b"{}") != etag_of(b"{ }")


# -- the ETag ----------------------------------------------------------------------------------


@pytest.mark.parametrize("face", FACES)
def test_the_etag_changes_exactly_when_the_body_does(
    polled: tuple[LiveServer, str], face: str
) -> None:
    server, token = polled
    task_id = _create(server, token)
    answers = [_read(server, token, face, task_id)]

    def changed() -> bool:
        answers.append(_read(server, token, face, task_id))
        before, after = answers[-2], answers[-1]
        assert after.status_code == 200
        assert (before.headers["ETag"] != after.headers["ETag"]) == (
            before.content != after.content
        )
        return before.content != after.content

    assert not changed()  # nothing happened
    _create(server, token)  # another task queued behind it: its own body stays as it was
    assert not changed()
    lease = _claim(server, task_id)
    assert changed()  # status
    if face in SHOWS_PROGRESS:
        assert server.runtime.service.heartbeat(task_id, lease, 40)
        assert changed()  # progress
        assert answers[-1].json()["progress"] == 40
    _complete(server, task_id, lease)
    assert changed()  # status and result
    assert not changed()
    assert answers[-1].headers["Cache-Control"] == "private, no-cache"


@pytest.mark.parametrize("face", FACES)
def test_if_none_match_gets_304_without_a_body(polled: tuple[LiveServer, str], face: str) -> None:
    server, token = polled
    task_id = _create(server, token)
    _claim(server, task_id)
    first = _read(server, token, face, task_id)
    etag = first.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"')
    for tag in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        answer = _read(server, token, face, task_id, tag=tag)
        assert answer.status_code == 304, tag
        assert answer.content == b""
        assert answer.headers["ETag"] == etag
        assert "X-RateLimit-Remaining" in answer.headers
    stale = _read(server, token, face, task_id, tag='"stale"')
    assert stale.status_code == 200 and stale.content == first.content


def test_a_current_copy_costs_no_database_read(polled: tuple[LiveServer, str]) -> None:
    """While the view in memory is current, neither a 304 nor a full answer reads the task."""
    server, token = polled
    task_id = _create(server, token)
    _read(server, token, "seed", task_id)  # the feed of other processes' changes starts
    heard = threading.Event()
    server.runtime.task_feed.on_change(lambda changed, _at: changed == task_id and heard.set())
    _claim(server, task_id)  # processing: its estimate needs nothing of the queue
    # The feed also hears this process's own change: once it has, nothing is left to drop.
    assert heard.wait(5)
    statements: list[str] = []
    background = ("opendance-maintenance", "opendance-callbacks")

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if threading.current_thread().name not in background:  # sweeps, reaper: not reads
            statements.append(statement)

    engine = server.runtime.db.engine
    for face in FACES:
        etag = _read(server, token, face, task_id).headers["ETag"]
        event.listen(engine, "before_cursor_execute", count)
        try:
            for _ in range(5):
                assert _read(server, token, face, task_id, tag=etag).status_code == 304
                assert _read(server, token, face, task_id).status_code == 200
        finally:
            event.remove(engine, "before_cursor_execute", count)
    assert statements == []


@pytest.mark.parametrize("face", FACES)
def test_another_keys_task_stays_unknown(polled: tuple[LiveServer, str], face: str) -> None:
    """A view in memory is its owner's: another key gets the 404 of a task that never existed
    (not a 304, whatever tag it sends)."""
    server, token = polled
    other = server.new_key()
    task_id = _create(server, token)
    etag = _read(server, token, face, task_id).headers["ETag"]
    for tag in (None, etag, "*"):
        assert _read(server, other, face, task_id, tag=tag).status_code == 404
        assert _read(server, other, face, task_id, tag=tag, wait=1).status_code == 404


def test_a_deleted_task_is_unknown_at_once(polled: tuple[LiveServer, str]) -> None:
    server, token = polled
    task_id = _create(server, token)
    _complete(server, task_id, _claim(server, task_id))
    tags = {face: _read(server, token, face, task_id).headers["ETag"] for face in FACES}
    response = server.client.delete(f"/v1/videos/{task_id}", headers=server.auth(token))
    assert response.status_code == 200, response.text
    for face in FACES:
        assert _read(server, token, face, task_id).status_code == 404
        assert _read(server, token, face, task_id, tag=tags[face]).status_code == 404
        assert _read(server, token, face, task_id, tag=tags[face], wait=5).status_code == 404


# -- long-polls ------------------------------------------------------------------------------


def _in_background(function: Callable[[], httpx.Response]) -> Callable[[], httpx.Response]:
    """Run `function` in a thread; the returned call waits for its answer."""
    box: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: box.append(function()), daemon=True)
    thread.start()

    def result() -> httpx.Response:
        thread.join(timeout=30)
        assert box, "the long-poll never answered"
        return box[0]

    return result


def _held(server: LiveServer, task_id: str, waiting: int = 1, timeout: float = 10.0) -> None:
    """Until `waiting` requests are held on the task (subscribed to its changes)."""
    events = server.runtime.events
    deadline = time.monotonic() + timeout
    while events.watching() < waiting:
        assert time.monotonic() < deadline, "the long-poll was never held"
        time.sleep(0.005)


@pytest.mark.parametrize("face", FACES)
def test_a_change_in_process_answers_a_long_poll_within_100_ms(
    polled: tuple[LiveServer, str], face: str
) -> None:
    server, token = polled
    lags = []
    for _ in range(5):
        task_id = _create(server, token)
        etag = _read(server, token, face, task_id).headers["ETag"]
        started = time.monotonic()
        answer = _in_background(partial(_read, server, token, face, task_id, tag=etag, wait=20))
        _held(server, task_id)
        _claim(server, task_id)
        changed_at = time.monotonic()
        response = answer()
        lags.append(time.monotonic() - changed_at)
        assert response.status_code == 200
        assert response.headers["ETag"] != etag
        assert time.monotonic() - started < 10
    assert statistics.median(lags) < 0.1, lags


@pytest.mark.parametrize("face", FACES)
def test_a_long_poll_ends_after_wait_seconds(polled: tuple[LiveServer, str], face: str) -> None:
    """Nothing changes: with the current tag a 304 after N s; without a tag the body."""
    server, token = polled
    task_id = _create(server, token)
    first = _read(server, token, face, task_id)
    started = time.monotonic()
    held = _read(server, token, face, task_id, tag=first.headers["ETag"], wait=0.5)
    assert 0.45 <= time.monotonic() - started < 2.5
    assert held.status_code == 304 and held.content == b""
    started = time.monotonic()
    plain = _read(server, token, face, task_id, wait=0.5)
    assert 0.45 <= time.monotonic() - started < 2.5
    assert plain.status_code == 200 and plain.content == first.content


def test_without_a_tag_a_long_poll_waits_for_a_change(polled: tuple[LiveServer, str]) -> None:
    server, token = polled
    task_id = _create(server, token)
    answer = _in_background(lambda: _read(server, token, "seed", task_id, wait=20))
    _held(server, task_id)
    lease = _claim(server, task_id)
    assert answer().json()["status"] == "processing"
    answer = _in_background(lambda: _read(server, token, "seed", task_id, wait=20))
    _held(server, task_id)
    assert server.runtime.service.heartbeat(task_id, lease, 55)
    assert answer().json()["progress"] == 55


@pytest.mark.parametrize("face", FACES)
def test_a_long_poll_answers_at_once_when_there_is_news_or_no_future(
    polled: tuple[LiveServer, str], face: str
) -> None:
    server, token = polled
    task_id = _create(server, token)
    started = time.monotonic()
    assert _read(server, token, face, task_id, tag='"old"', wait=30).status_code == 200
    _complete(server, task_id, _claim(server, task_id))
    done = _read(server, token, face, task_id)
    assert _read(server, token, face, task_id, wait=60).content == done.content
    tag = done.headers["ETag"]
    assert _read(server, token, face, task_id, tag=tag, wait=60).status_code == 304
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("face", FACES)
def test_wait_must_be_a_number_of_seconds_up_to_60(
    polled: tuple[LiveServer, str], face: str
) -> None:
    server, token = polled
    task_id = _create(server, token)
    for bad in ("0", "-1", "60.5", "61", "abc", "", "nan", "inf"):
        response = _read(server, token, face, task_id, wait=bad)
        assert response.status_code == 400, (bad, response.text)
        assert response.json()["error"]["param"] == "wait", response.text


def test_star_waits_for_any_change(polled: tuple[LiveServer, str]) -> None:
    """`If-None-Match: *` names whatever the task is now: held until it changes, then 200."""
    server, token = polled
    task_id = _create(server, token)
    before = _read(server, token, "ark", task_id).json()
    answer = _in_background(lambda: _read(server, token, "ark", task_id, tag="*", wait=20))
    _held(server, task_id)
    _claim(server, task_id)
    response = answer()
    # Held until the body changed: the claim, or (on a loaded machine, where a second can
    # pass first) a move of the pending task's estimate.
    assert response.status_code == 200 and response.json() != before


def test_a_stopping_server_answers_its_long_polls(polled: tuple[LiveServer, str]) -> None:
    server, token = polled
    task_id = _create(server, token)
    etag = _read(server, token, "openai", task_id).headers["ETag"]
    started = time.monotonic()
    answer = _in_background(lambda: _read(server, token, "openai", task_id, tag=etag, wait=30))
    _held(server, task_id)
    server.runtime.shutting_down = True
    try:
        assert answer().status_code == 304
    finally:
        server.runtime.shutting_down = False
    assert time.monotonic() - started < 5
