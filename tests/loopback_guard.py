"""A fixture that fails a test which tries to connect anywhere but loopback."""

from __future__ import annotations

import socket
from ipaddress import ip_address
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def only_loopback_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail loudly instead of reaching any address outside loopback, whatever the code does."""
    original_connect = socket.socket.connect
    original_connect_ex = socket.socket.connect_ex

    def check(address: Any) -> None:
        if isinstance(address, tuple) and not ip_address(address[0].split("%")[0]).is_loopback:
            raise AssertionError(f"test tried to connect to {address[0]}")

    def connect(self: socket.socket, address: Any) -> None:
        check(address)
        original_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        check(address)
        return original_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
