"""What every part of the `opendance` command shares: the consoles, the option types, the
settings loader and the error helpers, so each command reads and fails the same way.

Importing this module also fixes typer's flag labels in `--help` (see `plain_flags_in_help`),
so every app built from these parts, alone or together, shows flags bare.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from opendance.client import AuthenticationError, OpenDanceError

if TYPE_CHECKING:
    from opendance.settings import Settings

T = TypeVar("T")

#: The server-side commands (serve, worker, keys, ...): messages to stdout, errors to stderr.
console = Console()
err_console = Console(stderr=True)
#: The client commands: progress and messages to stderr, results (paths, JSON) to stdout.
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML or JSON config file.", exists=True)
]
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


def plain_flags_in_help() -> None:
    """typer 0.29 labels every flag `<bool>` in `--help`, which reads as if the flag took a
    value (`--install-completion <bool>`); flags are shown bare, as click shows them."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


plain_flags_in_help()


def load_settings(config: Path | None, **overrides: Any) -> Settings:
    """The settings, or one line saying what is wrong with them (exit 2)."""
    from pydantic import ValidationError

    from opendance.engines.routing import describe_failure
    from opendance.settings import Settings

    if config is not None:
        os.environ["OPENDANCE_CONFIG"] = str(config)
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except (ValidationError, ValueError, OSError) as exc:
        err_console.print(
            f"opendance: invalid configuration: {describe_failure(exc, prefix='')}",
            highlight=False,
            soft_wrap=True,
            markup=False,
        )
        raise typer.Exit(2) from None


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `error: message` to stderr; the exit to raise (`raise fail(...)`)."""
    err.print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(code)


def call(action: Callable[[], T]) -> T:
    """Run an API call; SDK errors become one readable line and exit code 1."""
    try:
        return action()
    except AuthenticationError as error:
        raise fail(
            f"{error.message} Set OPENDANCE_KEY (or --key) to a key of the server."
        ) from None
    except OpenDanceError as error:
        raise fail(str(error)) from None
