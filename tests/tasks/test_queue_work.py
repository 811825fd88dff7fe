"""`estimated_time` from the queue snapshot: exact within a process, at most a second old across.

Two runtimes on one database stand for two API processes; the clock is frozen, so a snapshot's
age is exactly what the test says.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select

from opendance.clock import FrozenClock
from opendance.runtime import Runtime, build_runtime
from opendance.store.tables import Task
from opendance.tasks.models import CreateTask, KeyInfo
from opendance.tasks.queue_snapshot import QueuedWork
from tests.helpers.servers import make_settings

MODEL = "doubao-seedance-1.0-pro-fast"


def request() -> CreateTask:
    return CreateTask(
        model=MODEL, prompt="p", duration=5, quality="1080p", aspect_ratio="16:9"
    )  # fmt: skip


@pytest.fixture
def two_processes(tmp_path: Path) -> Iterator[tuple[Runtime, Runtime, FrozenClock, KeyInfo]]:
    clock = FrozenClock()
    settings = make_settings(tmp_path, workers=0)
    first = build_runtime(settings, clock)
    second = build_runtime(settings, clock)
    created = first.accounts.create_key(credits=10_000)
    key = KeyInfo(id=created.summary.id, group="default")
    yield first, second, clock, key
    first.close()
    second.close()


def own_seconds(runtime: Runtime, task_id: str) -> float:
    with runtime.db.read() as session:
        return float(
            session.execute(select(Task.estimated_seconds).where(Task.id == task_id)).scalar_one()
        )


def test_each_new_task_counts_every_task_queued_before_it(two_processes: Any) -> None:
    runtime, _, _, key = two_processes
    service = runtime.service
    lanes = runtime.router.concurrency(MODEL)
    views = [service.create_task(key, request()) for _ in range(4)]
    owns = [own_seconds(runtime, view.id) for view in views]
    for index, view in enumerate(views):
        expected = math.ceil(sum(owns[:index]) / lanes + owns[index])
        assert view.estimated_time == expected
        # Read back, the estimate is the same: tasks queued behind do not count.
        assert service.get_task(key.id, view.id).estimated_time == expected


def test_another_process_sees_queue_changes_within_max_age(two_processes: Any) -> None:
    api, worker_side, clock, key = two_processes
    first = api.service.create_task(key, request())
    last = api.service.create_task(key, request())
    before = api.service.get_task(key.id, last.id).estimated_time
    lanes = api.router.concurrency(MODEL)
    own_first, own_last = own_seconds(api, first.id), own_seconds(api, last.id)
    assert before == math.ceil(own_first / lanes + own_last)
    # The other process starts the first task and reports it nearly done.
    claimed = worker_side.service.claim_next("w1", [MODEL])
    assert claimed is not None and claimed.id == first.id
    assert worker_side.service.heartbeat(first.id, claimed.lease_token, 99)
    assert api.service.get_task(key.id, last.id).estimated_time == before  # the snapshot's view
    clock.advance(api.service.queued_work.max_age)
    after = api.service.get_task(key.id, last.id).estimated_time
    assert after == math.ceil(own_first * 0.01 / lanes + own_last) < before


def test_a_stale_snapshot_answers_while_one_thread_reads_the_next(tmp_path: Path) -> None:
    clock = FrozenClock()
    runtime = build_runtime(make_settings(tmp_path, workers=0), clock)
    try:
        key_id = runtime.accounts.create_key(credits=10_000).summary.id
        key = KeyInfo(id=key_id, group="default")
        task = runtime.service.create_task(key, request())
        work = QueuedWork(max_age=1.0, clock=clock.now)
        behind_all = (0, float(10**18), 10**18)  # a place behind everything
        with runtime.db.connect() as connection:
            stale = work.ahead(connection, MODEL, behind_all)[0]
        assert stale == own_seconds(runtime, task.id)
        runtime.service.create_task(key, request())
        clock.advance(1.0)

        reading, release = threading.Event(), threading.Event()

        def slow_read(*_: object) -> None:
            if threading.current_thread().name == "reader":
                reading.set()
                assert release.wait(10)

        event.listen(runtime.db.engine, "before_cursor_execute", slow_read)
        fresh: list[float] = []

        def reader() -> None:
            with runtime.db.connect() as connection:
                fresh.append(work.ahead(connection, MODEL, behind_all)[0])

        thread = threading.Thread(target=reader, name="reader")
        thread.start()
        try:
            assert reading.wait(10)
            # The reader holds the model's load; this answer comes from the old snapshot.
            with runtime.db.connect() as connection:
                assert work.ahead(connection, MODEL, behind_all)[0] == stale
        finally:
            release.set()
            thread.join(10)
            event.remove(runtime.db.engine, "before_cursor_execute", slow_read)
        assert fresh and fresh[0] > stale
    finally:
        runtime.close()
