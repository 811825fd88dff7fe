"""Run `opendance` as a real subprocess (serve, CLI commands) for crash and restart tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

from tests.helpers.servers import free_port, fresh_database_url


class ServerProcess:
    """One data directory and port; start, SIGKILL and restart the server on them."""

    def __init__(
        self, data_dir: Path, log: Path, database_url: str | None = None, **settings: str
    ) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.database_url = (
            database_url or fresh_database_url() or f"sqlite:///{data_dir / 'opendance.db'}"
        )
        self.env = {
            **os.environ,
            "OPENDANCE_DATA_DIR": str(data_dir),
            "OPENDANCE_PORT": str(self.port),
            "OPENDANCE_FIRST_KEY_CREDITS": "0",
            "OPENDANCE_DATABASE_URL": self.database_url,
            **{f"OPENDANCE_{name.upper()}": value for name, value in settings.items()},
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def sql(self, query: str, **params: object) -> list[tuple[object, ...]]:
        """Read the server's database directly (white-box checks)."""
        engine = create_engine(self.database_url)
        try:
            with engine.connect() as conn:
                return [tuple(row) for row in conn.execute(text(query), params)]
        finally:
            engine.dispose()

    def wait_all_completed(self, count: int, timeout: float) -> None:
        """Until the database holds `count` tasks, all completed (else fail with the counts)."""
        deadline = time.monotonic() + timeout
        while True:
            statuses = Counter(row[0] for row in self.sql("SELECT status FROM tasks"))
            if statuses == Counter({"completed": count}) or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        assert statuses == Counter({"completed": count}), statuses

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "opendance", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def create_key(self, credits: int) -> str:
        created = self.cli("keys", "create", "--credits", str(credits))
        match = re.search(r"od_[a-z0-9]{8}_[A-Za-z0-9]{38}", created.stdout)
        assert match, created.stdout + created.stderr
        return match.group(0)

    def spawn(self, *args: str, log: Path | None = None) -> subprocess.Popen[bytes]:
        """Start another `opendance` command on the same settings (e.g. a worker)."""
        with open(log or self.log, "ab") as handle:
            return subprocess.Popen(
                [sys.executable, "-m", "opendance", *args],
                env=self.env,
                stdout=handle,
                stderr=handle,
            )

    def start(self, *args: str, timeout: float = 60) -> None:
        self.proc = self.spawn("serve", *args)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError("server did not become healthy")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM and wait: a graceful shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
