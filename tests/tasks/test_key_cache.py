"""The key cache: used while no key changed anywhere, dropped the moment one did."""

from __future__ import annotations

import time
from pathlib import Path

from opendance.store.changes import key_epoch_for
from opendance.store.db import Database
from opendance.store.migrate import upgrade
from opendance.tasks.accounts import Accounts
from tests.helpers.servers import fresh_database_url


def _wait_for(predicate: object, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.005)
    return False


def test_cached_until_a_key_changes_in_another_process(tmp_path: Path) -> None:
    url = fresh_database_url() or f"sqlite:///{tmp_path / 'k.db'}"
    upgrade(url)
    server = Accounts(Database(url), key_changes=key_epoch_for(url))
    other = Accounts(Database(url))  # another process: its own connections, no cache
    try:
        token = other.create_key(credits=5).token
        spare = other.create_key(credits=5)
        assert server.cached(token) is None
        key = server.authenticate(token)
        assert key is not None and server.cached(token) == key

        other.grant(key.id, 7)  # balances are not cached: nothing to drop
        assert server.cached(token) == key

        other.set_group(spare.summary.id, "vip")  # any key's change drops every entry
        assert _wait_for(lambda: server.cached(token) is None)
        assert server.authenticate(token) == key

        other.revoke(key.id)
        assert _wait_for(lambda: server.cached(token) is None)
        assert server.authenticate(token) is None
        assert server.cached(token) is None
    finally:
        server.close()
        server.db.dispose()
        other.db.dispose()


def test_without_a_counter_nothing_is_cached(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'k.db'}"
    upgrade(url)
    accounts = Accounts(Database(url))
    token = accounts.create_key(credits=1).token
    assert accounts.authenticate(token) is not None
    assert accounts.cached(token) is None
    accounts.db.dispose()
