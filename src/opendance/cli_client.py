"""Client commands of `opendance`: generate, tasks list/show/cancel, credits.

They talk to a server over HTTP with the Python SDK (`--base-url` or `OPENDANCE_BASE_URL`, the
key from `OPENDANCE_KEY`). `generate` without any base URL starts an embedded server for the
call: uvicorn in a thread on a free loopback port, with a temporary data folder (or
`--data-dir`), the engines of the configuration, and a key made for the call.

`register(app)` adds the commands to another typer app (the `opendance` command); `app` here
runs them alone (`python -m opendance.cli_client`).
"""

from __future__ import annotations

import contextlib
import json
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, TypeVar

import httpx
import typer
from rich import box
from rich.console import Console
from rich.markup import escape
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

from opendance.client import (
    AuthenticationError,
    Client,
    OpenDanceError,
    Task,
)
from opendance.client._base import is_reference

if TYPE_CHECKING:
    from rich.progress import Task as ProgressTask

app = typer.Typer(
    help="Make videos with an opendance server: generate, tasks, credits.", no_args_is_help=True
)
tasks_app = typer.Typer(help="List, show and cancel your tasks.", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")

#: Progress and messages go to stderr; results (paths, JSON) to stdout.
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False)

#: Credits given to the key of an embedded server (its own temporary ledger).
EMBEDDED_CREDITS: Final[int] = 1_000_000
EMBEDDED_KEY_FILE: Final[str] = "embedded-cli.key"
T = TypeVar("T")


class Quality(StrEnum):
    p480 = "480p"
    p720 = "720p"
    p1080 = "1080p"


