"""Callback latency: from a task's end (`finished_at`) to the first attempt reaching the receiver.

    PYTHONPATH=src .venv/bin/python bench/callbacks.py
    PYTHONPATH=src .venv/bin/python bench/callbacks.py --cancels 50 --burst 20 --completions 10

All on loopback, and it stops by itself. This process runs an opendance server (uvicorn in a
thread: the real app and the real callback sender) and drives it through the public API. An
HTTPS receiver with a throwaway trustme CA answers 200 to every callback. It runs in a child
process, like a real receiver on another machine, and so does the burst's client, so neither
takes this interpreter's GIL from the server; `--single-process` keeps both in here. The server
trusts that CA and allows loopback callbacks (the test-only settings). The per-key rate and
active-task limits are lifted because one key makes every task. Everything else is a production
default.

Scenarios:

- cancel, sequential: a server with no workers; create a task with a callback_url, cancel it,
  wait for its callback, repeat.
- cancel, burst: create `--burst` pending tasks, then cancel them all at once from
  `--burst-concurrency` client threads (several rounds).
- completion, sequential: a server with 2 workers (sandbox engine, 480p, 2 s videos); create a
  task, wait for its callback, repeat.
- completion, queued: the same server, all tasks created at once, workers busy throughout.

Latency = receiver arrival (`time.time()` when the request line and headers are in) minus the
task's `finished_at` (read from the database), so it covers the terminal commit, the sender's
wake-up, claim, body rendering, signing, connect, TLS and sending. Two parts are also shown:
`to connect` (finished_at to the receiver accepting the TCP connection: the sender's own work)
and `connect to request` (TLS handshake and sending). Percentiles are nearest-rank.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import math
import multiprocessing
import multiprocessing.process
import os
import platform
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
import trustme
import uvicorn

from opendance.app import Runtime, build_runtime, create_app
from opendance.settings import Settings

MODEL = "doubao-seedance-1.0-pro-fast"
WAIT_SECONDS = 30.0  # per callback, at most: a missing one is counted, never waited on forever
WARM_UP = 3


# --------------------------------------------------------------------------- receiver


@dataclass(frozen=True)
class Arrival:
    task_id: str
    webhook_id: str
    accepted_at: float  # TCP connection accepted
    arrived_at: float  # request line and headers read (after the TLS handshake)


class _TLSServer(http.server.ThreadingHTTPServer):
    """Accepts in the serving thread, handshakes in the connection's own thread."""

    daemon_threads = True
    # socketserver's default backlog is 5: a burst of connects would overflow it, and a dropped
    # SYN is retried by the client after 1 s, which is the receiver's fault, not the sender's.
    request_queue_size = 1024

    def __init__(self, context: ssl.SSLContext, record: Callable[[Arrival], None]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.tls = context
        self.record = record
        self.accepted: dict[int, float] = {}
        self.accepted_lock = threading.Lock()

    def get_request(self) -> tuple[Any, Any]:
        sock, address = self.socket.accept()
        accepted = time.time()
        wrapped = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        with self.accepted_lock:
            self.accepted[id(wrapped)] = accepted
        return wrapped, address


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        arrived = time.time()
        server = self.server
        assert isinstance(server, _TLSServer)
        with server.accepted_lock:
            accepted = server.accepted.pop(id(self.request), arrived)
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        webhook_id = self.headers.get("webhook-id", "")
        try:
            task_id = str(json.loads(body)["id"])
        except (ValueError, KeyError, TypeError):
            task_id = ""
        self.send_response(200)
        self.send_header("content-length", "2")
        self.send_header("connection", "close")
        self.end_headers()
        self.wfile.write(b"ok")
        server.record(Arrival(task_id, webhook_id, accepted, arrived))

    def log_message(self, *args: object) -> None:
        pass


def _tls_context(cert_chain_pem: bytes, folder: Path) -> ssl.SSLContext:
    path = folder / "receiver.pem"
    path.write_bytes(cert_chain_pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(path))
    return context


def _receiver_process(cert_chain_pem: bytes, conn: Connection) -> None:
    """The receiver in a child process: sends its port, then each arrival, until told to stop."""
    send_lock = threading.Lock()

    def record(arrival: Arrival) -> None:
        with send_lock:
            conn.send(arrival)

    with tempfile.TemporaryDirectory(prefix="opendance-receiver-") as folder:
        server = _TLSServer(_tls_context(cert_chain_pem, Path(folder)), record)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    conn.send(server.server_address[1])
    with contextlib.suppress(EOFError, OSError):
        conn.recv()  # "stop", or the parent went away
    server.shutdown()
    server.server_close()
    with send_lock, contextlib.suppress(OSError):
        conn.send(None)
    conn.close()


class Receiver:
    """An HTTPS webhook receiver on 127.0.0.1 that answers 200 and records first arrivals.

    With `separate_process`, it runs in a child process (as a real receiver would run elsewhere),
    so its threads do not compete with the server for this interpreter's GIL.
    """

    def __init__(self, ca: trustme.CA, folder: Path, *, separate_process: bool) -> None:
        self._cond = threading.Condition()
        self.arrivals: dict[str, Arrival] = {}
        self.repeats = 0
        cert_chain_pem = ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem
        self._server: _TLSServer | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        if separate_process:
            context = multiprocessing.get_context("spawn")
            ours, theirs = context.Pipe()
            self._process = context.Process(
                target=_receiver_process, args=(cert_chain_pem.bytes(), theirs), daemon=True
            )
            self._process.start()
            theirs.close()
            try:
                if not ours.poll(60):
                    raise EOFError
                port = int(ours.recv())
            except EOFError:
                self._process.kill()
                raise RuntimeError("the receiver process did not start") from None
            self._conn = ours
            self._reader = threading.Thread(target=self._read_arrivals, daemon=True)
            self._reader.start()
        else:
            server = _TLSServer(_tls_context(cert_chain_pem.bytes(), folder), self._record)
            self._server = server
            port = server.server_address[1]
            self._reader = threading.Thread(target=server.serve_forever, daemon=True)
            self._reader.start()
        self.url = f"https://localhost:{port}/hooks/video"

    def _read_arrivals(self) -> None:
        assert self._conn is not None
        with contextlib.suppress(EOFError, OSError):
            while (arrival := self._conn.recv()) is not None:
                self._record(arrival)

    def _record(self, arrival: Arrival) -> None:
        with self._cond:
            if arrival.task_id in self.arrivals:
                self.repeats += 1
                return
            self.arrivals[arrival.task_id] = arrival
            self._cond.notify_all()

    def wait(self, task_ids: list[str], timeout: float) -> dict[str, Arrival]:
        """The first arrivals for these tasks, waiting at most `timeout` seconds in all."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not all(t in self.arrivals for t in task_ids):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.5))
            return {t: self.arrivals[t] for t in task_ids if t in self.arrivals}

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._process is not None and self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.send("stop")
            self._reader.join(timeout=10)
            self._process.join(timeout=10)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(timeout=5)
            self._conn.close()


# --------------------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Live:
    runtime: Runtime
    base_url: str
    client: httpx.Client
    token: str
    server: uvicorn.Server
    thread: threading.Thread

    def create(self, callback_url: str) -> str:
        body = {
            "model": MODEL,
            "prompt": "a red fox in snow",
            "duration": 2,
            "quality": "480p",
            "callback_url": callback_url,
        }
        response = self.client.post("/v1/videos/generations", json=body)
        response.raise_for_status()
        return str(response.json()["id"])

    def cancel(self, task_id: str) -> None:
        self.client.post(f"/v1/tasks/{task_id}/cancel").raise_for_status()

    def finished_at(self, task_id: str) -> float | None:
        view = self.runtime.service.get_task_unscoped(task_id)
        return None if view is None else view.finished_at


def api_client(base_url: str, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=base_url,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
        trust_env=False,
    )


@contextlib.contextmanager
def live_server(data_dir: Path, ca_file: Path, workers: int) -> Iterator[Live]:
    settings = Settings(
        data_dir=data_dir,
        host="127.0.0.1",
        port=free_port(),
        workers=workers,
        first_key_credits=0,
        allow_loopback_for_tests=True,
        extra_ca_file=ca_file,
        # One key makes hundreds of tasks here: lift the per-key limits (unknown names are
        # ignored by Settings, so this also runs against versions without them).
        rate_limit_create="1000000/minute",
        rate_limit_read="1000000/minute",
        max_active_tasks_per_key=1_000_000,
    )
    runtime = build_runtime(settings)
    token = str(runtime.accounts.create_key(credits=1_000_000).token)
    app = create_app(settings, runtime=runtime)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=settings.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the opendance server did not start")
        time.sleep(0.02)
    base_url = f"http://127.0.0.1:{settings.port}"
    client = api_client(base_url, token)
    try:
        yield Live(runtime, base_url, client, token, server, thread)
    finally:
        client.close()
        server.should_exit = True
        thread.join(timeout=30)


# --------------------------------------------------------------------------- measuring


@dataclass
class Samples:
    name: str
    latencies: list[float] = field(default_factory=list)
    to_connect: list[float] = field(default_factory=list)
    connect_to_request: list[float] = field(default_factory=list)
    missing: int = 0

    def add(self, live: Live, arrivals: dict[str, Arrival], task_ids: list[str]) -> None:
        for task_id in task_ids:
            arrival = arrivals.get(task_id)
            finished = live.finished_at(task_id)
            if arrival is None or finished is None:
                self.missing += 1
                continue
            self.latencies.append((arrival.arrived_at - finished) * 1000)
            self.to_connect.append((arrival.accepted_at - finished) * 1000)
            self.connect_to_request.append((arrival.arrived_at - arrival.accepted_at) * 1000)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def run_cancel_sequential(live: Live, receiver: Receiver, count: int, samples: Samples) -> None:
    for index in range(WARM_UP + count):
        task_id = live.create(receiver.url)
        live.cancel(task_id)
        arrivals = receiver.wait([task_id], WAIT_SECONDS)
        if index >= WARM_UP:
            samples.add(live, arrivals, [task_id])


def _fire_cancels(base_url: str, token: str, task_ids: list[str], concurrency: int) -> None:
    """Cancel these tasks from `concurrency` threads at once (in this process or a child)."""
    with api_client(base_url, token) as client, ThreadPoolExecutor(concurrency) as pool:
        for response in pool.map(lambda t: client.post(f"/v1/tasks/{t}/cancel"), task_ids):
            response.raise_for_status()


def run_cancel_burst(
    live: Live,
    receiver: Receiver,
    size: int,
    rounds: int,
    concurrency: int,
    samples: Samples,
    *,
    separate_process: bool,
) -> None:
    for _ in range(rounds):
        task_ids = [live.create(receiver.url) for _ in range(size)]
        args = (live.base_url, live.token, task_ids, concurrency)
        if separate_process:
            child = multiprocessing.get_context("spawn").Process(target=_fire_cancels, args=args)
            child.start()
            child.join(timeout=WAIT_SECONDS + size)
            if child.is_alive():
                child.kill()
                child.join(timeout=5)
            if child.exitcode != 0:
                raise RuntimeError(f"the cancelling process failed ({child.exitcode})")
        else:
            time.sleep(0.2)  # let the creates settle: the burst is the cancels alone
            _fire_cancels(*args)
        arrivals = receiver.wait(task_ids, WAIT_SECONDS + size * 0.5)
        samples.add(live, arrivals, task_ids)
        time.sleep(0.5)


def run_completion_sequential(live: Live, receiver: Receiver, count: int, samples: Samples) -> None:
    for index in range(WARM_UP + count):
        task_id = live.create(receiver.url)
        arrivals = receiver.wait([task_id], WAIT_SECONDS)
        if index >= WARM_UP:
            samples.add(live, arrivals, [task_id])


def run_completion_queued(live: Live, receiver: Receiver, count: int, samples: Samples) -> None:
    task_ids = [live.create(receiver.url) for _ in range(count)]
    arrivals = receiver.wait(task_ids, WAIT_SECONDS + count * 2.0)
    samples.add(live, arrivals, task_ids)


# --------------------------------------------------------------------------- report


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def fmt(value: float) -> str:
    return f"{value:.1f}"


def print_tables(results: list[Samples], goal_ms: float) -> bool:
    print("| scenario | count | missing | p50 ms | p90 ms | p99 ms | max ms |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    met = True
    for s in results:
        if not s.latencies:
            print(f"| {s.name} | 0 | {s.missing} | - | - | - | - |")
            met = False
            continue
        lat = s.latencies
        p99 = percentile(lat, 99)
        met = met and p99 < goal_ms and s.missing == 0
        print(
            f"| {s.name} | {len(lat)} | {s.missing} | {fmt(percentile(lat, 50))} | "
            f"{fmt(percentile(lat, 90))} | {fmt(p99)} | {fmt(max(lat))} |"
        )
    print()
    print("Parts (p50 / p99, ms):\n")
    print("| scenario | finished_at to connect | connect to request |")
    print("| --- | --- | --- |")
    for s in results:
        if not s.latencies:
            continue
        a, b = s.to_connect, s.connect_to_request
        print(
            f"| {s.name} | {fmt(percentile(a, 50))} / {fmt(percentile(a, 99))} | "
            f"{fmt(percentile(b, 50))} / {fmt(percentile(b, 99))} |"
        )
    return met


def main() -> None:
    parser = argparse.ArgumentParser(description="Measure callback latency (task end to arrival).")
    parser.add_argument("--cancels", type=int, default=200, help="sequential cancel tasks")
    parser.add_argument("--burst", type=int, default=50, help="cancels fired at once per round")
    parser.add_argument("--burst-rounds", type=int, default=2)
    parser.add_argument("--burst-concurrency", type=int, default=10, help="client threads")
    parser.add_argument("--completions", type=int, default=50, help="completed tasks per mode")
    parser.add_argument("--workers", type=int, default=2, help="workers for the completion path")
    parser.add_argument("--goal-ms", type=float, default=200.0, help="the p99 goal")
    parser.add_argument(
        "--single-process",
        action="store_true",
        help="run the receiver and the burst's client in this process too (they then compete "
        "with the server for the GIL)",
    )
    args = parser.parse_args()
    for name in ("cancels", "burst", "burst_rounds", "burst_concurrency", "completions"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0")
    separate = not args.single_process

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"CPU: {cpu_model()}, {cpus} cores usable; Python {platform.python_version()}; "
        f"load average before {' '.join(f'{x:.2f}' for x in os.getloadavg())}; receiver and "
        f"burst client {'in child processes' if separate else 'in this process'}\n"
    )
    started = time.monotonic()
    results: list[Samples] = []
    ca = trustme.CA()
    with tempfile.TemporaryDirectory(prefix="opendance-bench-") as scratch:
        root = Path(scratch)
        ca_file = root / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        receiver = Receiver(ca, root, separate_process=separate)
        try:
            scenarios: list[tuple[int, int, str, Callable[[Live, Samples], None]]] = [
                (
                    args.cancels,
                    0,
                    "cancel, sequential",
                    lambda live, s: run_cancel_sequential(live, receiver, args.cancels, s),
                ),
                (
                    args.burst * args.burst_rounds,
                    0,
                    f"cancel, burst of {args.burst} ({args.burst_rounds} rounds)",
                    lambda live, s: run_cancel_burst(
                        live,
                        receiver,
                        args.burst,
                        args.burst_rounds,
                        args.burst_concurrency,
                        s,
                        separate_process=separate,
                    ),
                ),
                (
                    args.completions,
                    args.workers,
                    f"completion, sequential ({args.workers} workers)",
                    lambda live, s: run_completion_sequential(live, receiver, args.completions, s),
                ),
                (
                    args.completions,
                    args.workers,
                    f"completion, {args.completions} queued at once ({args.workers} workers)",
                    lambda live, s: run_completion_queued(live, receiver, args.completions, s),
                ),
            ]
            for index, (count, workers, name, run) in enumerate(scenarios):
                if count == 0:
                    continue
                samples = Samples(name)
                with live_server(root / f"data{index}", ca_file, workers) as live:
                    run(live, samples)
                results.append(samples)
        finally:
            receiver.close()
    met = print_tables(results, args.goal_ms)
    print(
        f"\nGoal p99 < {args.goal_ms:g} ms in every scenario: {'met' if met else 'NOT met'}. "
        f"Repeated deliveries seen: {receiver.repeats}. "
        f"Wall time {time.monotonic() - started:.0f} s."
    )


if __name__ == "__main__":
    main()
