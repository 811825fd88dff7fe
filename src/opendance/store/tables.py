"""The SQL tables. One schema for SQLite and PostgreSQL; Alembic migrations follow it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class ApiKey(Base):
    """An API key: only a SHA-256 of its secret is stored; `balance` is audited by the ledger."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    secret_hash: Mapped[str] = mapped_column(String(64))
    last4: Mapped[str] = mapped_column(String(4))
    user_group: Mapped[str] = mapped_column(String(64), default="default")
    balance: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float)
    # Standard Webhooks signing secrets (`whsec_...`); the previous one signs too for a while
    # after a rotation, so receivers can switch without losing callbacks.
    webhook_secret: Mapped[str | None] = mapped_column(String(80))
    webhook_secret_previous: Mapped[str | None] = mapped_column(String(80))
    webhook_secret_rotated_at: Mapped[float | None] = mapped_column(Float)


class KeyEpoch(Base):
    """One row, bumped by a trigger whenever a key's revocation, group or secret changes.

    Processes that cache authenticated keys compare it with the value their cache was filled
    at (see `opendance.store.changes`), so a revocation anywhere applies everywhere at once.
    """

    __tablename__ = "key_epoch"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class LedgerEntry(Base):
    """Append-only credit movements. A task has one reserve and then exactly one settle or refund.

    `amount` is positive (but for a grant that takes credits back); `kind` says the direction:
    grant and refund add to the balance, reserve takes from it, settle turns a reservation into
    a charge without moving the balance.
    """

    __tablename__ = "ledger_entries"
    __table_args__ = (
        UniqueConstraint("task_id", "kind", name="uq_ledger_task_kind"),
        # A key's usage history, paged by id, from the index alone.
        Index("ix_ledger_entries_key_id", "api_key_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    api_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"))
    task_id: Mapped[str | None] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(BigInteger)
    balance_after: Mapped[int] = mapped_column(BigInteger)
    note: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[float] = mapped_column(Float)


class Task(Base):
    """A video generation task and everything its lifecycle needs (lease, plan, result, error)."""

    __tablename__ = "tasks"
    __table_args__ = (
        Index("ix_tasks_status_created", "status", "created_seq"),
        Index("ix_tasks_key_created", "api_key_id", "created_seq"),
        # The per-key unfinished-task count of every create, from the index alone.
        Index("ix_tasks_key_status", "api_key_id", "status"),
        # The claim: the next task of a model in fair order is the first entry of this index.
        Index(
            "ix_tasks_fair_claim", "status", "requested_model", "tier", "fair_tag", "created_seq"
        ),
        # Waiting tasks past their deadline, for the expiry sweep.
        Index("ix_tasks_status_expires", "status", "expires_at"),
        # What changed since a moment ago (the change feed's poll on SQLite).
        Index("ix_tasks_updated_at", "updated_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # Monotonic creation order (ids are random after their timestamp).
    created_seq: Mapped[int] = mapped_column(BigInteger, unique=True)
    api_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"))
    requested_model: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    progress: Mapped[int] = mapped_column(Integer, default=0)
    created: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)

    prompt: Mapped[str] = mapped_column(Text)
    duration: Mapped[int] = mapped_column(Integer)
    quality: Mapped[str] = mapped_column(String(8))
    aspect_ratio: Mapped[str] = mapped_column(String(16))
    image_url: Mapped[str | None] = mapped_column(Text)
    callback_url: Mapped[str | None] = mapped_column(Text)
    seed: Mapped[int | None] = mapped_column(BigInteger)

    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    fps: Mapped[int | None] = mapped_column(Integer)
    frames: Mapped[int | None] = mapped_column(Integer)

    credits: Mapped[int] = mapped_column(BigInteger)
    user_group: Mapped[str] = mapped_column(String(64))
    estimated_seconds: Mapped[float] = mapped_column(Float)

    result_file: Mapped[str | None] = mapped_column(String(300))
    result_expires_at: Mapped[float | None] = mapped_column(Float)
    usage: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)

    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(200))
    lease_token: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[float | None] = mapped_column(Float)
    engine_state: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Scheduling (see `opendance.tasks.fair_queue`): the service tier (an index into
    # `settings.SERVICE_TIERS`: 0 default, 1 flex), the start tag of start-time fair queuing
    # within the key's flow, and the deadline by which the task must have started.
    tier: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    fair_tag: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    expires_at: Mapped[float | None] = mapped_column(Float)
    # The API face the task came through (seed, openai, ark): its callbacks use that format.
    face: Mapped[str] = mapped_column(String(16), default="seed", server_default="seed")
    # When the key deleted the task (an OpenAI or Ark DELETE). Key-scoped reads then treat it as
    # unknown; the row stays, because its ledger entries and callbacks refer to it.
    deleted_at: Mapped[float | None] = mapped_column(Float)


class CallbackDelivery(Base):
    """One callback to send (the outbox row), written in the transaction that ends the task.

    `id` is the Standard Webhooks `webhook-id`: stable across the delivery's retries.
    """

    __tablename__ = "callback_deliveries"
    __table_args__ = (Index("ix_callback_deliveries_due", "status", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id"), unique=True)
    api_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"))
    url: Mapped[str] = mapped_column(Text)
    event: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float | None] = mapped_column(Float)
    claim_token: Mapped[str | None] = mapped_column(String(40))
    claimed_until: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)


class CallbackAttempt(Base):
    """One HTTP attempt of a delivery: when, how long, and what came back."""

    __tablename__ = "callback_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("callback_deliveries.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[float] = mapped_column(Float)
    duration_ms: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(300))
    succeeded: Mapped[bool] = mapped_column(Boolean)


class Worker(Base):
    """A worker process: which models it serves, how many tasks at once, when it last spoke.

    The estimate of a pending task divides the work queued ahead by the live lanes of its model.
    """

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    models: Mapped[list[str]] = mapped_column(JSON)
    concurrency: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[float] = mapped_column(Float)
    heartbeat_at: Mapped[float] = mapped_column(Float, index=True)


class IdempotencyKey(Base):
    """An `Idempotency-Key` a key used on a create, with a hash of the body and the task made.

    Written in the create's own transaction, so a key either names its task or nothing.
    """

    __tablename__ = "idempotency_keys"

    api_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id"))
    created_at: Mapped[float] = mapped_column(Float, index=True)


class Upload(Base):
    """An image a key sent (`POST /v1/files`, an OpenAI `input_reference`, a `data:` URL).

    Its bytes live in the store under `uploads/<id>`; the row makes it the key's own: another
    key's task cannot use it, and only its owner reads or deletes it.
    """

    __tablename__ = "uploads"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    api_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"), index=True)
    content_type: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    filename: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float, index=True)


class FairShare(Base):
    """Per model, tier and key: the finish tag of the key's last queued task (its flow).

    A new task of the key starts where the flow ends, or at the queue's virtual time if the key
    was idle, so a key's backlog queues behind itself and not ahead of other keys.
    """

    __tablename__ = "fair_shares"

    requested_model: Mapped[str] = mapped_column(String(200), primary_key=True)
    tier: Mapped[int] = mapped_column(Integer, primary_key=True)
    api_key_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    finish_tag: Mapped[float] = mapped_column(Float)


class QueueClock(Base):
    """Per model and tier: the virtual time, the start tag of the task claimed last."""

    __tablename__ = "queue_clocks"

    requested_model: Mapped[str] = mapped_column(String(200), primary_key=True)
    tier: Mapped[int] = mapped_column(Integer, primary_key=True)
    virtual_time: Mapped[float] = mapped_column(Float)
