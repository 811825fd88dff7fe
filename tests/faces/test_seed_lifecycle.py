"""Tasks run end to end on the sandbox engine: curl in, MP4 out, progress, cancel, URLs."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import av
import pytest

from tests.helpers.servers import LiveServer

SEED_CURL_BODY = """{
  "model": "doubao-seedance-1.0-pro-fast",
  "prompt": "A cat playing piano"
}"""


def probe(path: Path) -> tuple[int, int, float, int, str]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return (
            stream.codec_context.width,
            stream.codec_context.height,
            float(stream.average_rate or 0),
            frames,
            stream.codec_context.name,
        )


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs the curl binary")
def test_the_seed_curl_request_end_to_end(server: LiveServer, tmp_path: Path) -> None:
    token = server.new_key()
    completed = subprocess.run(
        [
            "curl", "--silent", "--show-error", "--request", "POST",
            "--url", f"{server.base_url}/v1/videos/generations",
            "--header", f"Authorization: Bearer {token}",
            "--header", "Content-Type: application/json",
            "--data", SEED_CURL_BODY,
            "--write-out", "\n%{http_code}",
        ],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    body_text, status = completed.stdout.rsplit("\n", 1)
    assert status == "200"
    created = json.loads(body_text)
    assert set(created) >= {
        "created",
        "id",
        "model",
        "object",
        "progress",
        "status",
        "task_info",
        "type",
        "usage",
    }
    assert created["object"] == "video.generation.task" and created["type"] == "video"
    assert created["status"] == "pending" and created["progress"] == 0
    assert created["id"].startswith(f"task-unified-{created['created']}-")
    assert len(created["id"].rsplit("-", 1)[1]) == 8
    assert abs(created["created"] - time.time()) < 60
    assert created["task_info"]["can_cancel"] is True
    assert created["task_info"]["video_duration"] == 5
    assert isinstance(created["task_info"]["estimated_time"], int)
    assert created["usage"] == {
        "billing_rule": "per_call",
        "credits_reserved": 8,
        "credits_charged": 0,
        "credits_refunded": 0,
        "user_group": "default",
    }
    assert created["model"] == "opendance-sandbox"
    assert created["prompt"] == "A cat playing piano"

    done = server.wait_done(token, created["id"], timeout=120)
    assert done["status"] == "completed", done
    assert done["usage"]["credits_charged"] == 8 and done["usage"]["credits_refunded"] == 0
    assert done["progress"] == 100 and done["task_info"]["can_cancel"] is False
    assert len(done["results"]) == 1
    url = done["results"][0]
    assert url.startswith(server.base_url + "/v1/files/") and url.endswith(".mp4")

    target = tmp_path / "video.mp4"
    subprocess.run(["curl", "--silent", "--fail", "-o", str(target), url], check=True, timeout=60)
    width, height, fps, frames, codec = probe(target)
    assert (width, height) == (1920, 1088)
    assert fps == 24
    assert abs(frames - 5 * 24) <= 1
    assert codec == "h264"


def test_progress_rises_and_never_goes_down(server: LiveServer, tmp_path: Path) -> None:
    token = server.new_key()
    task_id = server.create(token, duration=6, quality="720p", aspect_ratio="9:16").json()["id"]
    seen: list[int] = []
    statuses: list[str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        task = server.get(token, task_id).json()
        seen.append(task["progress"])
        statuses.append(task["status"])
        if task["status"] in ("completed", "failed"):
            break
        time.sleep(0.02)
    assert statuses[-1] == "completed"
    assert seen == sorted(seen)
    assert any(0 < p < 100 for p in seen), seen
    assert "processing" in statuses
    response = server.client.get(task["results"][0])
    assert response.status_code == 200 and response.headers["content-type"] == "video/mp4"
    path = tmp_path / "v.mp4"
    path.write_bytes(response.content)
    assert probe(path)[:2] == (704, 1248)
    assert abs(probe(path)[3] - 6 * 24) <= 1


def test_cancel_a_processing_task_stops_the_engine(server_factory: object) -> None:
    server: LiveServer = server_factory()  # type: ignore[operator]
    token = server.new_key(credits=100)
    key_id = token.split("_")[1]
    task_id = server.create(token, duration=12, quality="1080p").json()["id"]
    server.wait_for(token, task_id, lambda t: t["status"] == "processing" and t["progress"] > 0)
    response = server.client.post(f"/v1/tasks/{task_id}/cancel", headers=server.auth(token))
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    # The engine really stops: the worker lets go of the task within a moment.
    deadline = time.monotonic() + 10
    while server.runtime.runner.active_tasks() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.runtime.runner.active_tasks() == []
    final = server.get(token, task_id).json()
    assert final["status"] == "cancelled" and "results" not in final
    usage = final["usage"]
    assert usage["credits_refunded"] == usage["credits_reserved"] == 20
    assert usage["credits_charged"] == 0
    assert not list(server.runtime.settings.results_dir.glob("*.mp4"))
    audit = server.runtime.service.ledger_audit(key_id)
    assert audit.balanced and audit.refunded == audit.reserved == 20
    assert server.runtime.accounts.get(key_id).balance == 100
    # A finished task cannot be cancelled.
    assert (
        server.client.post(f"/v1/tasks/{task_id}/cancel", headers=server.auth(token)).status_code
        == 409
    )


def test_cancel_of_a_completed_task_is_409_and_keeps_the_charge(server: LiveServer) -> None:
    token = server.new_key(credits=50)
    key_id = token.split("_")[1]
    task_id = server.create(token, duration=2, quality="480p").json()["id"]
    assert server.wait_done(token, task_id)["status"] == "completed"
    response = server.client.post(f"/v1/tasks/{task_id}/cancel", headers=server.auth(token))
    assert response.status_code == 409
    assert response.json()["error"]["type"] == "conflict_error"
    audit = server.runtime.service.ledger_audit(key_id)
    assert audit.balanced and audit.settled == 2 and audit.refunded == 0
    assert server.runtime.accounts.get(key_id).balance == 48


def test_result_urls_are_signed_and_expire(server: LiveServer) -> None:
    token = server.new_key()
    task_id = server.create(token, duration=2, quality="480p").json()["id"]
    url = server.wait_done(token, task_id)["results"][0]
    assert server.client.get(url).status_code == 200
    prefix, expires, signature, name = url.rsplit("/", 3)
    flipped = "B" if signature[0] == "A" else "A"  # a real change, whatever the first letter
    tampered = f"{prefix}/{expires}/{flipped + signature[1:]}/{name}"
    assert server.client.get(tampered).status_code == 403
    longer = f"{prefix}/{int(expires) + 10}/{signature}/{name}"
    assert server.client.get(longer).status_code == 403
    past = f"{prefix}/{int(time.time()) - 1}/{signature}/{name}"
    assert server.client.get(past).status_code == 410
    traversal = server.client.get(f"{prefix}/{expires}/{signature}/..%2f..%2fopendance.db.mp4")
    assert traversal.status_code in (403, 404)


def test_expired_results_are_swept(server: LiveServer) -> None:
    token = server.new_key()
    task_id = server.create(token, duration=2, quality="480p").json()["id"]
    url = server.wait_done(token, task_id)["results"][0]
    runtime = server.runtime
    files = list(runtime.settings.results_dir.glob("*.mp4"))
    assert len(files) == 1
    original = runtime.service.clock
    try:

        class Later(type(original)):  # type: ignore[misc]
            def now(self) -> float:
                return time.time() + runtime.settings.result_ttl_seconds + 5

        runtime.service.clock = Later()
        assert runtime.service.sweep_expired_results(runtime.results.delete) == 1
    finally:
        runtime.service.clock = original
    assert not files[0].exists()
    assert server.client.get(url).status_code == 410
    task = server.get(token, task_id).json()
    assert task["status"] == "completed" and task["results"] == []
