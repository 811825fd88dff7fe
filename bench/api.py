"""API throughput and latency next to a bare Starlette floor and a bare FastAPI app, over loopback.

    .venv/bin/python bench/api.py --concurrency 50 200 --seconds 10

For each concurrency level, a fresh SQLite database and three servers on 127.0.0.1, each one
uvicorn process (one uvicorn worker, uvicorn's defaults: uvloop and httptools where installed,
access log off via log level `warning`):

- opendance: `python -m opendance serve --no-workers` (no in-process worker threads, so the
  sandbox engine does not compete for the CPU and every created task stays pending); the rate
  limits (per second), the per-key active-task cap and the queue cap raised out of the way;
- the floor: a bare Starlette app (this file, `floor`), one route answering GET and POST with a
  fixed JSON object shaped like a task object (a POST reads its body first).
- the FastAPI app: the same two requests as an idiomatic FastAPI app writes them (this file,
  `floor --kind fastapi`): the create validates opendance's request model from the body, both
  return the fixed object as a dict. No auth, no database: the framework's own cost, which
  opendance (a FastAPI app) cannot go below.

A load generator in its own process (this file, `load`: asyncio on uvloop, one keep-alive
HTTP/1.1 connection per client, a minimal response parser, much cheaper per request than httpx;
its CPU use is reported, to show it is not the bottleneck) drives each server with
`--concurrency` clients, each sending its next request as soon as the previous answer is in
(closed loop). The runs, in order: floor POST, FastAPI app POST, opendance create (`POST
/v1/videos/generations`, 480p, 5 s, one API key), floor GET, FastAPI app GET, opendance get
(`GET /v1/tasks/{id}`, cycling through the tasks the create run made), opendance get-304
(the same GETs with `If-None-Match` of each task's current ETag, fetched once before the
run: every answer a 304) and opendance long-poll (`GET /v1/tasks/{id}?wait=W` with the
current ETag from `--long-poll-clients` clients, default 500: each request is held `--wait`
seconds, nothing changes, and it ends in a 304).
The get-304 and long-poll rows are set beside the floors' GET. Each run: connections opened,
`--warmup` seconds not counted, then `--seconds` measured:

- req/s: responses completed in the window / window (a long-poll answers once per `--wait`
  seconds per client: its req/s is clients / wait, and its CPU ms/req is what holding and
  answering one long-poll costs);
- p50, p99: latency of the requests sent and answered inside the window (ms);
- CPU ms/req: the server process's CPU time (all its threads) over the window per answered
  request, a figure that other load on the machine disturbs less than req/s does; and the load
  generator's CPU in % of one core (the machine has few cores and it shares them);
- ratio: opendance req/s / floor req/s at the same concurrency and method; and the same for
  the FastAPI app against the floor, and opendance against the FastAPI app.

`--rate R` makes every run open loop instead: R requests per second are due on a fixed
schedule, spread over the connections; a request that finds every connection busy waits, and
its latency counts from when it was due (no coordinated omission). Latency at an offered rate
below saturation is what a client of a busy, not overloaded, server sees.

Any answer other than 2xx (and 304 for the conditional runs) is counted and shown; a run with
errors is flagged. `--profile DIR` adds,
after the measured runs, a create and a get run at the highest concurrency under `py-spy record`
(GIL-holding samples only: what uses the interpreter's one core), and prints the hottest
functions. Every process started here is stopped (SIGTERM, then SIGKILL), also on error or
Ctrl-C; children also get SIGTERM if this process dies (Linux).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import ctypes
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
MODEL = "doubao-seedance-1.0-pro-fast"
CREATE_BODY = json.dumps(
    {
        "model": MODEL,
        "prompt": "A red fox trotting through fresh snow at dawn, breath visible, soft light",
        "duration": 5,
        "quality": "480p",
        "aspect_ratio": "16:9",
    }
).encode()
#: What the floor answers: a pending task object, as opendance's create and get return it.
FLOOR_OBJECT: dict[str, Any] = {
    "id": "task-unified-1761313744-vux2jw0k",
    "object": "video.generation.task",
    "type": "video",
    "model": MODEL,
    "status": "pending",
    "progress": 0,
    "created": 1761313744,
    "task_info": {
        "can_cancel": True,
        "estimated_time": 165,
        "video_duration": 5,
        "quality": "480p",
        "aspect_ratio": "16:9",
        "resolution": "864x480",
        "fps": 24,
        "frames": 120,
    },
    "usage": {"billing_rule": "per_call", "credits_reserved": 3, "user_group": "default"},
}
UNLIMITED = str(10**9)
#: Runs whose requests carry If-None-Match (304 is their expected answer).
CONDITIONAL_OPS = ("get-304", "long-poll")
#: The floors' run each opendance run is set beside.
FLOOR_OP = {"create": "create", "get": "get", "get-304": "get", "long-poll": "get"}


class BenchError(RuntimeError):
    pass


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks of sorted values (numpy's default)."""
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) from /proc, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the benchmark process dies (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


# ---------------------------------------------------------------------------- the floor


def serve_floor(port: int, log_level: str, kind: str) -> None:
    """A floor app (bench/floors.py) under uvicorn with the settings `opendance serve` uses."""
    import floors
    import uvicorn

    app = (
        floors.fastapi_app(FLOOR_OBJECT)
        if kind == "fastapi"
        else floors.starlette_app(FLOOR_OBJECT)
    )
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_level=log_level,
        log_config=None,
        timeout_graceful_shutdown=30,
    )


