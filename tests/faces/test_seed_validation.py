"""Every rule of the contract, each with a bad value: 400 naming the field, nothing charged."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers.servers import LiveServer

MODEL = "doubao-seedance-1.0-pro-fast"
GOOD: dict[str, Any] = {"model": MODEL, "prompt": "a lighthouse at dusk"}

BAD_BODIES: list[tuple[str, dict[str, Any], str]] = [
    ("model missing", {"prompt": "x"}, "model"),
    ("model not a string", {**GOOD, "model": 7}, "model"),
    ("unknown model", {**GOOD, "model": "sora-9"}, "model"),
    ("prompt missing", {"model": MODEL}, "prompt"),
    ("prompt empty", {**GOOD, "prompt": ""}, "prompt"),
    ("prompt blank", {**GOOD, "prompt": "   \n"}, "prompt"),
    ("prompt too long", {**GOOD, "prompt": "a" * 2001}, "prompt"),
    ("prompt not a string", {**GOOD, "prompt": ["a"]}, "prompt"),
    ("duration too short", {**GOOD, "duration": 1}, "duration"),
    ("duration too long", {**GOOD, "duration": 13}, "duration"),
    ("duration as string", {**GOOD, "duration": "5"}, "duration"),
    ("duration fractional", {**GOOD, "duration": 5.5}, "duration"),
    ("duration float", {**GOOD, "duration": 5.0}, "duration"),
    ("duration boolean", {**GOOD, "duration": True}, "duration"),
    ("quality upper case", {**GOOD, "quality": "1080P"}, "quality"),
    ("quality unknown", {**GOOD, "quality": "4k"}, "quality"),
    ("quality number", {**GOOD, "quality": 720}, "quality"),
    ("aspect ratio unknown", {**GOOD, "aspect_ratio": "2:1"}, "aspect_ratio"),
    ("keep_ratio without image", {**GOOD, "aspect_ratio": "keep_ratio"}, "aspect_ratio"),
    ("adaptive without image", {**GOOD, "aspect_ratio": "adaptive"}, "aspect_ratio"),
    (
        "two images",
        {**GOOD, "image_urls": ["https://a.example/1.png", "https://a.example/2.png"]},
        "image_urls",
    ),
    ("image_urls not a list", {**GOOD, "image_urls": "https://a.example/1.png"}, "image_urls"),
    ("image url not a string", {**GOOD, "image_urls": [5]}, "image_urls"),
    ("image url ftp", {**GOOD, "image_urls": ["ftp://a.example/1.png"]}, "image_urls"),
    ("image url not a url", {**GOOD, "image_urls": ["picture of a cat"]}, "image_urls"),
    ("image url internal", {**GOOD, "image_urls": ["http://192.168.1.10/a.png"]}, "image_urls"),
    ("image url loopback", {**GOOD, "image_urls": ["http://127.0.0.1/a.png"]}, "image_urls"),
    ("callback http", {**GOOD, "callback_url": "http://hooks.example.com/x"}, "callback_url"),
    ("callback private", {**GOOD, "callback_url": "https://10.0.0.5/hook"}, "callback_url"),
    ("callback localhost", {**GOOD, "callback_url": "https://localhost/hook"}, "callback_url"),
    ("callback metadata", {**GOOD, "callback_url": "https://169.254.169.254/x"}, "callback_url"),
    ("callback ipv6 loopback", {**GOOD, "callback_url": "https://[::1]/x"}, "callback_url"),
    (
        "callback too long",
        {**GOOD, "callback_url": "https://h.example.com/" + "a" * 2030},
        "callback_url",
    ),
    ("callback not a url", {**GOOD, "callback_url": "not a url"}, "callback_url"),
    ("callback not a string", {**GOOD, "callback_url": 42}, "callback_url"),
    ("seed below range", {**GOOD, "seed": -2}, "seed"),
    ("seed above range", {**GOOD, "seed": 2**32}, "seed"),
    ("seed as string", {**GOOD, "seed": "1"}, "seed"),
]


@pytest.mark.parametrize(("case", "body", "field"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
def test_bad_value_is_a_400_naming_the_field(
    idle_server: LiveServer, case: str, body: dict[str, Any], field: str
) -> None:
    token = idle_server.new_key(credits=100)
    response = idle_server.client.post(
        "/v1/videos/generations", json=body, headers=idle_server.auth(token)
    )
    assert response.status_code == 400, (case, response.text)
    error = response.json()["error"]
    assert error["param"] == field
    assert field in error["message"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] in ("invalid_parameter", "missing_parameter", "unknown_model")
    # Nothing was created or charged.
    listing = idle_server.client.get("/v1/tasks", headers=idle_server.auth(token)).json()
    assert listing["data"] == []
    assert idle_server.runtime.accounts.list()[-1].balance == 100


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"[1, 2]", b'"text"', b"", b"\xff\xfe"],
    ids=["broken", "array", "string", "empty", "binary"],
)
def test_body_that_is_not_a_json_object(idle_server: LiveServer, raw: bytes) -> None:
    token = idle_server.new_key()
    response = idle_server.client.post(
        "/v1/videos/generations",
        content=raw,
        headers={**idle_server.auth(token), "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


def test_unknown_fields_are_ignored_and_limits_are_inclusive(idle_server: LiveServer) -> None:
    token = idle_server.new_key()
    response = idle_server.create(
        token,
        prompt="b" * 2000,
        duration=12,
        quality="480p",
        aspect_ratio="21:9",
        camera_fixed=True,
        watermark=False,
        callback_url="https://hooks.example.com/" + "p" * 1990,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["task_info"]["video_duration"] == 12
    assert body["task_info"]["resolution"] == "960x416"


def test_nulls_mean_defaults(idle_server: LiveServer) -> None:
    token = idle_server.new_key()
    response = idle_server.create(
        token, duration=None, quality=None, aspect_ratio=None, image_urls=None
    )
    assert response.status_code == 200, response.text
    info = response.json()["task_info"]
    assert (info["video_duration"], info["quality"], info["aspect_ratio"]) == (5, "1080p", "16:9")
    assert info["resolution"] == "1920x1088"
