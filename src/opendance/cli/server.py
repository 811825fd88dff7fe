"""The commands that run opendance itself: `serve`, `worker`, `migrate` and `config check`.

They share the start-up checks: the settings and every route are checked, and the port bound,
before anything is made, so a server that cannot start says why in one line and leaves nothing
behind (not even a first key shown to nobody).
"""

from __future__ import annotations

import errno
import socket
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.panel import Panel

from opendance.cli.common import ConfigOption, console, err_console, load_settings
from opendance.settings import DEFAULT_MODEL, Settings

if TYPE_CHECKING:
    from opendance.runtime import Runtime

config_app = typer.Typer(help="Check a configuration without starting.", no_args_is_help=True)


def register(parent: typer.Typer) -> None:
    """Add `serve`, `worker`, `migrate` and `config` to the `opendance` app."""
    parent.command()(serve)
    parent.command()(worker)
    parent.command()(migrate)
    parent.add_typer(config_app, name="config")


def _setup_logging(settings: Settings) -> None:
    from opendance.observability.logs import setup_logging

    setup_logging(settings.log_level, settings.log_format)


def _run_draining(server_config: Any, runtime: Runtime, sock: socket.socket) -> None:
    """Run uvicorn on the bound socket, telling the runtime of a shutdown first: open event
    streams end (instead of holding the graceful shutdown for its whole timeout) and /readyz
    turns 503."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            runtime.shutting_down = True
            super().handle_exit(sig, frame)

    DrainingServer(server_config).run(sockets=[sock])


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything is made (the first key is shown once, so it
    must not be made for a server that then cannot start). A taken port is one clear line."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        reason = "is already in use" if exc.errno == errno.EADDRINUSE else f"cannot be used ({exc})"
        err_console.print(
            f"opendance: {host}:{port} {reason}; stop the other server or choose another "
            "port with --port",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1) from None
    sock.set_inheritable(True)
    return sock


def _refuse_bad_routes(settings: Settings) -> None:
    """Exit with one line per broken route (and for a store that cannot be opened: the s3
    extra missing), before anything starts."""
    from opendance.engines.routing import check_routes
    from opendance.media.blobs import StorageError, open_blobs

    lines = [problem.line() for problem in check_routes(settings)]
    try:
        open_blobs(settings.storage_url, settings.data_dir, settings.s3_endpoint_url)
    except StorageError as exc:
        lines.append(f"storage_url {settings.storage_url}: {exc}")
    for line in lines:
        err_console.print(f"opendance: {line}", highlight=False, soft_wrap=True, markup=False)
    if lines:
        raise typer.Exit(2)


def _show_first_key(settings: Settings, token: str) -> None:
    """The first key, once, and a request to try it with."""
    console.print(
        Panel.fit(
            f"[bold]Your first API key[/bold] (shown once, keep it), "
            f"{settings.first_key_credits} credits:\n\n  [green]{token}[/green]",
            title="opendance",
        )
    )
    # Plain lines (no panel, no wrapping) so the commands copy and paste as they are.
    print(
        f"\nTry it:\n\n  export OPENDANCE_KEY={token}\n"
        f"  curl {settings.base_url}/v1/videos/generations \\\n"
        f'    -H "Authorization: Bearer $OPENDANCE_KEY" \\\n'
        f"    -H 'Content-Type: application/json' \\\n"
        f'    -d \'{{"model": "{DEFAULT_MODEL}", "prompt": "A cat playing piano"}}\'\n'
    )


def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Interface to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    workers: Annotated[int | None, typer.Option(help="In-process worker threads.")] = None,
    no_workers: Annotated[
        bool, typer.Option("--no-workers", help="API only, run no tasks.")
    ] = False,
) -> None:
    """Run the API server (and its workers). Creates a first API key if there is none."""
    import uvicorn

    from opendance.app import build_runtime, create_app

    settings = load_settings(config, host=host, port=port, workers=0 if no_workers else workers)
    _setup_logging(settings)
    _refuse_bad_routes(settings)
    sock = _bind(settings.host, settings.port)
    if settings.dispatch == "procrastinate" and settings.workers:
        console.print("dispatch is procrastinate: tasks run on `opendance worker` processes")
    runtime = build_runtime(settings)
    if runtime.accounts.count() == 0:
        created = runtime.accounts.create_key(
            credits=settings.first_key_credits, group="default", name="first key"
        )
        _show_first_key(settings, created.token)
    console.print(
        f"opendance on [bold]{settings.base_url}[/bold]  (docs: {settings.base_url}/docs, "
        f"data: {settings.data_dir}, workers: {settings.workers})"
    )
    server_config = uvicorn.Config(
        create_app(settings, runtime=runtime),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # keep our handlers: request and task ids on every line
        timeout_graceful_shutdown=30,
    )
    _run_draining(server_config, runtime, sock)


def worker(
    models: Annotated[
        str | None, typer.Option(help="Comma-separated model names to serve (default: all routed).")
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Tasks run at once.")] = 1,
    config: ConfigOption = None,
) -> None:
    """Run tasks on this machine's engines (for GPU hosts; the API runs elsewhere)."""
    import asyncio
    import signal
    import threading

    from opendance.app import DEFAULT_FACE, build_runtime, callback_bodies
    from opendance.dispatch.local import new_worker_id

    settings = load_settings(config)
    _setup_logging(settings)
    _refuse_bad_routes(settings)
    runtime = build_runtime(settings)
    served = (
        [m.strip() for m in models.split(",") if m.strip()] if models else runtime.router.models()
    )
    unknown = [m for m in served if not runtime.router.has_model(m)]
    if unknown:
        console.print(f"[red]not routed here:[/red] {', '.join(unknown)}")
        raise typer.Exit(2)
    console.print(
        f"opendance worker: models {', '.join(served)}, concurrency {concurrency}, "
        f"dispatch {settings.dispatch}"
    )
    runtime.start_callbacks(callback_bodies(), DEFAULT_FACE)
    if settings.dispatch == "local":
        runtime.start_background(local_workers=concurrency, models=served)
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        stop.wait()
        console.print("stopping: running tasks finish (or are handed back)")
        runtime.close()
        return

    from opendance.dispatch.distributed import ProcrastinateWorker

    worker_id = new_worker_id()
    runtime.start_background(
        local_workers=0,
        extra_jobs=[
            (
                max(0.2, settings.lease_seconds / 3),
                lambda: runtime.registry.beat(worker_id, served, concurrency),
            )
        ],
    )
    try:
        asyncio.run(
            ProcrastinateWorker(
                runtime.service,
                runtime.runner,
                settings.db_url,
                worker_id=worker_id,
                models=served,
                concurrency=concurrency,
                shutdown_grace_seconds=settings.shutdown_grace_seconds,
            ).run()
        )
    finally:
        runtime.registry.leave(worker_id)
        runtime.close()


@config_app.command("check")
def config_check(config: ConfigOption = None) -> None:
    """Validate the settings and every route (engine kind, options, model folders), offline."""
    settings = load_settings(config)
    _refuse_bad_routes(settings)
    routes = ", ".join(
        f"{model} ({'+'.join(e.engine for e in route.engines)})"
        for model, route in sorted(settings.routes.items())
    )
    console.print(f"configuration ok: {len(settings.routes)} route(s): {routes}", highlight=False)


def migrate(config: ConfigOption = None) -> None:
    """Bring the database schema up to date."""
    from opendance.store.migrate import upgrade

    settings = load_settings(config)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.db_url)
    console.print(f"database at head: {settings.db_url}")