# ---------------------------------------------------------------------------- load generator


@dataclass
class LoadSpec:
    port: int
    method: str
    #: Paths cycled through by the clients (one path for POST).
    paths: list[str]
    concurrency: int
    warmup: float
    seconds: float
    server_pid: int
    token: str = ""
    body: str = ""
    #: Where to write the ids of the created tasks (create runs).
    ids_out: str = ""
    #: Requests per second offered on a schedule (open loop); 0: closed loop.
    rate: float = 0.0
    #: Send each path's current ETag as If-None-Match (read once per path before the run).
    conditional: bool = False


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request in flight (Content-Length bodies only)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        #: The ETag of the last answer (lower-cased head), if it had one.
        self.etag = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        status = int(head[9:12])
        at = head.find(b"\r\ncontent-length:")
        if at < 0 and status not in (204, 304):
            waiter.set_exception(BenchError(f"no content-length in {head[:200]!r}"))
            return
        length = (
            int(head[at + 17 : head.find(b"\r\n", at + 2) % (len(head) + 1)].strip())
            if at >= 0
            else 0
        )
        total = end + 4 + length
        if len(self.buffer) < total:
            return
        self.etag = _header(head, b"etag")
        body = bytes(self.buffer[end + 4 : total])
        del self.buffer[:total]
        waiter.set_result((status, body))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(BenchError(f"connection lost: {exc}"))

    async def request(self, data: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter


def _header(head: bytes, name: bytes) -> bytes:
    """A header's value from a lower-cased response head (b"" if absent)."""
    at = head.find(b"\r\n" + name + b":")
    if at < 0:
        return b""
    start = at + len(name) + 3
    stop = head.find(b"\r\n", start)
    return head[start : stop if stop >= 0 else len(head)].strip()


def _request_bytes(spec: LoadSpec, path: str, etag: bytes = b"") -> bytes:
    lines = [f"{spec.method} {path} HTTP/1.1", f"Host: 127.0.0.1:{spec.port}"]
    if spec.token:
        lines.append(f"Authorization: Bearer {spec.token}")
    if etag:
        lines.append(f"If-None-Match: {etag.decode()}")
    body = spec.body.encode()
    if spec.method == "POST":
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _drive(spec: LoadSpec) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    requests = [_request_bytes(spec, path) for path in spec.paths]
    connections = []
    for _ in range(spec.concurrency):
        _transport, protocol = await loop.create_connection(_Connection, "127.0.0.1", spec.port)
        connections.append(protocol)
    if spec.conditional:
        requests = await _conditional_requests(spec, connections)
    started = time.perf_counter()
    window_start = started + spec.warmup
    window_end = window_start + spec.seconds
    latencies: list[float] = []
    statuses: collections.Counter[int] = collections.Counter()
    completed = 0
    bodies: list[bytes] = []
    marks: dict[str, float] = {}

    async def mark_window() -> None:
        await asyncio.sleep(max(0.0, window_start - time.perf_counter()))
        marks["cpu_server"] = process_cpu_seconds(spec.server_pid)
        marks["cpu_load"] = time.process_time()
        await asyncio.sleep(max(0.0, window_end - time.perf_counter()))
        marks["cpu_server_end"] = process_cpu_seconds(spec.server_pid)
        marks["cpu_load_end"] = time.process_time()

    def record(sent: float, status: int, body: bytes) -> None:
        nonlocal completed
        answered = time.perf_counter()
        if window_start <= answered <= window_end:
            completed += 1
            statuses[status] += 1
            if sent >= window_start:
                latencies.append(answered - sent)
        if spec.ids_out and status == 200:
            bodies.append(body)

    async def client(index: int, connection: _Connection) -> None:
        """Closed loop: the next request as soon as the answer is in."""
        turn = index
        while True:
            sent = time.perf_counter()
            if sent >= window_end:
                return
            status, body = await connection.request(requests[turn % len(requests)])
            turn += spec.concurrency
            record(sent, status, body)

    # Open loop: request n is due at started + n / rate, whatever the answers do; a request
    # waits for a free connection if it must, and its latency counts from when it was due
    # (no coordinated omission).
    due: asyncio.Queue[tuple[float, int]] = asyncio.Queue()

    async def pacer() -> None:
        number = 0
        while True:
            at = started + number / spec.rate
            if at >= window_end:
                break
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            due.put_nowait((at, number))
            number += 1
        for _ in connections:
            due.put_nowait((float("inf"), -1))

    async def scheduled_client(connection: _Connection) -> None:
        while True:
            at, number = await due.get()
            if number < 0:
                return
            status, body = await connection.request(requests[number % len(requests)])
            record(at, status, body)

    if spec.rate > 0:
        drivers = [pacer(), *(scheduled_client(c) for c in connections)]
    else:
        drivers = [client(i, c) for i, c in enumerate(connections)]
    await asyncio.gather(mark_window(), *drivers)
    for connection in connections:
        if connection.transport is not None:
            connection.transport.close()
    written = 0
    if spec.ids_out:
        ids = [json.loads(body)["id"] for body in bodies]
        Path(spec.ids_out).write_text("\n".join(ids))
        written = len(ids)
    latencies.sort()
    return {
        "requests": completed,
        "rps": completed / spec.seconds,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "max_ms": (latencies[-1] if latencies else float("nan")) * 1000,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "server_cpu": (marks["cpu_server_end"] - marks["cpu_server"]) / spec.seconds,
        "load_cpu": (marks["cpu_load_end"] - marks["cpu_load"]) / spec.seconds,
        "ids_written": written,
    }


async def _conditional_requests(spec: LoadSpec, connections: list[_Connection]) -> list[bytes]:
    """Each path's request with If-None-Match of its current ETag (one plain GET per path,
    spread over the connections, before the clock starts)."""
    plain = [(path, _request_bytes(spec, path.split("?", 1)[0])) for path in spec.paths]
    tags: dict[str, bytes] = {}

    async def fetch(connection: _Connection, share: list[tuple[str, bytes]]) -> None:
        for path, data in share:
            status, _ = await connection.request(data)
            if status != 200 or not connection.etag:
                raise BenchError(f"no ETag for {path} (status {status})")
            tags[path] = connection.etag

    count = len(connections)
    await asyncio.gather(*(fetch(c, plain[i::count]) for i, c in enumerate(connections)))
    return [_request_bytes(spec, path, tags[path]) for path in spec.paths]


def run_load(spec: LoadSpec) -> dict[str, Any]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_drive(spec))
    return uvloop.run(_drive(spec))


