"""Scale-out throughput and dispatch latency, on real processes over loopback.

    .venv/bin/python bench/dispatch.py --tasks 60 --latency-runs 50
    .venv/bin/python bench/dispatch.py --only fair-latency --backlog 10000 --backlog-keys 100

Scale-out (`OPENDANCE_DISPATCH=procrastinate`, PostgreSQL): for each worker count in
`--workers` (default 1 2 3), a fresh database, one API process (`opendance serve --no-workers`)
and that many worker processes (`opendance worker --concurrency 1`). After warm-up tasks (not
counted), `--tasks` tasks (sandbox engine, 480p, 2 s) are submitted as fast as the client can
(`--submitters` threads), and timed from the database:

- throughput = tasks / (last `finished_at` - first creation), where a task's creation instant is
  its reserve ledger entry's `created_at` (the float `now` of `create_task`; `tasks.created` is
  whole seconds);
- run time per task = `finished_at - started_at` (claim to terminal commit);
- busy = the sum of run times / (workers x window): how much of the window the workers ran tasks.

Dispatch latency (pending -> processing with an idle worker): on the 1-worker deployment, after
its throughput run, tasks are submitted one at a time, each waited on until it completes, then
`--gap` seconds of idle before the next. Per task, `started_at` (the worker's claim, from the
database) is measured from three instants:

- POST sent: `time.time()` in this client just before the create request (what a caller sees,
  so it includes the HTTP request and the create transaction);
- task created: the server's creation instant (as above; before the create commit);
- POST returned: `time.time()` when the response is in (negative when the worker claimed the
  task before the client had the answer).

`started_at` is the worker's clock when its claim begins (the conditional UPDATE commits a moment
later). The POST round trip and the run time (`finished_at - started_at`) of those tasks are shown
too, and for procrastinate a breakdown from the worker's log (its "Starting job" line, 1 ms steps):
created -> job taken (commit, defer, NOTIFY, job fetch) and job taken -> started (the hand-off to
the claim thread).

Needs PostgreSQL (`--admin-url`, a database this user may CREATE/DROP databases from) and the
package installed (run with the project's virtual environment). Per-key rate limits and the
active-task cap are lifted in the processes started here: one client key sends all the load.

The same latency run is made on the single-machine mode as a reference: `opendance serve` with
`OPENDANCE_DISPATCH=local`, SQLite and one in-process worker thread.

Deep queue (`--only fair-latency` runs this part alone): the same latency run, on a fresh
1-worker deployment of each mode, first with an empty queue and then with `--backlog` (10,000)
pending tasks over `--backlog-keys` (100) keys, so that the claim (`claim_next`: the first entry of
`ix_tasks_fair_claim`) is shown to stay cheap. The backlog lies in the same tables and indexes but
belongs to a second routed model (`bench-backlog`, sandbox) that no worker serves, so the measured
worker stays idle between measured tasks: on procrastinate both models are routed and the worker
is `opendance worker --models <the measured model>`; on the single-machine mode `serve` routes the
measured model only, because its worker threads serve every routed model (`serve` has no
`--models`). The backlog tasks are made in this process by the task service on the deployment's
database (`Accounts.create_key`, `TaskService.create_task`: real prices, ledger entries and fair
tags; on procrastinate one job each in the model's queue, as the API defers them), not through
HTTP, which would take minutes. With the backlog in place this process also times `claim_next`
(the measured model, nothing pending; the backlog model, each call taking the next task, all handed
back after), the claim's SELECT alone, the create's pending count, on procrastinate the API's
periodic re-offer pass, and prints the claim SELECT's plan (SQLite `EXPLAIN QUERY PLAN`,
PostgreSQL `EXPLAIN (ANALYZE, BUFFERS)`, rolled back) for both models. The CPU used by each process
during each latency run is shown too: the measured tasks are the same, so a difference is work
that the backlog causes.

All processes share this machine's clock, so client and server times compare directly. Percentiles
interpolate linearly between samples (with 50 samples p99 lies between the two largest). Every
process started here is stopped (SIGTERM, then SIGKILL) and every database made here is dropped,
also on error or Ctrl-C; children also get SIGTERM if this process dies (Linux).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import types
import uuid
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import psycopg
from sqlalchemy import Engine, bindparam, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

MODEL = "doubao-seedance-1.0-pro-fast"
KEY_PATTERN = re.compile(r"od_[a-z0-9]{8}_[A-Za-z0-9]{38}")
TERMINAL = ("completed", "failed", "cancelled")
START_TIMEOUT = 90.0  # seconds for a process to come up
STOP_TIMEOUT = 40.0  # seconds for a graceful stop before SIGKILL

Mode = Literal["procrastinate", "local"]


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


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the benchmark process dies (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Deployment:
    """One database, one API process and its workers; everything torn down on exit."""

    def __init__(
        self,
        mode: Mode,
        workers: int,
        admin_url: str,
        root: Path,
        label: str,
        routes: dict[str, Any] | None = None,
    ) -> None:
        self.mode = mode
        self.workers = workers
        #: `OPENDANCE_ROUTES` of every process started here (None: the default, MODEL only).
        self.routes = routes
        self.admin_url = admin_url
        self.label = label
        self.dir = root / label
        self.data_dir = self.dir / "data"
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.db_name: str | None = None
        self.database_url = ""
        self.procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        self.engine: Engine | None = None
        self.http: httpx.Client | None = None
        self.token = ""

    # -- set-up and tear-down ------------------------------------------------------------

    def __enter__(self) -> Deployment:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENDANCE_")}
        env.update(
            OPENDANCE_DISPATCH=self.mode,
            OPENDANCE_DATABASE_URL=self.database_url,
            OPENDANCE_DATA_DIR=str(self.data_dir),
            OPENDANCE_PORT=str(self.port),
            OPENDANCE_HOST="127.0.0.1",
            OPENDANCE_FIRST_KEY_CREDITS="0",
            # A benchmark client is one key sending far more than a user may: lift the per-key
            # limits (the limiter still runs) so that they, not dispatch, are never measured.
            OPENDANCE_RATE_LIMIT_CREATE="1000000000/minute",
            OPENDANCE_RATE_LIMIT_READ="1000000000/minute",
            OPENDANCE_MAX_ACTIVE_TASKS_PER_KEY="1000000000",
            OPENDANCE_MAX_QUEUED_TASKS="1000000000",
            # The latency breakdown reads procrastinate's "Starting job" lines from the log.
            OPENDANCE_LOG_LEVEL="info",
            OPENDANCE_LOG_FORMAT="text",
        )
        if self.routes is not None:
            env["OPENDANCE_ROUTES"] = json.dumps(self.routes)
        return env

    def _start(self) -> None:
        self.data_dir.mkdir(parents=True)
        if self.mode == "procrastinate":
            self.db_name = f"od_bench_{uuid.uuid4().hex[:12]}"
            with psycopg.connect(self.admin_url, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{self.db_name}"')
            url = make_url(self.admin_url).set(drivername="postgresql+psycopg")
            self.database_url = url.set(database=self.db_name).render_as_string(hide_password=False)
        else:
            self.database_url = f"sqlite:///{self.data_dir / 'opendance.db'}"
        created = subprocess.run(
            [sys.executable, "-m", "opendance", "keys", "create", "--credits", "100000000"],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        match = KEY_PATTERN.search(created.stdout)
        if match is None:
            raise BenchError(f"key creation failed:\n{created.stdout}\n{created.stderr}")
        self.token = match.group(0)
        self.engine = create_engine(self.database_url)
        self.http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
            limits=httpx.Limits(max_connections=16, max_keepalive_connections=16),
        )
        if self.mode == "procrastinate":
            self._spawn("api", "serve", "--no-workers")
        else:
            self._spawn("api", "serve", "--workers", str(self.workers))
        self._wait_healthy()
        if self.mode == "procrastinate":
            for index in range(self.workers):
                self._spawn(f"worker{index}", "worker", "--models", MODEL, "--concurrency", "1")
            self._wait_workers()

    def _spawn(self, name: str, *args: str) -> None:
        log = self.dir / f"{name}.log"
        with open(log, "ab") as handle:
            proc = subprocess.Popen(
                [sys.executable, "-m", "opendance", *args],
                env=self._env(),
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        self.procs.append((name, proc, log))

    def _check_alive(self) -> None:
        for name, proc, log in self.procs:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:]
                raise BenchError(f"{self.label}: {name} exited with {proc.returncode}:\n{tail}")

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            self._check_alive()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise BenchError(f"{self.label}: the API did not become healthy")

    def _wait_workers(self) -> None:
        """Until every worker process has registered with procrastinate (its fetch loop runs)."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            self._check_alive()
            with contextlib.suppress(Exception):
                if self.scalar("SELECT count(*) FROM procrastinate_workers") >= self.workers:
                    return
            time.sleep(0.1)
        raise BenchError(f"{self.label}: the workers did not register")

    def close(self) -> None:
        for _name, proc, _log in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for _name, proc, _log in self.procs:
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self.procs.clear()
        if self.http is not None:
            self.http.close()
            self.http = None
        if self.engine is not None:
            self.engine.dispose()
            self.engine = None
        if self.db_name is not None:
            with psycopg.connect(self.admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
            self.db_name = None

    # -- client side -------------------------------------------------------------------------

    def scalar(self, query: str, **params: object) -> Any:
        assert self.engine is not None
        with self.engine.connect() as conn:
            return conn.execute(text(query), params).scalar()

    def create(self, index: int, quality: str, duration: int) -> str:
        assert self.http is not None
        body = {
            "model": MODEL,
            "prompt": f"dispatch bench {index}",
            "duration": duration,
            "quality": quality,
        }
        response = self.http.post("/v1/videos/generations", json=body)
        if response.status_code != 200:
            raise BenchError(f"create failed: {response.status_code} {response.text}")
        task_id: str = response.json()["id"]
        return task_id

    def timings(self, ids: Sequence[str]) -> list[TaskTiming]:
        assert self.engine is not None
        query = text(
            "SELECT t.id, t.status, l.created_at, t.started_at, t.finished_at, t.worker_id "
            "FROM tasks t JOIN ledger_entries l ON l.task_id = t.id AND l.kind = 'reserve' "
            "WHERE t.id IN :ids"
        ).bindparams(bindparam("ids", expanding=True))
        with self.engine.connect() as conn:
            rows = conn.execute(query, {"ids": list(ids)}).all()
        return [TaskTiming(*row) for row in rows]

    def wait_done(self, ids: Sequence[str], timeout: float, poll: float = 0.1) -> None:
        assert self.engine is not None
        query = text(
            "SELECT count(*) FROM tasks WHERE id IN :ids AND status IN :terminal"
        ).bindparams(bindparam("ids", expanding=True), bindparam("terminal", expanding=True))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.engine.connect() as conn:
                done = conn.execute(query, {"ids": list(ids), "terminal": list(TERMINAL)}).scalar()
            if done == len(ids):
                return
            self._check_alive()
            time.sleep(poll)
        raise BenchError(f"{self.label}: {len(ids)} tasks not done in {timeout:.0f} s")


@dataclass
class TaskTiming:
    id: str
    status: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    worker_id: str | None


@dataclass
class Throughput:
    workers: int
    tasks: int
    submit_s: float
    window_s: float
    tasks_per_s: float
    mean_run_s: float
    busy: float
    per_worker: list[int]
    #: CPU seconds spent during the run, by whom (see `CpuMeter`), and the machine's busy share.
    cpu_s: dict[str, float] = field(default_factory=dict)
    machine_busy: float = 0.0


@dataclass
class Latency:
    mode: str
    measured_from: str
    samples_ms: list[float] = field(default_factory=list)
    #: The queue the samples were taken with (the deep-queue run: "empty" or the backlog).
    queue: str = ""

    def row(self) -> list[str]:
        values = self.samples_ms
        stats = [percentile(values, q) for q in (0.5, 0.9, 0.99)] + [max(values)]
        cells = [f"{value:.1f}" for value in stats] + [f"{statistics.fmean(values):.1f}"]
        return [self.mode, self.measured_from, str(len(values)), *cells]


def check_completed(timings: Sequence[TaskTiming], expected: int) -> None:
    statuses = Counter(t.status for t in timings)
    if len(timings) != expected or statuses != Counter({"completed": expected}):
        raise BenchError(f"expected {expected} completed tasks, got {dict(statuses)}")


def warm_up(deployment: Deployment, count: int, quality: str, duration: int) -> None:
    ids = [deployment.create(-1 - i, quality, duration) for i in range(count)]
    deployment.wait_done(ids, timeout=120)


def measure_throughput(
    deployment: Deployment, tasks: int, quality: str, duration: int, submitters: int
) -> Throughput:
    meter = CpuMeter(deployment)
    started = time.time()
    with ThreadPoolExecutor(max_workers=submitters) as pool:
        ids = list(pool.map(lambda i: deployment.create(i, quality, duration), range(tasks)))
    submit_s = time.time() - started
    deployment.wait_done(ids, timeout=max(120.0, tasks * 10.0))
    cpu_s, machine_busy = meter.stop()
    timings = deployment.timings(ids)
    check_completed(timings, tasks)
    first = min(t.created_at for t in timings)
    last = max(t.finished_at or 0.0 for t in timings)
    runs = [(t.finished_at or 0.0) - (t.started_at or 0.0) for t in timings]
    window = last - first
    per_worker = sorted(Counter(t.worker_id for t in timings).values(), reverse=True)
    return Throughput(
        workers=deployment.workers,
        tasks=tasks,
        submit_s=submit_s,
        window_s=window,
        tasks_per_s=tasks / window,
        mean_run_s=statistics.fmean(runs),
        busy=sum(runs) / (deployment.workers * window),
        per_worker=per_worker,
        cpu_s=cpu_s,
        machine_busy=machine_busy,
    )


CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads); 0 if it is gone (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies over all cores since boot (Linux); (0, 0) elsewhere."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


class CpuMeter:
    """CPU time used during a run: the API and worker processes, the PostgreSQL backends of the
    benchmark database, this client, and everything else on the machine (other load)."""

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self.start_procs = self._procs()
        self.start_pg = self._pg()
        self.start_client = time.process_time()
        self.start_machine = machine_ticks()

    def _procs(self) -> dict[str, float]:
        totals: dict[str, float] = {"api": 0.0, "workers": 0.0}
        for name, proc, _log in self.deployment.procs:
            totals["api" if name == "api" else "workers"] += process_cpu_s(proc.pid)
        return totals

    def _pg(self) -> dict[int, float]:
        if self.deployment.db_name is None:
            return {}
        try:
            with psycopg.connect(self.deployment.admin_url, autocommit=True) as conn:
                rows = conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s",
                    (self.deployment.db_name,),
                ).fetchall()
        except psycopg.Error:
            return {}
        return {int(row[0]): process_cpu_s(int(row[0])) for row in rows}

    def stop(self) -> tuple[dict[str, float], float]:
        procs = self._procs()
        pg = self._pg()
        client = time.process_time() - self.start_client
        busy, total = machine_ticks()
        used = {name: procs[name] - self.start_procs[name] for name in procs}
        # A backend gone before the end is lost; one new since the start counts from zero.
        used["postgres"] = sum(cpu - self.start_pg.get(pid, 0.0) for pid, cpu in pg.items())
        used["client"] = client
        busy_s = (busy - self.start_machine[0]) / CLOCK_TICKS
        used["other"] = max(0.0, busy_s - sum(used.values()))
        share = (busy - self.start_machine[0]) / max(1, total - self.start_machine[1])
        return used, share


