"""The real server on the `ark` engine, SIGKILLed while the upstream task runs.

After the restart it must resume polling the very same upstream task (one create, never two),
finish it, copy the video into our storage, charge exactly once, and nowhere that a client, an
operator or a callback receiver can see may the route's upstream key appear: not in the server's
log, any API answer, the task object, the callback deliveries, nor the database.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from sqlalchemy import MetaData, create_engine, select

from opendance.media.video import probe_mp4
from tests.helpers.processes import ServerProcess
from tests.helpers.receivers import Receiver, Script, ca_bundle
from tests.helpers.upstreams import FakeArk, Recorded, make_mp4

pytestmark = pytest.mark.slow

MODEL = "doubao-seedance-1.0-pro-fast"
KEY_ENV = "OD_E2E_ARK_API_KEY"


def wait_for(what: str, check: Callable[[], bool], timeout: float, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Client:
    """Our API as a client sees it; every answer body is kept for the secret grep."""

    def __init__(self, base_url: str, api_key: str) -> None:
        self.base_url = base_url
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.seen: list[tuple[str, bytes]] = []

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = path if path.startswith("http") else self.base_url + path
        response = httpx.request(method, url, headers=self.headers, timeout=30, **kwargs)
        self.seen.append((f"{method} {path} -> {response.status_code}", response.content))
        return response

    def task(self, task_id: str) -> dict[str, Any]:
        response = self.request("GET", f"/v1/tasks/{task_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


def upstream_polls(fake: FakeArk, since: int = 0) -> list[Recorded]:
    return [
        r
        for r in fake.requests[since:]
        if r.method == "GET" and r.path.startswith(fake.create_path + "/")
    ]


def write_config(path: Path, fake_base_url: str) -> Path:
    path.write_text(
        f"""
[routes."{MODEL}"]
engines = [
  {{ engine = "ark", options = {{ base_url = "{fake_base_url}", api_key_env = "{KEY_ENV}", \
poll_initial_seconds = 0.2, poll_max_seconds = 0.3, poll_backoff = 1.2, \
request_timeout_seconds = 10, download_timeout_seconds = 20, video_url_allow_loopback = true }} }},
]
"""
    )
    return path


def database_rows(database_url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, for the grep (works on SQLite and PostgreSQL alike)."""
    engine = create_engine(database_url)
    try:
        metadata = MetaData()
        metadata.reflect(engine)
        with engine.connect() as conn:
            return {
                name: [tuple(row) for row in conn.execute(select(table))]
                for name, table in metadata.tables.items()
            }
    finally:
        engine.dispose()


