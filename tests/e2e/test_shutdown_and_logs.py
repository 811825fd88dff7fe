"""SIGTERM with a running task loses nothing; JSON logs carry request and task ids."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers.processes import ServerProcess

pytestmark = pytest.mark.slow

MODEL = "doubao-seedance-1.0-pro-fast"


def wait_status(
    base: str, headers: dict[str, str], task_id: str, want: set[str], timeout: float
) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task: dict[str, object] = httpx.get(f"{base}/v1/tasks/{task_id}", headers=headers).json()
        if task["status"] in want:
            return task
        time.sleep(0.05)
    raise AssertionError(f"task never reached {want}")


def test_sigterm_finishes_short_tasks_and_hands_back_long_ones(tmp_path: Path) -> None:
    server = ServerProcess(
        tmp_path / "data", tmp_path / "server.log", workers="1", shutdown_grace_seconds="1",
        lease_seconds="5", log_format="json",
    )  # fmt: skip
    headers = {"Authorization": f"Bearer {server.create_key(100)}"}
    server.start()
    body = {"model": MODEL, "prompt": "long one", "duration": 12, "quality": "1080p"}
    response = httpx.post(
        f"{server.base_url}/v1/videos/generations",
        json=body,
        headers={**headers, "X-Request-Id": "create-req-1"},
    )
    task_id = response.json()["id"]
    wait_status(server.base_url, headers, task_id, {"processing"}, 60)
    server.stop()  # SIGTERM: the 12 s render outlives the 1 s grace and is handed back
    # uvicorn re-raises SIGTERM after its graceful shutdown, so the exit status is -15.
    assert server.proc is not None and server.proc.returncode in (0, -15)
    state = server.sql("SELECT status, attempts, lease_token FROM tasks WHERE id = :t", t=task_id)
    assert state == [("pending", 0, None)]
    server.start()
    final = wait_status(server.base_url, headers, task_id, {"completed", "failed"}, 120)
    assert final["status"] == "completed"
    server.stop()
    assert server.cli("ledger", "check").returncode == 0
    kinds = sorted(
        row[0]
        for row in server.sql("SELECT kind FROM ledger_entries WHERE task_id = :t", t=task_id)
    )
    assert kinds == ["reserve", "settle"]

    lines = [
        json.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")
    ]
    assert lines, "no JSON log lines"
    assert all(
        {"time", "level", "logger", "message", "request_id", "task_id"} <= set(line)
        for line in lines
    )
    assert any(line["request_id"] == "create-req-1" for line in lines)
    assert any(line["task_id"] == task_id and "handed back" in line["message"] for line in lines)
    assert any(line["task_id"] == task_id and "completed" in line["message"] for line in lines)
