"""The real server as a subprocess, SIGKILLed mid-run: nothing lost, nothing charged twice."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.helpers.processes import ServerProcess

pytestmark = pytest.mark.slow


def test_sigkill_mid_run_then_restart_loses_no_task_and_no_credit(tmp_path: Path) -> None:
    server = ServerProcess(
        tmp_path / "data", tmp_path / "server.log", workers="2", lease_seconds="2",
        poll_interval_seconds="0.1",
    )  # fmt: skip
    base = server.base_url
    headers = {"Authorization": f"Bearer {server.create_key(1000)}"}
    server.start()
    try:
        ids = []
        for index in range(20):
            body = {
                "model": "doubao-seedance-1.0-pro-fast",
                "prompt": f"crash test {index}",
                "duration": 2 + index % 3,
                "quality": "480p" if index % 2 else "720p",
            }
            response = httpx.post(f"{base}/v1/videos/generations", json=body, headers=headers)
            assert response.status_code == 200, response.text
            ids.append(response.json()["id"])
        # Kill it while work is under way: some tasks done, some running, most pending.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            statuses = Counter(
                httpx.get(f"{base}/v1/tasks/{i}", headers=headers).json()["status"] for i in ids
            )
            if statuses["completed"] >= 2 and statuses["processing"] >= 1:
                break
            time.sleep(0.05)
        server.kill()
        assert statuses["pending"] + statuses["processing"] > 0, statuses
    finally:
        server.kill()

    server.start()
    try:
        deadline = time.monotonic() + 240
        final: dict[str, str] = {}
        while time.monotonic() < deadline:
            final = {
                i: httpx.get(f"{base}/v1/tasks/{i}", headers=headers).json()["status"] for i in ids
            }
            if all(s in ("completed", "failed", "cancelled") for s in final.values()):
                break
            time.sleep(0.2)
        assert all(s in ("completed", "failed", "cancelled") for s in final.values()), final
    finally:
        server.stop()

    check = server.cli("ledger", "check")
    assert check.returncode == 0, check.stdout + check.stderr
    for task_id in ids:
        kinds = Counter(
            row[0]
            for row in server.sql("SELECT kind FROM ledger_entries WHERE task_id = :t", t=task_id)
        )
        status = server.sql("SELECT status FROM tasks WHERE id = :t", t=task_id)[0][0]
        assert kinds["reserve"] == 1
        assert kinds["settle"] + kinds["refund"] == 1, (task_id, kinds)
        assert (kinds["settle"] == 1) == (status == "completed")
    settled = server.sql(
        "SELECT COALESCE(SUM(amount), 0) FROM ledger_entries WHERE kind = 'settle'"
    )
    balance = server.sql("SELECT balance FROM api_keys")
    assert balance[0][0] == 1000 - settled[0][0]
