"""How many requests the SDK's `wait()` makes: per change of the task, and per wait period.

    .venv/bin/python bench/sdk_wait.py --markdown

Two opendance servers in this process (uvicorn in a thread each, SQLite in a temporary folder,
the sandbox engine, rate limits lifted), and `AsyncClient.wait()` on many tasks at once, every
request recorded at the SDK's HTTP transport:

- busy: `--tasks` tasks (`--quality`, `--duration`) created together on a server with
  `--workers` workers, so they queue (their `queue_position` and `estimated_time` move), run
  and complete; `wait()` with its defaults (long-poll, 30 s holds);
- quiet: `--quiet-tasks` tasks on a server with no workers (they stay pending), each waited on
  with `--quiet-period` second holds until `--quiet-timeout` (WaitTimeoutError, expected).

Each read of a task is put in one class: it ended a wait period (held for at least 90% of the
`wait` it asked for), or it brought a change (a 200 with an ETag not seen before for the task),
or it was wasted (neither). One JSON line per task: reads, changes, periods, wasted, the changes
the server committed for it (several may fold into one answer), the `on_progress` calls, the
seconds waited, and what polling every second would have cost over that time. Then one summary
line per scenario: `excess` = reads - (changes + periods), 0 when the figure holds for every
task ("at most one request per task change, plus one per wait period"); `--markdown` adds a
table. Exit status 1 if any read was wasted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from opendance.app import create_app
from opendance.client import AsyncClient, Task, WaitTimeoutError
from opendance.runtime import Runtime, build_runtime
from opendance.settings import Settings

#: The per-task counts added up in a scenario's summary.
TOTALS = ("reads", "changes", "periods", "wasted", "http_200", "http_304", "server_commits",
          "on_progress", "poll_every_1s")  # fmt: skip


@dataclass
class Read:
    task_id: str
    status: int
    etag: str | None
    wait: float | None
    seconds: float


class RecordingTransport(httpx.AsyncBaseTransport):
    """The real transport, with every task read kept (the path, the status, the time)."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.reads: list[Read] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        started = time.monotonic()
        response = await self.inner.handle_async_request(request)
        path = request.url.path
        if path.startswith("/v1/tasks/") and path.count("/") == 3:
            wait = request.url.params.get("wait")
            self.reads.append(
                Read(
                    path.rsplit("/", 1)[1],
                    response.status_code,
                    response.headers.get("etag"),
                    None if wait is None else float(wait),
                    time.monotonic() - started,
                )
            )
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class Live:
    runtime: Runtime
    base_url: str
    token: str
    #: Commits that changed each task (the runtime's change hook).
    commits: Counter[str] = field(default_factory=Counter)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def live_server(data_dir: Path, workers: int) -> Iterator[Live]:
    settings = Settings(
        data_dir=data_dir,
        host="127.0.0.1",
        port=free_port(),
        workers=workers,
        first_key_credits=0,
        rate_limit_create="1000000/minute",
        rate_limit_read="1000000/minute",
        max_active_tasks_per_key=1_000_000,
    )
    runtime = build_runtime(settings)
    token = str(runtime.accounts.create_key(credits=1_000_000).token)
    live = Live(runtime, f"http://127.0.0.1:{settings.port}", token)
    runtime.service.on_changed.append(lambda task_id: live.commits.update([task_id]))
    app = create_app(settings, runtime=runtime)
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=settings.port, log_level="warning", lifespan="on"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the opendance server did not start")
        time.sleep(0.02)
    try:
        yield live
    finally:
        runtime.shutting_down = True
        server.should_exit = True
        thread.join(timeout=30)


def classify(reads: list[Read]) -> Counter[str]:
    """periods, changes and wasted reads of one task (the reads in order)."""
    counts: Counter[str] = Counter()
    seen: set[str] = set()
    for read in reads:
        new = read.status == 200 and read.etag is not None and read.etag not in seen
        if read.etag:
            seen.add(read.etag)
        if read.wait is not None and read.seconds >= 0.9 * read.wait:
            counts["periods"] += 1
        elif new:
            counts["changes"] += 1
        else:
            counts["wasted"] += 1
        counts[f"http_{read.status}"] += 1
    return counts


