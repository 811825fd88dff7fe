"""The real server as a subprocess, SIGKILLed mid-run: nothing lost, nothing charged twice."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from conftest import free_port

pytestmark = pytest.mark.slow


def opendance(*args: str, env: dict[str, str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "opendance", *args], env=env, capture_output=True, text=True, **kw
    )  # type: ignore[call-overload]


def start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    handle = open(log, "ab")  # noqa: SIM115 - the child owns it
    return subprocess.Popen(
        [sys.executable, "-m", "opendance", "serve"], env=env, stdout=handle, stderr=handle
    )


def wait_healthy(base: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "server exited"
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("server did not become healthy")


def test_sigkill_mid_run_then_restart_loses_no_task_and_no_credit(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "OPENDANCE_DATA_DIR": str(tmp_path / "data"),
        "OPENDANCE_PORT": str(port),
        "OPENDANCE_WORKERS": "2",
        "OPENDANCE_LEASE_SECONDS": "2",
        "OPENDANCE_POLL_INTERVAL_SECONDS": "0.1",
        "OPENDANCE_FIRST_KEY_CREDITS": "0",
    }
    created = opendance("keys", "create", "--credits", "1000", env=env, check=True)
    token = re.search(r"od_[a-z0-9]{8}_[A-Za-z0-9]{38}", created.stdout)
    assert token, created.stdout
    headers = {"Authorization": f"Bearer {token.group(0)}"}

    proc = start(env, tmp_path / "server.log")
    try:
        wait_healthy(base, proc)
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
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert statuses["pending"] + statuses["processing"] > 0, statuses
    finally:
        if proc.poll() is None:
            proc.kill()

    proc = start(env, tmp_path / "server.log")
    try:
        wait_healthy(base, proc)
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
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)

    check = opendance("ledger", "check", env=env)
    assert check.returncode == 0, check.stdout + check.stderr
    db = sqlite3.connect(tmp_path / "data" / "opendance.db")
    for task_id in ids:
        kinds = Counter(
            row[0]
            for row in db.execute("SELECT kind FROM ledger_entries WHERE task_id=?", (task_id,))
        )
        status = db.execute("SELECT status FROM tasks WHERE id=?", (task_id,)).fetchone()[0]
        assert kinds["reserve"] == 1
        assert kinds["settle"] + kinds["refund"] == 1, (task_id, kinds)
        assert (kinds["settle"] == 1) == (status == "completed")
    settled = db.execute(
        "SELECT COALESCE(SUM(amount),0) FROM ledger_entries WHERE kind='settle'"
    ).fetchone()[0]
    balance = db.execute("SELECT balance FROM api_keys").fetchone()[0]
    assert balance == 1000 - settled
