"""The loopback guard: refuse, and record, every connection attempt outside loopback.

The fixtures built on it live in tests/conftest.py: `outside_attempts` (the record, for tests
that prove nothing was even tried) and `only_loopback_connections` (fails the test if anything
was tried).
"""

from __future__ import annotations

import socket
from ipaddress import ip_address
from typing import Any

import pytest


def refuse_outside_loopback(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Patch `socket.connect`/`connect_ex` (until the test ends) so that any address outside
    loopback is recorded and refused with ConnectionRefusedError; returns the record."""
    attempts: list[str] = []
    original_connect = socket.socket.connect
    original_connect_ex = socket.socket.connect_ex

    def refuse_outside(address: Any) -> None:
        if isinstance(address, tuple) and not ip_address(address[0].split("%")[0]).is_loopback:
            attempts.append(str(address[0]))
            raise ConnectionRefusedError(f"test refused a connection to {address[0]}")

    def connect(self: socket.socket, address: Any) -> None:
        refuse_outside(address)
        original_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        refuse_outside(address)
        return original_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    return attempts