def measure_latency(
    deployment: Deployment,
    runs: int,
    quality: str,
    duration: int,
    gap: float,
    mode: str,
    notes: list[str],
) -> list[Latency]:
    sent = Latency(mode, "POST sent -> started")
    created = Latency(mode, "created (server) -> started")
    returned = Latency(mode, "POST returned -> started")
    round_trip = Latency(mode, "(POST round trip)")
    run_time = Latency(mode, "(run: started -> finished)")
    ids: list[str] = []
    for index in range(runs):
        time.sleep(gap)  # the worker is idle: its previous task is done and settled
        before = time.time()
        task_id = deployment.create(index, quality, duration)
        after = time.time()
        ids.append(task_id)
        deployment.wait_done([task_id], timeout=60, poll=0.02)
        (timing,) = deployment.timings([task_id])
        check_completed([timing], 1)
        assert timing.started_at is not None
        sent.samples_ms.append((timing.started_at - before) * 1000)
        created.samples_ms.append((timing.started_at - timing.created_at) * 1000)
        returned.samples_ms.append((timing.started_at - after) * 1000)
        round_trip.samples_ms.append((after - before) * 1000)
        run_time.samples_ms.append(((timing.finished_at or 0.0) - timing.started_at) * 1000)
    results = [sent, created, returned, round_trip, run_time]
    if deployment.mode == "procrastinate":
        # Where the time goes: procrastinate logs when the worker takes the job (1 ms steps).
        taken = job_starts(deployment.dir / "worker0.log")
        to_job = Latency(mode, "(created -> job taken, worker log)")
        to_claim = Latency(mode, "(job taken -> started, worker log)")
        for timing in deployment.timings(ids):
            if timing.id in taken and timing.started_at is not None:
                first = taken[timing.id][0]
                to_job.samples_ms.append((first - timing.created_at) * 1000)
                to_claim.samples_ms.append((timing.started_at - first) * 1000)
        if len(to_job.samples_ms) == len(ids):
            results += [to_job, to_claim]
        extra = sum(len(taken.get(task_id, [])) - 1 for task_id in ids if task_id in taken)
        notes.append(
            f"{mode}: {extra} of the {len(ids)} latency tasks had a second job (the API's "
            "periodic re-offer of pending tasks deferred it while the first was being taken; "
            "the worker found the task no longer pending)"
        )
    return results


