"""Shared fixtures: real opendance servers on loopback (see tests.helpers.servers) and the
loopback guards (see tests.helpers.loopback)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.loopback import refuse_outside_loopback
from tests.helpers.servers import LiveServer, drop_test_databases, make_settings, start_server


@pytest.fixture(scope="session", autouse=True)
def _drop_test_databases() -> Iterator[None]:
    yield
    drop_test_databases()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """Start servers with custom settings; all are stopped at the end of the test."""
    started: list[LiveServer] = []

    def factory(**overrides: Any) -> LiveServer:
        data_dir = overrides.pop("data_dir", tmp_path / f"data{len(started)}")
        prepare = overrides.pop("prepare", None)
        live = start_server(make_settings(data_dir, **overrides), prepare)
        started.append(live)
        return live

    yield factory
    for live in started:
        live.stop()


@pytest.fixture
def server(server_factory: Callable[..., LiveServer]) -> LiveServer:
    return server_factory()


@pytest.fixture
def idle_server(server_factory: Callable[..., LiveServer]) -> LiveServer:
    """A server with no workers: tasks stay pending."""
    return server_factory(workers=0)


# Only loopback may be contacted: a module opts in with
# `pytestmark = pytest.mark.usefixtures("only_loopback_connections")` (or "outside_attempts").


@pytest.fixture
def outside_attempts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every address outside loopback that anything tried to connect to (each was refused)."""
    return refuse_outside_loopback(monkeypatch)


@pytest.fixture
def only_loopback_connections(outside_attempts: list[str]) -> Iterator[None]:
    """Refuse any connection outside loopback, whatever the code does, and fail the test if one
    was tried."""
    yield
    if outside_attempts:
        pytest.fail(f"test tried to connect outside loopback: {outside_attempts}")
