"""A key changed in one process (revoked, regrouped, granted) applies at once in another."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from opendance.store.db import Database
from opendance.tasks.accounts import Accounts
from tests.helpers.processes import ServerProcess

pytestmark = pytest.mark.slow

BODY = {"model": "doubao-seedance-1.0-pro-fast", "prompt": "a fox", "quality": "1080p"}


def _key_id(token: str) -> str:
    return token.split("_")[1]


def test_revoke_elsewhere_refuses_the_next_create_and_read(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log", workers="0")
    token = server.create_key(100)
    headers = {"Authorization": f"Bearer {token}"}
    server.start()
    admin = Accounts(Database(server.database_url))
    try:
        with httpx.Client(base_url=server.base_url, headers=headers, timeout=10) as client:
            for _ in range(3):  # the server has the key in its cache now
                assert client.get("/v1/credits").status_code == 200
            assert client.post("/v1/videos/generations", json=BODY).status_code == 200
            balance = admin.get(_key_id(token)).balance

            admin.revoke(_key_id(token))
            revoked_at = time.monotonic()
            create = client.post("/v1/videos/generations", json=BODY)
            assert time.monotonic() - revoked_at < 0.1
            assert create.status_code == 401, create.text
            assert create.json()["error"]["code"] == "invalid_api_key"
            # Reads learn of it the same way (a notification on PostgreSQL): within 100 ms.
            while client.get("/v1/credits").status_code != 401:
                assert time.monotonic() - revoked_at < 0.1, "a revoked key still reads"
            assert admin.get(_key_id(token)).balance == balance
    finally:
        server.stop()
        admin.db.dispose()


def test_group_and_balance_changes_elsewhere_apply_to_the_next_create(tmp_path: Path) -> None:
    server = ServerProcess(
        tmp_path / "data",
        tmp_path / "server.log",
        workers="0",
        group_price_multipliers='{"half": "0.5"}',
    )
    token = server.create_key(0)
    headers = {"Authorization": f"Bearer {token}"}
    server.start()
    admin = Accounts(Database(server.database_url))
    try:
        with httpx.Client(base_url=server.base_url, headers=headers, timeout=10) as client:
            assert client.post("/v1/videos/generations", json=BODY).status_code == 402
            admin.grant(_key_id(token), 20)
            first = client.post("/v1/videos/generations", json=BODY)
            assert first.status_code == 200, first.text
            assert first.json()["usage"]["credits_reserved"] == 8
            assert first.json()["usage"]["user_group"] == "default"

            admin.set_group(_key_id(token), "half")
            second = client.post("/v1/videos/generations", json=BODY)
            assert second.status_code == 200, second.text
            assert second.json()["usage"]["credits_reserved"] == 4
            assert second.json()["usage"]["user_group"] == "half"
            assert admin.get(_key_id(token)).balance == 20 - 8 - 4
    finally:
        server.stop()
        admin.db.dispose()
