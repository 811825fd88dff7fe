"""Scale-out on PostgreSQL + procrastinate: 2 API processes, 3 worker processes, real kills."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.processes import ServerProcess
from tests.helpers.servers import TEST_DATABASE_URL, fresh_database_url

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not TEST_DATABASE_URL, reason="scale-out needs PostgreSQL"),
]

MODEL = "doubao-seedance-1.0-pro-fast"


class Cluster:
    def __init__(self, tmp: Path) -> None:
        url = fresh_database_url()
        assert url
        common = {
            "dispatch": "procrastinate",
            "lease_seconds": "2",
            "shutdown_grace_seconds": "30",
            # 200 tasks from one key: on a loaded machine more than the default 100 can be
            # unfinished at once, and the per-key cap is not what this test is about.
            "max_active_tasks_per_key": "1000",
        }
        self.apis = [
            ServerProcess(tmp / "data", tmp / f"api{i}.log", database_url=url, **common)
            for i in range(2)
        ]
        self.tmp = tmp
        self.workers: list[subprocess.Popen[bytes]] = []
        self.token = self.apis[0].create_key(10_000)
        self.headers = {"Authorization": f"Bearer {self.token}"}

    def start(self, workers: int) -> None:
        for api in self.apis:
            api.start("--no-workers")
        for index in range(workers):
            log = self.tmp / f"worker{index}.log"
            self.workers.append(
                self.apis[0].spawn("worker", "--models", MODEL, "--concurrency", "1", log=log)
            )

    def api(self, index: int) -> str:
        return self.apis[index % len(self.apis)].base_url

    def create(self, index: int, **body: object) -> str:
        payload = {"model": MODEL, "prompt": f"scale-out {index}", "duration": 2, "quality": "480p"}
        payload.update(body)
        response = httpx.post(
            f"{self.api(index)}/v1/videos/generations", json=payload, headers=self.headers
        )
        assert response.status_code == 200, response.text
        task_id: str = response.json()["id"]
        return task_id

    def task(self, task_id: str, via: int = 0) -> dict[str, object]:
        response = httpx.get(f"{self.api(via)}/v1/tasks/{task_id}", headers=self.headers)
        result: dict[str, object] = response.json()
        return result

    def stop(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.workers:
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
        for api in self.apis:
            api.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    made = Cluster(tmp_path)
    yield made
    made.stop()


def worker_pid(worker_id: str) -> int:
    return int(worker_id.split(":")[1])


def test_200_tasks_on_3_workers_with_one_killed(cluster: Cluster) -> None:
    cluster.start(workers=3)
    ids = [cluster.create(i) for i in range(200)]
    api = cluster.apis[0]
    # Kill the worker running a task, mid-task: frozen first (SIGSTOP), so the task is known
    # to be still its own when the SIGKILL lands (on a loaded machine a short task can finish
    # between the read and the kill).
    victim_task = None
    deadline = time.monotonic() + 60
    while victim_task is None and time.monotonic() < deadline:
        for task_id, worker_id in api.sql(
            "SELECT id, worker_id FROM tasks WHERE status = 'processing'"
        ):
            pid = worker_pid(str(worker_id))
            os.kill(pid, signal.SIGSTOP)
            still = api.sql(
                "SELECT 1 FROM tasks WHERE id = :id AND status = 'processing' AND worker_id = :w",
                id=task_id,
                w=worker_id,
            )
            if still:
                os.kill(pid, signal.SIGKILL)
                victim_task = task_id
                break
            os.kill(pid, signal.SIGCONT)
        else:
            time.sleep(0.01)
    assert victim_task is not None
    api.wait_all_completed(200, timeout=240)
    attempts = dict(api.sql("SELECT id, attempts FROM tasks"))
    assert attempts[victim_task] == 2
    assert sum(1 for task_id in ids if attempts[task_id] != 1) == 1
    kinds = Counter(
        (row[0], row[1])
        for row in api.sql("SELECT task_id, kind FROM ledger_entries WHERE task_id IS NOT NULL")
    )
    for task_id in ids:
        assert kinds[(task_id, "reserve")] == 1 and kinds[(task_id, "settle")] == 1
        assert kinds[(task_id, "refund")] == 0
    assert api.cli("ledger", "check").returncode == 0
    results = list((cluster.tmp / "data" / "results").glob("*.mp4"))
    assert len(results) == 200
    # Work was spread over the surviving workers and the killed one.
    runners = {row[0] for row in api.sql("SELECT DISTINCT worker_id FROM tasks")}
    assert len(runners) >= 2


def test_cancel_through_any_api_stops_the_task_on_its_worker(cluster: Cluster) -> None:
    cluster.start(workers=2)
    task_id = cluster.create(0, duration=12, quality="1080p")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        task = cluster.task(task_id, via=0)
        if task["status"] == "processing" and int(str(task["progress"])) > 0:
            break
        time.sleep(0.02)
    worker_id = str(
        cluster.apis[0].sql("SELECT worker_id FROM tasks WHERE id = :t", t=task_id)[0][0]
    )
    cancelled_at = time.time()
    response = httpx.post(f"{cluster.api(1)}/v1/tasks/{task_id}/cancel", headers=cluster.headers)
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    # The worker stops at its next progress report (every 12 frames, well under a second).
    deadline = time.monotonic() + 10
    stopped = False
    while time.monotonic() < deadline and not stopped:
        for log in cluster.tmp.glob("worker*.log"):
            text = log.read_text(errors="replace")
            if f"task {task_id} stopped" in text:
                stopped = True
        time.sleep(0.05)
    assert stopped
    assert time.time() - cancelled_at < 3
    assert worker_pid(worker_id) > 0
    assert cluster.task(task_id, via=0)["status"] == "cancelled"
    # The worker is free again: a new task runs.
    follow_up = cluster.create(1)
    deadline = time.monotonic() + 60
    while cluster.task(follow_up)["status"] != "completed" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cluster.task(follow_up)["status"] == "completed"