async def wait_on(
    live: Live, count: int, *, wait_period: float, timeout: float | None, **create: Any
) -> tuple[RecordingTransport, list[dict[str, Any]]]:
    """Create `count` tasks at once and wait on each; per task: id, seconds, calls, outcome."""
    transport = RecordingTransport()
    http = httpx.AsyncClient(transport=transport, timeout=30)
    async with AsyncClient(live.token, base_url=live.base_url, http_client=http) as sdk:
        tasks = await asyncio.gather(*(sdk.create(f"bench {i}", **create) for i in range(count)))

        async def one(task: Task) -> dict[str, Any]:
            calls = 0

            def report(_: Task) -> None:
                nonlocal calls
                calls += 1

            started = time.monotonic()
            try:
                done = await sdk.wait(
                    task, on_progress=report, timeout=timeout, wait_period=wait_period
                )
                outcome = done.status
            except WaitTimeoutError:
                outcome = "timeout"
            return {
                "task": task.id,
                "seconds": round(time.monotonic() - started, 2),
                "on_progress": calls,
                "outcome": outcome,
            }

        results = await asyncio.gather(*(one(task) for task in tasks))
    await http.aclose()
    return transport, results


def report(
    scenario: str, live: Live, transport: RecordingTransport, results: list[dict[str, Any]]
) -> dict[str, Any]:
    """Print one JSON line per task and one for the scenario; the summary."""
    totals: Counter[str] = Counter()
    excess = 0
    for result in results:
        reads = [read for read in transport.reads if read.task_id == result["task"]]
        counts = classify(reads)
        line = {
            "scenario": scenario,
            **result,
            "reads": len(reads),
            "changes": counts["changes"],
            "periods": counts["periods"],
            "wasted": counts["wasted"],
            "http_200": counts["http_200"],
            "http_304": counts["http_304"],
            "server_commits": live.commits[result["task"]],
            "poll_every_1s": math.floor(result["seconds"]) + 1,
        }
        excess = max(excess, len(reads) - counts["changes"] - counts["periods"])
        totals.update({k: v for k, v in line.items() if isinstance(v, int)})
        print(json.dumps(line), flush=True)
    summary = {
        "scenario": scenario,
        "summary": True,
        "tasks": len(results),
        **{name: totals[name] for name in TOTALS},
        "reads_per_change_or_period": round(
            totals["reads"] / max(1, totals["changes"] + totals["periods"]), 3
        ),
        "excess": excess,
    }
    print(json.dumps(summary), flush=True)
    return summary


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def markdown(summaries: list[dict[str, Any]]) -> str:
    rows = [
        "| scenario | tasks | reads | changes | periods | wasted | 200 / 304 | server commits "
        "| on_progress | polling every 1 s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in summaries:
        rows.append(
            f"| {s['scenario']} | {s['tasks']} | {s['reads']} | {s['changes']} | {s['periods']} "
            f"| {s['wasted']} | {s['http_200']} / {s['http_304']} | {s['server_commits']} "
            f"| {s['on_progress']} | {s['poll_every_1s']} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=6, help="busy: tasks waited on at once")
    parser.add_argument("--workers", type=int, default=1, help="busy: the server's workers")
    parser.add_argument("--quality", default="720p", help="busy: the videos' quality")
    parser.add_argument("--duration", type=int, default=5, help="busy: the videos' seconds")
    parser.add_argument("--quiet-tasks", type=int, default=4, help="quiet: pending tasks")
    parser.add_argument("--quiet-period", type=float, default=2.0, help="quiet: hold (s)")
    parser.add_argument("--quiet-timeout", type=float, default=10.0, help="quiet: wait (s)")
    parser.add_argument("--markdown", action="store_true", help="also print a table")
    args = parser.parse_args()

    print(
        json.dumps(
            {
                "cpu": cpu_model(),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "args": vars(args),
            }
        ),
        flush=True,
    )
    summaries = []
    with tempfile.TemporaryDirectory(prefix="sdk-wait-") as folder:
        with live_server(Path(folder) / "busy", args.workers) as live:
            transport, results = asyncio.run(
                wait_on(
                    live,
                    args.tasks,
                    wait_period=30.0,
                    timeout=600.0,
                    quality=args.quality,
                    duration=args.duration,
                )
            )
            summaries.append(report("busy", live, transport, results))
        with live_server(Path(folder) / "quiet", 0) as live:
            transport, results = asyncio.run(
                wait_on(
                    live,
                    args.quiet_tasks,
                    wait_period=args.quiet_period,
                    timeout=args.quiet_timeout,
                    quality="480p",
                    duration=2,
                )
            )
            summaries.append(report("quiet", live, transport, results))
    if args.markdown:
        print(markdown(summaries))
    sys.exit(1 if any(s["wasted"] for s in summaries) else 0)


if __name__ == "__main__":
    main()
