"""How tasks read in the client's terminal: the live bar of `generate` (plain lines off a
terminal, so logs and pipes stay readable) with its ETA, and the tables of `tasks list` and
`tasks show`, with the same status colours.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from opendance.client import Task

if TYPE_CHECKING:
    from rich.progress import Task as ProgressTask

STATUS_STYLES = {"completed": "green", "failed": "red", "cancelled": "yellow", "processing": "cyan"}


def eta_text(seconds: float | None) -> str:
    """`ETA m:ss`, or `ETA -:--` when the server gives no estimate."""
    if seconds is None:
        return "ETA -:--"
    whole = max(0, round(seconds))
    return f"ETA {whole // 60}:{whole % 60:02d}"


def status_text(task: Task) -> Text:
    """The task's status, coloured by how it stands."""
    return Text(task.status, style=STATUS_STYLES.get(task.status, ""))


def queue_text(task: Task) -> str:
    """Where a pending task stands in its model's queue (`3 ahead`, `next`); empty otherwise
    (running, finished, or a server that does not say)."""
    place = task.task_info.queue_position
    if task.status != "pending" or place is None:
        return ""
    return "next" if place == 0 else f"{place} ahead"


def status_label(task: Task) -> str:
    """The bar's status: `queued (3 ahead)` while waiting in the queue, else the status."""
    place = queue_text(task)
    return f"queued ({place})" if place else task.status


def _when(created: int) -> str:
    return datetime.fromtimestamp(created).strftime("%Y-%m-%d %H:%M:%S") if created else ""


class EtaColumn(ProgressColumn):
    """The server's `estimated_time`, counted down between updates."""

    def render(self, task: ProgressTask) -> Text:
        done_at = task.fields.get("done_at")
        if task.finished:
            return Text("ETA 0:00", style="progress.remaining")
        if done_at is None:
            return Text(eta_text(None), style="progress.remaining")
        return Text(eta_text(float(done_at) - time.monotonic()), style="progress.remaining")


class ProgressView:
    """Shows a task's progress: a live bar on a terminal, one line per change elsewhere."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = console.is_terminal
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.fields[status]:<16}"),
            BarColumn(bar_width=None),
            TaskProgressColumn(),
            EtaColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
            refresh_per_second=10,
        )
        self.bar = self.progress.add_task("video", total=100, status="submitted", done_at=None)

    def __enter__(self) -> ProgressView:
        if self.live:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.progress.stop()

    def update(self, task: Task) -> None:
        eta = task.task_info.estimated_time
        done_at = None if eta is None else time.monotonic() + eta
        completed = 100 if task.status == "completed" else task.progress
        label = status_label(task)
        self.progress.update(self.bar, completed=completed, status=label, done_at=done_at)
        if not self.live:
            self.console.print(f"{label:<16} {task.progress:>3}%  {eta_text(eta)}")


def task_table(tasks: Iterable[Task]) -> Table:
    """`tasks list`: one row a task."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("id", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("done", justify="right", no_wrap=True)
    table.add_column("video", no_wrap=True)
    table.add_column("created", no_wrap=True)
    for task in tasks:
        info = task.task_info
        video = " ".join(
            part
            for part in (info.quality, f"{info.video_duration}s" if info.video_duration else "")
            if part
        )
        table.add_row(
            task.id,
            status_text(task),
            f"{task.progress}%",
            video,
            _when(task.created)[5:16],
        )
    return table


def task_details(task: Task) -> Table:
    """`tasks show`: one field a line, the empty ones left out."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    info = task.task_info
    rows: list[tuple[str, str | Text]] = [
        ("id", task.id),
        ("status", status_text(task)),
        ("progress", f"{task.progress}%"),
        ("model", task.model),
        ("created", _when(task.created)),
        ("duration", f"{info.video_duration} s" if info.video_duration else ""),
        ("quality", info.quality or ""),
        ("aspect ratio", info.aspect_ratio or ""),
        ("resolution", info.resolution or ""),
        ("tier", info.service_tier or ""),
        ("queue", queue_text(task)),
    ]
    if not task.done:
        rows.append(("estimated", eta_text(info.estimated_time)))
    if task.usage is not None and task.usage.credits_reserved is not None:
        rows.append(("credits", str(task.usage.credits_reserved)))
    if task.video_url:
        rows.append(("video", task.video_url))
    if task.error is not None:
        rows.append(("error", f"{task.error.code}: {task.error.message}"))
    for name, value in rows:
        if value:
            table.add_row(name, value)
    return table
