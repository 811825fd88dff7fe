"""Fair share between keys within each model's queue: start-time fair queuing (SFQ).

Why SFQ rather than "the key served least recently" or deficit round-robin: both need the
claim to look at every key with work waiting, while SFQ fixes each task's place when it is
queued, so the claim is the first entry of one index (`ix_tasks_fair_claim`), whatever the
number of pending tasks or keys. Each (model, tier, key) is a flow. A task's start tag is
where its key's flow ends, or the queue's virtual time if the key had nothing queued; its
finish tag adds its estimated GPU seconds divided by the key group's weight
(`fair_share_weights`). The claim takes the smallest (tier, start tag, creation), and moves the
virtual time to the claimed task's tag. So a key's backlog queues behind itself: a task of an
idle key starts after at most the task each lane is running and one more of equal tag, and two
busy keys of equal weight share the GPU seconds of the model equally.

Tiers: `flex` tasks have their own flows and clock, and sort after every `default` task of the
model, so they run only when no default task waits.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, case, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql import Select

from opendance.store.tables import FairShare, QueueClock, Task
from opendance.tasks.states import Status

#: The claim's order (and `queue_position`'s): tier, then start tag, then creation.
CLAIM_ORDER = (Task.tier, Task.fair_tag, Task.created_seq)


def cost_of(estimated_seconds: float, weight: float) -> float:
    """How far a task moves its key's flow: its GPU seconds over the key group's share."""
    return max(estimated_seconds, 0.001) / weight


def start_tag(connection: Connection, *, model: str, tier: int, key_id: str, cost: float) -> float:
    """Queue a task in its key's flow and return its start tag (in the create's transaction).

    One upsert moves the flow's end, so two creates of one key at once (PostgreSQL) queue one
    after the other; the virtual time may be a moment old, which only shifts where a flow that
    was idle joins.
    """
    now = connection.execute(
        select(QueueClock.virtual_time).where(
            QueueClock.requested_model == model, QueueClock.tier == tier
        )
    ).scalar_one_or_none()
    virtual_time = float(now or 0.0)
    insert: Any = (sqlite if connection.dialect.name == "sqlite" else postgresql).insert
    statement = (
        insert(FairShare)
        .values(requested_model=model, tier=tier, api_key_id=key_id, finish_tag=virtual_time + cost)
        .on_conflict_do_update(
            index_elements=["requested_model", "tier", "api_key_id"],
            set_={
                "finish_tag": case(
                    (FairShare.finish_tag > virtual_time, FairShare.finish_tag),
                    else_=virtual_time,
                )
                + cost
            },
        )
        .returning(FairShare.finish_tag)
    )
    finish = float(connection.execute(statement).scalar_one())
    return finish - cost


def next_pending(model: str, now: float, *, for_update: bool) -> Select[str, int, int]:
    """The model's next task in fair order: (id, tier, creation) of the first startable one.

    A task past its deadline that never started is not startable (the sweep expires it); one
    that started and was handed back has no deadline any more.
    """
    query = (
        select(Task.id, Task.tier, Task.created_seq)
        .where(
            Task.status == Status.PENDING,
            Task.requested_model == model,
            or_(Task.expires_at.is_(None), Task.expires_at > now, Task.started_at.is_not(None)),
        )
        .order_by(*CLAIM_ORDER)
        .limit(1)
    )
    return query.with_for_update(skip_locked=True) if for_update else query


def advance_clock(connection: Connection, *, model: str, tier: int, tag: float) -> None:
    """The queue's virtual time moves to the tag of the task just claimed (never back)."""
    insert: Any = (sqlite if connection.dialect.name == "sqlite" else postgresql).insert
    connection.execute(
        insert(QueueClock)
        .values(requested_model=model, tier=tier, virtual_time=tag)
        .on_conflict_do_update(
            index_elements=["requested_model", "tier"],
            set_={
                "virtual_time": case(
                    (QueueClock.virtual_time < tag, tag), else_=QueueClock.virtual_time
                )
            },
        )
    )
