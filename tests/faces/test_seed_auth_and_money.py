"""401, 402, 404 across keys, 409, cancel with refunds, and the ledger under concurrency."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.helpers.servers import LiveServer


@pytest.mark.parametrize(
    "header",
    [
        None,
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer not-a-key",
        "Bearer od_abcdefgh_" + "A" * 38,  # well formed, bad checksum
    ],
    ids=["missing", "basic", "empty bearer", "garbage", "bad checksum"],
)
def test_missing_or_bad_key_is_401(idle_server: LiveServer, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    for method, path in (
        ("POST", "/v1/videos/generations"),
        ("GET", "/v1/tasks/task-unified-1761313744-vux2jw0k"),
        ("POST", "/v1/tasks/task-unified-1761313744-vux2jw0k/cancel"),
        ("GET", "/v1/tasks"),
    ):
        response = idle_server.client.request(method, path, headers=headers, json={})
        assert response.status_code == 401, (method, path)
        assert response.json()["error"]["type"] == "authentication_error"


def test_auth_comes_before_body_validation(idle_server: LiveServer) -> None:
    response = idle_server.client.post(
        "/v1/videos/generations", content=b"{broken", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 401


def test_unknown_and_revoked_keys_are_401(idle_server: LiveServer) -> None:
    token = idle_server.new_key()
    other = idle_server.runtime.accounts.create_key(credits=5)
    assert idle_server.create(token).status_code == 200
    idle_server.runtime.accounts.revoke(token.split("_")[1])
    assert idle_server.create(token).status_code == 401
    # A valid-looking token for an id that does not exist.
    forged = other.token.replace(other.summary.id, "zzzzzzzz")
    assert idle_server.create(forged).status_code == 401


def test_short_balance_is_402_and_nothing_happens(idle_server: LiveServer) -> None:
    token = idle_server.new_key(credits=7)
    response = idle_server.create(token, duration=5, quality="1080p")  # costs 8
    assert response.status_code == 402
    error = response.json()["error"]
    assert error["code"] == "insufficient_credits"
    assert "8" in error["message"] and "7" in error["message"]
    assert idle_server.client.get("/v1/tasks", headers=idle_server.auth(token)).json()["data"] == []
    key_id = token.split("_")[1]
    assert idle_server.runtime.accounts.get(key_id).balance == 7
    # A cheaper task fits: 480p 5 s = 3 credits.
    assert (
        idle_server.create(token, duration=5, quality="480p").json()["usage"]["credits_reserved"]
        == 3
    )
    assert idle_server.runtime.accounts.get(key_id).balance == 4


def test_another_keys_task_is_404_like_an_unknown_one(idle_server: LiveServer) -> None:
    alice, bob = idle_server.new_key(), idle_server.new_key()
    task_id = idle_server.create(alice).json()["id"]
    for token, expected in ((alice, 200), (bob, 404)):
        assert idle_server.get(token, task_id).status_code == expected
    unknown = idle_server.get(bob, "task-unified-1761313744-zzzzzzzz")
    theirs = idle_server.get(bob, task_id)
    assert unknown.json()["error"]["code"] == theirs.json()["error"]["code"] == "task_not_found"
    cancel = idle_server.client.post(f"/v1/tasks/{task_id}/cancel", headers=idle_server.auth(bob))
    assert cancel.status_code == 404
    assert idle_server.get(alice, task_id).json()["status"] == "pending"
    listing = idle_server.client.get("/v1/tasks", headers=idle_server.auth(bob)).json()
    assert listing["data"] == []


def test_cancel_pending_refunds_and_balances(idle_server: LiveServer) -> None:
    token = idle_server.new_key(credits=100)
    key_id = token.split("_")[1]
    task = idle_server.create(token, duration=5, quality="1080p").json()
    assert task["status"] == "pending" and task["task_info"]["can_cancel"] is True
    assert idle_server.runtime.accounts.get(key_id).balance == 92
    response = idle_server.client.post(
        f"/v1/tasks/{task['id']}/cancel", headers=idle_server.auth(token)
    )
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "cancelled"
    assert body["task_info"]["can_cancel"] is False
    assert idle_server.runtime.accounts.get(key_id).balance == 100
    audit = idle_server.runtime.service.ledger_audit(key_id)
    assert audit.balanced and audit.reserved == 8 and audit.refunded == 8 and audit.settled == 0
    # A second cancel is a conflict, and refunds nothing more.
    again = idle_server.client.post(
        f"/v1/tasks/{task['id']}/cancel", headers=idle_server.auth(token)
    )
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "task_not_cancellable"
    assert idle_server.runtime.accounts.get(key_id).balance == 100


def test_concurrent_creates_never_overdraw(idle_server: LiveServer) -> None:
    token = idle_server.new_key(credits=40)

    def create(_: int) -> int:
        return idle_server.create(token, duration=5, quality="1080p").status_code

    with ThreadPoolExecutor(max_workers=10) as pool:
        codes = list(pool.map(create, range(20)))
    assert codes.count(200) == 5
    assert codes.count(402) == 15
    key_id = token.split("_")[1]
    assert idle_server.runtime.accounts.get(key_id).balance == 0
    assert idle_server.runtime.service.ledger_audit(key_id).balanced


def test_estimated_time_counts_the_queue_ahead(idle_server: LiveServer) -> None:
    token = idle_server.new_key()
    first = idle_server.create(token, quality="1080p").json()
    for _ in range(3):
        idle_server.create(token, quality="1080p")
    later = idle_server.create(token, quality="1080p").json()
    assert first["task_info"]["estimated_time"] >= 1
    assert later["task_info"]["estimated_time"] > first["task_info"]["estimated_time"]
    # The first task's estimate does not grow with tasks queued behind it.
    again = idle_server.get(token, first["id"]).json()
    assert again["task_info"]["estimated_time"] == first["task_info"]["estimated_time"]
