"""Deleting a task through the OpenAI or Ark face: afterwards it is gone for every face.

As in the hosted APIs, a deleted video or task answers 404 wherever a key reads it (the three
faces' reads, lists, cancel, event stream, callbacks, a second delete). The row stays, marked
deleted, so the ledger still balances and internal readers (workers, callbacks) still see it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from alembic import command
from byteplussdkarkruntime._exceptions import ArkNotFoundError

from opendance.runtime import build_runtime
from opendance.store.migrate import alembic_config
from opendance.tasks.models import Completed, CreateTask
from opendance.tasks.states import Status
from tests.helpers.faces import ark_client, openai_client, wait_task
from tests.helpers.servers import LiveServer, make_settings

ServerFactory = Callable[..., LiveServer]
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SEEDANCE = "seedance-1-0-pro-fast-251015"
DONE = ("completed", "failed", "cancelled")


def key_id_of(server: LiveServer, token: str) -> str:
    owner = server.runtime.accounts.authenticate(token)
    assert owner is not None
    return owner.id


def assert_gone_for_every_face(server: LiveServer, token: str, task_id: str) -> None:
    """Every key-scoped read of the task is the 404 of a task that never existed."""
    headers = server.auth(token)
    for method, path in [
        ("GET", f"/v1/tasks/{task_id}"),
        ("POST", f"/v1/tasks/{task_id}/cancel"),
        ("GET", f"/v1/tasks/{task_id}/events"),
        ("GET", f"/v1/tasks/{task_id}/callbacks"),
        ("GET", f"/v1/videos/{task_id}"),
        ("GET", f"/v1/videos/{task_id}/content"),
        ("DELETE", f"/v1/videos/{task_id}"),
    ]:
        response = server.client.request(method, path, headers=headers)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["error"]["code"] == "task_not_found", (method, path)
    ark = f"/api/v3/contents/generations/tasks/{task_id}"
    for method in ("GET", "DELETE"):
        response = server.client.request(method, ark, headers=headers)
        assert response.status_code == 404, (method, ark, response.text)
        assert response.json()["error"]["code"] == "ResourceNotFound"
    listed = server.client.get("/v1/tasks", params={"limit": 100}, headers=headers).json()
    assert task_id not in [task["id"] for task in listed["data"]]
    videos = server.client.get("/v1/videos", params={"limit": 100}, headers=headers).json()
    assert task_id not in [video["id"] for video in videos["data"]]
    page = server.client.get(
        "/api/v3/contents/generations/tasks",
        params={"page_size": 100, "filter.task_ids": task_id},
        headers=headers,
    ).json()
    assert page == {"total": 0, "items": []}


# ---------------------------------------------------------------------------------------------
# OpenAI face


def test_openai_delete_of_a_completed_video_is_a_404_everywhere(server: LiveServer) -> None:
    token = server.new_key(credits=100)
    client = openai_client(server, token)
    kept = client.videos.create_and_poll(prompt="kept", size="864x480", poll_interval_ms=50)
    video = client.videos.create_and_poll(prompt="gone", size="864x480", poll_interval_ms=50)
    assert (kept.status, video.status) == ("completed", "completed")
    client.videos.download_content(video.id, variant="spritesheet")
    charged = server.runtime.accounts.get(key_id_of(server, token)).balance

    assert client.videos.delete(video.id).deleted is True

    assert_gone_for_every_face(server, token, video.id)
    with pytest.raises(openai.NotFoundError) as retrieved:
        client.videos.retrieve(video.id)
    assert retrieved.value.code == "task_not_found"
    with pytest.raises(openai.NotFoundError):
        client.videos.delete(video.id)
    assert [v.id for v in client.videos.list()] == [kept.id]
    assert client.videos.retrieve(kept.id).status == "completed"
    results = server.runtime.settings.results_dir
    assert sorted(p.name for p in results.iterdir()) == [f"{kept.id}.mp4"]

    # The money stays as it was: the charge of the deleted video is not undone.
    key_id = key_id_of(server, token)
    assert server.runtime.accounts.get(key_id).balance == charged
    audit = server.runtime.service.ledger_audit(key_id)
    assert audit.balanced and audit.refunded == 0 and audit.settled == audit.reserved
    # Internal readers still see the row, without its result.
    internal = server.runtime.service.get_task_unscoped(video.id)
    assert internal is not None and internal.status == Status.COMPLETED
    assert internal.result_file is None


def test_openai_delete_of_a_running_video_cancels_refunds_and_deletes(
    idle_server: LiveServer,
) -> None:
    token = idle_server.new_key(credits=100)
    client = openai_client(idle_server, token)
    video = client.videos.create(prompt="interrupted", size="864x480")
    service = idle_server.runtime.service
    claimed = service.claim_next("test-worker", idle_server.runtime.router.models())
    assert claimed is not None and claimed.id == video.id
    assert client.videos.retrieve(video.id).status == "in_progress"

    assert client.videos.delete(video.id).deleted is True

    assert_gone_for_every_face(idle_server, token, video.id)
    key_id = key_id_of(idle_server, token)
    assert idle_server.runtime.accounts.get(key_id).balance == 100
    audit = service.ledger_audit(key_id)
    assert audit.balanced and audit.refunded == audit.reserved > 0
    # The worker that held it learns it is over, and its late result changes nothing.
    assert service.heartbeat(video.id, claimed.lease_token, 50) is False
    late = Completed("late.mp4", "opendance-sandbox", 864, 480, 24, 48)
    assert service.complete(video.id, claimed.lease_token, late) is False
    internal = service.get_task_unscoped(video.id)
    assert internal is not None and internal.status == Status.CANCELLED
    assert service.ledger_audit(key_id).balanced


def test_deleting_what_the_sdk_lists_pages_on(idle_server: LiveServer) -> None:
    """`after` may name a video deleted meanwhile: the SDK's auto-pagination relies on it."""
    token = idle_server.new_key(credits=100)
    client = openai_client(idle_server, token)
    made = [client.videos.create(prompt=f"clip {i}", size="864x480").id for i in range(5)]
    seen = []
    for video in client.videos.list(limit=2):
        seen.append(video.id)
        client.videos.delete(video.id)
    assert seen == made[::-1]
    assert client.videos.list().data == []
    page = idle_server.client.get(
        "/v1/tasks", params={"after": made[-1]}, headers=idle_server.auth(token)
    )
    assert page.status_code == 200 and page.json()["data"] == []
    key_id = key_id_of(idle_server, token)
    assert idle_server.runtime.accounts.get(key_id).balance == 100
    assert idle_server.runtime.service.ledger_audit(key_id).balanced


