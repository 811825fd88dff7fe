"""One clock for the whole server, so tests can move time instead of sleeping."""

from __future__ import annotations

import time


class Clock:
    """Wall-clock time in seconds. Subclass (or use `FrozenClock`) in tests."""

    def now(self) -> float:
        return time.time()


class FrozenClock(Clock):
    """A clock that only moves when told to."""

    def __init__(self, start: float = 1_761_313_744.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds
