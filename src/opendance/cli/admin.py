"""The operator's commands on the server's own database: `keys` (create, list, revoke, grant)
and `ledger check`.

They work on the database directly, not over HTTP, so they need the server's settings (and
its database up to date, which they see to) but not a running server.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from opendance.cli.common import ConfigOption, console, load_settings

if TYPE_CHECKING:
    from opendance.tasks.accounts import Accounts

keys_app = typer.Typer(
    help="Create, list and revoke API keys; grant credits.", no_args_is_help=True
)
ledger_app = typer.Typer(help="Check the credit ledger.", no_args_is_help=True)


def register(parent: typer.Typer) -> None:
    """Add `keys` and `ledger` to the `opendance` app."""
    parent.add_typer(keys_app, name="keys")
    parent.add_typer(ledger_app, name="ledger")


def _accounts(config: Path | None) -> Accounts:
    from opendance.store.db import Database
    from opendance.store.migrate import upgrade
    from opendance.tasks.accounts import Accounts

    settings = load_settings(config)
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

    runtime = build_runtime(load_settings(config))
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
