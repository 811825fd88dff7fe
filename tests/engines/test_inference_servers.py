"""opendance as the job system in front of open inference servers: the `openai_videos` engine
(SGLang, vLLM-Omni) and the `lightx2v` engine, through the HTTP API, against fakes that follow
each server's contract and run as processes (so they can be killed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from opendance.media.video import probe_mp4
from opendance.settings import DEFAULT_MODEL, Route, RouteEngine
from tests.helpers.processes import ServerProcess
from tests.helpers.servers import LiveServer, free_port

pytestmark = pytest.mark.slow
ServerFactory = Callable[..., LiveServer]
REPO = Path(__file__).resolve().parents[2]
SIZES = ["832x480", "480x832", "640x640"]


@dataclass
class Fake:
    """One fake inference server process on loopback."""

    flavor: str
    port: int
    log: Path
    folder: Path
    step_seconds: float
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.helpers.video_servers", "--flavor", self.flavor,
             "--port", str(self.port), "--log", str(self.log), "--folder", str(self.folder),
             "--steps", "4", "--step-seconds", str(self.step_seconds), *extra],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])},
        )  # fmt: skip
        health = "/v1/service/status" if self.flavor == "lightx2v" else "/health"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the fake {self.flavor} exited"
            try:
                if httpx.get(self.url + health, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError("the fake did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def events(self, kind: str = "create") -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        lines = [json.loads(line) for line in self.log.read_text().splitlines() if line]
        return [event for event in lines if event["event"] == kind]


@pytest.fixture
def fakes(tmp_path: Path) -> Iterator[Callable[..., Fake]]:
    started: list[Fake] = []

    def make(flavor: str, step_seconds: float = 0.15, *extra: str) -> Fake:
        index = len(started)
        fake = Fake(flavor, free_port(), tmp_path / f"fake{index}.jsonl",
                    tmp_path / f"fake{index}", step_seconds)  # fmt: skip
        fake.start(*extra)
        started.append(fake)
        return fake

    yield make
    for fake in started:
        fake.kill()


def route_options(flavor: str, urls: list[str], **extra: Any) -> tuple[str, dict[str, Any]]:
    engine = "lightx2v" if flavor == "lightx2v" else "openai_videos"
    options: dict[str, Any] = {"base_urls": urls, "sizes": SIZES, "poll_initial_seconds": 0.1,
                               "poll_max_seconds": 0.3, "down_seconds": 0.5, **extra}  # fmt: skip
    if engine == "openai_videos":
        options["flavor"] = flavor
    return engine, options


def routes(flavor: str, urls: list[str], **extra: Any) -> dict[str, Route]:
    engine, options = route_options(flavor, urls, **extra)
    return {DEFAULT_MODEL: Route(engines=[RouteEngine(engine=engine, options=options)])}


FLAVORS = ["sglang", "vllm_omni", "lightx2v"]


@pytest.mark.parametrize("flavor", FLAVORS)
def test_a_seedance_request_runs_on_the_server_and_its_progress_rises(
    flavor: str, fakes: Callable[..., Fake], server_factory: ServerFactory, tmp_path: Path
) -> None:
    fake = fakes(flavor, step_seconds=0.4)
    server = server_factory(routes=routes(flavor, [fake.url]), workers=1)
    key = server.new_key(credits=100)
    created = server.create(key, prompt="a lighthouse", duration=2, quality="480p", seed=7)
    assert created.status_code == 200, created.text
    task_id = created.json()["id"]
    seen: list[int] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        task = server.get(key, task_id).json()
        seen.append(task["progress"])
        if task["status"] in ("completed", "failed", "cancelled"):
            break
        time.sleep(0.1)
    assert task["status"] == "completed", task
    assert seen == sorted(seen), f"progress never goes down: {seen}"
    assert len({p for p in seen if 0 < p < 100}) >= 2, f"progress rose in steps: {seen}"
    (create,) = fake.events()
    assert str(create["seed"]) == "7", "multipart sends it as text"
    video = httpx.get(task["results"][0], timeout=30)
    assert video.status_code == 200
    (tmp_path / "out.mp4").write_bytes(video.content)
    info = probe_mp4(tmp_path / "out.mp4")
    assert (info.width, info.height) == (832, 480)
    assert info.frames == 33, "2 s at 16 fps, as 4n+1 frames"
    assert task["task_info"]["resolution"] == "832x480"
    assert server.client.get("/v1/credits", headers=server.auth(key)).json()["balance"] < 100
    if flavor != "lightx2v":
        assert [e["id"] for e in fake.events("delete")] == [create["id"]], "server copy removed"


@pytest.mark.parametrize("flavor", FLAVORS)
def test_cancel_reaches_the_server(
    flavor: str, fakes: Callable[..., Fake], server_factory: ServerFactory
) -> None:
    fake = fakes(flavor, step_seconds=2.0)
    server = server_factory(routes=routes(flavor, [fake.url]), workers=1)
    key = server.new_key(credits=100)
    task_id = server.create(key, prompt="a long one", duration=2, quality="480p").json()["id"]
    server.wait_for(key, task_id, lambda t: t["status"] == "processing", 30)
    deadline = time.monotonic() + 30
    while not fake.events() and time.monotonic() < deadline:
        time.sleep(0.05)
    cancelled = server.client.post(f"/v1/tasks/{task_id}/cancel", headers=server.auth(key))
    assert cancelled.status_code == 200, cancelled.text
    (create,) = fake.events()
    deadline = time.monotonic() + 30
    while not fake.events("delete") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [e["id"] for e in fake.events("delete")] == [create["id"]]
    assert server.client.get("/v1/credits", headers=server.auth(key)).json()["balance"] == 100


@pytest.mark.parametrize("flavor", FLAVORS)
def test_a_failure_on_the_server_is_a_failed_task_with_a_refund(
    flavor: str, fakes: Callable[..., Fake], server_factory: ServerFactory
) -> None:
    fake = fakes(flavor)
    server = server_factory(routes=routes(flavor, [fake.url]), workers=1)
    key = server.new_key(credits=100)
    task_id = server.create(key, prompt="this one will [fail]", duration=2, quality="480p")
    done = server.wait_done(key, task_id.json()["id"])
    assert done["status"] == "failed"
    assert done["error"]["code"] == "upstream_failed"
    assert "illegal memory access" in done["error"]["message"]
    assert server.client.get("/v1/credits", headers=server.auth(key)).json()["balance"] == 100


def test_a_pool_spreads_work_holds_one_job_per_server_and_survives_a_killed_server(
    fakes: Callable[..., Fake], server_factory: ServerFactory
) -> None:
    pool = [fakes("vllm_omni", step_seconds=0.1) for _ in range(3)]
    server = server_factory(
        routes=routes("vllm_omni", [fake.url for fake in pool], server_attempts=3), workers=6
    )
    key = server.new_key(credits=1000)
    ids = [
        server.create(key, prompt=f"clip {i}", duration=2, quality="480p").json()["id"]
        for i in range(30)
    ]
    victim = pool[1]
    deadline = time.monotonic() + 60
    while len(victim.events()) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    victim.kill()  # SIGKILL mid-job: its job (in memory) is gone
    done = [server.wait_done(key, task_id, timeout=120) for task_id in ids]
    came_back = time.time()
    victim.start()  # the same server comes back on its port
    time.sleep(1.0)  # past its rest: the next job it is offered is probed first
    more = [
        server.create(key, prompt=f"again {i}", duration=2, quality="480p").json()["id"]
        for i in range(6)
    ]
    done += [server.wait_done(key, task_id, timeout=120) for task_id in more]
    assert all(task["status"] == "completed" for task in done), [
        (t["status"], t.get("error")) for t in done if t["status"] != "completed"
    ]
    for fake in pool:
        held = [event["held_before"] for event in fake.events()]
        assert held and max(held) == 0, f"a server was given a second job: {held}"
    counts = [len(fake.events()) for fake in pool]
    assert sum(counts) >= 36 and min(counts) >= 3, f"the work spread: {counts}"
    assert any(event["at"] > came_back for event in victim.events()), "it is used again"
    audit = server.runtime.service.ledger_audit(server.runtime.accounts.authenticate(key).id)
    balance = server.client.get("/v1/credits", headers=server.auth(key)).json()["balance"]
    assert audit.open_reservations == 0
    assert audit.reserved == audit.settled + audit.refunded
    assert balance == audit.balance == 1000 - audit.settled


def test_a_killed_opendance_resumes_every_job_on_its_server_without_a_second_create(
    fakes: Callable[..., Fake], tmp_path: Path
) -> None:
    pool = [fakes("sglang", step_seconds=0.5) for _ in range(2)]
    engine, options = route_options("sglang", [fake.url for fake in pool])
    process = ServerProcess(
        tmp_path / "data", tmp_path / "server.log", workers="2",
        routes=json.dumps({DEFAULT_MODEL: {"engines": [{"engine": engine, "options": options}]}}),
    )  # fmt: skip
    process.start()
    try:
        key = process.create_key(100)
        headers = {"Authorization": f"Bearer {key}"}
        ids = []
        for i in range(2):
            answer = httpx.post(
                f"{process.base_url}/v1/videos/generations",
                headers=headers,
                json={
                    "model": DEFAULT_MODEL,
                    "prompt": f"clip {i}",
                    "duration": 2,
                    "quality": "480p",
                },
            )
            assert answer.status_code == 200, answer.text
            ids.append(answer.json()["id"])  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            # Both jobs sent and their answers recorded (polling has begun: progress moved).
            tasks = [
                httpx.get(f"{process.base_url}/v1/tasks/{task_id}", headers=headers).json()
                for task_id in ids
            ]
            if all(task["progress"] > 0 for task in tasks):
                break
            time.sleep(0.05)
        assert sum(len(fake.events()) for fake in pool) == 2
        process.kill()
        process.start()
        for task_id in ids:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                task = httpx.get(f"{process.base_url}/v1/tasks/{task_id}", headers=headers).json()
                if task["status"] in ("completed", "failed", "cancelled"):
                    break
                time.sleep(0.2)
            assert task["status"] == "completed", task.get("error")
        creates = [event["id"] for fake in pool for event in fake.events()]
        assert len(creates) == 2, f"one create per task, none sent again: {creates}"
    finally:
        process.stop()


def test_an_unanswered_lightx2v_create_is_found_by_its_name_not_sent_twice(
    fakes: Callable[..., Fake], server_factory: ServerFactory
) -> None:
    """LightX2V takes a task id from the request, so a create whose answer never came (the
    server took it, then answered after our timeout) is looked up instead of failing."""
    fake = fakes("lightx2v", 0.15, "--hang-first-create", "4")
    server = server_factory(
        routes=routes("lightx2v", [fake.url], request_timeout_seconds=1.0), workers=1
    )
    key = server.new_key(credits=100)
    task_id = server.create(key, prompt="late answer", duration=2, quality="480p").json()["id"]
    done = server.wait_done(key, task_id, timeout=60)
    assert done["status"] == "completed", done
    (create,) = fake.events()
    assert create["id"].startswith("od-"), "opendance named the task"
