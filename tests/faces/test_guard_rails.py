"""Rate and concurrency limits, idempotent creates, body limit, request ids, metrics."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any

import httpx

from tests.helpers.servers import LiveServer

ServerFactory = Callable[..., LiveServer]


def test_create_rate_limit_is_429_with_retry_after(server_factory: ServerFactory) -> None:
    server = server_factory(workers=0, rate_limit_create="3/minute")
    token = server.new_key()
    codes = [server.create(token, quality="480p").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    limited = server.create(token, quality="480p")
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) >= 1
    assert limited.headers["X-RateLimit-Limit"] == "3"
    assert limited.headers["X-RateLimit-Remaining"] == "0"
    assert limited.json()["error"]["code"] == "rate_limited"
    assert limited.json()["error"]["type"] == "rate_limit_error"
    # Another key is not affected; reads have their own budget.
    assert server.create(server.new_key(), quality="480p").status_code == 200
    assert server.client.get("/v1/tasks", headers=server.auth(token)).status_code == 200


def test_read_rate_limit(server_factory: ServerFactory) -> None:
    server = server_factory(workers=0, rate_limit_read="5/minute")
    token = server.new_key()
    task_id = server.create(token).json()["id"]
    responses = [server.get(token, task_id) for _ in range(6)]
    assert [r.status_code for r in responses] == [200] * 5 + [429]
    assert responses[0].headers["X-RateLimit-Remaining"] == "4"


def test_active_task_cap_is_429_and_charges_nothing(server_factory: ServerFactory) -> None:
    server = server_factory(workers=0, max_active_tasks_per_key=2)
    token = server.new_key(credits=100)
    key_id = token.split("_")[1]
    first = server.create(token, quality="480p").json()
    server.create(token, quality="480p")
    over = server.create(token, quality="480p")
    assert over.status_code == 429
    assert over.json()["error"]["code"] == "too_many_active_tasks"
    assert "Retry-After" in over.headers
    assert server.runtime.accounts.get(key_id).balance == 100 - 2 * 3
    server.client.post(f"/v1/tasks/{first['id']}/cancel", headers=server.auth(token))
    assert server.create(token, quality="480p").status_code == 200


def test_idempotency_key_same_body_same_task_other_body_422(idle_server: LiveServer) -> None:
    token = idle_server.new_key(credits=100)
    key_id = token.split("_")[1]
    headers = {**idle_server.auth(token), "Idempotency-Key": "order-42"}
    body: dict[str, Any] = {
        "model": "doubao-seedance-1.0-pro-fast",
        "prompt": "a boat",
        "quality": "1080p",
    }
    first = idle_server.client.post("/v1/videos/generations", json=body, headers=headers)
    again = idle_server.client.post("/v1/videos/generations", json=body, headers=headers)
    assert first.status_code == again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert idle_server.runtime.accounts.get(key_id).balance == 92
    other = idle_server.client.post(
        "/v1/videos/generations", json={**body, "prompt": "a plane"}, headers=headers
    )
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    # The same idempotency key under another API key is a different request.
    other_key = idle_server.new_key()
    elsewhere = idle_server.client.post(
        "/v1/videos/generations",
        json=body,
        headers={**idle_server.auth(other_key), "Idempotency-Key": "order-42"},
    )
    assert elsewhere.status_code == 200 and elsewhere.json()["id"] != first.json()["id"]
    listing = idle_server.client.get("/v1/tasks", headers=idle_server.auth(token)).json()
    assert len(listing["data"]) == 1


def test_concurrent_requests_with_one_idempotency_key_make_one_task(
    idle_server: LiveServer,
) -> None:
    token = idle_server.new_key(credits=1000)
    key_id = token.split("_")[1]
    headers = {**idle_server.auth(token), "Idempotency-Key": "burst-1"}
    body = {"model": "doubao-seedance-1.0-pro-fast", "prompt": "concurrent", "quality": "1080p"}
    barrier = threading.Barrier(8)
    results: list[httpx.Response] = []
    lock = threading.Lock()

    def send() -> None:
        with httpx.Client(base_url=idle_server.base_url, timeout=30) as client:
            barrier.wait()
            response = client.post("/v1/videos/generations", json=body, headers=headers)
        with lock:
            results.append(response)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {r.status_code for r in results} == {200}
    assert len({r.json()["id"] for r in results}) == 1
    assert idle_server.runtime.accounts.get(key_id).balance == 1000 - 8
    assert idle_server.runtime.service.ledger_audit(key_id).reserved == 8


def test_body_over_the_limit_is_413(server_factory: ServerFactory) -> None:
    server = server_factory(workers=0, max_body_bytes=4096)
    token = server.new_key()
    big = {"model": "doubao-seedance-1.0-pro-fast", "prompt": "x", "padding": "y" * 5000}
    response = server.create(token, **big)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"

    def chunks() -> Any:
        yield b'{"model": "doubao-seedance-1.0-pro-fast", "prompt": "'
        for _ in range(10):
            yield b"z" * 1000
        yield b'"}'

    streamed = server.client.post(
        "/v1/videos/generations",
        content=chunks(),
        headers={**server.auth(token), "Content-Type": "application/json"},
    )
    assert streamed.status_code == 413
    assert server.client.get("/v1/tasks", headers=server.auth(token)).json()["data"] == []


def test_413_answers_in_the_shape_of_the_face_that_owns_the_path(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(workers=0, max_body_bytes=1024)
    token = server.new_key()
    padding = "y" * 3000
    seed = server.client.post(
        "/v1/videos/generations", json={"prompt": padding}, headers=server.auth(token)
    )
    openai = server.client.post("/v1/videos", json={"prompt": padding}, headers=server.auth(token))
    ark = server.client.post(
        "/api/v3/contents/generations/tasks", json={"x": padding}, headers=server.auth(token)
    )
    for answer in (seed, openai, ark):
        assert answer.status_code == 413, answer.text
        assert answer.headers["x-request-id"]
    assert seed.json()["error"]["code"] == "request_too_large"
    assert seed.json()["error"]["type"] == "invalid_request_error"
    assert openai.json()["error"]["code"] == "request_too_large"
    assert set(openai.json()["error"]) == {"message", "type", "param", "code"}
    assert ark.json()["error"]["code"] == "RequestTooLarge"
    assert ark.json()["error"]["type"], ark.json()


def test_request_ids_in_and_out(server: LiveServer) -> None:
    given = server.client.get("/healthz", headers={"X-Request-Id": "client-req-7"})
    assert given.headers["X-Request-Id"] == "client-req-7"
    made = server.client.get("/healthz")
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["X-Request-Id"])
    hostile = server.client.get("/healthz", headers={"X-Request-Id": "bad id <script>" * 20})
    assert re.fullmatch(r"[0-9a-f]{32}", hostile.headers["X-Request-Id"])
    error = server.client.get("/v1/tasks/x", headers={"X-Request-Id": "err-1"})
    assert error.status_code == 401 and error.headers["X-Request-Id"] == "err-1"


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_after_a_known_sequence(server: LiveServer) -> None:
    token = server.new_key(credits=100)
    done = [server.create(token, duration=2, quality="480p").json()["id"] for _ in range(2)]
    for task_id in done:
        assert server.wait_done(token, task_id)["status"] == "completed"
    server.runtime.dispatcher.stop()  # type: ignore[union-attr]
    pending = server.create(token, duration=5, quality="1080p").json()["id"]
    server.client.post(f"/v1/tasks/{pending}/cancel", headers=server.auth(token))
    text = server.client.get("/metrics").text
    model = "doubao-seedance-1.0-pro-fast"
    assert metric(text, "opendance_tasks_created_total", model=model) == 3
    assert metric(text, "opendance_tasks_finished_total", status="completed") == 2
    assert metric(text, "opendance_tasks_finished_total", status="cancelled") == 1
    assert metric(text, "opendance_credits_total", kind="reserved") == 2 + 2 + 8
    assert metric(text, "opendance_credits_total", kind="settled") == 4
    assert metric(text, "opendance_credits_total", kind="refunded") == 8
    assert metric(text, "opendance_tasks", status="completed", model=model) == 2
    assert metric(text, "opendance_tasks", status="cancelled", model=model) == 1
    assert metric(text, "opendance_queue_depth") == 0
    assert metric(text, "opendance_task_run_seconds_count", status="completed") == 2
    assert metric(text, "opendance_engine_step_seconds_count", engine="sandbox") > 2
    assert metric(text, "opendance_http_request_seconds_count", route="/v1/videos/generations") == 3
