"""`opendance models`: pull open-weight video models from the Hugging Face Hub before serving
them, list what is on this machine, check that a model loads (no GPU needed), remove one.

The work is done in `opendance.engines.diffusers.hub`; this is its command line. Exit codes:
0 ok, 1 a problem (a failed pull, a broken model, nothing to remove), 2 a usage error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from opendance.cli.common import ConfigOption, JsonOption, fail, load_settings, out
from opendance.engines.diffusers import hub

models_app = typer.Typer(
    help="Pull, list, check and remove open-weight models (diffusers pipelines, LoRAs).",
    no_args_is_help=True,
)

NameArgument = Annotated[
    str,
    typer.Argument(
        help="A short name (see `opendance models list --available`) or a hub id (owner/name).",
        metavar="NAME",
        show_default=False,
    ),
]


def register(parent: typer.Typer) -> None:
    """Add `models` to the `opendance` app."""
    parent.add_typer(models_app, name="models")


def _root(config: Path | None) -> Path:
    return hub.models_dir(load_settings(config))


def _size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB"):
        if value < 1000:
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def _fold(table: Table) -> None:
    """Wrap long names and ids in a narrow terminal instead of cutting them."""
    for column in table.columns:
        column.overflow = "fold"


@models_app.command("pull")
def pull(
    name: NameArgument,
    revision: Annotated[
        str | None, typer.Option(help="Branch, tag or commit (default: main).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Download a model; run again, it fetches only what is missing (HF_TOKEN, HF_ENDPOINT)."""
    try:
        folder = hub.pull(name, _root(config), revision=revision)
    except hub.UsageError as error:
        raise fail(str(error), 2) from None
    except hub.ModelError as error:
        raise fail(str(error)) from None
    out.print(f"pulled {escape(name)} to {escape(str(folder))}")
    out.print(f"check it with: opendance models check {escape(name)}", style="dim")


@models_app.command("list")
def list_models(
    json_output: JsonOption = False,
    available: Annotated[
        bool, typer.Option("--available", help="List the models with short names instead.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """List the models on this machine (or, with --available, those with short names)."""
    root = _root(config)
    if available:
        _list_available(root, json_output)
        return
    models = hub.list_models(root)
    if json_output:
        rows = [{**vars(m), "path": str(m.path)} for m in models]
        out.print_json(json.dumps(rows))
        return
    if not models:
        out.print(f"no models in {escape(str(root))}; pull one: opendance models pull NAME")
        return
    table = Table("name", "hub id", "family", "kind", "dtype", "size", "status")
    _fold(table)
    for m in models:
        status = "[green]pulled[/green]" if m.complete else "[yellow]incomplete[/yellow]"
        table.add_row(
            m.name, m.hub_id or "", m.family or "?", m.kind, m.dtype or "", _size(m.size_bytes),
            status,
        )  # fmt: skip
    out.print(table)


def _list_available(root: Path, json_output: bool) -> None:
    pulled = {m.name for m in hub.list_models(root) if m.complete}
    if json_output:
        rows = [{"name": n, **vars(k), "pulled": n in pulled} for n, k in hub.KNOWN.items()]
        out.print_json(json.dumps(rows))
        return
    table = Table("name", "hub id", "family", "kind", "GPU GiB", "")
    _fold(table)
    table.columns[1].min_width = max(len(known.hub_id) for known in hub.KNOWN.values())
    for name, known in hub.KNOWN.items():
        table.add_row(
            f"{name}\n[dim]{escape(known.description)}[/dim]", known.hub_id, known.family,
            known.kind, f"~{known.gpu_gib:g}", "[green]pulled[/green]" if name in pulled else "",
        )  # fmt: skip
    table.caption = "GPU memory: rough, bf16, whole pipeline on the GPU (offload needs less)"
    out.print(table)


@models_app.command("check")
def check(name: NameArgument, config: ConfigOption = None) -> None:
    """Check a pulled model loads: files, configs, a build on the meta device (no GPU)."""
    problems = hub.check(name, _root(config))
    for problem in problems:
        out.print(f"[red]problem:[/red] {escape(problem)}")
    if problems:
        raise typer.Exit(1)
    out.print(f"{escape(name)}: [green]ok[/green]")


@models_app.command("rm")
def rm(
    name: NameArgument,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Remove without asking.")] = False,
    config: ConfigOption = None,
) -> None:
    """Remove a pulled model from this machine."""
    root = _root(config)
    folder = hub.find_local(name, root)
    if folder is None or folder.resolve().parent != root.resolve():
        raise fail(f"{name} is not pulled (see `opendance models list`)")
    if not yes:
        if not sys.stdin.isatty():
            raise fail("not a terminal: pass --yes to remove without asking", 2)
        size = _size(hub.describe(folder).size_bytes)
        typer.confirm(f"Remove {folder} ({size})?", abort=True)  # "Aborted!", exit 1
    try:
        hub.remove(name, root)
    except (hub.ModelError, OSError) as error:
        raise fail(str(error)) from None
    out.print(f"removed {escape(str(folder))}")
