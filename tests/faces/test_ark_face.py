"""The Ark tasks face, driven by BytePlus's Ark runtime SDK with only base_url and key changed.

The SDK sends every optional create key, as null when not given; these tests rely on that, so
they also prove that null means "not given". Tasks are read back through the other faces too.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest
from byteplussdkarkruntime._exceptions import (
    ArkAuthenticationError,
    ArkBadRequestError,
    ArkConflictError,
    ArkNotFoundError,
    ArkPermissionDeniedError,
)

from opendance.faces.ark import callback_body, parse_commands, parse_create, task_object
from opendance.media.fetch import fit_image
from opendance.settings import DEFAULT_MODEL, Settings
from opendance.tasks.states import Status
from tests.helpers.faces import ark_client, openai_client, pattern, wait_task
from tests.helpers.images import ImageSite, encoded, mean_abs_error
from tests.helpers.servers import LiveServer

ServerFactory = Callable[..., LiveServer]
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SEEDANCE = "seedance-1-0-pro-fast-251015"
DONE = ("completed", "failed", "cancelled")


def text(prompt: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": prompt}]


# ---------------------------------------------------------------------------------------------
# Create and get


def test_create_get_and_the_video(server: LiveServer) -> None:
    key = server.new_key()
    tasks = ark_client(server, key).content_generation.tasks
    created = tasks.create(
        model=SEEDANCE, content=text("a cat on a piano --rs 480p --rt 1:1 --dur 2")
    )
    wait_task(server, key, created.id, DONE)
    task = tasks.get(task_id=created.id)
    assert (task.id, task.status, task.model) == (created.id, "succeeded", "opendance-sandbox")
    assert (task.resolution, task.ratio, task.duration, task.framespersecond, task.frames) == (
        "480p",
        "1:1",
        2,
        24,
        48,
    )
    assert task.usage is not None and task.usage.completion_tokens == 640 * 640 * 48 // 1024
    assert task.usage.total_tokens == task.usage.completion_tokens  # type: ignore[attr-defined]
    assert task.created_at is not None and task.updated_at is not None
    assert task.created_at <= task.updated_at and task.error is None
    assert task.content is not None and task.content.video_url
    mp4 = httpx.get(task.content.video_url).content
    with av.open(io.BytesIO(mp4)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (640, 640)
        assert sum(1 for _ in container.decode(stream)) == 48

    # The commands were stripped from the prompt; the OpenAI face shows the prompt as stored.
    assert openai_client(server, key).videos.retrieve(created.id).prompt == "a cat on a piano"
    assert server.get(key, created.id).json()["status"] == "completed"


def test_json_fields_win_over_text_commands(idle_server: LiveServer) -> None:
    key = idle_server.new_key()
    tasks = ark_client(idle_server, key).content_generation.tasks
    created = tasks.create(
        model=SEEDANCE,
        content=text("waves --resolution 720p --duration 3 --ratio 9:16 --seed 7 --wm true"),
        resolution="480p",
        seed=11,
        camera_fixed=True,
    )
    task = tasks.get(task_id=created.id)
    assert task.status == "queued"
    assert (task.resolution, task.duration, task.ratio, task.seed) == ("480p", 3, "9:16", 11)


def test_a_raw_body_with_every_key_null(idle_server: LiveServer) -> None:
    key = idle_server.new_key()
    body: dict[str, Any] = {
        "model": DEFAULT_MODEL,
        "content": [{"type": "text", "text": "nulls everywhere"}],
        **{
            name: None
            for name in [
                "safety_identifier",
                "callback_url",
                "return_last_frame",
                "service_tier",
                "execution_expires_after",
                "priority",
                "generate_audio",
                "draft",
                "camera_fixed",
                "watermark",
                "seed",
                "resolution",
                "ratio",
                "duration",
                "frames",
                "output_format",
                "omni_reference_task_type",
            ]
        },
    }
    response = idle_server.client.post(
        "/api/v3/contents/generations/tasks", json=body, headers=idle_server.auth(key)
    )
    assert response.status_code == 200, response.text
    task = idle_server.get(key, response.json()["id"]).json()
    # Seedance 1.0 defaults: 1080p, 16:9 for text-to-video, 5 s.
    assert task["task_info"]["quality"] == "1080p"
    assert task["task_info"]["aspect_ratio"] == "16:9"
    assert task["task_info"]["video_duration"] == 5


def test_first_frame_image_url(server_factory: ServerFactory) -> None:
    server = server_factory(allow_loopback_for_tests=True)
    key = server.new_key()
    image = pattern(900, 500)
    site = ImageSite.with_image(encoded(image))
    try:
        tasks = ark_client(server, key).content_generation.tasks
        created = tasks.create(
            model=SEEDANCE,
            content=[
                {"type": "text", "text": "drift --rs 480p --dur 2"},
                {"type": "image_url", "image_url": {"url": site.url()}, "role": "first_frame"},
            ],
        )
        wait_task(server, key, created.id, DONE)
    finally:
        site.close()
    task = tasks.get(task_id=created.id)
    assert task.status == "succeeded" and task.ratio == "16:9"  # adaptive: nearest the image
    assert task.content is not None
    with av.open(io.BytesIO(httpx.get(task.content.video_url).content)) as container:
        first = next(container.decode(video=0)).to_ndarray(format="rgb24")
    assert mean_abs_error(first, np.asarray(fit_image(image, 864, 480))) < 8.0


def test_a_data_url_image_is_stored_as_an_upload(idle_server: LiveServer) -> None:
    key = idle_server.new_key()
    png = encoded(pattern(400, 400))
    created = ark_client(idle_server, key).content_generation.tasks.create(
        model=SEEDANCE,
        content=[
            {"type": "text", "text": "still life"},
            {
                "type": "image_url",
                "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()},
            },
        ],
    )
    stored = idle_server.runtime.service.get_task_unscoped(created.id)
    assert stored is not None and stored.image_url is not None
    name = stored.image_url.removeprefix("upload:")
    assert (idle_server.runtime.settings.data_dir / "uploads" / name).read_bytes() == png

    # The stored id can be used again as an image URL; a made-up one cannot.
    tasks = ark_client(idle_server, key).content_generation.tasks
    again = tasks.create(
        model=SEEDANCE,
        content=[*text("again"), {"type": "image_url", "image_url": {"url": stored.image_url}}],
    )
    reused = idle_server.runtime.service.get_task_unscoped(again.id)
    assert reused is not None and reused.image_url == stored.image_url
    for bogus in ("upload:../../opendance.db", "upload:" + "0" * 32 + ".png"):
        with pytest.raises(ArkBadRequestError) as bad:
            tasks.create(
                model=SEEDANCE,
                content=[*text("x"), {"type": "image_url", "image_url": {"url": bogus}}],
            )
        assert bad.value.param == "content.image_url"


# ---------------------------------------------------------------------------------------------
# List and delete


def test_list_pages_and_filters(server: LiveServer) -> None:
    key = server.new_key()
    tasks = ark_client(server, key).content_generation.tasks
    made = [
        tasks.create(model=SEEDANCE, content=text(f"clip {i} --rs 480p --dur 2")).id
        for i in range(4)
    ]
    for task_id in made:
        wait_task(server, key, task_id, DONE)
    ark_client(server, server.new_key()).content_generation.tasks.create(
        model=SEEDANCE, content=text("someone else's")
    )
    page = tasks.list(page_num=1, page_size=3)
    assert page.total == 4 and [t.id for t in page.items] == made[::-1][:3]
    page = tasks.list(page_num=2, page_size=3)
    assert page.total == 4 and [t.id for t in page.items] == [made[0]]

    tasks.delete(made[1])  # succeeded: the task is deleted, and no list shows it again
    assert tasks.list(status="succeeded").total == 3
    assert tasks.list(status="failed").total == 0
    picked = tasks.list(task_ids=[made[0], made[1], made[2], "task-unified-1-nothere"])
    assert sorted(t.id for t in picked.items) == sorted([made[0], made[2]])
    assert tasks.list(model=DEFAULT_MODEL).total == 3  # the requested name
    assert tasks.list(model="opendance-sandbox").total == 3  # the engine's model
    assert tasks.list(model="some-other-model").total == 0
    assert tasks.list(service_tier="flex").total == 0
    with pytest.raises(ArkBadRequestError) as bad:
        tasks.list(status="sleeping")
    assert bad.value.code == "InvalidParameter"


def test_delete_cancels_queued_and_deletes_finished(server_factory: ServerFactory) -> None:
    idle = server_factory(workers=0)
    key = idle.new_key(credits=50)
    tasks = ark_client(idle, key).content_generation.tasks
    queued = tasks.create(model=SEEDANCE, content=text("never --rs 480p --dur 2"))
    tasks.delete(queued.id)
    assert tasks.get(task_id=queued.id).status == "cancelled"
    owner = idle.runtime.accounts.authenticate(key)
    assert owner is not None and idle.runtime.accounts.get(owner.id).balance == 50
    with pytest.raises(ArkConflictError) as conflict:
        tasks.delete(queued.id)
    assert conflict.value.code == "InvalidTaskStatus"
    assert conflict.value.response.headers["x-should-retry"] == "false"

    server = server_factory()
    key = server.new_key()
    tasks = ark_client(server, key).content_generation.tasks
    done = tasks.create(model=SEEDANCE, content=text("kept --rs 480p --dur 2"))
    wait_task(server, key, done.id, DONE)
    task = tasks.get(task_id=done.id)
    assert task.content is not None
    url = task.content.video_url
    assert httpx.get(url).status_code == 200
    tasks.delete(done.id)
    with pytest.raises(ArkNotFoundError) as gone:
        tasks.get(task_id=done.id)
    assert gone.value.code == "ResourceNotFound"
    assert httpx.get(url).status_code == 410
    with pytest.raises(ArkNotFoundError) as again:
        tasks.delete(done.id)  # as Ark: a deleted task is unknown
    assert again.value.code == "ResourceNotFound"
    assert server.get(key, done.id).status_code == 404


# ---------------------------------------------------------------------------------------------
# Errors in Ark's shape, mapped to the SDK's classes


def test_error_classes_and_codes(idle_server: LiveServer) -> None:
    key = idle_server.new_key()
    tasks = ark_client(idle_server, key).content_generation.tasks
    with pytest.raises(ArkAuthenticationError) as unauthorised:
        ark_client(idle_server, "od_wrong").content_generation.tasks.list()
    assert (unauthorised.value.code, unauthorised.value.type) == (
        "AuthenticationError",
        "Unauthorized",
    )
    with pytest.raises(ArkNotFoundError) as missing:
        tasks.get(task_id="task-unified-1-abcdefgh")
    assert (missing.value.code, missing.value.type) == ("ResourceNotFound", "NotFound")
    with pytest.raises(ArkNotFoundError) as unknown_model:
        tasks.create(model="gpt-4o", content=text("x"))
    assert unknown_model.value.code == "InvalidEndpointOrModel.NotFound"

    bad_requests: list[tuple[dict[str, Any], str, str]] = [
        ({"ratio": "5:4"}, "ratio", "InvalidParameter"),
        ({"content": text("x --rt 5:4")}, "ratio", "InvalidParameter"),
        ({"resolution": "4k"}, "resolution", "InvalidParameter"),
        ({"duration": 13}, "duration", "InvalidParameter"),
        ({"duration": 1}, "duration", "InvalidParameter"),
        ({"frames": 30}, "frames", "InvalidParameter"),
        ({"seed": -2}, "seed", "InvalidParameter"),
        ({"watermark": "yes"}, "watermark", "InvalidParameter"),
        ({"content": []}, "content", "InvalidParameter"),
        ({"content": text("--rs 480p")}, "content", "InvalidParameter"),
        ({"content": [{"type": "video_url", "video_url": {"url": "https://v"}}]}, "", ""),
        (
            {
                "content": [
                    *text("x"),
                    {"type": "image_url", "image_url": {"url": "https://i"}, "role": "last_frame"},
                ]
            },
            "content[1].role",
            "InvalidParameter",
        ),
        ({"callback_url": "http://example.com/hook"}, "callback_url", "InvalidParameter"),
    ]
    for overrides, param, code in bad_requests:
        arguments: dict[str, Any] = {"model": SEEDANCE, "content": text("a fox"), **overrides}
        with pytest.raises(ArkBadRequestError) as bad:
            tasks.create(**arguments)
        assert bad.value.type == "BadRequest", overrides
        assert not param or bad.value.param == param, (overrides, bad.value.param)
        assert not code or bad.value.code == code

    missing_model = idle_server.client.post(
        "/api/v3/contents/generations/tasks",
        json={"model": None, "content": text("x")},
        headers=idle_server.auth(key),
    )
    assert missing_model.status_code == 400
    assert missing_model.json()["error"]["code"] == "MissingParameter"

    with pytest.raises(ArkPermissionDeniedError) as broke:
        ark_client(idle_server, idle_server.new_key(credits=0)).content_generation.tasks.create(
            model=SEEDANCE, content=text("free")
        )
    assert broke.value.code == "AccountOverdueError"


# ---------------------------------------------------------------------------------------------
# Units: commands, defaults, the task object


def test_commands_are_parsed_and_stripped() -> None:
    prompt, commands = parse_commands(
        "A cat --rs 720p  --RT 9:16 plays --dur 5 --cf false --foo bar --seed 3 --wm true "
        "--fps 24 --resolution 1080p"
    )
    assert prompt == "A cat plays --foo bar"  # unknown --words stay; a repeat keeps the first
    assert commands == {
        "resolution": "720p",
        "ratio": "9:16",
        "duration": "5",
        "camera_fixed": "false",
        "seed": "3",
        "watermark": "true",
        "framespersecond": "24",
    }
    assert parse_commands("no commands here") == ("no commands here", {})
    assert parse_commands("a--rs 720p")[1] == {}  # a command starts a word


def test_create_defaults_and_frames(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    models = [DEFAULT_MODEL]
    create = parse_create({"model": SEEDANCE, "content": text("x --frames 121")}, models, settings)
    assert (create.model, create.duration, create.quality, create.aspect_ratio) == (
        DEFAULT_MODEL,
        5,
        "1080p",
        "16:9",
    )
    create = parse_create(
        {"model": "ep-20250101-abc", "content": text("x"), "duration": -1, "ratio": "adaptive"},
        models,
        settings,
    )
    assert (create.duration, create.aspect_ratio) == (5, "16:9")  # no image to adapt to
    random_seed = parse_create(
        {"model": SEEDANCE, "content": text("x"), "seed": -1}, models, settings
    )
    assert random_seed.seed is not None and 0 <= random_seed.seed < 2**32


def test_task_object_and_callback_body(server: LiveServer) -> None:
    key = server.new_key()
    owner = server.runtime.accounts.authenticate(key)
    assert owner is not None
    task = server.create(key, duration=2, quality="480p", aspect_ratio="9:16").json()
    server.wait_done(key, task["id"])
    view = server.runtime.service.get_task(owner.id, task["id"])
    body = task_object(view, server.runtime.results)
    assert body["status"] == "succeeded" and body["ratio"] == "9:16"
    response = server.client.get(
        f"/api/v3/contents/generations/tasks/{task['id']}", headers=server.auth(key)
    )
    assert response.json() == body
    assert json.loads(callback_body(view, server.runtime.results)) == body
    failed = task_object(
        replace(view, status=Status.FAILED, error_code="engine_error", error_message="boom"),
        server.runtime.results,
    )
    assert failed["status"] == "failed"
    assert failed["error"] == {"code": "engine_error", "message": "boom"}
    assert failed["content"] is None and failed["usage"]["completion_tokens"] == 0
