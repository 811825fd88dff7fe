"""Client commands of `opendance`: generate, tasks list/show/cancel, credits.

They talk to a server over HTTP with the Python SDK (`--base-url` or `OPENDANCE_BASE_URL`, the
key from `OPENDANCE_KEY`); without either, the server running at the configured address, and
for `generate` an embedded server (`opendance.cli.embedded`) when none answers there.

`register(parent)` adds the commands to another typer app (the `opendance` command); `app` here
runs them alone (`python -m opendance.cli.client`).
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.markup import escape

from opendance.cli.common import BaseUrlOption, JsonOption, KeyOption, call, err, fail, out
from opendance.cli.embedded import embedded_server
from opendance.cli.progress import ProgressView, task_details, task_table
from opendance.client import Client
from opendance.client._base import is_reference

app = typer.Typer(
    help="Make videos with an opendance server: generate, tasks, credits.", no_args_is_help=True
)
tasks_app = typer.Typer(help="List, show and cancel your tasks.", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")


class Quality(StrEnum):
    p480 = "480p"
    p720 = "720p"
    p1080 = "1080p"


class Tier(StrEnum):
    default = "default"
    flex = "flex"


def register(parent: typer.Typer) -> None:
    """Add `generate`, `credits` and `tasks` to another typer app (the `opendance` command)."""
    parent.command("generate")(generate)
    parent.command("credits")(credits)
    parent.add_typer(tasks_app, name="tasks")


# ---------------------------------------------------------------------------------------------
# Finding the server


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


def _client(base_url: str | None, key: str | None) -> Client:
    """A client of the user's server: the one named, else the one running at the configured
    address; says which on stderr. No server at all is one clear line."""
    url = find_server(base_url)
    if url is None:
        raise fail(
            f"no opendance server answers at {_configured_url()}: start one with `opendance "
            "serve`, or name yours with --base-url or OPENDANCE_BASE_URL"
        )
    return Client(api_key=key, base_url=url)


def _dump(data: Any) -> None:
    out.print_json(json.dumps(data))


# ---------------------------------------------------------------------------------------------
# generate


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
    tier: Annotated[
        Tier | None,
        typer.Option(
            help="default, or flex: starts once no default task waits, for less (server "
            "default: default)."
        ),
    ] = None,
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
        raise fail(f"--image: no such file: {image}", 2)
    url = find_server(base_url)
    if url is not None:
        with Client(api_key=key, base_url=url) as client:
            _generate(client, prompt, output, json_output, timeout, duration=duration,
                      quality=quality.value if quality else None, aspect_ratio=aspect_ratio,
                      image=image, seed=seed, model=model,
                      service_tier=tier.value if tier else None)  # fmt: skip
        return
    err.print(
        f"[dim]no server at {escape(_configured_url())} and no --base-url or OPENDANCE_BASE_URL:"
        " starting an embedded server for this call[/dim]"
    )
    with embedded_server(data_dir) as (url, token), _client(url, token) as client:
        _generate(client, prompt, output, json_output, timeout, duration=duration,
                  quality=quality.value if quality else None, aspect_ratio=aspect_ratio,
                  image=image, seed=seed, model=model,
                  service_tier=tier.value if tier else None)  # fmt: skip


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
            reference = call(lambda: client.upload(image))
    task = call(lambda: client.create(prompt, image=reference, **fields))
    credits_reserved = task.usage.credits_reserved if task.usage else None
    err.print(
        f"task [bold]{task.id}[/bold] ({task.model}"
        + (", flex tier" if task.task_info.service_tier == "flex" else "")
        + (f", {credits_reserved} credits reserved" if credits_reserved is not None else "")
        + ")"
    )
    try:
        with ProgressView(err) as view:
            view.update(task)
            done = call(lambda: client.wait(task, on_progress=view.update, timeout=timeout))
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
        raise fail(f"task {done.id} {done.status}{reason}")
    target = output or Path(f"{done.id}.mp4")
    call(lambda: client.download(done, target))
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
        page = call(lambda: client.list(limit=limit, after=after))
    if json_output:
        _dump(page.page.model_dump(mode="json"))
        return
    out.print(task_table(page.data))
    if page.has_more:
        err.print(f"[dim]more: opendance tasks list --after {page.last_id}[/dim]")


@tasks_app.command("show")
def tasks_show(
    task_id: Annotated[str, typer.Argument(help="The task id.")],
    base_url: BaseUrlOption = None,
    key: KeyOption = None,
    json_output: JsonOption = False,
) -> None:
    """One task, current."""
    with _client(base_url, key) as client:
        task = call(lambda: client.get(task_id))
    if json_output:
        _dump(task.model_dump(mode="json"))
    else:
        out.print(task_details(task))


@tasks_app.command("cancel")
def tasks_cancel(
    task_id: Annotated[str, typer.Argument(help="The task id.")],
    base_url: BaseUrlOption = None,
    key: KeyOption = None,
    json_output: JsonOption = False,
) -> None:
    """Cancel a pending or running task (its credits are refunded)."""
    with _client(base_url, key) as client:
        task = call(lambda: client.cancel(task_id))
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
        balance = call(client.credits)
    if json_output:
        _dump(balance.model_dump(mode="json"))
    else:
        out.print(f"{balance.balance} credits (group {balance.group})")


def main() -> None:
    """The client commands alone."""
    app()


__all__ = ["app", "embedded_server", "find_server", "main", "register", "tasks_app"]

if __name__ == "__main__":
    main()
