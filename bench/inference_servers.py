"""The control plane's overhead in front of inference servers (the `openai_videos` engine).

    PYTHONPATH=src:. .venv/bin/python bench/inference_servers.py
    PYTHONPATH=src:. .venv/bin/python bench/inference_servers.py --sequential 40 --queued 80

An opendance server (uvicorn in a thread: the real app, dispatcher and engine) in front of fake
vLLM-Omni servers (tests/helpers/video_servers.py, separate processes on loopback, each job four
"denoising steps" of `--step-seconds` and a real MP4 encode). Every timestamp is `time.time()`
on this one machine:

- dispatch: the fake's create minus the moment our `POST /v1/videos/generations` returned
  (record, claim, choose a server, build and send the create); in the queued run this is
  mostly waiting for a free server, so there the figure that counts is the next one;
- server idle between jobs: per server, from a job's `completed` to the next create it gets
  (poll, download, delete, release, claim, create): what the control plane costs a busy GPU;
- completion: the task's `finished_at` minus the fake's `completed` (a poll, the download into
  our storage, the checks, the terminal commit);
- throughput, four servers: tasks per minute against what the servers could do flat out (the
  sum of their busy time over four times the wall time: their utilisation).

Sequential runs one task at a time on one server, so the numbers are the overhead alone; queued
puts all tasks in at once on four servers (`max_in_flight` 1, 8 worker threads).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from opendance.app import create_app
from opendance.runtime import Runtime, build_runtime
from opendance.settings import DEFAULT_MODEL, Route, RouteEngine, Settings

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def start_fake(folder: Path, index: int, step_seconds: float) -> tuple[str, Path, Any]:
    port = free_port()
    log = folder / f"fake{index}.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.video_servers", "--flavor", "vllm_omni",
         "--port", str(port), "--log", str(log), "--folder", str(folder / f"f{index}"),
         "--steps", "4", "--step-seconds", str(step_seconds)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return url, log, proc
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError("fake did not start")


def idle_gaps(logs: list[Path]) -> list[float]:
    """Per server: from a job's `complete` to the next create it is sent (queued work waiting)."""
    gaps: list[float] = []
    for log in logs:
        finished: float | None = None
        for line in log.read_text().splitlines():
            event = json.loads(line)
            if event["event"] == "complete":
                finished = event["at"]
            elif event["event"] == "create" and finished is not None:
                gaps.append(event["at"] - finished)
                finished = None
    return gaps


def events(logs: list[Path]) -> dict[tuple[str, str], float]:
    """(event, job id) -> when, over every fake's log."""
    found: dict[tuple[str, str], float] = {}
    for log in logs:
        for line in log.read_text().splitlines():
            event = json.loads(line)
            found[(event["event"], event["id"])] = event["at"]
    return found


def serve(
    folder: Path, urls: list[str], workers: int
) -> tuple[str, Runtime, uvicorn.Server, threading.Thread]:
    options = {"base_urls": urls, "flavor": "vllm_omni", "sizes": ["832x480"]}
    settings = Settings(
        data_dir=folder / "data",
        port=free_port(),
        workers=workers,
        log_level="warning",
        routes={
            DEFAULT_MODEL: Route(engines=[RouteEngine(engine="openai_videos", options=options)])
        },
        rate_limit_create="100000/minute",
        max_active_tasks_per_key=10000,
    )
    runtime = build_runtime(settings)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, runtime=runtime), port=settings.port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    return settings.base_url, runtime, server, thread


def run(count: int, servers: int, workers: int, step_seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="opendance-bench-") as tmp:
        folder = Path(tmp)
        fakes = [start_fake(folder, i, step_seconds) for i in range(servers)]
        base_url, runtime, server, thread = serve(folder, [url for url, _, _ in fakes], workers)
        token = runtime.accounts.create_key(credits=10**9).token
        headers = {"Authorization": f"Bearer {token}"}
        body = {"model": DEFAULT_MODEL, "prompt": "a boat", "duration": 2, "quality": "480p"}
        returned: dict[str, float] = {}
        began = time.time()
        with httpx.Client(base_url=base_url, headers=headers, timeout=30) as client:

            def create() -> str:
                task_id = str(client.post("/v1/videos/generations", json=body).json()["id"])
                returned[task_id] = time.time()
                return task_id

            def wait(task_id: str) -> None:
                while client.get(f"/v1/tasks/{task_id}").json()["status"] != "completed":
                    time.sleep(0.02)

            if servers == 1:
                ids = []
                for _ in range(count):
                    ids.append(create())
                    wait(ids[-1])
            else:
                ids = [create() for _ in range(count)]
                for task_id in ids:
                    wait(task_id)
        wall = time.time() - began
        seen = events([log for _, log, _ in fakes])
        gaps = idle_gaps([log for _, log, _ in fakes])
        dispatch, completion, busy = [], [], 0.0
        for task_id in ids:
            view = runtime.service.get_task_unscoped(task_id)
            assert view is not None and view.finished_at is not None
            job = _job_of(runtime, task_id)
            dispatch.append(seen[("create", job)] - returned[task_id])
            completion.append(view.finished_at - seen[("complete", job)])
            busy += seen[("complete", job)] - seen[("start", job)]
        server.should_exit = True  # the app's shutdown closes the runtime
        thread.join(timeout=60)
        for _, _, proc in fakes:
            proc.kill()
        return {
            "tasks": count,
            "servers": servers,
            "dispatch_p50_ms": 1000 * percentile(dispatch, 50),
            "dispatch_p99_ms": 1000 * percentile(dispatch, 99),
            "completion_p50_ms": 1000 * percentile(completion, 50),
            "completion_p99_ms": 1000 * percentile(completion, 99),
            "idle_gap_p50_ms": 1000 * percentile(gaps, 50) if gaps else 0.0,
            "idle_gap_p99_ms": 1000 * percentile(gaps, 99) if gaps else 0.0,
            "tasks_per_minute": 60 * count / wall,
            "server_utilisation": busy / (servers * wall),
        }


def _job_of(runtime: Runtime, task_id: str) -> str:
    """The server's job id, from the task's saved engine state (white-box)."""
    from sqlalchemy import select

    from opendance.store.tables import Task

    with runtime.db.read() as session:
        state = session.execute(select(Task.engine_state).where(Task.id == task_id)).scalar_one()
    return str((state if isinstance(state, dict) else json.loads(state))["upstream_id"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sequential", type=int, default=40)
    parser.add_argument("--queued", type=int, default=80)
    parser.add_argument("--step-seconds", type=float, default=0.1)
    args = parser.parse_args()
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}")  # fmt: skip
    rows = [
        run(args.sequential, servers=1, workers=1, step_seconds=args.step_seconds),
        run(args.queued, servers=4, workers=8, step_seconds=args.step_seconds),
    ]
    print("| scenario | tasks | dispatch p50 / p99 ms | completion p50 / p99 ms "
          "| server idle between jobs p50 / p99 ms | tasks/min | server utilisation |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row, name in zip(rows, ("sequential, 1 server", "queued, 4 servers"), strict=True):
        print(
            f"| {name} | {row['tasks']} | {row['dispatch_p50_ms']:.0f} / "
            f"{row['dispatch_p99_ms']:.0f} | {row['completion_p50_ms']:.0f} / "
            f"{row['completion_p99_ms']:.0f} | {row['idle_gap_p50_ms']:.0f} / "
            f"{row['idle_gap_p99_ms']:.0f} | {row['tasks_per_minute']:.0f} | "
            f"{row['server_utilisation']:.0%} |"
        )


if __name__ == "__main__":
    main()
