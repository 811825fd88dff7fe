"""The database handle: engine creation, SQLite tuning, read and write sessions.

SQLite gets WAL, a busy timeout and `BEGIN IMMEDIATE` for write transactions: a deferred
transaction that later upgrades to a write fails with SQLITE_BUSY under concurrency, even with
a busy timeout. Read transactions stay deferred so readers never block writers.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker


def _is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def make_engine(url: str) -> Engine:
    """Create an SQLAlchemy engine for SQLite or PostgreSQL with the settings we rely on."""
    if not _is_sqlite(url):
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=20, max_overflow=20
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


class Database:
    """Read sessions, and write sessions that commit on success and roll back on error."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = _is_sqlite(url)
        self.engine = make_engine(url)
        writer = (
            self.engine.execution_options(sqlite_immediate=True) if self.is_sqlite else self.engine
        )
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write_lock: AbstractContextManager[object] = (
            threading.RLock() if self.is_sqlite else nullcontext()
        )
        self._writer = writer
        self._write = sessionmaker(writer, expire_on_commit=False)
        # The request paths' database work (creates, task reads). On SQLite, creates run on one
        # thread of their own, in arrival order: there is one writer anyway, and 40 threads
        # queueing on the write lock cost more CPU than the writes. Reads get two threads: more
        # only contend for the GIL. PostgreSQL waits on the network: the framework's pool.
        # (Threads start on first use.)
        self.create_executor: ThreadPoolExecutor | None = None
        self.read_executor: ThreadPoolExecutor | None = None
        if self.is_sqlite:
            self.create_executor = ThreadPoolExecutor(1, thread_name_prefix="opendance-create")
            self.read_executor = ThreadPoolExecutor(2, thread_name_prefix="opendance-read")

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._read() as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        # SQLite has one writer at a time. Writers of this process queue on a lock instead of
        # in SQLite's busy handler, which sleeps up to 100 ms per retry and is not woken when
        # the lock frees (other processes still meet the busy handler).
        with self._write_lock, self._write() as session, session.begin():
            yield session

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A Core connection for reads on hot paths: no ORM unit of work, a fraction of the cost."""
        with self.engine.connect() as connection:
            yield connection

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A Core write transaction (hot paths), under the same writer rules as `write`."""
        with self._write_lock, self._writer.begin() as connection:
            yield connection

    def dispose(self) -> None:
        for executor in (self.create_executor, self.read_executor):
            if executor is not None:
                executor.shutdown(wait=True)
        self.engine.dispose()
