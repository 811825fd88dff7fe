"""Scheduling as every face shows it: fair share under a real worker, the flex tier and its
price, deadlines that expire (refunded, called back), and the fields that report them."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import select

from opendance.clock import FrozenClock
from opendance.store.tables import Task
from tests.helpers.faces import ark_client, openai_client
from tests.helpers.receivers import Receiver
from tests.helpers.servers import LiveServer

SEEDANCE = "doubao-seedance-1.0-pro-fast"
ARK = "/api/v3/contents/generations/tasks"
HOUR = 3600


def finished_at(server: LiveServer, task_ids: list[str]) -> dict[str, float]:
    with server.runtime.db.read() as session:
        rows = session.execute(
            select(Task.id, Task.finished_at).where(
                Task.id.in_(task_ids), Task.finished_at.is_not(None)
            )
        ).all()
    return {task_id: float(at) for task_id, at in rows}


def balance(server: LiveServer, key: str) -> int:
    credits: int = server.client.get("/v1/credits", headers=server.auth(key)).json()["balance"]
    return credits


def test_one_worker_a_backlog_of_16_delays_another_key_by_at_most_two_tasks(
    server_factory: Callable[..., LiveServer],
) -> None:
    server = server_factory(workers=1, max_active_tasks_per_key=1000)
    a, b = server.new_key(10_000), server.new_key(10_000)
    body = {"duration": 2, "quality": "480p"}
    backlog = [server.create(a, prompt=f"backlog {i}", **body).json()["id"] for i in range(16)]
    single = server.create(b, prompt="one task", **body).json()["id"]
    server.wait_for(b, single, lambda task: task["status"] == "completed", timeout=120)
    ends = finished_at(server, [*backlog, single])
    before = [task for task in backlog if task in ends and ends[task] < ends[single]]
    assert len(before) <= 2, (before, ends)
    for task in backlog:
        server.client.post(f"/v1/tasks/{task}/cancel", headers=server.auth(a))


def test_flex_is_half_price_and_every_face_reports_the_tier(idle_server: LiveServer) -> None:
    server = idle_server
    key = server.new_key()
    default = server.create(key, duration=3, quality="1080p").json()
    flex = server.create(key, duration=3, quality="1080p", service_tier="flex").json()
    assert default["task_info"]["service_tier"] == "default"
    assert flex["task_info"]["service_tier"] == "flex"
    reserved = default["usage"]["credits_reserved"]
    assert flex["usage"]["credits_reserved"] == -(-reserved // 2)
    # The default task is first in the queue, the flex one after it.
    assert (default["task_info"]["queue_position"], flex["task_info"]["queue_position"]) == (0, 1)

    video = openai_client(server, key).videos.create(
        prompt="a flex video", seconds="4", extra_body={"service_tier": "flex"}
    )
    assert video.model_extra is not None and video.model_extra["service_tier"] == "flex"
    assert (
        server.client.get(f"/v1/videos/{flex['id']}", headers=server.auth(key)).json()[
            "service_tier"
        ]
        == "flex"
    )

    tasks = ark_client(server, key).content_generation.tasks
    created = tasks.create(
        model=SEEDANCE, content=[{"type": "text", "text": "a cat"}], service_tier="flex"
    )
    task = tasks.get(task_id=created.id)
    assert (task.service_tier, task.execution_expires_after) == ("flex", 172800)
    assert tasks.get(task_id=default["id"]).service_tier == "default"
    flex_only = tasks.list(service_tier="flex", page_size=50)
    assert {item.id for item in flex_only.items} == {flex["id"], video.id, created.id}


@pytest.mark.parametrize(
    ("face", "field", "value"),
    [
        ("seed", "service_tier", "priority"),
        ("seed", "execution_expires_after", 60),
        ("openai", "service_tier", "priority"),
        ("openai", "execution_expires_after", 259201),
        ("ark", "service_tier", "priority"),
        ("ark", "execution_expires_after", 3599),
    ],
)
def test_a_bad_tier_or_deadline_is_a_400_naming_it(
    idle_server: LiveServer, face: str, field: str, value: object
) -> None:
    server = idle_server
    key = server.new_key()
    if face == "seed":
        response = server.create(key, **{field: value})
        param = response.json()["error"]["param"]
    elif face == "openai":
        body = {"prompt": "p", field: value}
        response = server.client.post("/v1/videos", json=body, headers=server.auth(key))
        param = response.json()["error"]["param"]
    else:
        body = {"model": SEEDANCE, "content": [{"type": "text", "text": "p"}], field: value}
        response = server.client.post(ARK, json=body, headers=server.auth(key))
        param = response.json()["error"]["param"]
    assert response.status_code == 400 and param == field, response.text
    assert balance(server, key) == 1000


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver(None)
    yield made
    made.close()


def test_a_deadline_passes_while_waiting_on_every_face(
    server_factory: Callable[..., LiveServer], receiver: Receiver
) -> None:
    clock = FrozenClock()
    server = server_factory(workers=0, clock=clock, allow_loopback_for_tests=True)
    key = server.new_key()
    hook = {"callback_url": receiver.url, "execution_expires_after": HOUR}
    seed = server.create(key, **hook).json()
    video = server.client.post(
        "/v1/videos", json={"prompt": "p", **hook}, headers=server.auth(key)
    ).json()
    ark = server.client.post(
        ARK,
        json={"model": SEEDANCE, "content": [{"type": "text", "text": "p"}], **hook},
        headers=server.auth(key),
    ).json()
    assert seed["task_info"]["execution_expires_after"] == HOUR
    assert video["execution_expires_after"] == HOUR

    clock.advance(HOUR + 1)
    assert server.runtime.service.expire_overdue() == 3
    seen = server.get(key, seed["id"]).json()
    assert (seen["status"], seen["error"]["code"]) == ("failed", "expired")
    assert seen["usage"]["credits_refunded"] == seen["usage"]["credits_reserved"]
    got = server.client.get(f"/v1/videos/{video['id']}", headers=server.auth(key)).json()
    assert (got["status"], got["error"]["code"]) == ("failed", "expired")
    assert ark_client(server, key).content_generation.tasks.get(task_id=ark["id"]).status == (
        "expired"
    )
    listed = server.client.get(ARK, params={"filter.status": "expired"}, headers=server.auth(key))
    assert [item["id"] for item in listed.json()["items"]] == [ark["id"], video["id"], seed["id"]]
    failed = server.client.get(ARK, params={"filter.status": "failed"}, headers=server.auth(key))
    assert failed.json()["total"] == 0
    assert balance(server, key) == 1000
    bodies = [json.loads(got.body) for got in receiver.wait_for(3, timeout=30)]
    statuses = sorted(str(body.get("status") or body.get("type")) for body in bodies)
    assert statuses == ["expired", "failed", "video.failed"], bodies


def test_ark_tasks_get_the_ark_default_deadline(idle_server: LiveServer) -> None:
    key = idle_server.new_key()
    created = idle_server.client.post(
        ARK,
        json={"model": SEEDANCE, "content": [{"type": "text", "text": "p"}]},
        headers=idle_server.auth(key),
    ).json()
    task = ark_client(idle_server, key).content_generation.tasks.get(task_id=created["id"])
    assert (task.service_tier, task.execution_expires_after) == ("default", 172800)
    assert task.model_extra is not None and task.model_extra["queue_position"] == 0
    seed = idle_server.get(key, created["id"]).json()
    assert seed["task_info"]["execution_expires_after"] == 172800
