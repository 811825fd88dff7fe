"""Per-key rate limits (the `limits` package): creates and reads counted separately.

Memory storage counts per process; with several API replicas set `rate_limit_storage_url` to
a Redis URL so the limits hold across them. Task-count and credit caps are not here: they are
checked in the create's database transaction, where they are exact.
"""

from __future__ import annotations

import math
import time

from limits import parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from opendance.settings import Settings
from opendance.tasks.errors import RateLimited


class KeyRateLimiter:
    def __init__(self, settings: Settings) -> None:
        self._limiter = MovingWindowRateLimiter(
            storage_from_string(settings.rate_limit_storage_url)
        )
        self._limits = {
            "create": parse(settings.rate_limit_create),
            "read": parse(settings.rate_limit_read),
        }

    def check(self, key_id: str, kind: str) -> dict[str, str]:
        """Count one request; the rate-limit headers to send, or `RateLimited` past the limit."""
        item = self._limits[kind]
        allowed = self._limiter.hit(item, key_id, kind)
        stats = self._limiter.get_window_stats(item, key_id, kind)
        reset_in = max(0, math.ceil(stats.reset_time - time.time()))
        headers = {
            "X-RateLimit-Limit": str(item.amount),
            "X-RateLimit-Remaining": str(max(0, stats.remaining)),
            "X-RateLimit-Reset": str(reset_in),
        }
        if not allowed:
            raise RateLimited(
                f"Too many {kind} requests for this key: the limit is {item}. "
                f"Retry in {max(1, reset_in)} s.",
                headers={**headers, "Retry-After": str(max(1, reset_in))},
            )
        return headers
