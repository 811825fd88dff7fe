"""Fair share under procrastinate (PostgreSQL): a job claims its model's fairest task, so a
backlog of one key delays another key's task by at most the task running and one more; and
every task still runs exactly once."""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from opendance.clock import FrozenClock
from opendance.runtime import build_runtime
from opendance.tasks.models import CreateTask, KeyInfo
from tests.helpers.processes import ServerProcess
from tests.helpers.servers import TEST_DATABASE_URL, fresh_database_url, make_settings

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not TEST_DATABASE_URL, reason="procrastinate needs PostgreSQL"),
]

MODEL = "doubao-seedance-1.0-pro-fast"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ServerProcess]:
    url = fresh_database_url()
    assert url
    server = ServerProcess(
        tmp_path / "data",
        tmp_path / "api.log",
        database_url=url,
        dispatch="procrastinate",
        max_active_tasks_per_key="1000",
    )
    server.start("--no-workers")
    yield server
    server.stop()


def test_one_worker_a_backlog_of_16_delays_another_key_by_at_most_two(
    api: ServerProcess, tmp_path: Path
) -> None:
    a, b = api.create_key(10_000), api.create_key(10_000)

    def create(token: str, prompt: str) -> str:
        response = httpx.post(
            f"{api.base_url}/v1/videos/generations",
            json={"model": MODEL, "prompt": prompt, "duration": 2, "quality": "480p"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert response.status_code == 200, response.text
        task_id: str = response.json()["id"]
        return task_id

    backlog = [create(a, f"backlog {i}") for i in range(16)]
    worker = api.spawn(
        "worker", "--models", MODEL, "--concurrency", "1", log=tmp_path / "worker.log"
    )
    try:
        time.sleep(0.5)  # the worker is on the backlog's first task by now, or soon
        single = create(b, "one task")
        api.wait_all_completed(17, timeout=180)
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=40)
        except subprocess.TimeoutExpired:
            worker.kill()
    ends = dict(api.sql("SELECT id, finished_at FROM tasks"))
    before = [task for task in backlog if float(ends[task]) < float(ends[single])]  # type: ignore[arg-type]
    assert len(before) <= 2, before
    # Jobs stood in for one another, and still each task ran once and was charged once.
    attempts = {row[0] for row in api.sql("SELECT attempts FROM tasks")}
    assert attempts == {1}
    kinds = Counter(row[0] for row in api.sql("SELECT kind FROM ledger_entries"))
    assert (kinds["reserve"], kinds["settle"], kinds["refund"]) == (17, 17, 0)


def test_a_lost_job_is_deferred_again_and_a_full_queue_gets_none(tmp_path: Path) -> None:
    clock = FrozenClock(time.time())
    url = fresh_database_url()
    runtime = build_runtime(
        make_settings(tmp_path, workers=0, dispatch="procrastinate", database_url=url), clock
    )
    try:
        runtime.start_background(local_workers=0)
        created = runtime.accounts.create_key(credits=1000)
        key = KeyInfo(id=created.summary.id, group="default")
        request = CreateTask(
            model=MODEL, prompt="p", duration=2, quality="480p", aspect_ratio="16:9"
        )
        tasks = [runtime.service.create_task(key, request).id for _ in range(3)]
        deferrer = runtime.deferrer
        assert deferrer is not None

        def todo() -> list[str]:
            with runtime.db.engine.connect() as connection:
                rows = connection.execute(
                    text("SELECT queueing_lock FROM procrastinate_jobs WHERE status = 'todo'")
                )
                return sorted(str(row[0]) for row in rows)

        assert todo() == sorted(tasks)
        # A crash between the create's commit and its defer: the job is missing.
        with runtime.db.engine.begin() as connection:
            connection.execute(
                text("DELETE FROM procrastinate_jobs WHERE queueing_lock = :lock"),
                {"lock": tasks[1]},
            )
        clock.advance(11)
        deferrer.redefer_pending()
        assert todo() == sorted(tasks)
        deferrer.redefer_pending()  # as many jobs as tasks: nothing more
        assert todo() == sorted(tasks)
    finally:
        runtime.close()
