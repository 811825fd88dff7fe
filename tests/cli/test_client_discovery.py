"""The CLI finds the user's server: --base-url / OPENDANCE_BASE_URL, else the server running at
the configured address, else (generate only) an embedded one; it says which."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from typer.testing import CliRunner

from opendance.cli import client as cli_client
from tests.helpers.servers import LiveServer, free_port

ServerFactory = Callable[..., LiveServer]
runner = CliRunner()


def _env(**extra: str) -> dict[str, str | None]:
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("OPENDANCE_")}
    env.update(extra)
    return env


def test_commands_use_the_server_running_at_the_configured_address(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    server = server_factory()
    key = server.new_key(credits=42)
    port = server.base_url.rsplit(":", 1)[1]
    env = _env(OPENDANCE_KEY=key, OPENDANCE_PORT=port)
    credits = runner.invoke(cli_client.app, ["credits", "--json"], env=env)
    assert credits.exit_code == 0, credits.output
    assert f"server: {server.base_url} (the one running at the configured address)" in (
        credits.stderr
    )
    assert '"balance": 42' in credits.stdout

    generated = runner.invoke(
        cli_client.app,
        ["generate", "a boat", "-o", str(tmp_path / "boat.mp4"), "--duration", "2",
         "--quality", "480p"],
        env=env,
    )  # fmt: skip
    assert generated.exit_code == 0, generated.output
    assert "embedded" not in generated.stderr
    assert (tmp_path / "boat.mp4").stat().st_size > 0
    assert server.client.get("/v1/credits", headers=server.auth(key)).json()["balance"] == 40


def test_a_named_server_is_used_as_given(server_factory: ServerFactory) -> None:
    server = server_factory()
    key = server.new_key(credits=7)
    env = _env(OPENDANCE_KEY=key, OPENDANCE_BASE_URL=server.base_url, OPENDANCE_PORT="1")
    credits = runner.invoke(cli_client.app, ["credits", "--json"], env=env)
    assert credits.exit_code == 0, credits.output
    assert f"server: {server.base_url} (--base-url or OPENDANCE_BASE_URL)" in credits.stderr


def test_no_server_is_one_clear_line() -> None:
    port = free_port()
    env = _env(OPENDANCE_KEY="od_x", OPENDANCE_PORT=str(port))
    for args in (["credits"], ["tasks", "list"]):
        result = runner.invoke(cli_client.app, args, env=env)
        assert result.exit_code == 1
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, lines
        assert f"no opendance server answers at http://127.0.0.1:{port}" in lines[0]
        assert "--base-url" in lines[0]
