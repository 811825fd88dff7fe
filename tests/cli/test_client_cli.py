"""The client commands: `generate` in a pseudo-terminal (the progress bar advances, the MP4 is
saved and decodes), the embedded server, and `tasks` / `credits`."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from opendance.cli import client as cli_client
from tests.helpers.clients import check_mp4, paced_routes, png_bytes, wire_client_faces
from tests.helpers.servers import LiveServer

ServerFactory = Callable[..., LiveServer]
ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[()][A-Z0-9]|\x1b[=>]")
runner = CliRunner()


@pytest.fixture(autouse=True)
def _client_faces(monkeypatch: pytest.MonkeyPatch) -> None:
    wire_client_faces(monkeypatch)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENDANCE_")}
    env.update(extra)
    return env


def run_in_pty(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 90) -> tuple[
    int, str
]:  # fmt: skip
    """Run a command with a pseudo-terminal as its stdin, stdout and stderr; all it wrote."""
    main, child = pty.openpty()
    process = subprocess.Popen(
        args, stdin=child, stdout=child, stderr=child, env=env, cwd=cwd, close_fds=True
    )
    os.close(child)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.1)
            if ready:
                try:
                    data = os.read(main, 65536)
                except OSError:  # EIO: the child side closed
                    break
                if not data:
                    break
                chunks.append(data)
            elif process.poll() is not None:
                break
        else:
            process.kill()
            raise AssertionError("the command did not finish in time")
        code = process.wait(timeout=10)
    finally:
        os.close(main)
    return code, b"".join(chunks).decode("utf-8", "replace")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "opendance.cli.client", *args]


def test_generate_in_a_terminal_shows_progress_and_saves_the_video(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    server = server_factory(routes=paced_routes(0.5))
    key = server.new_key(credits=100)
    env = clean_env(OPENDANCE_KEY=key, TERM="xterm-256color", COLUMNS="110", LINES="30")
    code, output = run_in_pty(
        cli("generate", "A cat playing piano", "-o", "cat.mp4", "--duration", "2",
            "--quality", "480p", "--aspect-ratio", "16:9", "--base-url", server.base_url),
        env,
        tmp_path,
    )  # fmt: skip
    text = ANSI.sub("", output)
    assert code == 0, text
    assert "\x1b[" in output, "a live display on a terminal (cursor control)"
    percents = [int(p) for p in re.findall(r"(\d{1,3})%", text)]
    distinct = list(dict.fromkeys(percents))
    assert distinct == sorted(distinct), f"the bar only moves forward: {distinct}"
    assert len([p for p in distinct if 0 < p < 100]) >= 2, f"it advanced in steps: {distinct}"
    assert distinct[-1] == 100
    assert "processing" in text and "completed" in text
    assert "ETA" in text
    assert "saved cat.mp4 (864x480, 2 s" in text
    check_mp4(tmp_path / "cat.mp4", width=864, height=480, frames=48)
    assert server.client.get("/v1/credits", headers=server.auth(key)).json()["balance"] == 98


def test_generate_without_a_server_starts_an_embedded_one(tmp_path: Path) -> None:
    data_dir = tmp_path / "embedded"
    result = subprocess.run(
        cli("generate", "a lighthouse at dusk", "-o", "out/light.mp4", "--duration", "2",
            "--quality", "480p", "--aspect-ratio", "1:1", "--seed", "3",
            "--data-dir", str(data_dir), "--json"),
        env=clean_env(OPENDANCE_DATA_DIR=str(tmp_path / "not-used")),
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "embedded server" in result.stderr
    lines = [line for line in result.stderr.splitlines() if "%" in line]
    assert lines[-1].split()[:2] == ["completed", "100%"], "plain lines off a terminal"
    body = json.loads(result.stdout)
    assert body["status"] == "completed" and body["output"] == "out/light.mp4"
    assert body["task_info"]["resolution"] == "640x640"
    check_mp4(tmp_path / "out" / "light.mp4", width=640, height=640, frames=48)
    assert (data_dir / "opendance.db").exists() and (data_dir / "embedded-cli.key").exists()
    assert not (tmp_path / "not-used").exists()


def test_generate_reports_a_failed_task(server_factory: ServerFactory, tmp_path: Path) -> None:
    server = server_factory(allow_loopback_for_tests=True)
    result = runner.invoke(
        cli_client.app,
        ["generate", "x", "--image", "http://127.0.0.1:9/none.png", "--duration", "2",
         "--quality", "480p", "--base-url", server.base_url],
        env={"OPENDANCE_KEY": server.new_key()},
    )  # fmt: skip
    assert result.exit_code == 1
    assert re.search(r"task task-unified-\S+ failed: image_fetch_\w+", result.output)


def test_generate_shows_the_place_in_the_queue_and_takes_a_tier(idle_server: LiveServer) -> None:
    key = idle_server.new_key(credits=100)
    for _ in range(2):
        idle_server.create(key, duration=2, quality="480p")
    result = runner.invoke(
        cli_client.app,
        ["generate", "offline work", "--tier", "flex", "--duration", "2", "--quality", "480p",
         "--timeout", "1.5", "--base-url", idle_server.base_url],
        env={"OPENDANCE_KEY": key},
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert re.search(
        r"task task-unified-\S+ \(opendance-sandbox, flex tier, 1 credits", result.output
    )
    assert re.search(r"queued \(2 ahead\)\s+0%", result.output), result.output
    assert "did not end within 1.5 s" in result.output
    newest = idle_server.client.get("/v1/tasks", headers=idle_server.auth(key)).json()["data"][0]
    assert newest["task_info"]["service_tier"] == "flex" and newest["status"] == "pending"


def test_generate_refusals(server: LiveServer, tmp_path: Path) -> None:
    missing = runner.invoke(
        cli_client.app,
        ["generate", "x", "--image", str(tmp_path / "nope.png"), "--base-url", server.base_url],
    )
    assert missing.exit_code == 2 and "no such file" in missing.output
    bad_key = runner.invoke(
        cli_client.app,
        ["generate", "x", "--base-url", server.base_url],
        env={"OPENDANCE_KEY": "od_wrong"},
    )
    assert bad_key.exit_code == 1 and "OPENDANCE_KEY" in bad_key.output
    invalid = runner.invoke(
        cli_client.app,
        ["generate", "x", "--aspect-ratio", "2:1", "--base-url", server.base_url],
        env={"OPENDANCE_KEY": server.new_key()},
    )
    assert invalid.exit_code == 1 and "aspect_ratio" in invalid.output


def test_generate_uploads_a_local_image(server: LiveServer, tmp_path: Path) -> None:
    image = tmp_path / "frame.png"
    image.write_bytes(png_bytes(640, 360))
    result = runner.invoke(
        cli_client.app,
        ["generate", "x", "--image", str(image), "--duration", "2", "--quality", "480p",
         "-o", str(tmp_path / "i2v.mp4"), "--base-url", server.base_url],
        env={"OPENDANCE_KEY": server.new_key()},
    )  # fmt: skip
    assert f"uploading {image}" in result.output
    uploads = list((server.runtime.settings.data_dir / "uploads").iterdir())
    assert len(uploads) == 1 and uploads[0].read_bytes() == image.read_bytes()
    if result.exit_code == 0:  # once the Seedance face takes upload: ids (core wiring)
        check_mp4(tmp_path / "i2v.mp4", width=864, height=480, frames=48)
    else:
        assert "image_urls" in result.output


def test_tasks_and_credits_commands(idle_server: LiveServer) -> None:
    key = idle_server.new_key(credits=100)
    env = {"OPENDANCE_KEY": key, "OPENDANCE_BASE_URL": idle_server.base_url}
    ids = [idle_server.create(key, duration=2, quality="480p").json()["id"] for _ in range(3)]

    listed = runner.invoke(cli_client.app, ["tasks", "list", "--json", "--limit", "2"], env=env)
    assert listed.exit_code == 0, listed.output
    page = json.loads(listed.stdout)
    assert [t["id"] for t in page["data"]] == ids[::-1][:2] and page["has_more"]

    table = runner.invoke(cli_client.app, ["tasks", "list"], env=env)
    assert table.exit_code == 0 and all(task_id in table.stdout for task_id in ids)
    assert "pending" in table.stdout

    shown = runner.invoke(cli_client.app, ["tasks", "show", ids[0]], env=env)
    assert shown.exit_code == 0 and ids[0] in shown.stdout and "pending" in shown.stdout
    assert "ETA" in shown.stdout
    assert re.search(r"tier\s+default", shown.stdout) and re.search(r"queue\s+next", shown.stdout)
    as_json = runner.invoke(cli_client.app, ["tasks", "show", ids[0], "--json"], env=env)
    assert json.loads(as_json.stdout)["id"] == ids[0]

    cancelled = runner.invoke(cli_client.app, ["tasks", "cancel", ids[0]], env=env)
    assert cancelled.exit_code == 0 and f"cancelled {ids[0]}" in cancelled.output
    again = runner.invoke(cli_client.app, ["tasks", "cancel", ids[0]], env=env)
    assert again.exit_code == 1 and "409" in again.output

    missing = runner.invoke(cli_client.app, ["tasks", "show", "task-unified-1-zzzzzzzz"], env=env)
    assert missing.exit_code == 1 and "task_not_found" in missing.output

    credits = runner.invoke(cli_client.app, ["credits"], env=env)
    assert credits.exit_code == 0 and credits.stdout.strip() == "96 credits (group default)"
    raw = runner.invoke(cli_client.app, ["credits", "--json"], env=env)
    assert json.loads(raw.stdout)["balance"] == 96


def test_register_adds_the_commands_to_another_app(idle_server: LiveServer) -> None:
    parent = typer.Typer()

    @parent.command()
    def serve() -> None:
        """A stand-in for the server's own commands."""

    cli_client.register(parent)
    key = idle_server.new_key(credits=7)
    result = runner.invoke(
        parent, ["credits", "--base-url", idle_server.base_url], env={"OPENDANCE_KEY": key}
    )
    assert result.exit_code == 0 and "7 credits" in result.stdout
    for command in ("generate", "tasks", "credits", "serve"):
        assert command in runner.invoke(parent, ["--help"]).stdout
