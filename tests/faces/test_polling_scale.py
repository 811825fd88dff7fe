"""Polling at scale: a change made by another process on the same database answers long-polls
(and refreshes the views kept in memory) within about a second, on SQLite and PostgreSQL; and
thousands of long-polls wait on one server process without a thread each.

The other process is a real `opendance serve` on the same database (a file shared with the
test's server on SQLite; one database on PostgreSQL when the suite runs there).
"""

from __future__ import annotations

import asyncio
import os
import resource
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from opendance.store.changes import LISTENER_NAME
from tests.helpers.processes import ServerProcess
from tests.helpers.servers import TEST_DATABASE_URL, LiveServer, fresh_database_url

ServerFactory = Callable[..., LiveServer]
MODEL = "doubao-seedance-1.0-pro-fast"
BODY = {"model": MODEL, "prompt": "a fox in snow", "duration": 5, "quality": "480p"}


@pytest.fixture
def two_processes(
    tmp_path: Path, server_factory: ServerFactory
) -> Iterator[tuple[LiveServer, ServerProcess, str]]:
    """This test's server and another server process on the same database, and a key."""
    url = fresh_database_url() or f"sqlite:///{tmp_path / 'shared.db'}"
    here = server_factory(workers=0, database_url=url)
    token = here.new_key(credits=10_000)
    other = ServerProcess(tmp_path / "other", tmp_path / "other.log", database_url=url)
    other.start("--no-workers")
    try:
        yield here, other, token
    finally:
        other.stop()


def _create(server: LiveServer, token: str) -> str:
    response = server.create(token, **BODY)
    assert response.status_code == 200, response.text
    task_id: str = response.json()["id"]
    return task_id


def _long_poll(
    server: LiveServer, token: str, task_id: str, etag: str, box: list[httpx.Response]
) -> None:
    box.append(
        server.client.get(
            f"/v1/tasks/{task_id}",
            params={"wait": "20"},
            headers={**server.auth(token), "If-None-Match": etag},
        )
    )


def test_a_change_in_another_process_answers_a_long_poll_within_a_second(
    two_processes: tuple[LiveServer, ServerProcess, str],
) -> None:
    here, other, token = two_processes
    lags = []
    for _ in range(3):
        task_id = _create(here, token)
        etag = here.get(token, task_id).headers["ETag"]
        box: list[httpx.Response] = []
        held = threading.Thread(target=_long_poll, args=(here, token, task_id, etag, box))
        held.start()
        deadline = time.monotonic() + 10
        while here.runtime.events.watching() < 1:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        cancelled = httpx.post(
            f"{other.base_url}/v1/tasks/{task_id}/cancel", headers=here.auth(token)
        )
        assert cancelled.status_code == 200, cancelled.text
        changed_at = time.monotonic()
        held.join(timeout=20)
        lags.append(time.monotonic() - changed_at)
        assert box and box[0].status_code == 200
        assert box[0].json()["status"] == "cancelled"
    assert statistics.median(lags) < 1.2 and max(lags) < 2.5, lags


def test_a_view_kept_in_memory_follows_another_process_within_a_second(
    two_processes: tuple[LiveServer, ServerProcess, str],
) -> None:
    here, other, token = two_processes
    task_id = _create(here, token)
    for _ in range(3):  # kept in memory now
        assert here.get(token, task_id).json()["status"] == "pending"
    loads = here.runtime.views.loads
    assert here.get(token, task_id).status_code == 200
    assert here.runtime.views.loads == loads  # answered from memory
    response = httpx.post(f"{other.base_url}/v1/tasks/{task_id}/cancel", headers=here.auth(token))
    assert response.status_code == 200
    changed_at = time.monotonic()
    while here.get(token, task_id).json()["status"] != "cancelled":
        assert time.monotonic() - changed_at < 2.0, "the other process's change was not heard"
        time.sleep(0.02)