BaseUrlOption = Annotated[
    str | None,
    typer.Option(
        "--base-url",
        envvar="OPENDANCE_BASE_URL",
        help="The server, e.g. http://127.0.0.1:8000 (default: OPENDANCE_BASE_URL).",
        show_envvar=True,
    ),
]
KeyOption = Annotated[
    str | None,
    typer.Option(
        "--key",
        envvar="OPENDANCE_KEY",
        help="API key (better: set OPENDANCE_KEY, a command line is visible to other users).",
        show_envvar=True,
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the JSON instead.")]


def register(parent: typer.Typer) -> None:
    """Add `generate`, `credits` and `tasks` to another typer app (the `opendance` command)."""
    parent.command("generate")(generate)
    parent.command("credits")(credits)
    parent.add_typer(tasks_app, name="tasks")


# ---------------------------------------------------------------------------------------------
# Shared helpers


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(code)


def _call(action: Callable[[], T]) -> T:
    """Run an API call; SDK errors become one readable line and exit code 1."""
    try:
        return action()
    except AuthenticationError as error:
        raise _fail(
            f"{error.message} Set OPENDANCE_KEY (or --key) to a key of the server."
        ) from None
    except OpenDanceError as error:
        raise _fail(str(error)) from None


def _client(base_url: str | None, key: str | None) -> Client:
    """A client of the user's server: the one named, else the one running at the configured
    address; says which on stderr. No server at all is one clear line."""
    url = find_server(base_url)
    if url is None:
        raise _fail(
            f"no opendance server answers at {_configured_url()}: start one with `opendance "
            "serve`, or name yours with --base-url or OPENDANCE_BASE_URL"
        )
    return Client(api_key=key, base_url=url)


def _configured_url() -> str:
    """Where `opendance serve` listens with this machine's settings (OPENDANCE_* and config)."""
    from opendance.settings import Settings

    try:
        return Settings().base_url
    except ValueError:
        return "http://127.0.0.1:8000"


def _answers(url: str) -> bool:
    """An opendance server answers `/healthz` at `url` (a short probe; nothing else is sent)."""
    try:
        response = httpx.get(f"{url.rstrip('/')}/healthz", timeout=0.5)
        return response.status_code == 200 and response.json().get("status") == "ok"
    except (httpx.HTTPError, ValueError, AttributeError):
        return False


def find_server(base_url: str | None) -> str | None:
    """The server to talk to: `--base-url` / OPENDANCE_BASE_URL as given, else the server
    running at the configured address when one answers there, else None."""
    if base_url:
        err.print(f"[dim]server: {escape(base_url)} (--base-url or OPENDANCE_BASE_URL)[/dim]")
        return base_url
    url = _configured_url()
    if _answers(url):
        err.print(f"[dim]server: {escape(url)} (the one running at the configured address)[/dim]")
        return url
    return None


def _when(created: int) -> str:
    return datetime.fromtimestamp(created).strftime("%Y-%m-%d %H:%M:%S") if created else ""


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "ETA -:--"
    whole = max(0, round(seconds))
    return f"ETA {whole // 60}:{whole % 60:02d}"


def _dump(data: Any) -> None:
    out.print_json(json.dumps(data))


# ---------------------------------------------------------------------------------------------
# The embedded server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _embedded_key(runtime: Any, data_dir: Path) -> str:
    """A key of the embedded server: reused from `data_dir` (topped up) or made now."""
    path = data_dir / EMBEDDED_KEY_FILE
    with contextlib.suppress(OSError):
        token = path.read_text().strip()
        key = runtime.accounts.authenticate(token)
        if key is not None:
            balance = runtime.accounts.get(key.id).balance
            if balance < EMBEDDED_CREDITS // 2:
                runtime.accounts.grant(key.id, EMBEDDED_CREDITS - balance, note="cli top-up")
            return token
    token = str(
        runtime.accounts.create_key(credits=EMBEDDED_CREDITS, name="opendance generate").token
    )
    path.write_text(token + "\n")
    path.chmod(0o600)
    return token


@contextlib.contextmanager
def embedded_server(data_dir: Path | None = None) -> Iterator[tuple[str, str]]:
    """Start a server on a free loopback port for the duration; yields (base URL, key).

    Its data (SQLite database, results) go to `data_dir`, or a temporary folder removed at
    the end. Engines and prices come from the configuration as for `opendance serve`.
    """
    import uvicorn

    from opendance.app import build_runtime, create_app
    from opendance.settings import Settings

    with contextlib.ExitStack() as stack:
        folder = data_dir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="opendance-"))
        )
        settings = Settings(
            data_dir=folder,
            database_url=None,
            host="127.0.0.1",
            port=free_port(),
            public_base_url=None,
            dispatch="local",
            workers=max(1, Settings().workers),
            shutdown_grace_seconds=2.0,
            log_level="warning",
        )
        runtime = build_runtime(settings)
        token = _embedded_key(runtime, folder)
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(settings, runtime=runtime),
                host=settings.host,
                port=settings.port,
                log_level="warning",
                lifespan="on",
            )
        )
        thread = threading.Thread(target=server.run, name="opendance-embedded", daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise _fail("the embedded server did not start")
            time.sleep(0.02)
        try:
            yield settings.base_url, token
        finally:
            server.should_exit = True
            thread.join(timeout=30)


# ---------------------------------------------------------------------------------------------
# generate


class EtaColumn(ProgressColumn):
    """The server's `estimated_time`, counted down between updates."""

    def render(self, task: ProgressTask) -> Text:
        done_at = task.fields.get("done_at")
        if task.finished:
            return Text("ETA 0:00", style="progress.remaining")
        if done_at is None:
            return Text(_eta(None), style="progress.remaining")
        return Text(_eta(float(done_at) - time.monotonic()), style="progress.remaining")


class ProgressView:
    """Shows a task's progress: a live bar on a terminal, one line per change elsewhere."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = console.is_terminal
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.fields[status]:<10}"),
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
        self.progress.update(self.bar, completed=completed, status=task.status, done_at=done_at)
        if not self.live:
            self.console.print(f"{task.status:<10} {task.progress:>3}%  {_eta(eta)}")


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="What the video shows.")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Where to save the MP4 (default: <task id>.mp4)."),
    ] = None,
    duration: Annotated[
        int | None, typer.Option(min=2, max=12, help="Seconds, 2 to 12 (server default 5).")
    ] = None,
    quality: Annotated[
        Quality | None, typer.Option(help="480p, 720p or 1080p (server default 1080p).")
    ] = None,
    aspect_ratio: Annotated[
        str | None,
        typer.Option(
            "--aspect-ratio",
            help="16:9, 9:16, 1:1, 4:3, 3:4, 21:9; with --image also keep_ratio, adaptive.",
        ),
    ] = None,
    image: Annotated[
        str | None,
        typer.Option(help="First frame: a local JPEG/PNG/WebP (uploaded) or an http(s) URL."),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Same seed, same video (-1: random).")] = None,
    model: Annotated[str | None, typer.Option(help="Model name (server default).")] = None,
    base_url: BaseUrlOption = None,
    key: KeyOption = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Embedded server only: keep its data here (default: a temporary folder).",
        ),
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Give up waiting after this many seconds.")
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Make a video and save it, with a live progress bar.

    The server: --base-url or OPENDANCE_BASE_URL, else the one running at the configured
    address (http://127.0.0.1:8000 by default), else an embedded server for this call.
    """
    if image is not None and not is_reference(image) and not Path(image).expanduser().is_file():
        raise _fail(f"--image: no such file: {image}", 2)
    url = find_server(base_url)
    if url is not None:
        with Client(api_key=key, base_url=url) as client:
            _generate(client, prompt, output, json_output, timeout, duration=duration,
                      quality=quality.value if quality else None, aspect_ratio=aspect_ratio,
                      image=image, seed=seed, model=model)  # fmt: skip
        return
    err.print(
        f"[dim]no server at {escape(_configured_url())} and no --base-url or OPENDANCE_BASE_URL:"
        " starting an embedded server for this call[/dim]"
    )
    with embedded_server(data_dir) as (url, token), _client(url, token) as client:
        _generate(client, prompt, output, json_output, timeout, duration=duration,
                  quality=quality.value if quality else None, aspect_ratio=aspect_ratio,
                  image=image, seed=seed, model=model)  # fmt: skip


def _generate(
    client: Client,
    prompt: str,
    output: Path | None,
    json_output: bool,
    timeout: float | None,
    *,
    image: str | None,
    **fields: Any,
) -> None:
    reference = None
    if image is not None:
        if is_reference(image):
            reference = image
        else:
            err.print(f"uploading {escape(image)}")
            reference = _call(lambda: client.upload(image))
    task = _call(lambda: client.create(prompt, image=reference, **fields))
    credits_reserved = task.usage.credits_reserved if task.usage else None
    err.print(
        f"task [bold]{task.id}[/bold] ({task.model}"
        + (f", {credits_reserved} credits reserved" if credits_reserved is not None else "")
        + ")"
    )
    try:
        with ProgressView(err) as view:
            view.update(task)
            done = _call(lambda: client.wait(task, on_progress=view.update, timeout=timeout))
    except KeyboardInterrupt:
        err.print(
            f"\nstopped waiting; the task goes on. Follow it with `opendance tasks show "
            f"{task.id}`, stop it with `opendance tasks cancel {task.id}`."
        )
        raise typer.Exit(130) from None
    if done.status != "completed":
        reason = f": {done.error.code}: {done.error.message}" if done.error else ""
        if json_output:
            _dump(done.model_dump(mode="json"))
        raise _fail(f"task {done.id} {done.status}{reason}")
    target = output or Path(f"{done.id}.mp4")
    _call(lambda: client.download(done, target))
    if json_output:
        _dump({**done.model_dump(mode="json"), "output": str(target)})
        return
    size = target.stat().st_size
    info = done.task_info
    err.print(
        f"[green]saved[/green] {escape(str(target))} "
        f"({info.resolution or '?'}, {info.video_duration or '?'} s, {size / 1024:.0f} KiB)"
    )
    out.print(str(target), soft_wrap=True)


# ---------------------------------------------------------------------------------------------
# tasks and credits


def _status_text(task: Task) -> Text:
    styles = {"completed": "green", "failed": "red", "cancelled": "yellow", "processing": "cyan"}
    return Text(task.status, style=styles.get(task.status, ""))


@tasks_app.command("list")
def tasks_list(
    limit: Annotated[int, typer.Option(min=1, max=100, help="Tasks to show.")] = 20,
    after: Annotated[str | None, typer.Option(help="Start after this task id.")] = None,
    base_url: BaseUrlOption = None,
    key: KeyOption = None,
    json_output: JsonOption = False,
) -> None:
    """Your tasks, newest first."""
    with _client(base_url, key) as client:
        page = _call(lambda: client.list(limit=limit, after=after))
    if json_output:
        _dump(page.page.model_dump(mode="json"))
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("id", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("done", justify="right", no_wrap=True)
    table.add_column("video", no_wrap=True)
    table.add_column("created", no_wrap=True)
    for task in page.data:
        info = task.task_info
        video = " ".join(
            part
            for part in (info.quality, f"{info.video_duration}s" if info.video_duration else "")
            if part
        )
        table.add_row(
            task.id,
            _status_text(task),
            f"{task.progress}%",
            video,
            _when(task.created)[5:16],
        )
    out.print(table)
    if page.has_more:
        err.print(f"[dim]more: opendance tasks list --after {page.last_id}[/dim]")


def _show(task: Task) -> None:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    info = task.task_info
    rows: list[tuple[str, str | Text]] = [
        ("id", task.id),
        ("status", _status_text(task)),
        ("progress", f"{task.progress}%"),
        ("model", task.model),
        ("created", _when(task.created)),
        ("duration", f"{info.video_duration} s" if info.video_duration else ""),
        ("quality", info.quality or ""),
        ("aspect ratio", info.aspect_ratio or ""),
        ("resolution", info.resolution or ""),
    ]
    if not task.done:
        rows.append(("estimated", _eta(info.estimated_time)))
    if task.usage is not None and task.usage.credits_reserved is not None:
        rows.append(("credits", str(task.usage.credits_reserved)))
    if task.video_url:
        rows.append(("video", task.video_url))
    if task.error is not None:
        rows.append(("error", f"{task.error.code}: {task.error.message}"))
    for name, value in rows:
        if value:
            table.add_row(name, value)
    out.print(table)


@tasks_app.command("show")
def tasks_show(
    task_id: Annotated[str, typer.Argument(help="The task id.")],
    base_url: BaseUrlOption = None,
    key: KeyOption = None,
    json_output: JsonOption = False,
) -> None:
    """One task, current."""
    with _client(base_url, key) as client:
        task = _call(lambda: client.get(task_id))
    if json_output:
        _dump(task.model_dump(mode="json"))
    else:
        _show(task)


@tasks_app.command("cancel")
def tasks_cancel(
    task_id: Annotated[str, typer.Argument(help="The task id.")],
    base_url: BaseUrlOption = None,
    key: KeyOption = None,
    json_output: JsonOption = False,
) -> None:
    """Cancel a pending or running task (its credits are refunded)."""
    with _client(base_url, key) as client:
        task = _call(lambda: client.cancel(task_id))
    if json_output:
        _dump(task.model_dump(mode="json"))
    else:
        err.print(f"cancelled {task.id}")


@app.command()
def credits(
    base_url: BaseUrlOption = None,
    key: KeyOption = None,
    json_output: JsonOption = False,
) -> None:
    """Your key's credit balance."""
    with _client(base_url, key) as client:
        balance = _call(client.credits)
    if json_output:
        _dump(balance.model_dump(mode="json"))
    else:
        out.print(f"{balance.balance} credits (group {balance.group})")


def main() -> None:
    app()


if __name__ == "__main__":
    main()

__all__ = ["app", "embedded_server", "main", "register", "tasks_app"]
