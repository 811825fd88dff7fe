"""The `opendance` command, put together from its parts: the server's own commands
(`cli.server`), the operator's (`cli.admin`) and the client's (`cli.client`).

The app is built on first use (`main()`, `build_app()` or `opendance.cli.app`), not on import:
`python -m opendance.cli.client` imports this package first, and a package that imported
`cli.client` itself would have it loaded twice (and runpy warn about it on every run).
"""

from __future__ import annotations

import functools

import typer


@functools.cache
def build_app() -> typer.Typer:
    """The `opendance` typer app, with every command (made once)."""
    from opendance.cli import admin, client, models, server

    app = typer.Typer(
        help="opendance: a self-hosted video generation API server.", no_args_is_help=True
    )
    # This order is the order of `opendance --help`: generate, credits, serve, worker,
    # migrate; then the groups keys, ledger, tasks, config.
    admin.register(app)
    client.register(app)
    server.register(app)
    models.register(app)
    return app


def main() -> None:
    """The `opendance` command (`[project.scripts]`, `python -m opendance`)."""
    build_app()()


def __getattr__(name: str) -> typer.Typer:
    if name == "app":
        return build_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["build_app", "main"]