JOB_START = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO procrastinate\.worker\b.*?"
    # The job's arguments: (task_id=...), or (model=..., task_id=...) since jobs name their model.
    r": Starting job \S+?\([^)]*?\btask_id='([^']+)'"
)


def job_starts(log: Path) -> dict[str, list[float]]:
    """Task id -> when procrastinate handed each of its jobs to the handler (log local time)."""
    starts: dict[str, list[float]] = {}
    for line in log.read_text(errors="replace").splitlines():
        match = JOB_START.match(line)
        if match:
            stamp = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
            starts.setdefault(match.group(2), []).append(stamp.timestamp())
    return starts


# -- dispatch latency with a deep queue -----------------------------------------------------

#: The backlog's model: routed (sandbox) wherever tasks are made, served by no worker.
BACKLOG_MODEL = "bench-backlog"


def sandbox_routes(*models: str) -> dict[str, Any]:
    return {model: {"engines": [{"engine": "sandbox"}]} for model in models}


@dataclass
class Cost:
    """Wall-clock cost of one database operation, repeated (ms)."""

    database: str
    operation: str
    samples_ms: list[float] = field(default_factory=list)

    def row(self) -> list[str]:
        values = self.samples_ms
        stats = [percentile(values, q) for q in (0.5, 0.95, 0.99)] + [max(values)]
        return [self.database, self.operation, str(len(values)), *(f"{v:.2f}" for v in stats)]


