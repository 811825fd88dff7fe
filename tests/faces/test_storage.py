"""Results and uploads in the store, on both backends (the data folder, and an S3 bucket on
moto's S3 server): downloads without a key (ranges too), previews, uploads that belong to their
key, the URL modes, the sweeper, and a store that goes away mid-run."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from opendance.media.video import probe_mp4
from tests.helpers.clients import png_bytes
from tests.helpers.servers import LiveServer

ServerFactory = Callable[..., LiveServer]
BODY = {"duration": 2, "quality": "480p", "aspect_ratio": "16:9"}


def upload(server: LiveServer, key: str, data: bytes | None = None) -> httpx.Response:
    files = {"file": ("first.png", data or png_bytes(320, 180), "image/png")}
    return server.client.post("/v1/files", headers=server.auth(key), files=files)


def balance(server: LiveServer, key: str) -> int:
    return int(server.client.get("/v1/credits", headers=server.auth(key)).json()["balance"])


def mp4s(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*.mp4")] if folder.exists() else []


def test_a_result_is_stored_served_without_a_key_and_by_range(
    server_factory: ServerFactory, storage: dict[str, str], tmp_path: Path
) -> None:
    server = server_factory(data_dir=tmp_path / "data", **storage)
    key = server.new_key()
    task = server.wait_done(key, server.create(key, prompt="a boat", **BODY).json()["id"])
    assert task["status"] == "completed", task
    url = task["results"][0]
    whole = httpx.get(url, timeout=30)
    assert whole.status_code == 200 and whole.headers["content-type"] == "video/mp4"
    (tmp_path / "got.mp4").write_bytes(whole.content)
    assert probe_mp4(tmp_path / "got.mp4").frames == 48
    part = httpx.get(url, headers={"Range": "bytes=10-109"}, timeout=30)
    assert part.status_code == 206
    assert part.content == whole.content[10:110]
    assert part.headers["content-range"].startswith("bytes 10-109/")
    video = server.client.get(
        f"/v1/videos/{task['id']}/content?variant=thumbnail", headers=server.auth(key)
    )
    assert video.status_code == 200 and video.headers["content-type"] == "image/webp"
    if storage:
        assert mp4s(tmp_path / "data") == [], "nothing in the data folder: it is in the bucket"
    else:
        assert len(mp4s(tmp_path / "data")) == 1


def test_the_sweeper_deletes_expired_results_from_the_store(
    server_factory: ServerFactory, storage: dict[str, str], s3_server: Any
) -> None:
    server = server_factory(**storage)
    key = server.new_key()
    task = server.wait_done(key, server.create(key, prompt="a boat", **BODY).json()["id"])
    service, results = server.runtime.service, server.runtime.results
    with server.runtime.db.write() as session:
        from sqlalchemy import update

        from opendance.store.tables import Task

        session.execute(update(Task).where(Task.id == task["id"]).values(result_expires_at=1.0))
    assert service.sweep_expired_results(results.delete) == 1
    if storage:
        assert not [k for k in s3_server.object_keys() if task["id"] in k], "all of it gone"
    gone = httpx.get(task["results"][0], timeout=30)
    assert gone.status_code == 410


def test_an_upload_belongs_to_its_key(
    server_factory: ServerFactory, storage: dict[str, str]
) -> None:
    server = server_factory(**storage)
    owner, other = server.new_key(credits=100), server.new_key(credits=100)
    made = upload(server, owner)
    assert made.status_code == 200, made.text
    file_id = made.json()["id"]
    assert made.json()["sha256"] and made.json()["bytes"] > 0

    stolen = server.create(other, prompt="not mine", image_urls=[file_id], **BODY)
    assert stolen.status_code == 400, stolen.text
    assert "no such upload for this key" in stolen.json()["error"]["message"]
    assert stolen.json()["error"]["param"] == "image_urls"
    assert balance(server, other) == 100, "nothing charged"
    assert server.client.get(f"/v1/files/{file_id}", headers=server.auth(other)).status_code == 404
    assert (
        server.client.delete(f"/v1/files/{file_id}", headers=server.auth(other)).status_code == 404
    )
    for face_body, path in (
        ({"model": "doubao-seedance-1.0-pro-fast", "prompt": "x", "image_urls": [file_id]},
         "/v1/videos/generations"),
        ({"model": "doubao-seedance-1.0-pro-fast",
          "content": [{"type": "text", "text": "x"},
                      {"type": "image_url", "image_url": {"url": file_id}}]},
         "/api/v3/contents/generations/tasks"),
    ):  # fmt: skip
        refused = server.client.post(path, json=face_body, headers=server.auth(other))
        assert refused.status_code == 400, (path, refused.text)

    meta = server.client.get(f"/v1/files/{file_id}", headers=server.auth(owner))
    assert meta.status_code == 200 and meta.json()["id"] == file_id
    task = server.create(owner, prompt="mine", image_urls=[file_id], **BODY).json()
    done = server.wait_done(owner, task["id"])
    assert done["status"] == "completed", done
    deleted = server.client.delete(f"/v1/files/{file_id}", headers=server.auth(owner))
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    again = server.create(owner, prompt="gone", image_urls=[file_id], **BODY)
    assert again.status_code == 400
    assert server.client.get(f"/v1/files/{file_id}", headers=server.auth(owner)).status_code == 404


def test_a_data_url_and_an_openai_input_reference_are_uploads_of_the_key(
    server_factory: ServerFactory, storage: dict[str, str]
) -> None:
    import base64

    server = server_factory(**storage)
    key = server.new_key()
    data_url = "data:image/png;base64," + base64.b64encode(png_bytes(320, 180)).decode()
    task = server.create(key, prompt="inline", image_urls=[data_url], **BODY).json()
    done = server.wait_done(key, task["id"])
    assert done["status"] == "completed", done
    uploads = server.runtime.uploads
    with server.runtime.db.read() as session:
        from sqlalchemy import select

        from opendance.store.tables import Upload

        owners = set(session.scalars(select(Upload.api_key_id)))
    key_id = server.runtime.accounts.authenticate(key)
    assert key_id is not None and owners == {key_id.id}
    del uploads
    made = server.client.post(
        "/v1/videos",
        headers=server.auth(key),
        data={"prompt": "openai", "seconds": "4", "size": "1280x720"},
        files={"input_reference": ("first.png", png_bytes(1280, 720), "image/png")},
    )
    assert made.status_code == 200, made.text


@pytest.mark.parametrize("mode", ["redirect", "presigned"])
def test_bucket_url_modes(server_factory: ServerFactory, s3: Any, mode: str) -> None:
    server = server_factory(**s3.settings(), result_urls=mode)
    key = server.new_key()
    task = server.wait_done(key, server.create(key, prompt="a boat", **BODY).json()["id"])
    url = task["results"][0]
    if mode == "presigned":
        assert url.startswith(s3.endpoint) and "X-Amz-Signature" in url
    else:
        answer = httpx.get(url, timeout=30)
        assert answer.status_code == 307
        assert answer.headers["location"].startswith(s3.endpoint)
    video = httpx.get(url, follow_redirects=True, timeout=30)
    assert video.status_code == 200 and len(video.content) > 1000
    ranged = httpx.get(url, headers={"Range": "bytes=0-99"}, follow_redirects=True, timeout=30)
    assert ranged.status_code == 206 and len(ranged.content) == 100


@pytest.mark.slow
def test_a_store_that_goes_away_loses_no_task_and_no_credit(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    from tests.helpers.s3 import S3Server

    store = S3Server()
    store.start()
    try:
        server = server_factory(**store.settings(), workers=2, max_attempts=2)
        key = server.new_key(credits=1000)
        ids = [server.create(key, prompt=f"clip {i}", **BODY).json()["id"] for i in range(6)]
        time.sleep(0.3)
        store.stop()  # refuses every write from here
        time.sleep(4.0)
        store.start()  # back (empty, as moto starts), with its bucket
        tasks = [server.wait_done(key, task_id, timeout=180) for task_id in ids]
    finally:
        store.stop()
    statuses = {task["status"] for task in tasks}
    assert statuses <= {"completed", "failed"}, statuses
    for task in tasks:
        if task["status"] == "failed":
            assert task["error"]["code"] == "storage_unavailable", task["error"]
    key_info = server.runtime.accounts.authenticate(key)
    assert key_info is not None
    audit = server.runtime.service.ledger_audit(key_info.id)
    assert audit.open_reservations == 0
    charged = sum(
        task["usage"]["credits_reserved"] for task in tasks if task["status"] == "completed"
    )
    assert balance(server, key) == 1000 - charged == audit.balance
