"""Callbacks as the contract says: when, what, how often, signed, durable, and never inward."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.helpers.receivers import Receiver, Script, ca_bundle
from tests.helpers.servers import LiveServer


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def make_receiver(ca: trustme.CA) -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def factory(*answers: tuple[int, float]) -> Receiver:
        receiver = Receiver(ca, Script(list(answers) or [(200, 0.0)]))
        made.append(receiver)
        return receiver

    yield factory
    for receiver in made:
        receiver.close()


@pytest.fixture
def hook_server(
    server_factory: Callable[..., LiveServer], ca: trustme.CA, tmp_path: Path
) -> LiveServer:
    return server_factory(allow_loopback_for_tests=True, extra_ca_file=ca_bundle(ca, tmp_path))


def deliveries(server: LiveServer, token: str, task_id: str) -> list[dict[str, Any]]:
    response = server.client.get(f"/v1/tasks/{task_id}/callbacks", headers=server.auth(token))
    assert response.status_code == 200
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def wait_delivery_state(
    server: LiveServer, token: str, task_id: str, state: str, timeout: float
) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = deliveries(server, token, task_id)
        if found and found[0]["status"] == state:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"delivery never became {state}: {deliveries(server, token, task_id)}")


def test_two_failures_then_success_three_attempts_spaced_1_and_2_s(
    hook_server: LiveServer, make_receiver: Callable[..., Receiver]
) -> None:
    receiver = make_receiver((500, 0.0), (500, 0.0), (200, 0.0))
    token = hook_server.new_key()
    task = hook_server.create(token, duration=2, quality="480p", callback_url=receiver.url).json()
    got = receiver.wait_for(3, timeout=60)
    record = wait_delivery_state(hook_server, token, task["id"], "succeeded", timeout=10)
    assert len(receiver.received) == 3
    gaps = [b.at - a.at for a, b in zip(got, got[1:], strict=False)]
    assert 0.8 <= gaps[0] <= 1.8 and 1.8 <= gaps[1] <= 2.8, gaps
    assert {r.headers["webhook-id"] for r in got} == {record["webhook_id"]}
    assert record["attempts"] == 3
    assert [a["status_code"] for a in record["history"]] == [500, 500, 200]
    assert [a["succeeded"] for a in record["history"]] == [False, False, True]


def test_always_failing_receiver_gets_exactly_four_attempts(
    hook_server: LiveServer, make_receiver: Callable[..., Receiver]
) -> None:
    receiver = make_receiver((503, 0.0))
    token = hook_server.new_key()
    task = hook_server.create(token, duration=2, quality="480p", callback_url=receiver.url).json()
    got = receiver.wait_for(4, timeout=60)
    record = wait_delivery_state(hook_server, token, task["id"], "failed", timeout=10)
    offsets = [r.at - got[0].at for r in got]
    expected = [0.0, 1.0, 3.0, 7.0]
    assert all(abs(o - e) <= 0.8 for o, e in zip(offsets, expected, strict=True)), offsets
    import time

    time.sleep(2.0)  # nothing more comes
    assert len(receiver.received) == 4
    assert record["attempts"] == 4 and len(record["history"]) == 4
    assert all(a["error"] == "HTTP 503" for a in record["history"])


@pytest.mark.slow
def test_a_receiver_that_sleeps_15_s_times_out_at_10_s(
    hook_server: LiveServer, make_receiver: Callable[..., Receiver]
) -> None:
    receiver = make_receiver((200, 15.0), (200, 0.0))
    token = hook_server.new_key()
    task = hook_server.create(token, duration=2, quality="480p", callback_url=receiver.url).json()
    receiver.wait_for(2, timeout=60)
    record = wait_delivery_state(hook_server, token, task["id"], "succeeded", timeout=10)
    first, second = record["history"]
    assert first["succeeded"] is False and "10 s" in first["error"]
    assert 9_500 <= first["duration_ms"] <= 12_000
    assert second["succeeded"] is True


def test_body_is_the_task_query_and_the_signature_verifies(
    hook_server: LiveServer, make_receiver: Callable[..., Receiver]
) -> None:
    receiver = make_receiver((200, 0.0))
    token = hook_server.new_key()
    task = hook_server.create(token, duration=2, quality="480p", callback_url=receiver.url).json()
    (got,) = receiver.wait_for(1, timeout=60)
    body = json.loads(got.body)
    assert body == hook_server.get(token, task["id"]).json()
    assert body["status"] == "completed" and body["results"]
    secret = hook_server.client.get("/v1/webhook-secret", headers=hook_server.auth(token)).json()[
        "secret"
    ]
    headers = {k: got.headers[k] for k in ("webhook-id", "webhook-timestamp", "webhook-signature")}
    assert Webhook(secret).verify(got.body, headers) == body
    tampered = got.body.replace(b'"completed"', b'"failed"')
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(tampered, headers)
    other_key = hook_server.new_key()
    other_secret = hook_server.client.get(
        "/v1/webhook-secret", headers=hook_server.auth(other_key)
    ).json()["secret"]
    with pytest.raises(WebhookVerificationError):
        Webhook(other_secret).verify(got.body, headers)


def test_cancel_fires_the_callback_and_rotation_signs_with_both(
    server_factory: Callable[..., LiveServer],
    make_receiver: Callable[..., Receiver],
    ca: trustme.CA,
    tmp_path: Path,
) -> None:
    server = server_factory(
        workers=0, allow_loopback_for_tests=True, extra_ca_file=ca_bundle(ca, tmp_path)
    )
    receiver = make_receiver((200, 0.0))
    token = server.new_key()
    old = server.client.get("/v1/webhook-secret", headers=server.auth(token)).json()["secret"]
    rotated = server.client.post("/v1/webhook-secret/rotate", headers=server.auth(token)).json()
    assert rotated["previous_secret"] == old and rotated["secret"] != old
    task = server.create(token, callback_url=receiver.url).json()
    server.client.post(f"/v1/tasks/{task['id']}/cancel", headers=server.auth(token))
    (got,) = receiver.wait_for(1, timeout=30)
    body = json.loads(got.body)
    assert body["status"] == "cancelled" and body["id"] == task["id"]
    headers = {k: got.headers[k] for k in ("webhook-id", "webhook-timestamp", "webhook-signature")}
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    for secret in (old, rotated["secret"]):
        assert Webhook(secret).verify(got.body, headers) == body


def test_callback_records_are_private_to_the_owner(
    hook_server: LiveServer, make_receiver: Callable[..., Receiver]
) -> None:
    receiver = make_receiver((200, 0.0))
    owner, stranger = hook_server.new_key(), hook_server.new_key()
    task = hook_server.create(owner, duration=2, quality="480p", callback_url=receiver.url).json()
    receiver.wait_for(1, timeout=60)
    response = hook_server.client.get(
        f"/v1/tasks/{task['id']}/callbacks", headers=hook_server.auth(stranger)
    )
    assert response.status_code == 404


def test_a_name_resolving_inward_is_refused_at_delivery(
    server_factory: Callable[..., LiveServer],
    make_receiver: Callable[..., Receiver],
    ca: trustme.CA,
    tmp_path: Path,
) -> None:
    receiver = make_receiver((200, 0.0))
    lookups: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        lookups.append(host)
        return ["10.20.30.40"] if host == "hooks.attacker.example" else ["127.0.0.1"]

    def prepare(runtime: Any) -> None:
        runtime.callback_resolver = resolver

    server = server_factory(prepare=prepare)  # loopback NOT allowed: production policy
    token = server.new_key()
    url = f"https://hooks.attacker.example:{receiver.port}/x"
    task = server.create(token, duration=2, quality="480p", callback_url=url).json()
    record = wait_delivery_state(server, token, task["id"], "failed", timeout=30)
    assert "hooks.attacker.example" in lookups
    assert all("internal" in attempt["error"] for attempt in record["history"])
    assert receiver.received == []


INTERNAL_SPELLINGS = [
    "https://127.0.0.1/x", "https://127.1/x", "https://2130706433/x", "https://0x7f000001/x",
    "https://0177.0.0.1/x", "https://0x7f.0.0.1/x", "https://localhost/x", "https://api.localhost/x",
    "https://LOCALHOST./x", "https://[::1]/x", "https://[::ffff:127.0.0.1]/x", "https://[::ffff:7f00:1]/x",
    "https://[::127.0.0.1]/x", "https://10.0.0.1/x", "https://172.16.5.4/x", "https://172.31.255.255/x",
    "https://192.168.0.1/x", "https://169.254.169.254/x", "https://100.64.0.1/x", "https://0.0.0.0/x",
    "https://[fc00::1]/x", "https://[fd12:3456::1]/x", "https://[fe80::1]/x", "https://224.0.0.1/x",
    "https://240.0.0.1/x", "https://[64:ff9b::a9fe:a9fe]/x", "https://[2002:7f00:1::]/x", "https://0/x",
    "https://[::]/x", "https://167772161/x",
]  # fmt: skip


@pytest.mark.parametrize("url", INTERNAL_SPELLINGS)
def test_internal_callback_urls_are_refused_at_creation(server: LiveServer, url: str) -> None:
    token = server.new_key(credits=50)
    response = server.create(token, callback_url=url)
    assert response.status_code == 400, url
    assert response.json()["error"]["param"] == "callback_url"
    assert server.client.get("/v1/tasks", headers=server.auth(token)).json()["data"] == []


def test_local_development_takes_plain_http_to_loopback(
    server_factory: Callable[..., LiveServer],
) -> None:
    """With loopback allowed, a receiver on this machine needs no certificate."""
    receiver = Receiver(None, Script([(200, 0.0)]))
    try:
        server = server_factory(allow_loopback_for_tests=True)
        token = server.new_key()
        for url in (
            "http://10.0.0.1/hook",  # plain http elsewhere stays refused, loopback or not
            "http://example.com/hook",
            "http://[::ffff:127.0.0.1]/hook",
        ):
            refused = server.create(token, callback_url=url)
            assert refused.status_code == 400, url
            assert refused.json()["error"]["param"] == "callback_url"
        task = server.create(token, duration=2, quality="480p", callback_url=receiver.url).json()
        (got,) = receiver.wait_for(1, timeout=60)
        assert json.loads(got.body)["id"] == task["id"]
        assert "webhook-signature" in got.headers
    finally:
        receiver.close()


def test_plain_http_callbacks_are_refused_in_production(server: LiveServer) -> None:
    token = server.new_key()
    refused = server.create(token, callback_url="http://127.0.0.1:9/hook")
    assert refused.status_code == 400
    assert "https" in refused.json()["error"]["message"]
