"""Two hosts that share no disk: an API process and a worker process, each with its own
data folder, on PostgreSQL and procrastinate, with results and uploads in an S3 bucket.

A text-to-video task and an image-to-video task from an upload both complete, and their
videos download through the API host without a key; no MP4 lies in either data folder.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from opendance.media.video import probe_mp4
from tests.helpers.clients import png_bytes
from tests.helpers.processes import ServerProcess
from tests.helpers.servers import TEST_DATABASE_URL, fresh_database_url

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not TEST_DATABASE_URL, reason="two hosts need PostgreSQL"),
]
MODEL = "doubao-seedance-1.0-pro-fast"


def test_an_api_host_and_a_worker_host_share_only_the_database_and_the_bucket(
    tmp_path: Path, s3: Any
) -> None:
    url = fresh_database_url()
    assert url
    common = {
        "dispatch": "procrastinate",
        "url_signing_secret": "shared-between-the-api-hosts-0123456789",
        **s3.settings(),
    }
    api = ServerProcess(tmp_path / "api-host", tmp_path / "api.log", database_url=url, **common)
    worker_host = ServerProcess(
        tmp_path / "worker-host", tmp_path / "worker.log", database_url=url, **common
    )
    key = api.create_key(100)
    headers = {"Authorization": f"Bearer {key}"}
    api.start("--no-workers")
    worker: subprocess.Popen[bytes] = worker_host.spawn("worker", "--models", MODEL)
    try:
        made = httpx.post(
            f"{api.base_url}/v1/files",
            headers=headers,
            files={"file": ("first.png", png_bytes(640, 360), "image/png")},
        )
        assert made.status_code == 200, made.text
        bodies = [
            {"model": MODEL, "prompt": "a lighthouse", "duration": 2, "quality": "480p"},
            {"model": MODEL, "prompt": "from my picture", "duration": 2, "quality": "480p",
             "image_urls": [made.json()["id"]]},
        ]  # fmt: skip
        ids = []
        for body in bodies:
            answer = httpx.post(f"{api.base_url}/v1/videos/generations", headers=headers, json=body)
            assert answer.status_code == 200, answer.text
            ids.append(answer.json()["id"])
        for index, task_id in enumerate(ids):
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                task = httpx.get(f"{api.base_url}/v1/tasks/{task_id}", headers=headers).json()
                if task["status"] in ("completed", "failed"):
                    break
                time.sleep(0.2)
            assert task["status"] == "completed", (task, worker_host.log.read_text()[-2000:])
            video = httpx.get(task["results"][0], timeout=30)  # no key: the URL is the credential
            assert video.status_code == 200
            path = tmp_path / f"video{index}.mp4"
            path.write_bytes(video.content)
            assert probe_mp4(path).frames == 48
        assert not list((tmp_path / "api-host").rglob("*.mp4"))
        assert not list((tmp_path / "worker-host").rglob("*.mp4"))
        assert not list((tmp_path / "api-host").rglob("*.png")), "the upload is in the bucket"
        stored = s3.object_keys()
        assert sum(1 for name in stored if name.endswith(".mp4")) == 2
    finally:
        if worker.poll() is None:
            worker.terminate()
            worker.wait(timeout=40)
        api.stop()