@dataclass
class Plan:
    database: str
    statement: str
    plan: str
    uses_index: bool
    sorts_or_scans: bool


@dataclass
class CpuUse:
    """CPU seconds by whom (`CpuMeter`) during one latency run of the deep-queue part."""

    mode: str
    queue: str
    seconds: float
    cpu_s: dict[str, float]
    machine_busy: float


@dataclass
class Fill:
    database: str
    tasks: int
    keys: int
    seconds: float
    fair_tags: str


class Backlog:
    """Pending tasks of BACKLOG_MODEL on a deployment's database, made in this process by the
    task service itself (`create_task`: real prices, ledger entries, fair tags and, on
    procrastinate, one job each in the model's queue, as the API defers them), for keys made by
    `Accounts.create_key`. No background thread runs here: nothing is claimed or swept."""

    def __init__(self, deployment: Deployment) -> None:
        from opendance.runtime import build_runtime
        from opendance.settings import Settings

        self.deployment = deployment
        self.database = "PostgreSQL" if deployment.mode == "procrastinate" else "SQLite"
        settings = Settings(
            data_dir=deployment.data_dir,
            database_url=deployment.database_url,
            dispatch=deployment.mode,
            routes=sandbox_routes(MODEL, BACKLOG_MODEL),
            workers=0,
            max_queued_tasks=1_000_000_000,
            max_active_tasks_per_key=1_000_000_000,
        )
        self.runtime = build_runtime(settings)
        self.deferrer: Any = None
        if deployment.mode == "procrastinate":
            from opendance.dispatch.distributed import JobDeferrer

            self.deferrer = JobDeferrer(self.runtime.service, settings.db_url)
            self.deferrer.start()
        self.key_ids: list[str] = []

    def close(self) -> None:
        if self.deferrer is not None:
            self.deferrer.stop()
        self.runtime.close()

    def fill(self, tasks: int, keys: int, threads: int, quality: str, duration: int) -> Fill:
        from opendance.tasks.models import CreateTask, KeyInfo

        service = self.runtime.service
        infos = []
        for index in range(keys):
            created = self.runtime.accounts.create_key(
                credits=1_000_000_000, name=f"backlog {index}"
            )
            infos.append(KeyInfo(id=created.summary.id, group=created.summary.group))
        self.key_ids = [info.id for info in infos]

        def make(index: int) -> None:
            # Round robin over the keys, as many clients queueing at once.
            request = CreateTask(
                model=BACKLOG_MODEL,
                prompt=f"backlog {index}",
                duration=duration,
                quality=quality,
                aspect_ratio="16:9",
            )
            view = service.create_task(infos[index % keys], request)
            if self.deferrer is not None:
                self.deferrer.defer(view.id, BACKLOG_MODEL)

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(make, range(tasks)))
        seconds = time.monotonic() - started
        pending = self.pending()
        if pending != tasks:
            raise BenchError(f"backlog: {pending} of {tasks} tasks pending after the fill")
        with self.runtime.db.engine.connect() as conn:
            low, high, distinct, by_keys = conn.execute(
                text(
                    "SELECT min(fair_tag), max(fair_tag), count(DISTINCT fair_tag), "
                    "count(DISTINCT api_key_id) FROM tasks "
                    "WHERE requested_model = :model AND status = 'pending'"
                ),
                {"model": BACKLOG_MODEL},
            ).one()
        tags = f"{distinct} distinct start tags from {low:.3f} to {high:.3f}, {by_keys} keys"
        return Fill(self.database, tasks, keys, seconds, tags)

    def pending(self) -> int:
        with self.runtime.db.engine.connect() as conn:
            return int(
                conn.execute(
                    text(
                        "SELECT count(*) FROM tasks "
                        "WHERE requested_model = :model AND status = 'pending'"
                    ),
                    {"model": BACKLOG_MODEL},
                ).scalar_one()
            )

    def costs(self, runs: int) -> list[Cost]:
        """The claim's cost with the backlog in place, timed here (no HTTP, no worker)."""
        from opendance.tasks import fair_queue
        from opendance.tasks.creation import _COUNTS

        service = self.runtime.service
        engine = self.runtime.db.engine
        sqlite = self.runtime.db.is_sqlite
        results: list[Cost] = []

        # The measured model's claim: what the idle worker runs (nothing of its model waits).
        empty = Cost(self.database, f"claim_next([{MODEL}]), none pending")
        for _ in range(runs):
            started = time.perf_counter()
            if service.claim_next("bench-claim-cost", [MODEL]) is not None:
                raise BenchError(f"a {MODEL} task was pending during the claim timing")
            empty.samples_ms.append((time.perf_counter() - started) * 1000)
        results.append(empty)

        # The backlog model's claim: the first of its pending tasks in fair order (each call
        # takes another task; all are handed back at the end, so the backlog stays whole).
        deep = Cost(self.database, f"claim_next([{BACKLOG_MODEL}]), backlog pending")
        claimed = []
        try:
            for _ in range(runs):
                started = time.perf_counter()
                task = service.claim_next("bench-claim-cost", [BACKLOG_MODEL])
                deep.samples_ms.append((time.perf_counter() - started) * 1000)
                if task is None:
                    raise BenchError("the backlog model had nothing to claim")
                claimed.append(task)
        finally:
            for task in claimed:
                service.release(task.id, task.lease_token)
        if len({task.id for task in claimed}) != len(claimed):
            raise BenchError("a backlog task was claimed twice")
        results.append(deep)

        # The claim's SELECT alone (on PostgreSQL with its FOR UPDATE SKIP LOCKED, rolled back).
        select_only = Cost(self.database, f"claim SELECT ({BACKLOG_MODEL}), backlog pending")
        with engine.connect() as conn:
            for _ in range(runs):
                query = fair_queue.next_pending(BACKLOG_MODEL, time.time(), for_update=not sqlite)
                started = time.perf_counter()
                row = conn.execute(query).first()
                select_only.samples_ms.append((time.perf_counter() - started) * 1000)
                conn.rollback()
                if row is None:
                    raise BenchError("the claim SELECT found no backlog task")
        results.append(select_only)

        # Not the claim, but the create's one statement that reads every pending task: the
        # count for `max_queued_tasks` (in the create transaction, so in "POST sent").
        counts = Cost(self.database, "create: pending count (queue cap), backlog pending")
        with engine.connect() as conn:
            for _ in range(runs):
                started = time.perf_counter()
                conn.execute(_COUNTS, {"key_id": self.key_ids[0]}).one()
                counts.samples_ms.append((time.perf_counter() - started) * 1000)
                conn.rollback()
        results.append(counts)

        if self.deferrer is not None:
            # Not the claim either: the API's periodic re-offer of tasks pending for 10 s (every
            # 5 s, `JobDeferrer.redefer_pending`), the same code run here. With a backlog each
            # pass re-defers its first 1000 tasks, whose jobs already wait (AlreadyEnqueued).
            offered = len(service.pending_task_ids(quiet_for=10.0))
            redefer = Cost(self.database, f"API re-offer pass ({offered} tasks), backlog pending")
            for _ in range(min(runs, 5)):
                started = time.perf_counter()
                self.deferrer.redefer_pending()
                redefer.samples_ms.append((time.perf_counter() - started) * 1000)
            results.append(redefer)

            # procrastinate's own job fetch for the measured model's queue (nothing waiting
            # there; the backlog's jobs wait in their own queue), rolled back.
            from opendance.dispatch.distributed import queue_for

            fetch = Cost(self.database, f"procrastinate job fetch ({MODEL} queue), backlog jobs")
            statement = text("SELECT id FROM procrastinate_fetch_job_v2(:queues, NULL)")
            try:
                with engine.connect() as conn:
                    for _ in range(runs):
                        started = time.perf_counter()
                        job = conn.execute(statement, {"queues": [queue_for(MODEL)]}).scalar()
                        fetch.samples_ms.append((time.perf_counter() - started) * 1000)
                        conn.rollback()
                        if job is not None:
                            raise BenchError(f"a {MODEL} job was waiting during the fetch timing")
                results.append(fetch)
            except DBAPIError as error:  # another procrastinate version: its fetch has changed
                print(f"# (procrastinate fetch not timed: {error})", file=sys.stderr)
        return results

    def plans(self) -> list[Plan]:
        """EXPLAIN QUERY PLAN (SQLite) / EXPLAIN (ANALYZE, BUFFERS) (PostgreSQL) of the claim's
        SELECT, for the measured model and for the backlog model."""
        from opendance.tasks import fair_queue

        engine = self.runtime.db.engine
        sqlite = self.runtime.db.is_sqlite
        plans = []
        for model in (MODEL, BACKLOG_MODEL):
            query = fair_queue.next_pending(model, time.time(), for_update=not sqlite)
            sql = str(query.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
            with engine.connect() as conn:
                if sqlite:
                    rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql).all()
                    lines = [str(row[-1]) for row in rows]
                else:
                    rows = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + sql).all()
                    lines = [str(row[0]) for row in rows]
                conn.rollback()
            plan = "\n".join(lines)
            uses_index = "ix_tasks_fair_claim" in plan
            if sqlite:
                bad = "TEMP B-TREE" in plan or any(
                    line.startswith("SCAN") and "INDEX" not in line for line in lines
                )
            else:
                bad = "Sort" in plan or "Seq Scan" in plan
            plans.append(Plan(self.database, " ".join(sql.split()), plan, uses_index, bad))
        if not sqlite:
            with engine.connect() as conn:
                live, analyzed, auto = conn.execute(
                    text(
                        "SELECT n_live_tup, last_analyze, last_autoanalyze "
                        "FROM pg_stat_user_tables WHERE relname = 'tasks'"
                    )
                ).one()
            for plan in plans:
                plan.plan += (
                    f"\n(statistics: n_live_tup {live}, last analyze {analyzed}, "
                    f"last autoanalyze {auto})"
                )
        return plans


