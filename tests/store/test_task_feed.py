"""The feed of task changes made by other processes: what it hears, and when it says it can't
be trusted."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text

from opendance.store.changes import listener_for
from opendance.store.db import Database
from opendance.store.migrate import upgrade
from opendance.store.task_feed import SqliteTaskFeed, task_feed_for
from opendance.tasks.accounts import Accounts
from tests.helpers.servers import TEST_DATABASE_URL, fresh_database_url


def _wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def _insert_task(db: Database, task_id: str, key_id: str, seq: int) -> None:
    now = time.time()
    with db.write() as session:
        session.execute(
            text(
                "INSERT INTO tasks (id, created_seq, api_key_id, requested_model, model, status,"
                " progress, created, updated_at, prompt, duration, quality, aspect_ratio,"
                " credits, user_group, estimated_seconds, attempts, tier, fair_tag, face)"
                " VALUES (:id, :seq, :key, 'm', 'm', 'pending', 0, :created, :now, 'p', 5,"
                " '480p', '16:9', 1, 'default', 10, 0, 0, 0, 'seed')"
            ),
            {"id": task_id, "seq": seq, "key": key_id, "created": int(now), "now": now},
        )


def _touch(db: Database, task_id: str, progress: int) -> None:
    with db.write() as session:
        session.execute(
            text("UPDATE tasks SET progress = :p, updated_at = :now WHERE id = :id"),
            {"p": progress, "now": time.time(), "id": task_id},
        )


@pytest.fixture
def database(tmp_path: Path) -> tuple[str, Database, str]:
    """A migrated database (SQLite file, or PostgreSQL when the suite runs there), and a key."""
    url = fresh_database_url() or f"sqlite:///{tmp_path / 'feed.db'}"
    upgrade(url)
    db = Database(url)
    key = Accounts(db).create_key(credits=0).summary.id
    return url, db, key


def test_changes_made_elsewhere_are_heard_once(database: tuple[str, Database, str]) -> None:
    url, other, key = database
    _insert_task(other, "t-1", key, 1)
    _insert_task(other, "t-2", key, 2)
    listener = listener_for(url)
    feed = task_feed_for(url, listener)
    heard: list[str] = []
    lock = threading.Lock()

    def hear(task_id: str, _updated_at: float | None) -> None:
        with lock:
            heard.append(task_id)

    feed.on_change(hear)
    feed.start()
    try:
        assert _wait_for(lambda: feed.epoch() is not None)
        time.sleep(0.7)  # whatever the first poll reads of the recent past
        with lock:
            heard.clear()
        _touch(other, "t-1", 10)
        assert _wait_for(lambda: "t-1" in heard, timeout=2.0)
        time.sleep(1.2)  # re-read by the watermark's overlap, not announced again
        with lock:
            assert heard == ["t-1"]
        _touch(other, "t-1", 20)
        _touch(other, "t-2", 20)
        assert _wait_for(lambda: sorted(heard) == ["t-1", "t-1", "t-2"], timeout=2.0)
    finally:
        feed.close()
        if listener is not None:
            listener.stop()
        other.dispose()


@pytest.mark.skipif(bool(TEST_DATABASE_URL), reason="the SQLite poller")
def test_an_idle_sqlite_feed_runs_no_query(tmp_path: Path) -> None:
    """Idle, a poll is one pragma: the query runs only after another connection committed."""
    url = f"sqlite:///{tmp_path / 'idle.db'}"
    upgrade(url)
    feed = SqliteTaskFeed(str(tmp_path / "idle.db"), interval=0.05)
    feed.start()
    try:
        assert _wait_for(lambda: feed.epoch() is not None)
        queries = feed.queries
        time.sleep(0.5)  # ten polls
        assert feed.queries == queries
        with sqlite3.connect(tmp_path / "idle.db") as connection:
            connection.execute("UPDATE key_epoch SET value = value + 1")
        assert _wait_for(lambda: feed.queries == queries + 1)
    finally:
        feed.close()
    assert feed.epoch() is None  # stopped: nothing it said can be trusted any more


@pytest.mark.skipif(bool(TEST_DATABASE_URL), reason="the SQLite poller")
def test_a_failing_sqlite_feed_is_not_trusted(tmp_path: Path) -> None:
    feed = SqliteTaskFeed(str(tmp_path / "never-migrated.db"), interval=0.05)
    feed.start()
    try:
        time.sleep(0.4)
        assert feed.epoch() is None  # no tasks table: every poll fails
    finally:
        feed.close()
