"""Kill -9 the server between callback attempts: after restart the remaining attempts happen."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
import trustme

from tests.helpers.processes import ServerProcess
from tests.helpers.receivers import Receiver, Script, ca_bundle

pytestmark = pytest.mark.slow


def test_callback_attempts_survive_sigkill(tmp_path: Path) -> None:
    ca = trustme.CA()
    receiver = Receiver(ca, Script([(500, 0.0), (500, 0.0), (200, 0.0)]))
    server = ServerProcess(
        tmp_path / "data",
        tmp_path / "server.log",
        allow_loopback_for_tests="true",
        extra_ca_file=str(ca_bundle(ca, tmp_path)),
    )
    headers = {"Authorization": f"Bearer {server.create_key(100)}"}
    try:
        server.start()
        body = {
            "model": "doubao-seedance-1.0-pro-fast",
            "prompt": "callback durability",
            "duration": 2,
            "quality": "480p",
            "callback_url": receiver.url,
        }
        task = httpx.post(f"{server.base_url}/v1/videos/generations", json=body, headers=headers)
        task_id = task.json()["id"]
        receiver.wait_for(1, timeout=60)
        time.sleep(0.3)  # let the failed attempt be recorded, then die before the retry (1 s)
        server.kill()
        assert len(receiver.received) == 1
        server.start()
        got = receiver.wait_for(3, timeout=60)
        assert len({r.headers["webhook-id"] for r in got}) == 1
        assert json.loads(got[-1].body)["id"] == task_id
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            records = httpx.get(
                f"{server.base_url}/v1/tasks/{task_id}/callbacks", headers=headers
            ).json()["data"]
            if records[0]["status"] == "succeeded":
                break
            time.sleep(0.1)
        assert records[0]["status"] == "succeeded"
        assert [a["status_code"] for a in records[0]["history"]] == [500, 500, 200]
    finally:
        server.stop()
        receiver.close()
    assert server.sql("SELECT COUNT(*) FROM callback_attempts")[0][0] == 3
