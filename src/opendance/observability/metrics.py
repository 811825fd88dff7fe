"""Prometheus metrics, one registry per runtime (so tests and embedded servers don't mix).

Counters and histograms count what this process did; the task and queue gauges are read from
the database at scrape time, so they are the same, and true, on every replica.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

StatusCounts = Callable[[], Iterable[tuple[str, str, int]]]


class _TaskGauges(Collector):
    def __init__(self, status_counts: StatusCounts) -> None:
        self._status_counts = status_counts

    def collect(self) -> Iterable[Metric]:
        tasks = GaugeMetricFamily(
            "opendance_tasks",
            "Tasks by status and model (from the database).",
            labels=["status", "model"],
        )
        queue = GaugeMetricFamily(
            "opendance_queue_depth",
            "Pending tasks per model (from the database).",
            labels=["model"],
        )
        for status, model, count in self._status_counts():
            tasks.add_metric([status, model], count)
            if status == "pending":
                queue.add_metric([model], count)
        yield tasks
        yield queue


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.tasks_created = Counter(
            "opendance_tasks_created", "Tasks created.", ["model"], registry=r
        )
        self.tasks_finished = Counter(
            "opendance_tasks_finished",
            "Tasks that ended, by outcome.",
            ["model", "status"],
            registry=r,
        )
        self.task_run_seconds = Histogram(
            "opendance_task_run_seconds",
            "From start of processing to the end, for tasks that ended here.",
            ["model", "status"],
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
            registry=r,
        )
        self.task_queue_seconds = Histogram(
            "opendance_task_queue_seconds",
            "From creation to the first start of processing.",
            ["model"],
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120, 600, 3600),
            registry=r,
        )
        self.engine_step_seconds = Histogram(
            "opendance_engine_step_seconds",
            "Time between an engine's progress reports (a denoising step, a batch of frames).",
            ["engine"],
            buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=r,
        )
        self.callback_attempts = Counter(
            "opendance_callback_attempts", "Callback attempts by outcome.", ["outcome"], registry=r
        )
        self.credits = Counter(
            "opendance_credits",
            "Credits moved, by kind (reserved, settled, refunded).",
            ["kind"],
            registry=r,
        )
        self.http_requests = Histogram(
            "opendance_http_request_seconds",
            "HTTP request latency by route and status.",
            ["method", "route", "status"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
            registry=r,
        )

    def watch_tasks(self, status_counts: StatusCounts) -> None:
        self.registry.register(_TaskGauges(status_counts))

    def render(self) -> bytes:
        return generate_latest(self.registry)
