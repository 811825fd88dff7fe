"""The inference servers of one route: which one takes the next job, and how many each holds.

Open inference servers (SGLang, vLLM-Omni, LightX2V) keep their queue in memory: what they hold
is lost when they restart, and their FIFO knows no keys. So each server is given at most
`max_in_flight` jobs and the backlog stays in opendance's durable queue. A job goes to the
least-loaded healthy server (ties: the one that has served least, so work spreads). A server
that fails (connection refused, its jobs lost) is skipped for `down_seconds`, then probed
(`GET` its health path) before it is used again, so a server that comes back is used again.

The counts are per process: with several opendance worker processes on one route, give each
its own servers, or divide `max_in_flight` between them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

import httpx

from opendance.engines.base import EngineContext

log = logging.getLogger(__name__)

_WAIT_SLICE: Final = 0.2


@dataclass
class ServerState:
    """What the pool knows of one server."""

    url: str
    in_flight: int = 0
    served: int = 0
    failures: int = 0
    down_until: float = 0.0


Probe = Callable[[str], bool]


class ServerPool:
    """Hands out servers under a per-server in-flight limit; thread-safe."""

    def __init__(
        self,
        urls: Iterable[str],
        *,
        max_in_flight: int,
        probe: Probe,
        down_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._servers = {url: ServerState(url) for url in urls}
        if not self._servers:
            raise ValueError("a server pool needs at least one server")
        self.max_in_flight = max_in_flight
        self._probe = probe
        self._down_seconds = down_seconds
        self._clock = clock
        self._changed = threading.Condition()

    def __contains__(self, url: object) -> bool:
        return url in self._servers

    @property
    def urls(self) -> list[str]:
        return list(self._servers)

    def states(self) -> list[ServerState]:
        """A copy of every server's state (for tests, logs and metrics)."""
        with self._changed:
            return [ServerState(**vars(state)) for state in self._servers.values()]

    def acquire(self, ctx: EngineContext, exclude: Iterable[str] = ()) -> str:
        """A server with room for one more job, waiting (and seeing a cancel) until one has.

        Servers in `exclude` (they lost this job before) are used only when no other exists.
        """
        avoid = set(exclude)
        if avoid >= set(self._servers):
            avoid = set()
        while True:
            ctx.check_cancel()
            with self._changed:
                candidate = self._pick(avoid)
                if candidate is not None:
                    candidate.in_flight += 1
                    if candidate.down_until == 0.0:
                        return candidate.url
            if candidate is None:
                with self._changed:
                    self._changed.wait(_WAIT_SLICE)
                continue
            # Its quiet period is over: probe it (outside the lock) before it gets the job.
            if self._probe(candidate.url):
                self.succeeded(candidate.url)
                return candidate.url
            self.release(candidate.url)
            self.failed(candidate.url)

    def _pick(self, avoid: set[str]) -> ServerState | None:
        now = self._clock()
        ready = [
            state
            for state in self._servers.values()
            if state.url not in avoid
            and state.in_flight < self.max_in_flight
            and state.down_until <= now
        ]
        if not ready:
            return None
        return min(ready, key=lambda state: (state.in_flight, state.served))

    def alive(self, url: str) -> bool:
        """Ask the server now (its health path)."""
        return self._probe(url)

    def attach(self, url: str) -> None:
        """Count a job that already runs on `url` (a resumed attempt), whatever the limit."""
        with self._changed:
            self._servers[url].in_flight += 1

    def release(self, url: str) -> None:
        with self._changed:
            state = self._servers[url]
            state.in_flight = max(0, state.in_flight - 1)
            state.served += 1
            self._changed.notify_all()

    def failed(self, url: str) -> None:
        """The server failed a job (refused connections, lost its jobs): skip it a while."""
        with self._changed:
            state = self._servers[url]
            state.failures += 1
            state.down_until = self._clock() + self._down_seconds * min(8, state.failures)
        log.warning("inference server %s is skipped for now (%d failures)", url, state.failures)

    def succeeded(self, url: str) -> None:
        with self._changed:
            state = self._servers[url]
            if state.failures or state.down_until:
                log.info("inference server %s answers again", url)
            state.failures = 0
            state.down_until = 0.0
            self._changed.notify_all()


def http_probe(path: str, timeout: float, headers: dict[str, str]) -> Probe:
    """A probe that asks `GET {server}{path}` and takes any 2xx as alive."""

    def probe(url: str) -> bool:
        try:
            response = httpx.get(url.rstrip("/") + path, timeout=timeout, headers=headers)
        except httpx.HTTPError:
            return False
        return response.is_success

    return probe
