"""Shared fixtures: real opendance servers on loopback (see tests.helpers.servers) and the
loopback guards (see tests.helpers.loopback)."""

from __future__ import annotations

import os
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
        clock = overrides.pop("clock", None)  # e.g. a FrozenClock, to move time in the test
        live = start_server(make_settings(data_dir, **overrides), prepare, clock)
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


@pytest.fixture(scope="session")
def s3_server() -> Iterator[Any]:
    """moto's S3 server on loopback, for the whole session (each test takes its own bucket)."""
    pytest.importorskip("moto")
    from tests.helpers.s3 import S3_ENV, S3Server

    previous = {name: os.environ.get(name) for name in S3_ENV}
    os.environ.update(S3_ENV)
    server = S3Server()
    server.start()
    yield server
    server.stop()
    for name, value in previous.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def s3(s3_server: Any) -> Any:
    """A fresh bucket on the session's S3 server."""
    import uuid

    s3_server.bucket = f"od-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=s3_server.bucket)
    return s3_server


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest) -> dict[str, str]:
    """Server settings for each storage backend: the data folder, then an S3 bucket."""
    if request.param == "local":
        return {}
    settings: dict[str, str] = request.getfixturevalue("s3").settings()
    return settings