def measure_deep_queue(
    args: argparse.Namespace, root: Path, progress: Any, notes: list[str]
) -> dict[str, Any]:
    """Dispatch latency with an idle worker, empty queue then `--backlog` pending tasks of
    another model over `--backlog-keys` keys, in the same deployment (see `main`'s docstring)."""
    latency: list[Latency] = []
    costs: list[Cost] = []
    plans: list[Plan] = []
    fills: list[Fill] = []
    cpu: list[CpuUse] = []
    modes: list[tuple[Mode, str, dict[str, Any] | None]] = [
        # Both models routed; the one worker process serves only MODEL (`worker --models`).
        (
            "procrastinate",
            "procrastinate (PostgreSQL), 1 worker process",
            sandbox_routes(MODEL, BACKLOG_MODEL),
        ),
    ]
    if not args.skip_local:
        # `serve`'s worker threads serve every routed model (it has no `--models`), so the
        # server routes MODEL only; the backlog is made by this process, which routes both.
        modes.append(("local", "local (SQLite), 1 worker thread", None))
    backlog_label = f"{args.backlog:,} pending ({args.backlog_keys} keys)"
    for mode, label, routes in modes:
        name = f"deep-{mode}"
        progress(f"{name}: starting")
        with Deployment(mode, 1, args.admin_url, root, name, routes=routes) as deployment:
            warm_up(deployment, 2, args.quality, args.duration)

            def measure(
                queue: str, deployment: Deployment = deployment, label: str = label
            ) -> None:
                first_note = len(notes)
                meter = CpuMeter(deployment)
                started = time.monotonic()
                for result in measure_latency(
                    deployment,
                    args.latency_runs,
                    args.quality,
                    args.duration,
                    args.gap,
                    label,
                    notes,
                ):
                    result.queue = queue
                    latency.append(result)
                used, busy = meter.stop()
                cpu.append(CpuUse(label, queue, time.monotonic() - started, used, busy))
                notes[first_note:] = [f"{note} ({queue})" for note in notes[first_note:]]

            progress(f"{name}: dispatch latency, empty queue, {args.latency_runs} tasks")
            measure("empty")
            backlog = Backlog(deployment)
            try:
                threads = args.backlog_threads or (4 if mode == "procrastinate" else 1)
                progress(f"{name}: creating {args.backlog} backlog tasks ({threads} threads)")
                fill = backlog.fill(
                    args.backlog, args.backlog_keys, threads, args.quality, args.duration
                )
                fills.append(fill)
                progress(f"{name}: backlog made in {fill.seconds:.1f} s ({fill.fair_tags})")
                time.sleep(1.0)
                progress(f"{name}: dispatch latency, {backlog_label}, {args.latency_runs} tasks")
                measure(backlog_label)
                if backlog.pending() != args.backlog:
                    raise BenchError("the measured worker took backlog tasks")
                progress(f"{name}: claim cost and plans")
                costs += backlog.costs(args.claim_runs)
                plans += backlog.plans()
            finally:
                backlog.close()
    return {"latency": latency, "costs": costs, "plans": plans, "fills": fills, "cpu": cpu}


