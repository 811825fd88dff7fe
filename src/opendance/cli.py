"""The `opendance` command: serve, keys, migrate, ledger."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from opendance.cli_client import register as register_client_commands
from opendance.settings import DEFAULT_MODEL, Settings


def _plain_flags_in_help() -> None:
    """typer 0.29 labels every flag `<bool>` in `--help`, which reads as if the flag took a
    value (`--install-completion <bool>`); flags are shown bare, as click shows them."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_plain_flags_in_help()

app = typer.Typer(
    help="opendance: a self-hosted video generation API server.", no_args_is_help=True
)
keys_app = typer.Typer(
    help="Create, list and revoke API keys; grant credits.", no_args_is_help=True
)
ledger_app = typer.Typer(help="Check the credit ledger.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(ledger_app, name="ledger")
register_client_commands(app)
console = Console()
err_console = Console(stderr=True)
config_app = typer.Typer(help="Check a configuration without starting.", no_args_is_help=True)
app.add_typer(config_app, name="config")

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML or JSON config file.", exists=True)
]


def _settings(config: Path | None, **overrides: Any) -> Settings:
    """The settings, or one line saying what is wrong with them (exit 2)."""
    from pydantic import ValidationError

    from opendance.engines.registry import describe_failure

    if config is not None:
        os.environ["OPENDANCE_CONFIG"] = str(config)
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except (ValidationError, ValueError, OSError) as exc:
        err_console.print(
            f"opendance: invalid configuration: {describe_failure(exc, prefix='')}",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(2) from None


def _setup_logging(settings: Settings) -> None:
    from opendance.observability.logs import setup_logging

    setup_logging(settings.log_level, settings.log_format)


def _run_draining(server_config: Any, runtime: Any, sock: socket.socket) -> None:
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
    """Exit with one line per broken route, before anything starts."""
    from opendance.engines.registry import check_routes

    problems = check_routes(settings)
    for problem in problems:
        err_console.print(f"opendance: {problem.line()}", highlight=False, soft_wrap=True)
    if problems:
        raise typer.Exit(2)


@app.command()
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

    settings = _settings(config, host=host, port=port, workers=0 if no_workers else workers)
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
        console.print(
            Panel.fit(
                f"[bold]Your first API key[/bold] (shown once, keep it), "
                f"{settings.first_key_credits} credits:\n\n  [green]{created.token}[/green]",
                title="opendance",
            )
        )
        # Plain lines (no panel, no wrapping) so the commands copy and paste as they are.
        print(
            f"\nTry it:\n\n  export OPENDANCE_KEY={created.token}\n"
            f"  curl {settings.base_url}/v1/videos/generations \\\n"
            f'    -H "Authorization: Bearer $OPENDANCE_KEY" \\\n'
            f"    -H 'Content-Type: application/json' \\\n"
            f'    -d \'{{"model": "{DEFAULT_MODEL}", "prompt": "A cat playing piano"}}\'\n'
        )
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


@app.command()
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

    from opendance.app import build_runtime
    from opendance.dispatch.local import new_worker_id

    settings = _settings(config)
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
    runtime.start_callbacks()
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
    settings = _settings(config)
    _refuse_bad_routes(settings)
    routes = ", ".join(
        f"{model} ({'+'.join(e.engine for e in route.engines)})"
        for model, route in sorted(settings.routes.items())
    )
    console.print(f"configuration ok: {len(settings.routes)} route(s): {routes}", highlight=False)


@app.command()
def migrate(config: ConfigOption = None) -> None:
    """Bring the database schema up to date."""
    from opendance.store.migrate import upgrade

    settings = _settings(config)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.db_url)
    console.print(f"database at head: {settings.db_url}")


def _accounts(config: Path | None) -> Any:
    from opendance.store.db import Database
    from opendance.store.migrate import upgrade
    from opendance.tasks.accounts import Accounts

    settings = _settings(config)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.db_url)
    return Accounts(Database(settings.db_url))


@keys_app.command("create")
def keys_create(
    credits: Annotated[int, typer.Option(help="Initial credits.", min=0)] = 0,
    group: Annotated[str, typer.Option(help="Price group.")] = "default",
    name: Annotated[str | None, typer.Option(help="A label for the key.")] = None,
    config: ConfigOption = None,
) -> None:
    """Create a key; its secret is printed once and stored only as a hash."""
    created = _accounts(config).create_key(credits=credits, group=group, name=name)
    console.print(f"[green]{created.token}[/green]")
    console.print(
        f"id {created.summary.id}, group {group}, {credits} credits. This is the only time the "
        "key is shown.",
        style="dim",
    )


@keys_app.command("list")
def keys_list(config: ConfigOption = None) -> None:
    """List keys (ids, groups, balances; never secrets)."""
    table = Table("id", "name", "group", "balance", "ends with", "status")
    for key in _accounts(config).list():
        table.add_row(
            key.id,
            key.name or "",
            key.group,
            str(key.balance),
            key.last4,
            "[red]revoked[/red]" if key.revoked_at else "[green]active[/green]",
        )
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str, config: ConfigOption = None) -> None:
    """Revoke a key: it stops working at once."""
    _accounts(config).revoke(key_id)
    console.print(f"revoked {key_id}")


@keys_app.command("grant")
def keys_grant(
    key_id: str,
    credits: Annotated[int, typer.Argument(help="Credits to add (negative to take back).")],
    config: ConfigOption = None,
) -> None:
    """Add credits to a key (written to the ledger)."""
    balance = _accounts(config).grant(key_id, credits, note="granted from the CLI")
    console.print(f"{key_id}: balance {balance}")


@ledger_app.command("check")
def ledger_check(config: ConfigOption = None) -> None:
    """Check every key's balance against its ledger; exit 1 if any does not add up."""
    from opendance.app import build_runtime

    runtime = build_runtime(_settings(config))
    table = Table("key", "balance", "granted", "reserved", "settled", "refunded", "open", "ok")
    bad = 0
    for key_id in runtime.service.key_ids():
        audit = runtime.service.ledger_audit(key_id)
        bad += not audit.balanced
        table.add_row(
            key_id,
            *(str(v) for v in (audit.balance, audit.granted, audit.reserved, audit.settled)),
            str(audit.refunded),
            str(audit.open_reservations),
            "[green]yes[/green]" if audit.balanced else "[red]NO[/red]",
        )
    console.print(table)
    raise typer.Exit(1 if bad else 0)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