def test_sigkill_while_upstream_runs_resumes_same_task_and_leaks_no_key(tmp_path: Path) -> None:
    started = time.monotonic()
    upstream_key = "ark-SECRET-" + secrets.token_hex(16)
    source = make_mp4(tmp_path / "upstream.mp4")
    fake = FakeArk(upstream_key, source)
    # Queued for one answer, then `running` until the test says otherwise (after the restart).
    fake.scenario.queued_polls = 1
    fake.scenario.running_polls = 10**9
    ca = trustme.CA()
    receiver = Receiver(ca, Script([(200, 0.0)]))
    data_dir = tmp_path / "data"
    fake.start()
    server = ServerProcess(
        data_dir,
        tmp_path / "server.log",
        config=str(write_config(tmp_path / "opendance.toml", fake.base_url)),
        workers="1",
        lease_seconds="2",
        poll_interval_seconds="0.1",
        allow_loopback_for_tests="true",
        extra_ca_file=str(ca_bundle(ca, tmp_path)),
        log_level="debug",
    )
    server.env[KEY_ENV] = upstream_key
    cli_outputs: list[str] = []
    try:
        created = server.cli("keys", "create", "--credits", "100")
        cli_outputs += [created.stdout, created.stderr]
        match = re.search(r"od_[a-z0-9]{8}_[A-Za-z0-9]{38}", created.stdout)
        assert match, created.stdout + created.stderr
        client = Client(server.base_url, match.group(0))

        # -- first life: create, let the upstream task start, then kill -9 ----------------------
        server.start()
        try:
            body = {
                "model": MODEL,
                "prompt": "kill -9 while the upstream runs",
                "duration": 2,
                "quality": "480p",
                "callback_url": receiver.url,
            }
            response = client.request("POST", "/v1/videos/generations", json=body)
            assert response.status_code == 200, response.text
            task_id = response.json()["id"]
            wait_for(
                "the upstream create and a `running` poll",
                lambda: len(fake.creates()) == 1 and len(upstream_polls(fake)) >= 2,
                timeout=20,
            )
            assert client.task(task_id)["status"] == "processing"
            [upstream_id] = list(fake.tasks)
            state_rows = server.sql("SELECT engine_state FROM tasks WHERE id = :t", t=task_id)
            raw_state = state_rows[0][0]
            state = json.loads(raw_state) if isinstance(raw_state, str) else raw_state
            assert isinstance(state, dict), state
            assert upstream_id in json.dumps(state), state
            assert "submitted" in json.dumps(state), state
            killed_at = len(fake.requests)
            killed_time = time.monotonic()
        finally:
            server.kill()

        time.sleep(0.5)
        assert len(fake.requests) == killed_at, "the killed server still talked to the upstream"
        assert fake.tasks[upstream_id].forced is None  # nobody cancelled it upstream

        # -- second life: resume polling the same upstream task, then let it finish -------------
        server.start()
        restarted_time = time.monotonic()
        try:
            wait_for(
                "a poll of the same upstream task after the restart",
                lambda: len(upstream_polls(fake, killed_at)) >= 2,
                timeout=20,
            )
            resumed_after = time.monotonic() - restarted_time
            assert client.task(task_id)["status"] == "processing"
            fake.tasks[upstream_id].forced = "succeeded"
            wait_for(
                "the task to complete",
                lambda: client.task(task_id)["status"] in ("completed", "failed", "cancelled"),
                timeout=30,
                step=0.1,
            )
            final = client.task(task_id)
            assert final["status"] == "completed", final
            assert final["model"] == MODEL

            # Exactly one submission; every poll, before and after the crash, is of that task.
            assert len(fake.creates()) == 1
            polls = upstream_polls(fake)
            assert {r.path for r in polls} == {f"{fake.create_path}/{upstream_id}"}
            assert len(upstream_polls(fake, killed_at)) >= 2
            assert not fake.calls("DELETE"), "the upstream task was cancelled"
            # The key really was used (so the grep below is not vacuous), and only on the API.
            api_calls = [r for r in fake.requests if r.path.startswith(fake.api_prefix)]
            assert api_calls
            assert all(
                r.headers.get("authorization") == f"Bearer {upstream_key}" for r in api_calls
            )
            downloads = fake.calls("GET", "/files/")
            assert downloads
            assert all("authorization" not in r.headers for r in downloads)

            # The finished video is served from our own storage, and decodes.
            [result_url] = final["results"]
            assert not result_url.startswith(fake.root)
            video = client.request("GET", result_url)
            assert video.status_code == 200
            (tmp_path / "result.mp4").write_bytes(video.content)
            info = probe_mp4(tmp_path / "result.mp4")
            expected = probe_mp4(tmp_path / "upstream.mp4")
            assert (info.width, info.height, info.frames) == (
                expected.width,
                expected.height,
                expected.frames,
            )

            # The completion callback arrives and its delivery record says so.
            wait_for("the callback", lambda: len(receiver.received) >= 1, timeout=20)

            def delivered() -> bool:
                records = client.request("GET", f"/v1/tasks/{task_id}/callbacks").json()["data"]
                return bool(records) and records[0]["status"] == "succeeded"

            wait_for("the callback delivery record", delivered, timeout=20, step=0.1)
            assert json.loads(receiver.received[-1].body)["id"] == task_id

            # Every other way a client can look at the task (the faces' bodies are only grepped).
            assert client.request("GET", "/v1/tasks").status_code == 200
            client.request("GET", f"/api/v3/contents/generations/tasks/{task_id}")
            client.request("GET", f"/v1/videos/{task_id}")
            client.request("GET", "/v1/videos")
        finally:
            server.stop()
    finally:
        fake.stop()
        receiver.close()

    check = server.cli("ledger", "check")
    cli_outputs += [check.stdout, check.stderr]
    assert check.returncode == 0, check.stdout + check.stderr
    kinds = Counter(
        row[0]
        for row in server.sql("SELECT kind FROM ledger_entries WHERE task_id = :t", t=task_id)
    )
    assert kinds["reserve"] == 1 and kinds["settle"] == 1 and kinds["refund"] == 0, kinds
    attempts = server.sql("SELECT attempts FROM tasks WHERE id = :t", t=task_id)[0][0]
    assert attempts == 2, attempts

    # -- the secret grep ------------------------------------------------------------------------
    leaks: list[str] = []
    log_text = server.log.read_bytes()
    assert b"resuming upstream task" in log_text  # the log is the real one
    if upstream_key.encode() in log_text:
        leaks.append("server log")
    for label, content in client.seen:
        if upstream_key.encode() in content:
            leaks.append(f"API answer {label}")
    for index, delivery in enumerate(receiver.received):
        if upstream_key.encode() in delivery.body or upstream_key in json.dumps(delivery.headers):
            leaks.append(f"callback delivery {index}")
    leaks += [f"CLI output {i}" for i, out in enumerate(cli_outputs) if upstream_key in out]
    rows = database_rows(server.database_url)
    assert rows["tasks"], rows.keys()
    for name, table_rows in rows.items():
        for row in table_rows:
            if upstream_key in repr(row):
                leaks.append(f"database table {name}")
    engine_state = server.sql("SELECT engine_state FROM tasks WHERE id = :t", t=task_id)[0][0]
    assert upstream_id in str(engine_state) and upstream_key not in str(engine_state)
    for path in data_dir.rglob("*"):
        if path.is_file() and upstream_key.encode() in path.read_bytes():
            leaks.append(f"file {path.relative_to(data_dir)}")
    assert not leaks, f"the upstream key leaked into: {leaks}"

    total = time.monotonic() - started
    print(
        f"resumed polling {resumed_after:.1f} s after the restart "
        f"({time.monotonic() - killed_time:.1f} s from kill to the end); total {total:.1f} s"
    )