def deep_latency_table(results: Sequence[Latency]) -> str:
    """Empty and backlog rows of each measure side by side."""
    order = {
        name: index for index, name in enumerate(dict.fromkeys(r.measured_from for r in results))
    }
    rows = []
    for r in sorted(results, key=lambda r: (r.mode, order[r.measured_from])):
        values = r.samples_ms
        stats = [percentile(values, q) for q in (0.5, 0.95, 0.99)] + [max(values)]
        rows.append(
            [
                r.mode,
                r.measured_from,
                r.queue,
                str(len(values)),
                *(f"{value:.1f}" for value in stats),
                f"{statistics.fmean(values):.1f}",
            ]
        )
    header = ["mode", "measure", "queue", "n", "p50 ms", "p95 ms", "p99 ms", "max ms", "mean ms"]
    return markdown(header, rows)


def cost_table(results: Sequence[Cost]) -> str:
    header = ["database", "operation (in process)", "n", "p50 ms", "p95 ms", "p99 ms", "max ms"]
    return markdown(header, [r.row() for r in results])


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def throughput_table(results: Sequence[Throughput]) -> str:
    base = results[0].tasks_per_s / results[0].workers if results else 1.0
    rows = [
        [
            str(r.workers),
            str(r.tasks),
            f"{r.submit_s:.2f}",
            f"{r.window_s:.2f}",
            f"{r.tasks_per_s:.2f}",
            f"{r.tasks_per_s / base:.2f}x" if results[0].workers == 1 else "",
            f"{r.mean_run_s * 1000:.0f}",
            f"{r.busy * 100:.0f}%",
            "/".join(str(n) for n in r.per_worker),
            *(f"{r.cpu_s.get(name, 0.0) * 1000 / r.tasks:.0f}" for name in CPU_COLUMNS),
            f"{r.machine_busy * 100:.0f}%",
        ]
        for r in results
    ]
    header = [
        "workers",
        "tasks",
        "submit s",
        "window s",
        "tasks/s",
        "vs 1 worker",
        "mean run ms",
        "workers busy",
        "tasks per worker",
        *(f"CPU ms/task {name}" for name in CPU_COLUMNS),
        "machine CPU busy",
    ]
    return markdown(header, rows)


