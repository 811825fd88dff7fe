"""The OpenAI videos face, driven by the official `openai` SDK with only base_url and key changed.

Every video is a task of the one service, so the tests also read it through the Seedance face
(`/v1/tasks/{id}`) and the Ark face. The sandbox engine, 480p sizes and short durations keep
each render well under a second.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import openai
import pytest
import trustme
from PIL import Image
from standardwebhooks.webhooks import Webhook

from opendance.faces.openai import map_size, video_object, webhook_event
from opendance.media.fetch import fit_image
from opendance.media.previews import SPRITE_COLUMNS, SPRITE_TILE_WIDTH, sprite_indices
from opendance.media.sizes import size_for
from opendance.media.video import iter_frames, probe_mp4
from opendance.settings import DEFAULT_MODEL
from opendance.tasks.models import TaskView
from opendance.tasks.states import Status
from tests.helpers.faces import ark_client, openai_client, pattern
from tests.helpers.images import ImageSite, decoded, encoded, mean_abs_error
from tests.helpers.receivers import Receiver
from tests.helpers.servers import LiveServer

ServerFactory = Callable[..., LiveServer]

# The SDK marks every videos method deprecated (the hosted Sora API has an end date).
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def wait_video(client: openai.OpenAI, video_id: str, timeout: float = 60) -> Any:
    import time

    deadline = time.monotonic() + timeout
    while True:
        video = client.videos.retrieve(video_id)
        if video.status in ("completed", "failed") or time.monotonic() > deadline:
            return video
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# Create, read (through all three faces), poll, download


def test_create_then_read_through_every_face(idle_server: LiveServer) -> None:
    key = idle_server.new_key()
    client = openai_client(idle_server, key)
    video = client.videos.create(prompt="a red fox in snow", seconds="8", size="1280x720")
    assert video.object == "video" and video.status == "queued" and video.progress == 0
    assert video.seconds == "8" and video.size == "1248x704"  # 16:9 720p, as the model makes it
    assert video.error is None and video.completed_at is None

    again = client.videos.retrieve(video.id)
    assert again.id == video.id and again.prompt == "a red fox in snow"

    seed = idle_server.get(key, video.id).json()
    assert seed["status"] == "pending"
    assert seed["task_info"]["video_duration"] == 8
    assert (seed["task_info"]["quality"], seed["task_info"]["aspect_ratio"]) == ("720p", "16:9")

    ark = ark_client(idle_server, key).content_generation.tasks.get(task_id=video.id)
    assert (ark.id, ark.status, ark.duration, ark.resolution, ark.ratio) == (
        video.id,
        "queued",
        8,
        "720p",
        "16:9",
    )


def test_a_seed_task_reads_as_a_video(server: LiveServer) -> None:
    key = server.new_key()
    task = server.create(key, duration=2, quality="480p", aspect_ratio="1:1").json()
    server.wait_done(key, task["id"])
    video = openai_client(server, key).videos.retrieve(task["id"])
    assert (video.status, video.progress, video.seconds, video.size) == (
        "completed",
        100,
        "2",
        "640x640",
    )
    assert video.completed_at is not None and video.expires_at is not None


def test_create_and_poll_then_download_video_thumbnail_and_spritesheet(
    server: LiveServer,
) -> None:
    key = server.new_key()
    client = openai_client(server, key)
    video = client.videos.create_and_poll(
        prompt="a paper boat on a pond", seconds="4", size="480x864", poll_interval_ms=50
    )
    assert video.status == "completed" and video.progress == 100
    assert (video.seconds, video.size) == ("4", "480x864")

    mp4 = client.videos.download_content(video.id).content
    path = server.runtime.settings.data_dir / "downloaded.mp4"
    path.write_bytes(mp4)
    info = probe_mp4(path)
    assert (info.width, info.height, info.frames, info.codec) == (480, 864, 96, "h264")
    frames = list(iter_frames(path))

    thumbnail = decoded(client.videos.download_content(video.id, variant="thumbnail").content)
    assert thumbnail.format == "WEBP" and max(thumbnail.size) <= 640
    middle = Image.fromarray(frames[48]).resize(thumbnail.size)
    assert mean_abs_error(np.asarray(thumbnail.convert("RGB")), np.asarray(middle)) < 6.0

    sheet = decoded(client.videos.download_content(video.id, variant="spritesheet").content)
    assert sheet.format == "JPEG"
    tile_height = round(SPRITE_TILE_WIDTH * 864 / 480)
    assert sheet.size == (SPRITE_COLUMNS * SPRITE_TILE_WIDTH, 5 * tile_height)
    for tile, index in enumerate(sprite_indices(96)):
        row, column = divmod(tile, SPRITE_COLUMNS)
        box = (column * SPRITE_TILE_WIDTH, row * tile_height)
        crop = sheet.crop((*box, box[0] + SPRITE_TILE_WIDTH, box[1] + tile_height))
        expected = Image.fromarray(frames[index]).resize(crop.size)
        assert mean_abs_error(np.asarray(crop), np.asarray(expected)) < 8.0, tile
    cached = sorted(p.name for p in server.runtime.settings.results_dir.iterdir())
    assert cached == sorted(
        f"{video.id}{suffix}" for suffix in (".mp4", ".thumbnail.webp", ".spritesheet.jpg")
    )


def test_retrieve_paces_the_poller_while_running(idle_server: LiveServer) -> None:
    key = idle_server.new_key()
    client = openai_client(idle_server, key)
    video = client.videos.create(prompt="slow", size="864x480")
    raw = client.videos.with_raw_response.retrieve(video.id)
    assert 200 <= int(raw.headers["openai-poll-after-ms"]) <= 5000
    idle_server.client.post(f"/v1/tasks/{video.id}/cancel", headers=idle_server.auth(key))
    done = client.videos.with_raw_response.retrieve(video.id)
    assert "openai-poll-after-ms" not in done.headers
    failed = done.parse()
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.code == "cancelled"


def test_json_body_with_an_image_url_animates_that_image(server_factory: ServerFactory) -> None:
    server = server_factory(allow_loopback_for_tests=True)
    key = server.new_key()
    image = pattern(700, 500)
    site = ImageSite.with_image(encoded(image))
    try:
        response = server.client.post(
            "/v1/videos",
            json={
                "prompt": "json works too",
                "seconds": 2,
                "size": "640x640",
                "model": None,
                "input_reference": {"image_url": site.url()},
            },
            headers=server.auth(key),
        )
        assert response.status_code == 200, response.text
        video = response.json()
        assert (video["seconds"], video["size"]) == ("2", "640x640")
        assert video["status"] in ("queued", "in_progress")
        assert server.wait_done(key, video["id"])["status"] == "completed"
    finally:
        site.close()
    mp4 = openai_client(server, key).videos.download_content(video["id"]).content
    with av.open(io.BytesIO(mp4)) as container:
        first = next(container.decode(video=0)).to_ndarray(format="rgb24")
    assert mean_abs_error(first, np.asarray(fit_image(image, 640, 640))) < 8.0


# ---------------------------------------------------------------------------------------------
# First frames: uploaded file, data: URL


def test_uploaded_input_reference_is_stored_and_checked(idle_server: LiveServer) -> None:
    key = idle_server.new_key()
    client = openai_client(idle_server, key)
    png = encoded(pattern(500, 900))
    video = client.videos.create(
        prompt="animate this", size="480x864", input_reference=("first.png", png, "image/png")
    )
    stored = idle_server.runtime.service.get_task_unscoped(video.id)
    assert stored is not None and stored.image_url is not None
    assert stored.image_url.startswith("upload:")
    upload = idle_server.runtime.settings.data_dir / "uploads" / stored.image_url[7:]
    assert upload.read_bytes() == png

    # The SDK only uploads files itself; {"image_url": ...} goes as input_reference[image_url].
    data_url = "data:image/png;base64," + base64.b64encode(png).decode()
    by_url = client.videos.create(
        prompt="animate this",
        size="480x864",
        extra_body={"input_reference": {"image_url": data_url}},
    )
    stored = idle_server.runtime.service.get_task_unscoped(by_url.id)
    assert stored is not None and stored.image_url is not None
    assert stored.image_url.startswith("upload:")

    with pytest.raises(openai.BadRequestError) as bad:
        client.videos.create(prompt="x", input_reference=("a.png", b"not an image", "image/png"))
    assert bad.value.param == "input_reference" and bad.value.code == "invalid_parameter"
    with pytest.raises(openai.BadRequestError) as bad:
        client.videos.create(prompt="x", extra_body={"input_reference": {"file_id": "file-1"}})
    assert bad.value.param == "input_reference"


def test_uploaded_input_reference_becomes_the_first_frame(server: LiveServer) -> None:
    key = server.new_key()
    client = openai_client(server, key)
    image = pattern(600, 600)
    video = client.videos.create_and_poll(
        prompt="animate this",
        seconds="4",
        size="864x480",
        input_reference=("first.png", encoded(image), "image/png"),
        poll_interval_ms=50,
    )
    assert video.status == "completed", video.error
    mp4 = client.videos.download_content(video.id).content
    with av.open(io.BytesIO(mp4)) as container:
        first = next(container.decode(video=0)).to_ndarray(format="rgb24")
    expected = np.asarray(fit_image(image, 864, 480))
    assert mean_abs_error(first, expected) < 8.0


def test_an_oversized_body_is_refused(server_factory: ServerFactory) -> None:
    server = server_factory(workers=0, image_max_bytes=20_000)
    client = openai_client(server, server.new_key())
    noise = np.random.default_rng(3).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    with pytest.raises(openai.APIStatusError) as refused:
        client.videos.create(
            prompt="x", input_reference=("big.png", encoded(Image.fromarray(noise)), "image/png")
        )
    assert refused.value.status_code == 413


# ---------------------------------------------------------------------------------------------
# List, delete


def test_list_paginates_with_after_limit_and_order(idle_server: LiveServer) -> None:
    key = idle_server.new_key()
    client = openai_client(idle_server, key)
    made = [client.videos.create(prompt=f"clip {i}", size="864x480").id for i in range(5)]
    openai_client(idle_server, idle_server.new_key()).videos.create(prompt="not mine")

    first = client.videos.list(limit=2)
    assert [v.id for v in first.data] == made[::-1][:2] and first.has_more is True
    assert [v.id for v in client.videos.list(limit=2)] == made[::-1]  # follows after=last_id
    assert [v.id for v in client.videos.list(limit=3, order="asc")] == made
    last = client.videos.list(limit=2, after=made[1])
    assert [v.id for v in last.data] == [made[0]] and last.has_more is False


def test_delete_removes_the_video_and_its_files(server: LiveServer) -> None:
    key = server.new_key(credits=100)
    client = openai_client(server, key)
    video = client.videos.create_and_poll(prompt="gone soon", size="864x480", poll_interval_ms=50)
    client.videos.download_content(video.id, variant="thumbnail")
    deleted = client.videos.delete(video.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (video.id, True, "video.deleted")
    assert list(server.runtime.settings.results_dir.iterdir()) == []
    with pytest.raises(openai.NotFoundError):
        client.videos.download_content(video.id)
    with pytest.raises(openai.NotFoundError) as gone:
        client.videos.retrieve(video.id)
    assert gone.value.code == "task_not_found"
    assert server.get(key, video.id).status_code == 404
    with pytest.raises(openai.NotFoundError):
        client.videos.delete(video.id)  # as OpenAI: a deleted video is unknown


def test_delete_of_a_queued_video_cancels_and_refunds(idle_server: LiveServer) -> None:
    key = idle_server.new_key(credits=100)
    client = openai_client(idle_server, key)
    video = client.videos.create(prompt="never mind", size="864x480", seconds="4")
    assert client.videos.delete(video.id).deleted is True
    assert idle_server.get(key, video.id).status_code == 404
    owner = idle_server.runtime.accounts.authenticate(key)
    assert owner is not None and idle_server.runtime.accounts.get(owner.id).balance == 100
    internal = idle_server.runtime.service.get_task_unscoped(video.id)
    assert internal is not None and internal.status == Status.CANCELLED


# ---------------------------------------------------------------------------------------------
# Errors: the SDK's classes, OpenAI's body


def test_error_classes_for_400_401_404(idle_server: LiveServer) -> None:
    key = idle_server.new_key()
    client = openai_client(idle_server, key)
    with pytest.raises(openai.AuthenticationError) as unauthorised:
        openai_client(idle_server, "od_wrong").videos.list()
    assert unauthorised.value.code == "invalid_api_key"

    with pytest.raises(openai.NotFoundError) as missing:
        client.videos.retrieve("task-unified-1-abcdefgh")
    assert missing.value.type == "not_found_error"
    theirs = openai_client(idle_server, idle_server.new_key()).videos.create(prompt="private")
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(theirs.id)
    with pytest.raises(openai.NotFoundError):
        client.videos.delete(theirs.id)

    bad_values: list[tuple[dict[str, Any], str, str]] = [
        ({"seconds": "13"}, "seconds", "invalid_parameter"),
        ({"seconds": "1"}, "seconds", "invalid_parameter"),
        ({"size": "banana"}, "size", "invalid_parameter"),
        ({"size": "4000x100"}, "size", "invalid_parameter"),
        ({"model": "gpt-4o"}, "model", "unknown_model"),
        ({"prompt": "   "}, "prompt", "invalid_parameter"),
        ({"extra_body": {"callback_url": "http://example.com/hook"}}, "callback_url", ""),
    ]
    for overrides, param, code in bad_values:
        arguments: dict[str, Any] = {"prompt": "a fox", **overrides}
        with pytest.raises(openai.BadRequestError) as bad:
            client.videos.create(**arguments)
        assert bad.value.param == param, overrides
        assert bad.value.type == "invalid_request_error"
        assert not code or bad.value.code == code
        body = bad.value.body
        assert isinstance(body, dict) and set(body) >= {"message", "type", "param", "code"}

    missing_prompt = idle_server.client.post(
        "/v1/videos", files={"seconds": (None, "4")}, headers=idle_server.auth(key)
    )
    assert missing_prompt.status_code == 400
    assert missing_prompt.json()["error"]["param"] == "prompt"
    with pytest.raises(openai.BadRequestError) as bad_variant:
        client.get(f"/videos/{theirs.id}/content?variant=gif", cast_to=httpx.Response)
    assert bad_variant.value.param == "variant"


def test_content_of_an_unfinished_video_is_404(idle_server: LiveServer) -> None:
    client = openai_client(idle_server, idle_server.new_key())
    video = client.videos.create(prompt="later", size="864x480")
    with pytest.raises(openai.NotFoundError) as early:
        client.videos.download_content(video.id)
    assert early.value.code == "video_not_ready"


def test_no_credits_is_insufficient_quota_and_not_retried(idle_server: LiveServer) -> None:
    key = idle_server.new_key(credits=0)
    client = openai_client(idle_server, key)
    with pytest.raises(openai.RateLimitError) as refused:
        client.videos.create(prompt="free lunch")
    assert refused.value.code == "insufficient_quota"
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert client.videos.list().data == []


def test_model_names(idle_server: LiveServer) -> None:
    client = openai_client(idle_server, idle_server.new_key())
    for name in ("sora-2", "sora-2-pro", "sora-2-pro-2025-10-06", DEFAULT_MODEL):
        video = client.videos.create(prompt="which model", model=name)
        stored = idle_server.runtime.service.get_task_unscoped(video.id)
        assert stored is not None and stored.requested_model == DEFAULT_MODEL, name
        assert video.model == "opendance-sandbox"


# ---------------------------------------------------------------------------------------------
# Mapping, objects, webhooks (units)


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((1280, 720), ("720p", "16:9")),
        ((720, 1280), ("720p", "9:16")),
        ((1792, 1024), ("1080p", "16:9")),
        ((1024, 1792), ("1080p", "9:16")),
        ((864, 480), ("480p", "16:9")),
        ((1920, 1080), ("1080p", "16:9")),
        ((640, 640), ("480p", "1:1")),
        ((1000, 1000), ("720p", "1:1")),
        ((2560, 1080), ("1080p", "21:9")),
        ((832, 1120), ("720p", "3:4")),
    ],
)
def test_size_maps_to_the_nearest_ratio_and_quality(
    size: tuple[int, int], expected: tuple[str, str]
) -> None:
    assert map_size(*size, lambda quality, ratio: None) == expected


def test_size_mapping_follows_the_routed_models_sizes() -> None:
    # A model whose "480p" is really 1280x720 (and the rest far bigger) serves 1280x720 at 480p.
    def plan(quality: str, ratio: str) -> tuple[int, int]:
        width, height = size_for(quality, ratio)
        return (1280, 720) if quality == "480p" else (width * 3, height * 3)

    assert map_size(1280, 720, plan) == ("480p", "16:9")


def view(status: Status, **changes: Any) -> TaskView:
    values: dict[str, Any] = {
        "id": "task-unified-1700000000-abcdefgh",
        "api_key_id": "k",
        "requested_model": DEFAULT_MODEL,
        "model": "opendance-sandbox",
        "status": status,
        "progress": 100 if status == Status.COMPLETED else 40,
        "created": 1700000000,
        "updated_at": 1700000030.5,
        "started_at": 1700000001.0,
        "finished_at": 1700000030.5 if status in (Status.COMPLETED, Status.FAILED) else None,
        "prompt": "p",
        "duration": 4,
        "quality": "480p",
        "aspect_ratio": "adaptive",
        "image_url": "upload:x.png",
        "callback_url": None,
        "seed": None,
        "width": None,
        "height": None,
        "fps": 24,
        "frames": 96,
        "credits": 3,
        "user_group": "default",
        "estimated_time": 0,
        "result_file": None,
        "result_expires_at": None,
        "error_code": "engine_error" if status == Status.FAILED else None,
        "error_message": "boom" if status == Status.FAILED else None,
    }
    values.update(changes)
    return TaskView(**values)


def test_video_object_statuses_and_sizes() -> None:
    assert video_object(view(Status.PENDING))["status"] == "queued"
    assert video_object(view(Status.PENDING))["size"] == "auto"  # adaptive, size not known yet
    running = video_object(view(Status.PROCESSING, width=496, height=864))
    assert (running["status"], running["progress"], running["size"]) == (
        "in_progress",
        40,
        "496x864",
    )
    failed = video_object(view(Status.FAILED))
    assert failed["error"] == {"code": "engine_error", "message": "boom"}
    assert failed["completed_at"] == 1700000030
    cancelled = video_object(view(Status.CANCELLED))
    assert cancelled["status"] == "failed" and cancelled["error"]["code"] == "cancelled"


def test_webhook_event_form() -> None:
    assert webhook_event(view(Status.PROCESSING)) is None
    done = webhook_event(view(Status.COMPLETED))
    assert done is not None
    assert done["type"] == "video.completed" and done["object"] == "event"
    assert done["data"] == {"id": "task-unified-1700000000-abcdefgh"}
    assert done["id"].startswith("evt_") and done["created_at"] == 1700000030
    assert done == webhook_event(view(Status.COMPLETED))  # stable across retries
    failed = webhook_event(view(Status.FAILED))
    cancelled = webhook_event(view(Status.CANCELLED))
    assert failed is not None and cancelled is not None
    assert failed["type"] == cancelled["type"] == "video.failed"
    assert failed["id"] != done["id"]


@pytest.fixture
def hook(tmp_path: Path) -> Iterator[Receiver]:
    receiver = Receiver(trustme.CA())
    yield receiver
    receiver.close()


def test_webhook_is_an_openai_event_signed_standard_webhooks(
    server_factory: ServerFactory, hook: Receiver, tmp_path: Path
) -> None:
    server = server_factory(allow_loopback_for_tests=True, extra_ca_file=hook.ca_file(tmp_path))
    key = server.new_key()
    client = openai_client(server, key)
    video = client.videos.create(
        prompt="tell me", size="864x480", extra_body={"callback_url": hook.url}
    )
    (got,) = hook.wait_for(1)
    event = json.loads(got.body)
    assert event["type"] == "video.completed" and event["data"] == {"id": video.id}
    secret = server.client.get("/v1/webhook-secret", headers=server.auth(key)).json()["secret"]
    client.webhooks.verify_signature(got.body.decode(), got.headers, secret=secret)
    assert Webhook(secret).verify(got.body, got.headers) == event


# ---------------------------------------------------------------------------------------------
# The OpenAPI document


def test_openapi_lists_all_three_faces_by_tag(server: LiveServer) -> None:
    spec = server.client.get("/openapi.json").json()
    tags = {
        (path, method): operation.get("tags", [])
        for path, methods in spec["paths"].items()
        for method, operation in methods.items()
    }
    assert tags[("/v1/videos/generations", "post")] == ["Seedance task API"]
    assert tags[("/v1/tasks/{task_id}", "get")] == ["Seedance task API"]
    for key in [
        ("/v1/videos", "post"),
        ("/v1/videos", "get"),
        ("/v1/videos/{video_id}", "get"),
        ("/v1/videos/{video_id}", "delete"),
        ("/v1/videos/{video_id}/content", "get"),
    ]:
        assert tags[key] == ["OpenAI videos API"], key
    base = "/api/v3/contents/generations/tasks"
    for key in [
        (base, "post"),
        (base, "get"),
        (base + "/{task_id}", "get"),
        (base + "/{task_id}", "delete"),
    ]:
        assert tags[key] == ["Ark tasks API"], key
    create = spec["paths"]["/v1/videos"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(create)
