"""Start-up as a user meets it: a taken port, a broken route, `config check`, the first key."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.servers import free_port

pytestmark = pytest.mark.slow


def _env(tmp_path: Path, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENDANCE_")}
    env.update(
        OPENDANCE_DATA_DIR=str(tmp_path / "data"),
        OPENDANCE_PORT=str(port),
        OPENDANCE_WORKERS="0",
        **extra,
    )
    return env


def _opendance(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "opendance", *args],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_a_taken_port_is_one_line_and_keeps_the_first_key_for_the_next_start(
    tmp_path: Path,
) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    port = blocker.getsockname()[1]
    env = _env(tmp_path, port)
    try:
        taken = _opendance(env, "serve")
    finally:
        blocker.close()
    assert taken.returncode == 1
    assert "od_" not in taken.stdout + taken.stderr, "no key is made for a server that cannot start"
    (line,) = _lines(taken.stderr)
    assert f"127.0.0.1:{port} is already in use" in line and "--port" in line
    assert "Traceback" not in taken.stderr

    started = subprocess.Popen(
        [sys.executable, "-m", "opendance", "serve"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert started.stdout is not None
        seen = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = started.stdout.readline()
            seen.append(line)
            if "export OPENDANCE_KEY=od_" in line:
                break
        else:
            raise AssertionError("the next start printed no key:\n" + "".join(seen))
    finally:
        started.terminate()
        started.wait(timeout=30)


def test_a_route_with_an_unknown_engine_is_refused_at_start(tmp_path: Path) -> None:
    config = tmp_path / "opendance.toml"
    config.write_text(
        '[routes.my-model]\nengines = [{engine = "warp-drive"}]\n'
        '[routes."doubao-seedance-1.0-pro-fast"]\nengines = [{engine = "sandbox"}]\n'
    )
    env = _env(tmp_path, free_port())
    for args in (["serve", "-c", str(config)], ["worker", "-c", str(config)]):
        refused = _opendance(env, *args)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        (line,) = _lines(refused.stderr)
        assert "route 'my-model' (engine 'warp-drive'): unknown engine kind 'warp-drive'" in line
        assert "od_" not in refused.stdout
    checked = _opendance(env, "config", "check", "-c", str(config))
    assert checked.returncode == 2
    assert _lines(checked.stderr) == _lines(refused.stderr)
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())


def test_config_check_names_bad_options_and_missing_model_folders(tmp_path: Path) -> None:
    config = tmp_path / "opendance.toml"
    config.write_text(
        '[routes.wan]\nengines = [{engine = "diffusers", options = {model = "'
        + str(tmp_path / "no-such-folder")
        + '"}}]\n'
        '[routes.fast]\nengines = [{engine = "sandbox", options = {crf = "high"}}]\n'
    )
    checked = _opendance(_env(tmp_path, free_port()), "config", "check", "-c", str(config))
    assert checked.returncode == 2
    lines = _lines(checked.stderr)
    assert len(lines) == 2, lines
    assert lines[0].startswith("opendance: route 'fast' (engine 'sandbox'): options.crf:")
    assert lines[1] == (
        f"opendance: route 'wan' (engine 'diffusers'): the model folder "
        f"{tmp_path / 'no-such-folder'} does not exist"
    )


def test_config_check_passes_a_good_configuration(tmp_path: Path) -> None:
    checked = _opendance(_env(tmp_path, free_port()), "config", "check")
    assert checked.returncode == 0, checked.stderr
    assert "configuration ok: 1 route(s): doubao-seedance-1.0-pro-fast (sandbox)" in checked.stdout


def test_help_shows_flags_without_a_value_type() -> None:
    shown = _opendance(dict(os.environ, COLUMNS="100"), "--help")
    assert "--install-completion" in shown.stdout
    assert "<bool>" not in shown.stdout


def test_a_storage_url_of_an_unknown_kind_is_one_line(tmp_path: Path) -> None:
    env = _env(tmp_path, free_port(), OPENDANCE_STORAGE_URL="ftp://bucket/results")
    for args in (["config", "check"], ["serve"]):
        refused = _opendance(env, *args)
        assert refused.returncode == 2, refused.stderr
        (line,) = _lines(refused.stderr)
        assert "storage_url must be s3://bucket/prefix" in line
