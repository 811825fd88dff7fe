"""The lifecycle without HTTP: leases, re-queue after a lost worker, one terminal transition."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from opendance.clock import FrozenClock
from opendance.runtime import build_runtime
from opendance.store.tables import LedgerEntry
from opendance.tasks.errors import TaskNotCancellable
from opendance.tasks.models import Cancelled, Completed, CreateTask, Failed, KeyInfo
from opendance.tasks.states import TRANSITIONS, Status, check
from tests.helpers.servers import make_settings

MODEL = "doubao-seedance-1.0-pro-fast"


@pytest.fixture
def world(tmp_path: Path):  # type: ignore[no-untyped-def]
    clock = FrozenClock(1_761_313_744.0)
    runtime = build_runtime(make_settings(tmp_path, lease_seconds=10, max_attempts=2), clock)
    created = runtime.accounts.create_key(credits=100)
    key = KeyInfo(id=created.summary.id, group="default")
    yield runtime, clock, key
    runtime.close()


def request(**kw: object) -> CreateTask:
    values: dict[str, object] = {
        "model": MODEL, "prompt": "p", "duration": 5, "quality": "1080p", "aspect_ratio": "16:9",
    }  # fmt: skip
    values.update(kw)
    return CreateTask(**values)  # type: ignore[arg-type]


def ledger_kinds(runtime, task_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    with runtime.db.read() as session:
        rows = session.execute(
            select(LedgerEntry.kind).where(LedgerEntry.task_id == task_id).order_by(LedgerEntry.id)
        )
        return list(rows.scalars())


def test_state_table_is_closed_over_terminal_states() -> None:
    for status in (Status.COMPLETED, Status.FAILED, Status.CANCELLED):
        assert TRANSITIONS[status] == frozenset()
    with pytest.raises(ValueError):
        check(Status.COMPLETED, Status.PENDING)
    check(Status.PROCESSING, Status.PENDING)


def test_silent_worker_is_requeued_then_failed_with_refund(world) -> None:  # type: ignore[no-untyped-def]
    runtime, clock, key = world
    service = runtime.service
    task = service.create_task(key, request())
    first = service.claim_next("w1", [MODEL])
    assert first is not None and first.id == task.id and first.attempt == 1
    assert service.heartbeat(task.id, first.lease_token, 40)
    clock.advance(11)
    assert service.reap_expired_leases() == 1
    view = service.get_task(key.id, task.id)
    assert view.status == Status.PENDING and view.progress == 40  # progress kept, never lowered
    # The zombie's late report is fenced off.
    assert not service.heartbeat(task.id, first.lease_token, 90)
    done = Completed("x.mp4", "m", 1, 1, 24, 1)
    assert not service.complete(task.id, first.lease_token, done)
    second = service.claim_next("w2", [MODEL])
    assert second is not None and second.attempt == 2
    clock.advance(11)
    service.reap_expired_leases()
    view = service.get_task(key.id, task.id)
    assert view.status == Status.FAILED and view.error_code == "worker_lost"
    assert ledger_kinds(runtime, task.id) == ["reserve", "refund"]
    assert runtime.accounts.get(key.id).balance == 100


def test_progress_never_goes_down(world) -> None:  # type: ignore[no-untyped-def]
    runtime, _clock, key = world
    service = runtime.service
    task = service.create_task(key, request())
    claimed = service.claim_next("w", [MODEL])
    assert claimed is not None
    for value, expected in ((10, 10), (50, 50), (30, 50), (100, 99)):
        service.heartbeat(task.id, claimed.lease_token, value)
        assert service.get_task(key.id, task.id).progress == expected


def test_only_one_terminal_transition_wins(world) -> None:  # type: ignore[no-untyped-def]
    runtime, _clock, key = world
    service = runtime.service
    task = service.create_task(key, request())
    claimed = service.claim_next("w", [MODEL])
    assert claimed is not None
    cancelled = service.cancel_task(key.id, task.id)
    assert cancelled.status == Status.CANCELLED
    # The worker finishes afterwards: its outcome is refused, nothing is charged.
    assert not service.complete(task.id, claimed.lease_token, Completed("x.mp4", "m", 1, 1, 24, 1))
    assert not service.complete(task.id, claimed.lease_token, Failed("e", "m"))
    assert not service.complete(task.id, claimed.lease_token, Cancelled())
    with pytest.raises(TaskNotCancellable):
        service.cancel_task(key.id, task.id)
    assert ledger_kinds(runtime, task.id) == ["reserve", "refund"]
    assert service.ledger_audit(key.id).balanced


def test_claims_are_exclusive_and_in_order(world) -> None:  # type: ignore[no-untyped-def]
    runtime, clock, key = world
    service = runtime.service
    ids = []
    for _ in range(3):
        ids.append(service.create_task(key, request(quality="480p")).id)
    claims = [service.claim_next(f"w{i}", [MODEL]) for i in range(4)]
    assert [c.id for c in claims[:3] if c] == ids
    assert claims[3] is None
    assert service.claim_next("w", ["another-model"]) is None


def test_released_task_does_not_lose_an_attempt(world) -> None:  # type: ignore[no-untyped-def]
    runtime, _clock, key = world
    service = runtime.service
    task = service.create_task(key, request())
    claimed = service.claim_next("w", [MODEL])
    assert claimed is not None
    assert service.release(task.id, claimed.lease_token)
    again = service.claim_next("w", [MODEL])
    assert again is not None and again.attempt == 1
