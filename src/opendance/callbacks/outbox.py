"""The callback outbox: rows written with the terminal change, claimed and updated by senders.

A delivery is `pending` until it succeeds (any 2xx) or runs out of attempts (`failed`). A
sender claims a due delivery with a conditional update (`claimed_until` in the future), so two
senders never post the same attempt; a sender killed mid-attempt leaves a claim that expires,
and the attempt is made again (at-least-once; receivers dedupe on `webhook-id`).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Final

from sqlalchemy import case, func, or_, select, update
from sqlalchemy.orm import Session

from opendance.callbacks import signing
from opendance.store.db import Database
from opendance.store.tables import ApiKey, CallbackAttempt, CallbackDelivery

#: Seconds to wait after the 1st, 2nd and 3rd failed attempt (then give up: 4 attempts in all).
RETRY_DELAYS: Final[tuple[float, ...]] = (1.0, 2.0, 4.0)
MAX_ATTEMPTS: Final[int] = len(RETRY_DELAYS) + 1


def enqueue(
    session: Session, *, task_id: str, api_key_id: str, url: str, event: str, now: float
) -> str:
    """Add a delivery in the caller's transaction; returns its webhook id."""
    webhook_id = "msg_" + secrets.token_hex(12)
    session.add(
        CallbackDelivery(
            id=webhook_id,
            task_id=task_id,
            api_key_id=api_key_id,
            url=url,
            event=event,
            status="pending",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
    )
    return webhook_id


@dataclass(frozen=True)
class ClaimedDelivery:
    id: str
    task_id: str
    api_key_id: str
    url: str
    event: str
    attempt: int
    claim_token: str


@dataclass(frozen=True)
class AttemptRecord:
    number: int
    started_at: float
    duration_ms: int
    status_code: int | None
    error: str | None
    succeeded: bool


@dataclass(frozen=True)
class DeliveryRecord:
    id: str
    url: str
    event: str
    status: str
    attempts: int
    next_attempt_at: float | None
    created_at: float
    finished_at: float | None
    history: list[AttemptRecord]


class Outbox:
    def __init__(self, db: Database, claim_seconds: float = 20.0) -> None:
        self.db = db
        self.claim_seconds = claim_seconds

    def claim_due(self, now: float, limit: int) -> list[ClaimedDelivery]:
        due = (
            CallbackDelivery.status == "pending",
            CallbackDelivery.next_attempt_at <= now,
            or_(CallbackDelivery.claimed_until.is_(None), CallbackDelivery.claimed_until < now),
        )
        claimed: list[ClaimedDelivery] = []
        with self.db.write() as session:
            rows = session.execute(
                select(CallbackDelivery)
                .where(*due)
                .order_by(CallbackDelivery.next_attempt_at)
                .limit(limit)
            ).scalars()
            for row in list(rows):
                token = secrets.token_hex(8)
                result = session.execute(
                    update(CallbackDelivery)
                    .where(CallbackDelivery.id == row.id, *due)
                    .values(claim_token=token, claimed_until=now + self.claim_seconds)
                )
                if result.rowcount == 1:  # type: ignore[attr-defined]
                    claimed.append(
                        ClaimedDelivery(
                            row.id,
                            row.task_id,
                            row.api_key_id,
                            row.url,
                            row.event,
                            row.attempts + 1,
                            token,
                        )
                    )
        return claimed

    def next_due(self) -> float | None:
        """When the next delivery can be claimed (a claimed one only once its claim expires)."""
        claimable_at = case(
            (
                CallbackDelivery.claimed_until > CallbackDelivery.next_attempt_at,
                CallbackDelivery.claimed_until,
            ),
            else_=CallbackDelivery.next_attempt_at,
        )
        with self.db.read() as session:
            value = session.execute(
                select(func.min(claimable_at)).where(CallbackDelivery.status == "pending")
            ).scalar()
            return float(value) if value is not None else None

    def record_attempt(
        self, delivery: ClaimedDelivery, attempt: AttemptRecord, finished: float
    ) -> str:
        """Store an attempt and the delivery's next state; returns that state."""
        if attempt.succeeded:
            values: dict[str, object] = {"status": "succeeded", "next_attempt_at": None}
        elif delivery.attempt >= MAX_ATTEMPTS:
            values = {"status": "failed", "next_attempt_at": None}
        else:
            values = {
                "status": "pending",
                "next_attempt_at": finished + RETRY_DELAYS[delivery.attempt - 1],
            }
        if values["status"] != "pending":
            values["finished_at"] = finished
        with self.db.write() as session:
            result = session.execute(
                update(CallbackDelivery)
                .where(
                    CallbackDelivery.id == delivery.id,
                    CallbackDelivery.claim_token == delivery.claim_token,
                    CallbackDelivery.status == "pending",
                )
                .values(attempts=delivery.attempt, claim_token=None, claimed_until=None, **values)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                return "lost_claim"
            session.add(
                CallbackAttempt(
                    delivery_id=delivery.id,
                    number=attempt.number,
                    started_at=attempt.started_at,
                    duration_ms=attempt.duration_ms,
                    status_code=attempt.status_code,
                    error=attempt.error,
                    succeeded=attempt.succeeded,
                )
            )
        return str(values["status"])

    def signing_secrets(self, api_key_id: str, now: float) -> list[str]:
        """The secrets that sign a key's callbacks now (current, plus previous in its grace)."""
        with self.db.read() as session:
            row = session.get(ApiKey, api_key_id)
            if row is None:
                return []
            current = row.webhook_secret
        if current is None:  # a key made before callbacks were signed: give it a secret once
            with self.db.write() as session:
                row = session.get(ApiKey, api_key_id)
                if row is None:
                    return []
                if row.webhook_secret is None:
                    row.webhook_secret = signing.new_secret()
        with self.db.read() as session:
            row = session.get(ApiKey, api_key_id)
            if row is None or row.webhook_secret is None:
                return []
            found = [row.webhook_secret]
            if (
                row.webhook_secret_previous
                and row.webhook_secret_rotated_at is not None
                and now - row.webhook_secret_rotated_at < signing.ROTATION_GRACE_SECONDS
            ):
                found.append(row.webhook_secret_previous)
            return found

    def deliveries_of(self, task_id: str) -> list[DeliveryRecord]:
        with self.db.read() as session:
            rows = session.execute(
                select(CallbackDelivery).where(CallbackDelivery.task_id == task_id)
            ).scalars()
            records = []
            for row in rows:
                history = session.execute(
                    select(CallbackAttempt)
                    .where(CallbackAttempt.delivery_id == row.id)
                    .order_by(CallbackAttempt.number, CallbackAttempt.id)
                ).scalars()
                records.append(
                    DeliveryRecord(
                        id=row.id,
                        url=row.url,
                        event=row.event,
                        status=row.status,
                        attempts=row.attempts,
                        next_attempt_at=row.next_attempt_at,
                        created_at=row.created_at,
                        finished_at=row.finished_at,
                        history=[
                            AttemptRecord(
                                a.number,
                                a.started_at,
                                a.duration_ms,
                                a.status_code,
                                a.error,
                                a.succeeded,
                            )
                            for a in history
                        ],
                    )
                )
            return records