# ---------------------------------------------------------------------------- orchestration


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise BenchError(f"{self.name} exited with {self.proc.returncode}:\n{tail}")


@dataclass
class Result:
    concurrency: int
    target: str
    op: str
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    server_cpu: float
    load_cpu: float
    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        expected = ("2", "304") if self.op in CONDITIONAL_OPS else ("2",)
        return sum(v for k, v in self.statuses.items() if not k.startswith(expected))


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("OPENDANCE_")}


@contextlib.contextmanager
def spawned(name: str, args: list[str], env: dict[str, str], log: Path) -> Iterator[Server]:
    """A server process on loopback, stopped (SIGTERM, then SIGKILL) on the way out."""
    port = int(env["BENCH_PORT"])
    with open(log, "ab") as handle:
        proc = subprocess.Popen(
            args,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    server = Server(name, port, proc, log)
    try:
        _wait_listening(server)
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _wait_listening(server: Server) -> None:
    import httpx

    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        server.check_alive()
        with contextlib.suppress(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{server.port}/healthz", timeout=1)
            return
        time.sleep(0.1)
    raise BenchError(f"{server.name} did not start listening")


def prepare_database(data_dir: Path) -> str:
    """Migrate a fresh SQLite database and make one API key with credits for any run."""
    from opendance.store import migrate
    from opendance.store.db import Database
    from opendance.tasks.accounts import Accounts

    data_dir.mkdir(parents=True)
    url = f"sqlite:///{data_dir / 'opendance.db'}"
    migrate.upgrade(url)
    db = Database(url)
    try:
        return Accounts(db).create_key(credits=10**12, name="bench").token
    finally:
        db.dispose()


def opendance_env(data_dir: Path, port: int, log_level: str) -> dict[str, str]:
    env = _clean_env()
    env.update(
        BENCH_PORT=str(port),
        OPENDANCE_DATA_DIR=str(data_dir),
        OPENDANCE_HOST="127.0.0.1",
        OPENDANCE_PORT=str(port),
        OPENDANCE_WORKERS="0",
        OPENDANCE_LOG_LEVEL=log_level,
        OPENDANCE_FIRST_KEY_CREDITS="0",
        # Per second: the limiter's moving window then holds about a second of requests, as
        # many as a key at the default per-minute limit has; a minute of a benchmark's
        # requests (100,000s) would make every request pay for a window no server keeps.
        OPENDANCE_RATE_LIMIT_CREATE=f"{UNLIMITED}/second",
        OPENDANCE_RATE_LIMIT_READ=f"{UNLIMITED}/second",
        OPENDANCE_MAX_ACTIVE_TASKS_PER_KEY=UNLIMITED,
        OPENDANCE_MAX_QUEUED_TASKS=UNLIMITED,
    )
    return env


def load(spec: LoadSpec, timeout: float) -> dict[str, Any]:
    """Run the load generator in its own process; its JSON result."""
    done = subprocess.run(
        [sys.executable, __file__, "load"],
        input=json.dumps(asdict(spec)),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_clean_env(),
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )
    if done.returncode != 0:
        raise BenchError(f"load generator failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def measure(
    server: Server,
    op: str,
    concurrency: int,
    args: argparse.Namespace,
    *,
    token: str = "",
    ids: Sequence[str] = (),
    ids_out: Path | None = None,
) -> dict[str, Any]:
    if op == "create":
        method, paths, body = "POST", ["/v1/videos/generations"], CREATE_BODY.decode()
    else:
        method, body = "GET", ""
        query = f"?wait={args.wait:g}" if op == "long-poll" else ""
        paths = [f"/v1/tasks/{task_id}{query}" for task_id in ids] or ["/v1/tasks/unknown"]
    spec = LoadSpec(
        port=server.port,
        method=method,
        paths=paths,
        # A held request does not load the server: many more of them at once.
        concurrency=args.long_poll_clients if op == "long-poll" else concurrency,
        warmup=args.warmup,
        seconds=args.seconds,
        server_pid=server.proc.pid,
        token=token,
        body=body,
        ids_out=str(ids_out or ""),
        rate=args.rate,
        conditional=op in CONDITIONAL_OPS,
    )
    result = load(spec, timeout=args.warmup + args.seconds + args.wait + 180)
    server.check_alive()
    return result


def pending_tasks(data_dir: Path) -> int:
    import sqlite3

    with contextlib.closing(sqlite3.connect(data_dir / "opendance.db", timeout=30)) as conn:
        row = conn.execute("SELECT count(*) FROM tasks WHERE status = 'pending'").fetchone()
        return int(row[0])


def run_level(
    concurrency: int, args: argparse.Namespace, root: Path, progress: Callable[[str], None]
) -> tuple[list[Result], dict[str, Any]]:
    """Both servers, fresh, at one concurrency level: the four measured runs."""
    level = root / f"c{concurrency}"
    data_dir = level / "data"
    token = prepare_database(data_dir)
    ours_port, floor_port, fastapi_port = free_port(), free_port(), free_port()
    results: list[Result] = []
    info: dict[str, Any] = {}

    def floor_server(kind: str, port: int) -> contextlib.AbstractContextManager[Server]:
        command = [sys.executable, __file__, "floor", "--port", str(port), "--kind", kind]
        command += ["--log-level", args.log_level]
        env = {**_clean_env(), "BENCH_PORT": str(port)}
        return spawned(kind, command, env, level / f"{kind}-floor.log")

    ours_args = [sys.executable, "-m", "opendance", "serve", "--no-workers"]
    with (
        floor_server("starlette", floor_port) as floor,
        floor_server("fastapi", fastapi_port) as fastapi_app,
        spawned(
            "opendance",
            ours_args,
            opendance_env(data_dir, ours_port, args.log_level),
            level / "opendance.log",
        ) as ours,
    ):
        ids_file = level / "ids.txt"
        plan: list[tuple[Server, str, str]] = [
            (floor, "floor", "create"),
            (fastapi_app, "fastapi", "create"),
            (ours, "opendance", "create"),
            (floor, "floor", "get"),
            (fastapi_app, "fastapi", "get"),
            (ours, "opendance", "get"),
            (ours, "opendance", "get-304"),
            (ours, "opendance", "long-poll"),
        ]
        plan = [run for run in plan if run[1] != "opendance" or run[2] in ("create", *args.runs)]
        for server, target, op in plan:
            ids: list[str] = []
            if target == "opendance" and op != "create":
                ids = ids_file.read_text().split()
                info["get_ids"] = len(ids)
            raw = measure(
                server,
                op,
                concurrency,
                args,
                token=token if target == "opendance" else "",
                ids=ids,
                ids_out=ids_file if (target, op) == ("opendance", "create") else None,
            )
            result = Result(
                concurrency=concurrency,
                target=target,
                op=op,
                **{k: raw[k] for k in ("requests", "rps", "p50_ms", "p99_ms", "max_ms")},
                server_cpu=raw["server_cpu"],
                load_cpu=raw["load_cpu"],
                statuses=raw["statuses"],
            )
            results.append(result)
            progress(
                f"c={concurrency} {target} {op}: {result.rps:.0f} req/s, p50 "
                f"{result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, statuses {result.statuses}"
            )
            if (target, op) == ("opendance", "create"):
                info["pending_after_create"] = pending_tasks(data_dir)
        if args.profile is not None and concurrency == max(args.concurrency):
            info["profile"] = profile(ours, token, ids_file, concurrency, args, progress)
    return results, info


def profile(
    server: Server,
    token: str,
    ids_file: Path,
    concurrency: int,
    args: argparse.Namespace,
    progress: Callable[[str], None],
) -> dict[str, str]:
    """py-spy (GIL holder only) over a create and a get run; the hottest functions, as text."""
    out_dir: Path = args.profile
    out_dir.mkdir(parents=True, exist_ok=True)
    py_spy = Path(sys.executable).with_name("py-spy")
    reports: dict[str, str] = {}
    for op in ("create", "get"):
        raw = out_dir / f"{op}-c{concurrency}.folded"
        ids = ids_file.read_text().split() if op == "get" else []
        progress(f"profiling {op} at c={concurrency} with py-spy -> {raw}")
        spy = subprocess.Popen(
            [
                str(py_spy),
                "record",
                "--pid",
                str(server.proc.pid),
                "--gil",
                "--rate",
                "250",
                "--format",
                "raw",
                "--duration",
                str(int(args.warmup + args.seconds)),
                "--output",
                str(raw),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        try:
            time.sleep(0.5)
            ids_out = out_dir / f"ids-{op}.txt" if op == "create" else None
            measure(server, op, concurrency, args, token=token, ids=ids, ids_out=ids_out)
            _, err = spy.communicate(timeout=args.warmup + args.seconds + 60)
        finally:
            if spy.poll() is None:
                spy.kill()
                spy.wait()
        if not raw.exists():
            raise BenchError(f"py-spy wrote nothing: {err.decode(errors='replace')[-2000:]}")
        reports[op] = summarize_profile(raw, args.profile_top)
        (out_dir / f"{op}-c{concurrency}.txt").write_text(reports[op])
    return reports


def summarize_profile(path: Path, top: int) -> str:
    """Inclusive and self share of samples per function, from py-spy's folded stacks."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [_short_frame(frame) for frame in stack.split(";")]
        total += count
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    lines = [f"{total} samples (GIL holder)", "", "inclusive  self  function"]
    for frame, count in inclusive.most_common(top):
        lines.append(f"{100 * count / total:8.1f}% {100 * own[frame] / total:5.1f}%  {frame}")
    lines += ["", "by self time:"]
    for frame, count in own.most_common(top):
        lines.append(f"{100 * count / total:8.1f}%  {frame}")
    return "\n".join(lines)


def _short_frame(frame: str) -> str:
    """`func (path/to/site-packages/pkg/mod.py:12)` -> `func (pkg/mod.py)`."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/src/", "/lib/python3"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    return f"{name} ({where})" if where else name


# ---------------------------------------------------------------------------- report


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def results_table(results: Sequence[Result]) -> str:
    by_key = {(r.concurrency, r.target, r.op): r for r in results}
    rows = []
    for r in results:
        if r.target != "opendance":
            continue
        floor = by_key.get((r.concurrency, "floor", FLOOR_OP[r.op]))
        fastapi_app = by_key.get((r.concurrency, "fastapi", FLOOR_OP[r.op]))
        cells = []
        for one in (r, floor):
            if one is None:
                cells += ["-"] * 4
                continue
            errors = f" ({one.errors} errors)" if one.errors else ""
            cells += [
                f"{one.rps:,.0f}{errors}",
                f"{one.p50_ms:.1f}",
                f"{one.p99_ms:.1f}",
                f"{1000 * one.server_cpu / one.rps:.2f}" if one.rps else "-",
            ]
        ratio = f"{100 * r.rps / floor.rps:.1f} %" if floor and floor.rps else "-"
        if fastapi_app is not None and fastapi_app.rps:
            errors = f" ({fastapi_app.errors} errors)" if fastapi_app.errors else ""
            fastapi_cells = [
                f"{fastapi_app.rps:,.0f}{errors}",
                f"{fastapi_app.p99_ms:.1f}",
                f"{1000 * fastapi_app.server_cpu / fastapi_app.rps:.2f}",
                f"{100 * fastapi_app.rps / floor.rps:.1f} %" if floor and floor.rps else "-",
                f"{100 * r.rps / fastapi_app.rps:.1f} %",
            ]
        else:
            fastapi_cells = ["-"] * 5
        load_cpu = max(x.load_cpu for x in (r, floor, fastapi_app) if x is not None)
        rows.append(
            [str(r.concurrency), r.op, *cells, ratio, *fastapi_cells, f"{100 * load_cpu:.0f}"]
        )
    return markdown(
        [
            "clients",
            "op",
            "opendance req/s",
            "p50 ms",
            "p99 ms",
            "CPU ms/req",
            "floor req/s",
            "p50 ms",
            "p99 ms",
            "CPU ms/req",
            "ratio",
            "FastAPI app req/s",
            "p99 ms",
            "CPU ms/req",
            "FastAPI / floor",
            "opendance / FastAPI",
            "load gen CPU %",
        ],
        rows,
    )


def _raise_on_sigterm(signum: int, _frame: types.FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "load":
        print(json.dumps(run_load(LoadSpec(**json.loads(sys.stdin.read())))))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "floor":
        floor = argparse.ArgumentParser(prog="api.py floor")
        floor.add_argument("--port", type=int, required=True)
        floor.add_argument("--log-level", default="warning")
        floor.add_argument("--kind", choices=["starlette", "fastapi"], default="starlette")
        floor_args = floor.parse_args(sys.argv[2:])
        serve_floor(floor_args.port, floor_args.log_level, floor_args.kind)
        return

    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="offer this many requests/s on a schedule over the connections (open loop) "
        "instead of each client sending again as soon as it is answered",
    )
    parser.add_argument(
        "--wait", type=float, default=2.0, help="seconds each long-poll of the long-poll run asks"
    )
    parser.add_argument(
        "--long-poll-clients",
        type=int,
        default=500,
        help="clients of the long-poll run (each holds one request at a time)",
    )
    parser.add_argument(
        "--runs",
        nargs="+",
        choices=["get", "get-304", "long-poll"],
        default=["get", "get-304", "long-poll"],
        help="opendance's read runs (after its create run); e.g. only `get` against a version "
        "without ETags",
    )
    parser.add_argument(
        "--log-level", default="warning", help="uvicorn/opendance log level of both servers"
    )
    parser.add_argument("--profile", type=Path, help="py-spy the create and get paths here")
    parser.add_argument("--profile-top", type=int, default=40, help="functions listed")
    parser.add_argument("--keep", type=Path, help="keep data dirs and server logs here (new dir)")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args()
    if min(args.concurrency) < 1 or args.seconds <= 0 or args.warmup < 0 or args.rate < 0:
        parser.error("--concurrency must be >= 1, --seconds > 0, --warmup >= 0, --rate >= 0")
    if args.long_poll_clients < 1:
        parser.error("--long-poll-clients must be >= 1")
    if not 0 < args.wait <= 60:
        parser.error("--wait must be > 0 and <= 60 (the server's limit)")
    if args.keep is not None and args.keep.exists() and any(args.keep.iterdir()):
        parser.error(f"--keep {args.keep} is not empty")

    def progress(message: str) -> None:
        if not args.quiet:
            print(f"# {message}", file=sys.stderr, flush=True)

    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    cpus = len(os.sched_getaffinity(0))
    results: list[Result] = []
    infos: dict[int, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            root = args.keep
        else:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="od-api-bench-")))
        load_before = os.getloadavg()
        try:
            for concurrency in args.concurrency:
                level_results, infos[concurrency] = run_level(concurrency, args, root, progress)
                results += level_results
        except BenchError as error:
            sys.exit(f"benchmark failed: {error}")
        load_after = os.getloadavg()

    import uvicorn

    print(
        f"CPU: {cpu_model()}, {cpus} cores usable (servers and load generator share them); "
        f"Python {platform.python_version()}, uvicorn {uvicorn.__version__}"
    )
    print(
        f"Load average (1, 5, 15 min) before: {', '.join(f'{x:.2f}' for x in load_before)}; "
        f"after: {', '.join(f'{x:.2f}' for x in load_after)}"
    )
    loop_kind = (
        f"open loop: {args.rate:g} requests/s offered over the connections, latency from when "
        "each was due"
        if args.rate
        else "closed loop: each client sends again as soon as it is answered"
    )
    print(
        f"\n{loop_kind}. {args.seconds:g} s measured per run after {args.warmup:g} s warm-up. "
        "CPU ms/req: the "
        "server process's CPU time (all threads) per answered request; load gen CPU %: the "
        "busier of the two load generator runs, in % of one core:\n"
    )
    print(results_table(results))
    for concurrency, info in infos.items():
        print(
            f"\nc={concurrency}: {info.get('pending_after_create', '?')} pending tasks in the "
            f"database after the create run; get cycled through {info.get('get_ids', '?')} ids"
        )
        if "long-poll" in args.runs:
            print(
                f"long-poll at c={concurrency}: {args.long_poll_clients} clients, each request "
                f"held {args.wait:g} s (`?wait={args.wait:g}` with the current ETag)"
            )
        for op, report in info.get("profile", {}).items():
            print(f"\nprofile, {op} at {concurrency} clients:\n\n```\n{report}\n```")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {"results": [asdict(r) for r in results], "info": infos}, indent=1, default=str
            )
        )


if __name__ == "__main__":
    main()
