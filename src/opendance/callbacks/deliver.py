"""The callback sender: posts due outbox deliveries, signed, through the SSRF-safe client.

It runs an asyncio loop in its own thread so that many receivers (slow, dead or fine) are
served at once without a thread each. Each attempt has a hard 10 s deadline around everything
(connect, TLS, sending, the status line); redirects are not followed; any 2xx is success. A
task's end wakes the sender at once; retries wake it at their due time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable

import httpx

from opendance import __version__
from opendance.callbacks import signing
from opendance.callbacks.outbox import AttemptRecord, ClaimedDelivery, Outbox
from opendance.clock import Clock
from opendance.media.safe_http import Resolver, UnsafeAddressError, make_async_safe_client
from opendance.observability.metrics import Metrics
from opendance.settings import Settings

log = logging.getLogger(__name__)

ATTEMPT_TIMEOUT_SECONDS = 10.0
BATCH = 32


class CallbackSender:
    def __init__(
        self,
        outbox: Outbox,
        render_body: Callable[[str], str | None],
        settings: Settings,
        clock: Clock,
        *,
        resolver: Resolver | None = None,
        attempt_timeout: float = ATTEMPT_TIMEOUT_SECONDS,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics
        self.outbox = outbox
        self.render_body = render_body
        self.settings = settings
        self.clock = clock
        self.resolver = resolver
        self.attempt_timeout = attempt_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._in_flight: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="opendance-callbacks", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=10)

    def notify(self, _task_id: str = "") -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wake.set)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop claiming; let attempts in flight finish (up to `timeout`)."""
        self._stopping = True
        self.notify()
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._ready.set()
        client = make_async_safe_client(
            timeout=httpx.Timeout(self.attempt_timeout),
            allow_loopback=self.settings.allow_loopback_for_tests,
            extra_ca_file=self.settings.extra_ca_file,
            resolver=self.resolver,
            follow_redirects=False,
        )
        async with client:
            while not self._stopping:
                try:
                    await self._tick(client)
                except Exception:
                    log.exception("callback sender loop failed; retrying")
                    await asyncio.sleep(1.0)
            if self._in_flight:
                await asyncio.wait(self._in_flight, timeout=self.attempt_timeout + 2)

    async def _tick(self, client: httpx.AsyncClient) -> None:
        assert self._wake is not None
        self._wake.clear()
        claimed = await asyncio.to_thread(self.outbox.claim_due, self.clock.now(), BATCH)
        for delivery in claimed:
            task = asyncio.create_task(self._attempt(client, delivery))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        if len(claimed) == BATCH:
            return
        next_due = await asyncio.to_thread(self.outbox.next_due)
        wait = 1.0 if next_due is None else min(1.0, max(0.0, next_due - self.clock.now()))
        if wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)

    async def _attempt(self, client: httpx.AsyncClient, delivery: ClaimedDelivery) -> None:
        body = await asyncio.to_thread(self.render_body, delivery.task_id)
        started = self.clock.now()
        t0 = time.monotonic()
        status_code: int | None = None
        error: str | None = None
        if body is None:
            error = "the task no longer exists"
        else:
            timestamp = int(self.clock.now())
            keys = await asyncio.to_thread(
                self.outbox.signing_secrets, delivery.api_key_id, started
            )
            headers = {
                "content-type": "application/json",
                "user-agent": f"opendance/{__version__} (callbacks)",
                **signing.signed_headers(keys, delivery.id, timestamp, body),
            }
            try:
                async with asyncio.timeout(self.attempt_timeout):
                    async with client.stream(
                        "POST", delivery.url, content=body.encode(), headers=headers
                    ) as response:
                        status_code = response.status_code
                if not 200 <= status_code < 300:
                    error = f"HTTP {status_code}"
            except TimeoutError:
                error = f"no answer within {self.attempt_timeout:g} s"
            except UnsafeAddressError:
                error = "refused: the host resolves to an internal address"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: could not deliver"
        record = AttemptRecord(
            number=delivery.attempt,
            started_at=started,
            duration_ms=int((time.monotonic() - t0) * 1000),
            status_code=status_code,
            error=error,
            succeeded=error is None,
        )
        state = await asyncio.to_thread(
            self.outbox.record_attempt, delivery, record, self.clock.now()
        )
        if self.metrics is not None:
            outcome = "success" if record.succeeded else "failure"
            self.metrics.callback_attempts.labels(outcome).inc()
        log.info(
            "callback %s for %s attempt %d: %s (%s)",
            delivery.id,
            delivery.task_id,
            delivery.attempt,
            error or status_code,
            state,
        )
        if self._wake is not None:
            self._wake.set()