@pytest.mark.skipif(not TEST_DATABASE_URL, reason="the LISTEN connection of PostgreSQL")
def test_without_the_listen_connection_nothing_in_memory_is_trusted(
    server_factory: ServerFactory,
) -> None:
    """The listener's connection is cut: reads go to the database (a change made meanwhile,
    unheard, is read at once), long-polls still end on time; back, changes are heard again."""
    here = server_factory(workers=0)
    token = here.new_key(credits=1000)
    task_id = _create(here, token)
    assert here.get(token, task_id).json()["progress"] == 0  # kept in memory
    listener = here.runtime.listener
    assert listener is not None
    listener.RECONNECT_SECONDS = 3.0  # a gap long enough to look into
    engine = here.runtime.db.engine

    def progress(value: int) -> None:
        with engine.begin() as connection:
            connection.execute(
                text("UPDATE tasks SET progress = :p WHERE id = :id"), {"p": value, "id": task_id}
            )

    with engine.begin() as connection:
        cut = connection.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = :name"
            ),
            {"name": LISTENER_NAME},
        ).all()
    assert cut
    deadline = time.monotonic() + 5
    while here.runtime.task_feed.epoch() is not None:
        assert time.monotonic() < deadline, "the cut was not noticed"
        time.sleep(0.01)
    progress(33)  # nobody hears of it
    current = here.get(token, task_id)
    assert current.json()["progress"] == 33
    started = time.monotonic()
    held = here.client.get(
        f"/v1/tasks/{task_id}",
        params={"wait": "1"},
        headers={**here.auth(token), "If-None-Match": current.headers["ETag"]},
    )
    assert 0.9 < time.monotonic() - started < 2.5 and held.status_code == 304
    assert here.runtime.task_feed.epoch() is None, "the gap closed too early for this test"
    deadline = time.monotonic() + 10
    while here.runtime.task_feed.epoch() is None:
        assert time.monotonic() < deadline, "the listener did not come back"
        time.sleep(0.05)
    assert here.get(token, task_id).json()["progress"] == 33
    progress(44)
    deadline = time.monotonic() + 2
    while here.get(token, task_id).json()["progress"] != 44:
        assert time.monotonic() < deadline, "a change after the gap was not heard"
        time.sleep(0.02)


# -- thousands of long-polls -------------------------------------------------------------------

WAITERS = 2000
TASKS = 20


async def _request(port: int, raw: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    return reader, writer


async def _status_of(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    return int(head[9:12])


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


@pytest.mark.slow
def test_two_thousand_long_polls_hold_no_thread_each(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 3 * WAITERS + 1000)
    if soft < wanted:  # the server (a child) inherits it
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    server = ServerProcess(
        tmp_path / "data", tmp_path / "server.log", rate_limit_read="1000000/minute"
    )
    server.start("--no-workers")
    try:
        asyncio.run(_hold_many(server))
    finally:
        server.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def _hold_many(server: ServerProcess) -> None:
    assert server.proc is not None
    pid, port = server.proc.pid, server.port
    token = server.create_key(10_000)
    auth = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=server.base_url, headers=auth, timeout=30) as client:
        ids, tags = [], {}
        for _ in range(TASKS):
            created = await client.post("/v1/videos/generations", json=BODY)
            ids.append(created.json()["id"])
        for task_id in ids:
            tags[task_id] = (await client.get(f"/v1/tasks/{task_id}")).headers["ETag"]
        before = _threads(pid)

        def long_poll(task_id: str) -> bytes:
            return (
                f"GET /v1/tasks/{task_id}?wait=15 HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {token}\r\nIf-None-Match: {tags[task_id]}\r\n\r\n"
            ).encode()

        opened = []
        for start in range(0, WAITERS, 250):
            opened += await asyncio.gather(
                *(
                    _request(port, long_poll(ids[index % TASKS]))
                    for index in range(start, min(WAITERS, start + 250))
                )
            )
        answers = [asyncio.ensure_future(_status_of(reader)) for reader, _ in opened]
        await asyncio.sleep(1.0)
        assert not any(answer.done() for answer in answers), "long-polls answered early"
        during = _threads(pid)
        latencies = []
        for task_id in ids[1:11]:  # the server stays responsive meanwhile
            started = time.perf_counter()
            plain = await client.get(f"/v1/tasks/{task_id}")
            latencies.append(time.perf_counter() - started)
            assert plain.status_code == 200
        assert statistics.median(latencies) < 0.05, latencies
        # The last task changes: its waiters answer now, with the new body. (The last: had
        # one ahead of others been cancelled, their queue positions would move, and their
        # bodies with them.)
        assert (await client.post(f"/v1/tasks/{ids[-1]}/cancel")).status_code == 200
        woken = answers[TASKS - 1 :: TASKS]
        # Well inside the 15 s hold: a late wake on a loaded machine is still told from a 304.
        done, _ = await asyncio.wait(woken, timeout=10)
        assert len(done) == len(woken) and {answer.result() for answer in done} == {200}
        assert not any(answer.done() for answer in answers if answer not in done)
        statuses = await asyncio.gather(*answers)  # the others: their wait ends (304)
        assert statuses.count(304) == WAITERS - len(woken)
        for _, writer in opened:
            writer.close()
    assert during - before < 10, (before, during)