CPU_COLUMNS = ("workers", "api", "postgres", "client", "other")


def latency_table(results: Sequence[Latency]) -> str:
    header = ["mode", "measure", "n", "p50 ms", "p90 ms", "p99 ms", "max ms", "mean ms"]
    return markdown(header, [r.row() for r in results])


def _raise_on_sigterm(signum: int, _frame: types.FrameType | None) -> None:
    raise SystemExit(128 + signum)


def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    throughput: list[Throughput] = []
    latency: list[Latency] = []
    notes: list[str] = []

    def progress(message: str) -> None:
        if not args.quiet:
            print(f"# {message}", file=sys.stderr, flush=True)

    scale_out = args.only in (None, "scale-out")
    for workers in args.workers if scale_out else []:
        label = f"procrastinate-{workers}w"
        progress(f"{label}: starting the API and {workers} worker(s)")
        with Deployment("procrastinate", workers, args.admin_url, root, label) as deployment:
            warm_up(deployment, 2 * workers, args.quality, args.duration)
            progress(f"{label}: {args.tasks} tasks")
            throughput.append(
                measure_throughput(
                    deployment, args.tasks, args.quality, args.duration, args.submitters
                )
            )
            progress(f"{label}: {throughput[-1].tasks_per_s:.2f} tasks/s")
            if workers == 1 and args.latency_runs:
                progress(f"{label}: dispatch latency, {args.latency_runs} tasks one at a time")
                latency += measure_latency(
                    deployment,
                    args.latency_runs,
                    args.quality,
                    args.duration,
                    args.gap,
                    "procrastinate, 1 worker process",
                    notes,
                )
    if scale_out and args.latency_runs and not args.skip_local:
        progress("local: starting `serve` (SQLite, 1 worker thread)")
        with Deployment("local", 1, args.admin_url, root, "local-1w") as deployment:
            warm_up(deployment, 2, args.quality, args.duration)
            progress(f"local: dispatch latency, {args.latency_runs} tasks one at a time")
            latency += measure_latency(
                deployment,
                args.latency_runs,
                args.quality,
                args.duration,
                args.gap,
                "local (SQLite), 1 worker thread",
                notes,
            )
    deep: dict[str, Any] = {"latency": [], "costs": [], "plans": [], "fills": [], "cpu": []}
    if args.only in (None, "fair-latency") and args.backlog and args.latency_runs:
        deep = measure_deep_queue(args, root, progress, notes)
    return {"throughput": throughput, "latency": latency, "deep": deep, "notes": notes}


#: Goals for the p99 dispatch latency with the backlog (ms).
DEEP_GOAL_MS = {"local": 50.0, "procrastinate": 100.0}