def test_concurrent_deletes_answer_one_200_and_otherwise_404(server: LiveServer) -> None:
    token = server.new_key(credits=100)
    video = openai_client(server, token).videos.create_and_poll(
        prompt="raced", size="864x480", poll_interval_ms=50
    )

    def delete(_: int) -> int:
        with httpx.Client(base_url=server.base_url, timeout=30) as http:
            return http.delete(f"/v1/videos/{video.id}", headers=server.auth(token)).status_code

    with ThreadPoolExecutor(max_workers=6) as pool:
        codes = sorted(pool.map(delete, range(6)))
    assert codes == [200] + [404] * 5
    assert list(server.runtime.settings.results_dir.iterdir()) == []
    assert server.runtime.service.ledger_audit(key_id_of(server, token)).balanced


def test_an_open_event_stream_ends_when_its_task_is_deleted(idle_server: LiveServer) -> None:
    token = idle_server.new_key(credits=100)
    task = idle_server.create(token, duration=2, quality="480p").json()
    events: list[dict[str, object]] = []
    ended = threading.Event()

    def follow() -> None:
        with idle_server.client.stream(
            "GET", f"/v1/tasks/{task['id']}/events", headers=idle_server.auth(token), timeout=20
        ) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[len("data: ") :]))
        ended.set()

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    deadline = time.monotonic() + 10
    while not events and time.monotonic() < deadline:  # the stream is subscribed once it sent
        time.sleep(0.02)
    assert [event["status"] for event in events] == ["pending"]

    deleted = idle_server.client.delete(f"/v1/videos/{task['id']}", headers=idle_server.auth(token))
    assert deleted.status_code == 200
    assert ended.wait(10), "the stream of a deleted task ends"
    reader.join(5)
    # It may have caught the cancel before the delete; it never shows anything after that.
    assert [event["status"] for event in events] in (["pending"], ["pending", "cancelled"])
    assert_gone_for_every_face(idle_server, token, task["id"])


