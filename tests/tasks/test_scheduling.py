"""Scheduling in the task service: fair share between keys, tiers, deadlines, queue positions.

On SQLite, and again on PostgreSQL when the suite runs there (`make_settings` picks the
database). The clock is frozen where time matters, so deadlines pass when the test says.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from opendance.clock import FrozenClock
from opendance.runtime import Runtime, build_runtime
from opendance.store.tables import CallbackDelivery, LedgerEntry, Task
from opendance.tasks.models import Completed, CreateTask, KeyInfo
from opendance.tasks.states import Status
from tests.helpers.servers import make_settings

MODEL = "doubao-seedance-1.0-pro-fast"
HOUR = 3600


def request(**kw: Any) -> CreateTask:
    values: dict[str, Any] = {
        "model": MODEL, "prompt": "p", "duration": 4, "quality": "480p", "aspect_ratio": "16:9",
    }  # fmt: skip
    values.update(kw)
    return CreateTask(**values)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Runtime, FrozenClock]]:
    clock = FrozenClock()
    runtime = build_runtime(
        make_settings(
            tmp_path,
            workers=0,
            max_active_tasks_per_key=1000,
            fair_share_weights={"gold": 2.0},
            execution_expires_after={"flex": 2 * HOUR},
        ),
        clock,
    )
    yield runtime, clock
    runtime.close()


def new_key(runtime: Runtime, group: str = "default") -> KeyInfo:
    created = runtime.accounts.create_key(credits=100_000, group=group)
    return KeyInfo(id=created.summary.id, group=group)


def claim_all(runtime: Runtime) -> list[str]:
    """Claim every startable task one by one (one worker lane), completing each."""
    order = []
    while (claimed := runtime.service.claim_next("w1", [MODEL])) is not None:
        order.append(claimed.id)
        done = Completed("r.mp4", "opendance-sandbox", 854, 480, 24, 96)
        assert runtime.service.complete(claimed.id, claimed.lease_token, done)
    return order


def test_a_backlog_of_one_key_delays_another_keys_task_by_one_task(world: Any) -> None:
    runtime, _ = world
    service = runtime.service
    a, b = new_key(runtime), new_key(runtime)
    backlog = [service.create_task(a, request()).id for _ in range(16)]
    single = service.create_task(b, request()).id
    order = claim_all(runtime)
    assert order.index(single) == 1  # after the first of the backlog, which it ties with
    assert [task for task in order if task != single] == backlog  # a key's own order is kept


def test_a_key_that_arrives_while_the_backlog_runs_is_next(world: Any) -> None:
    runtime, _ = world
    service = runtime.service
    a, b = new_key(runtime), new_key(runtime)
    backlog = [service.create_task(a, request()).id for _ in range(16)]
    running = service.claim_next("w1", [MODEL])
    assert running is not None and running.id == backlog[0]
    single = service.create_task(b, request()).id
    following = service.claim_next("w2", [MODEL])
    assert following is not None and following.id == single


def test_group_weights_share_the_queue_in_proportion(world: Any) -> None:
    runtime, _ = world
    service = runtime.service
    gold, plain = new_key(runtime, "gold"), new_key(runtime)
    gold_tasks = {service.create_task(gold, request()).id for _ in range(8)}
    for _ in range(8):
        service.create_task(plain, request())
    first_six = claim_all(runtime)[:6]
    assert sum(task in gold_tasks for task in first_six) == 4  # weight 2 against 1


def test_flex_runs_after_every_waiting_default_task_at_half_the_price(world: Any) -> None:
    runtime, _ = world
    service = runtime.service
    a, b = new_key(runtime), new_key(runtime)
    flex = [service.create_task(a, request(service_tier="flex")) for _ in range(8)]
    default = service.create_task(b, request())
    order = claim_all(runtime)
    assert order == [default.id] + [view.id for view in flex]
    price = default.credits
    assert {view.credits for view in flex} == {-(-price // 2)}  # half, rounded up
    assert {view.service_tier for view in flex} == {"flex"}
    assert service.get_task(b.id, default.id).service_tier == "default"


def test_an_odd_price_rounds_up_for_flex(world: Any) -> None:
    runtime, _ = world
    key = new_key(runtime)
    # 1080p costs 1.6 credits a second by default: 3 s is 5 credits (4.8 rounded up).
    default = runtime.service.create_task(key, request(quality="1080p", duration=3))
    flex = runtime.service.create_task(
        key, request(quality="1080p", duration=3, service_tier="flex")
    )
    assert default.credits % 2 == 1
    assert flex.credits == (default.credits + 1) // 2


def ledger_kinds(runtime: Runtime, task_id: str) -> list[str]:
    with runtime.db.read() as session:
        rows = session.execute(
            select(LedgerEntry.kind).where(LedgerEntry.task_id == task_id).order_by(LedgerEntry.id)
        )
        return list(rows.scalars())


def test_a_task_not_started_by_its_deadline_expires_refunded_with_its_callback(
    world: Any,
) -> None:
    runtime, clock = world
    service = runtime.service
    key = new_key(runtime)
    before = runtime.accounts.get(key.id).balance
    running = service.create_task(key, request(execution_expires_after=HOUR))
    started = service.claim_next("w1", [MODEL])
    assert started is not None and started.id == running.id
    hook = "https://example.com/hook"
    waiting = service.create_task(key, request(execution_expires_after=HOUR, callback_url=hook))
    late = service.create_task(key, request())  # no deadline

    clock.advance(HOUR + 1)
    # Past its deadline the waiting task is not startable, even before the sweep runs.
    next_up = service.claim_next("w2", [MODEL])
    assert next_up is not None and next_up.id == late.id
    assert service.expire_overdue() == 1
    view = service.get_task(key.id, waiting.id)
    assert (view.status, view.error_code, view.expired) == (Status.FAILED, "expired", True)
    assert view.credits_refunded == view.credits
    assert ledger_kinds(runtime, waiting.id) == ["reserve", "refund"]
    with runtime.db.read() as session:
        events = list(
            session.execute(
                select(CallbackDelivery.event).where(CallbackDelivery.task_id == waiting.id)
            ).scalars()
        )
    assert events == ["task.failed"]
    # The task that was running when its deadline passed completes, charged.
    done = Completed("r.mp4", "opendance-sandbox", 854, 480, 24, 96)
    assert service.complete(running.id, started.lease_token, done)
    assert service.get_task(key.id, running.id).status == Status.COMPLETED
    assert service.expire_overdue() == 0
    held = running.credits + late.credits
    assert runtime.accounts.get(key.id).balance == before - held


def test_a_task_handed_back_after_it_started_never_expires(world: Any) -> None:
    runtime, clock = world
    service = runtime.service
    key = new_key(runtime)
    task = service.create_task(key, request(execution_expires_after=HOUR))
    claimed = service.claim_next("w1", [MODEL])
    assert claimed is not None and service.release(claimed.id, claimed.lease_token)
    clock.advance(HOUR + 1)
    assert service.expire_overdue() == 0
    again = service.claim_next("w2", [MODEL])
    assert again is not None and again.id == task.id


def test_deadlines_default_per_tier_and_count_from_creation(world: Any) -> None:
    runtime, _ = world
    service = runtime.service
    key = new_key(runtime)
    flex = service.create_task(key, request(service_tier="flex"))
    default = service.create_task(key, request())
    chosen = service.create_task(key, request(service_tier="flex", execution_expires_after=HOUR))
    assert service.get_task(key.id, flex.id).execution_expires_after == 2 * HOUR
    assert service.get_task(key.id, default.id).execution_expires_after is None
    assert service.get_task(key.id, chosen.id).execution_expires_after == HOUR


def test_queue_positions_are_the_order_tasks_really_start(tmp_path: Path) -> None:
    runtime = build_runtime(make_settings(tmp_path, workers=0, max_active_tasks_per_key=1000))
    try:
        service = runtime.service
        keys = [new_key(runtime) for _ in range(3)]
        plan = [
            (keys[0], "default"), (keys[0], "default"), (keys[0], "default"), (keys[0], "flex"),
            (keys[1], "flex"), (keys[1], "default"), (keys[0], "default"), (keys[2], "default"),
            (keys[1], "default"), (keys[2], "flex"),
        ]  # fmt: skip
        tasks = [
            (key, service.create_task(key, request(duration=2, service_tier=tier)).id)
            for key, tier in plan
        ]
        views = [service.get_task(key.id, task_id) for key, task_id in tasks]
        positions = {view.id: view.queue_position for view in views}
        assert sorted(positions.values()) == list(range(len(tasks)))
        # estimated_time follows the same order (every task here costs the same).
        by_position = sorted(views, key=lambda view: view.queue_position or 0)
        estimates = [view.estimated_time for view in by_position]
        assert estimates == sorted(estimates) and estimates[0] < estimates[-1]

        runtime.start_background(local_workers=1)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if all(service.get_task(k.id, t).status == Status.COMPLETED for k, t in tasks):
                break
            time.sleep(0.1)
        with runtime.db.read() as session:
            started = list(
                session.execute(
                    select(Task.id).where(Task.id.in_(positions)).order_by(Task.started_at)
                ).scalars()
            )
        assert started == sorted(positions, key=lambda task_id: positions[task_id])
    finally:
        runtime.close()