def print_deep(args: argparse.Namespace, deep: dict[str, Any]) -> None:
    print(
        f"\nDispatch latency with a deep queue, pending -> processing with an idle worker, "
        f"{args.latency_runs} tasks one at a time ({args.gap} s idle between), empty queue then "
        f"{args.backlog:,} pending tasks of another model ({BACKLOG_MODEL}, served by no worker) "
        f"over {args.backlog_keys} keys, same deployment:\n"
    )
    print(deep_latency_table(deep["latency"]))
    for fill in deep["fills"]:
        print(
            f"\nBacklog ({fill.database}): {fill.tasks:,} tasks by `create_task` in this process, "
            f"{fill.seconds:.1f} s ({fill.tasks / fill.seconds:.0f}/s); {fill.fair_tags}."
        )
    for mode, goal in DEEP_GOAL_MS.items():
        for measure in ("created (server) -> started", "POST sent -> started"):
            rows = [
                r
                for r in deep["latency"]
                if r.mode.startswith(mode) and r.measured_from == measure and r.queue != "empty"
            ]
            for r in rows:
                p99 = percentile(r.samples_ms, 0.99)
                verdict = "met" if p99 < goal else "NOT met"
                print(f"Goal {mode}, {measure}, p99 < {goal:.0f} ms: {p99:.1f} ms, {verdict}.")
    if deep["cpu"]:
        print(
            "\nCPU used during those latency runs (CPU ms per second of the run; the measured "
            "tasks are the same, so a difference is work the backlog causes):\n"
        )
        header = ["mode", "queue", "run s", *(f"CPU ms/s {n}" for n in CPU_COLUMNS), "machine"]
        rows = [
            [
                u.mode,
                u.queue,
                f"{u.seconds:.1f}",
                *(f"{u.cpu_s.get(n, 0.0) * 1000 / u.seconds:.0f}" for n in CPU_COLUMNS),
                f"{u.machine_busy * 100:.0f}%",
            ]
            for u in deep["cpu"]
        ]
        print(markdown(header, rows))
    if deep["costs"]:
        print(
            f"\nClaim cost with the backlog in place ({args.claim_runs} calls each, timed in the "
            "benchmark process on the deployment's database, wall clock):\n"
        )
        print(cost_table(deep["costs"]))
    for plan in deep["plans"]:
        verdict = "uses ix_tasks_fair_claim" if plan.uses_index else "DOES NOT use the index"
        verdict += "; a sort or full scan" if plan.sorts_or_scans else "; no sort, no full scan"
        print(f"\n{plan.database} plan ({verdict}):\n\n    {plan.statement}\n")
        print("\n".join(f"    {line}" for line in plan.plan.splitlines()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--tasks", type=int, default=60, help="tasks per throughput run")
    parser.add_argument("--latency-runs", type=int, default=50, help="one-at-a-time tasks")
    parser.add_argument("--gap", type=float, default=0.2, help="idle seconds between them")
    parser.add_argument("--quality", default="480p")
    parser.add_argument("--duration", type=int, default=2)
    parser.add_argument("--submitters", type=int, default=4, help="client threads submitting")
    parser.add_argument(
        "--admin-url",
        default="postgresql://postgres@127.0.0.1:5432/test",
        help="PostgreSQL to create (and drop) the benchmark databases on",
    )
    parser.add_argument("--skip-local", action="store_true", help="no single-machine reference")
    parser.add_argument(
        "--only",
        choices=["scale-out", "fair-latency"],
        help="run one part: scale-out (throughput, latency) or fair-latency (deep queue)",
    )
    parser.add_argument(
        "--backlog", type=int, default=10000, help="pending tasks of the deep-queue run (0: skip)"
    )
    parser.add_argument("--backlog-keys", type=int, default=100, help="keys they belong to")
    parser.add_argument(
        "--backlog-threads",
        type=int,
        default=0,
        help="threads creating them (0: 1 on SQLite, 4 on PostgreSQL)",
    )
    parser.add_argument(
        "--claim-runs", type=int, default=50, help="timed claim calls with the backlog"
    )
    parser.add_argument("--keep", type=Path, help="keep data dirs and process logs here")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args()
    if any(n < 1 for n in args.workers) or args.tasks < 1 or args.latency_runs < 0:
        parser.error("worker counts and --tasks must be at least 1")
    if args.backlog < 0 or args.backlog_keys < 1 or args.claim_runs < 1:
        parser.error("--backlog must be at least 0, --backlog-keys and --claim-runs at least 1")

    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with contextlib.ExitStack() as stack:
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            root = args.keep
        else:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="od-bench-")))
        load_before = os.getloadavg()
        try:
            results = run(args, root)
        except BenchError as error:
            sys.exit(f"benchmark failed: {error}")
        except KeyboardInterrupt:
            sys.exit("interrupted (processes stopped, databases dropped)")

    print(
        f"CPU: {cpu_model()}, {cpus} cores usable; Python {platform.python_version()}; "
        f"sandbox engine, {args.quality}, {args.duration} s videos"
    )
    load_after = os.getloadavg()
    print(
        f"Load average (1, 5, 15 min) before: {', '.join(f'{x:.2f}' for x in load_before)}; "
        f"after: {', '.join(f'{x:.2f}' for x in load_after)}"
    )
    if results["throughput"]:
        print(f"\nThroughput, {args.tasks} tasks submitted at once ({args.submitters} threads):\n")
        print(throughput_table(results["throughput"]))
    if results["latency"]:
        print(
            f"\nDispatch latency, pending -> processing with an idle worker, "
            f"{args.latency_runs} tasks one at a time ({args.gap} s idle between):\n"
        )
        print(latency_table(results["latency"]))
    if results["deep"]["latency"]:
        print_deep(args, results["deep"])
    for note in results["notes"]:
        print(f"\nNote: {note}.")
    if args.json is not None:
        raw = {
            "throughput": [asdict(r) for r in results["throughput"]],
            "latency": [asdict(r) for r in results["latency"]],
            "deep": {name: [asdict(r) for r in rows] for name, rows in results["deep"].items()},
            "notes": results["notes"],
            "load_before": load_before,
            "load_after": load_after,
        }
        args.json.write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