def test_an_idempotent_replay_of_a_deleted_task_is_a_404(idle_server: LiveServer) -> None:
    token = idle_server.new_key(credits=100)
    headers = {**idle_server.auth(token), "Idempotency-Key": "order-7"}
    body = {"prompt": "once", "size": "864x480"}
    first = idle_server.client.post("/v1/videos", json=body, headers=headers)
    assert first.status_code == 200
    assert (
        idle_server.client.post("/v1/videos", json=body, headers=headers).json()["id"]
        == (first.json()["id"])
    )
    idle_server.client.delete(f"/v1/videos/{first.json()['id']}", headers=headers)

    replay = idle_server.client.post("/v1/videos", json=body, headers=headers)
    assert replay.status_code == 404
    error = replay.json()["error"]
    assert (error["code"], error["param"]) == ("task_not_found", "Idempotency-Key")
    key_id = key_id_of(idle_server, token)
    assert idle_server.runtime.accounts.get(key_id).balance == 100  # nothing charged again
    assert idle_server.runtime.service.ledger_audit(key_id).balanced


# ---------------------------------------------------------------------------------------------
# Ark face


def test_ark_delete_of_a_succeeded_task_is_a_404_everywhere(server: LiveServer) -> None:
    token = server.new_key()
    tasks = ark_client(server, token).content_generation.tasks
    kept = tasks.create(model=SEEDANCE, content=[{"type": "text", "text": "kept --rs 480p"}])
    gone = tasks.create(model=SEEDANCE, content=[{"type": "text", "text": "gone --rs 480p"}])
    for task_id in (kept.id, gone.id):
        wait_task(server, token, task_id, DONE)
    before = server.runtime.accounts.get(key_id_of(server, token)).balance

    tasks.delete(gone.id)

    assert_gone_for_every_face(server, token, gone.id)
    with pytest.raises(ArkNotFoundError) as missing:
        tasks.get(task_id=gone.id)
    assert missing.value.code == "ResourceNotFound"
    page = tasks.list(page_size=100)
    assert page.total == 1 and [task.id for task in page.items] == [kept.id]
    assert tasks.list(status="succeeded").total == 1
    with pytest.raises(openai.NotFoundError):
        openai_client(server, token).videos.retrieve(gone.id)
    key_id = key_id_of(server, token)
    assert server.runtime.accounts.get(key_id).balance == before
    audit = server.runtime.service.ledger_audit(key_id)
    assert audit.balanced and audit.settled == audit.reserved


def test_ark_delete_of_a_queued_task_only_cancels_it(idle_server: LiveServer) -> None:
    """Ark cancels a queued task and keeps it (a cancelled task cannot be deleted there)."""
    token = idle_server.new_key(credits=100)
    tasks = ark_client(idle_server, token).content_generation.tasks
    queued = tasks.create(model=SEEDANCE, content=[{"type": "text", "text": "later --rs 480p"}])
    tasks.delete(queued.id)
    assert tasks.get(task_id=queued.id).status == "cancelled"
    assert tasks.list().total == 1
    # The OpenAI face deletes any task, a cancelled one included.
    assert openai_client(idle_server, token).videos.delete(queued.id).deleted is True
    assert_gone_for_every_face(idle_server, token, queued.id)


# ---------------------------------------------------------------------------------------------
# The schema


def test_tasks_made_before_the_deleted_at_migration_stay_visible(tmp_path: Path) -> None:
    """0007 adds a nullable column: rows already there are not deleted, down and up again."""
    settings = make_settings(tmp_path / "data", workers=0)
    url = settings.db_url
    runtime = build_runtime(settings)
    try:
        key = runtime.accounts.create_key(credits=100)
        info = runtime.accounts.authenticate(key.token)
        assert info is not None
        request = CreateTask(
            model=runtime.router.models()[0],
            prompt="from before",
            duration=2,
            quality="480p",
            aspect_ratio="16:9",
        )
        made = runtime.service.create_task(info, request)
    finally:
        runtime.close()
    command.downgrade(alembic_config(url), "0006")
    command.upgrade(alembic_config(url), "head")
    runtime = build_runtime(settings)
    try:
        assert runtime.service.get_task(info.id, made.id).status == Status.PENDING
        views, _ = runtime.service.list_tasks(info.id)
        assert [view.id for view in views] == [made.id]
    finally:
        runtime.close()
