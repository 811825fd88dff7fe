"""Image-to-video end to end: an image served on loopback, fetched by the worker, animated.

The server runs with `allow_loopback_for_tests` so image URLs may point at a small threaded HTTP
server on 127.0.0.1 (the `site` fixture), which serves generated images and scripted bad
answers. The loopback guard (`outside_attempts`) records and refuses every connection attempt
outside loopback, so a test can also prove that the server never even tried to reach an internal
address.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from opendance.media.fetch import fit_image
from tests.helpers.images import (
    ImageSite,
    Route,
    announce_then_stall,
    decoded,
    encoded,
    mean_abs_error,
    png_header_only,
    redirect,
    serve_bytes,
    status,
)
from tests.helpers.servers import LiveServer

ServerFactory = Callable[..., LiveServer]
U8Array = npt.NDArray[np.uint8]

ELEVEN_MB = 11 * 1024 * 1024
#: Mean absolute error (0..255) allowed between the first frame and the fitted input image.
FIRST_FRAME_MAE = 8.0
#: 480p, 2 s: the price of every task here (0.6 credits/s, rounded up).
PRICE = 2
START_CREDITS = 100

pytestmark = pytest.mark.usefixtures("outside_attempts")


# ---------------------------------------------------------------------------------------------
# Images


def pattern(width: int, height: int) -> Image.Image:
    """Smooth but textured (gradients, a slow wave, soft-edged discs), and not symmetric.

    Smooth so H.264 keeps it closely; asymmetric so a wrong crop or a stretch shows up.
    """
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = x / max(1, width - 1), y / max(1, height - 1)
    rgb = np.stack(
        [
            30 + 180 * u,
            30 + 180 * v,
            128 + 70 * np.sin(2 * np.pi * (1.5 * u + 0.5 * v)),
        ],
        axis=-1,
    )
    unit = min(width, height)
    discs = [
        (0.22, 0.30, 0.10, (235, 50, 40)),
        (0.68, 0.62, 0.14, (30, 50, 210)),
        (0.45, 0.82, 0.07, (250, 235, 60)),
        (0.85, 0.18, 0.06, (20, 200, 90)),
    ]
    for cx, cy, radius, colour in discs:
        distance = np.hypot(x - cx * width, y - cy * height)
        edge = max(2.0, 0.01 * unit)
        alpha = np.clip((radius * unit - distance) / edge, 0, 1)[..., None]
        rgb = rgb * (1 - alpha) + np.array(colour, dtype=np.float32) * alpha
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")


def big_png() -> bytes:
    """A real, decodable PNG over 11 MB (noise, stored uncompressed), under the pixel cap."""
    noise = np.random.default_rng(7).integers(0, 256, size=(1950, 2000, 3), dtype=np.uint8)
    data = encoded(Image.fromarray(noise, "RGB"), "PNG", compress_level=0)
    assert len(data) > ELEVEN_MB
    return data


# ---------------------------------------------------------------------------------------------
# The image site (tests.helpers.images) and a server that may fetch from it


@pytest.fixture
def site() -> Iterator[ImageSite]:
    with ImageSite() as site:
        yield site


@pytest.fixture
def i2v(server_factory: ServerFactory) -> LiveServer:
    """A server whose image fetches may reach loopback (the test-only setting)."""
    return server_factory(allow_loopback_for_tests=True)


# ---------------------------------------------------------------------------------------------
# Helpers


def key_id_of(token: str) -> str:
    return token.split("_")[1]


def run_task(server: LiveServer, token: str, image_url: str, **body: Any) -> dict[str, Any]:
    body.setdefault("quality", "480p")
    body.setdefault("duration", 2)
    response = server.create(token, image_urls=[image_url], **body)
    assert response.status_code == 200, response.text
    created = response.json()
    assert created["usage"]["credits_reserved"] == PRICE
    return server.wait_done(token, created["id"], timeout=90)


def download(server: LiveServer, task: dict[str, Any], tmp_path: Path) -> Path:
    assert task["status"] == "completed", task
    assert len(task["results"]) == 1
    response = server.client.get(task["results"][0])
    assert response.status_code == 200
    path = tmp_path / f"{task['id']}.mp4"
    path.write_bytes(response.content)
    return path


def first_frame(path: Path) -> U8Array:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        frame = next(container.decode(stream))
        return np.asarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8)


def video_size(path: Path) -> tuple[int, int]:
    with av.open(str(path)) as container:
        context = container.streams.video[0].codec_context
        return context.width, context.height


def resolution(task: dict[str, Any]) -> tuple[int, int]:
    width, height = task["task_info"]["resolution"].split("x")
    return int(width), int(height)


def assert_refunded(server: LiveServer, token: str, task: dict[str, Any], code: str) -> None:
    assert task["status"] == "failed", task
    assert task["error"]["code"] == code, task["error"]
    assert isinstance(task["error"]["message"], str) and len(task["error"]["message"]) > 10
    assert "results" not in task
    assert task["task_info"]["can_cancel"] is False
    key_id = key_id_of(token)
    assert server.runtime.accounts.get(key_id).balance == START_CREDITS
    audit = server.runtime.service.ledger_audit(key_id)
    assert audit.balanced, audit
    assert audit.reserved == audit.refunded == PRICE and audit.settled == 0, audit
    assert audit.open_reservations == 0, audit


# ---------------------------------------------------------------------------------------------
# The image comes back: first frame and sizes


def test_first_frame_is_the_input_image_fitted(
    i2v: LiveServer, site: ImageSite, tmp_path: Path
) -> None:
    # 3:2, so adaptive picks 4:3 (736x544 at 480p) and the sides are cropped away.
    body = encoded(pattern(1200, 800), "PNG")
    site.routes["/photo.png"] = serve_bytes(body, "image/png")
    token = i2v.new_key(credits=START_CREDITS)
    task = run_task(i2v, token, site.url("/photo.png"), prompt="slow push in on a still life")
    assert resolution(task) == (736, 544)
    frame = first_frame(download(i2v, task, tmp_path))
    assert frame.shape == (544, 736, 3)
    expected = np.asarray(fit_image(decoded(body), 736, 544))
    error = mean_abs_error(frame, expected)
    assert error < FIRST_FRAME_MAE, error
    # And the check can tell: the same image stretched (no crop) is clearly further away.
    stretched = np.asarray(decoded(body).resize((736, 544), Image.Resampling.LANCZOS))
    assert mean_abs_error(frame, stretched) > error + 1
    assert i2v.runtime.service.ledger_audit(key_id_of(token)).settled == PRICE


@pytest.mark.parametrize(
    ("size", "fmt", "aspect_ratio", "expected"),
    [
        ((1000, 1000), "JPEG", None, (640, 640)),  # adaptive is the default with an image
        ((1600, 900), "WEBP", "adaptive", (864, 480)),
        ((900, 1600), "PNG", "adaptive", (480, 864)),
    ],
    ids=["square-default", "wide-16:9", "tall-9:16"],
)
def test_adaptive_picks_the_nearest_supported_ratio(
    i2v: LiveServer,
    site: ImageSite,
    tmp_path: Path,
    size: tuple[int, int],
    fmt: str,
    aspect_ratio: str | None,
    expected: tuple[int, int],
) -> None:
    body = encoded(pattern(*size), fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    site.routes["/in"] = serve_bytes(body, f"image/{fmt.lower()}")
    token = i2v.new_key(credits=START_CREDITS)
    extra = {} if aspect_ratio is None else {"aspect_ratio": aspect_ratio}
    task = run_task(i2v, token, site.url("/in"), **extra)
    assert task["task_info"]["aspect_ratio"] == "adaptive"
    assert resolution(task) == expected
    path = download(i2v, task, tmp_path)
    assert video_size(path) == expected
    fitted = np.asarray(fit_image(decoded(body), *expected))
    assert mean_abs_error(first_frame(path), fitted) < FIRST_FRAME_MAE


def test_keep_ratio_keeps_the_image_ratio_near_the_quality_pixel_count(
    i2v: LiveServer, site: ImageSite, tmp_path: Path
) -> None:
    body = encoded(pattern(1000, 600), "PNG")
    site.routes["/five-by-three.png"] = serve_bytes(body, "image/png")
    token = i2v.new_key(credits=START_CREDITS)
    task = run_task(i2v, token, site.url("/five-by-three.png"), aspect_ratio="keep_ratio")
    assert task["task_info"]["aspect_ratio"] == "keep_ratio"
    width, height = resolution(task)
    assert width % 16 == 0 and height % 16 == 0, (width, height)
    assert abs((width / height) / (5 / 3) - 1) < 0.02, (width, height)
    assert abs(width * height / (864 * 480) - 1) < 0.10, (width, height)
    path = download(i2v, task, tmp_path)
    assert video_size(path) == (width, height)
    fitted = np.asarray(fit_image(decoded(body), width, height))
    assert mean_abs_error(first_frame(path), fitted) < FIRST_FRAME_MAE


def test_named_ratio_gives_the_contract_size_by_centre_crop(
    i2v: LiveServer, site: ImageSite, tmp_path: Path
) -> None:
    body = encoded(pattern(1000, 600), "PNG")
    site.routes["/landscape.png"] = serve_bytes(body, "image/png")
    token = i2v.new_key(credits=START_CREDITS)
    task = run_task(i2v, token, site.url("/landscape.png"), aspect_ratio="9:16")
    assert task["task_info"]["aspect_ratio"] == "9:16"
    assert resolution(task) == (480, 864)
    path = download(i2v, task, tmp_path)
    assert video_size(path) == (480, 864)
    frame = first_frame(path)
    source = decoded(body)
    error = mean_abs_error(frame, np.asarray(fit_image(source, 480, 864)))
    assert error < FIRST_FRAME_MAE, error
    # Not squeezed: the whole landscape stretched into portrait is far from the first frame.
    squeezed = np.asarray(source.resize((480, 864), Image.Resampling.LANCZOS))
    assert mean_abs_error(frame, squeezed) > 2 * FIRST_FRAME_MAE


# ---------------------------------------------------------------------------------------------
# Bad images: the task fails with a stable code and a clear message, and is refunded


@dataclass(frozen=True)
class BadImage:
    make: Callable[[], Route]
    code: str
    says: str


BAD_IMAGES: dict[str, BadImage] = {
    "11mb-announced": BadImage(
        lambda: serve_bytes(big_png(), "image/png"), "image_too_large", "10 MB"
    ),
    "11mb-unannounced": BadImage(
        lambda: serve_bytes(big_png(), "image/png", announce_length=False),
        "image_too_large",
        "10 MB",
    ),
    "gif": BadImage(
        lambda: serve_bytes(encoded(pattern(64, 64), "GIF"), "image/gif"),
        "image_format_unsupported",
        "JPEG, PNG or WebP",
    ),
    "html-page": BadImage(
        lambda: serve_bytes(
            b"<!doctype html><html><head><title>Cat</title></head>"
            b"<body><img src='/cat.png'></body></html>",
            "text/html; charset=utf-8",
        ),
        "image_format_unsupported",
        "JPEG, PNG or WebP",
    ),
    "truncated-png": BadImage(
        lambda: serve_bytes(encoded(pattern(256, 256), "PNG")[:-4000], "image/png"),
        "image_invalid",
        "truncated or corrupt",
    ),
    "png-bomb-20000x20000": BadImage(
        lambda: serve_bytes(png_header_only(20000, 20000), "image/png"),
        "image_too_many_pixels",
        "megapixels",
    ),
    "http-404": BadImage(lambda: status(404), "image_fetch_failed", "HTTP 404"),
}


@pytest.mark.parametrize("case", list(BAD_IMAGES), ids=list(BAD_IMAGES))
def test_bad_image_fails_the_task_and_refunds_it(
    i2v: LiveServer, site: ImageSite, case: str
) -> None:
    bad = BAD_IMAGES[case]
    site.routes["/bad.png"] = bad.make()
    token = i2v.new_key(credits=START_CREDITS)
    task = run_task(i2v, token, site.url("/bad.png"))
    assert_refunded(i2v, token, task, bad.code)
    assert bad.says in task["error"]["message"], task["error"]
    assert site.requests == ["/bad.png"]


def test_truncated_png_really_is_a_prefix_of_a_good_one() -> None:
    """Guards the fixture: the 'truncated' file is a good PNG cut short, not garbage."""
    whole = encoded(pattern(256, 256), "PNG")
    assert len(whole) > 8000
    assert decoded(whole).size == (256, 256)


@pytest.mark.parametrize(
    "location",
    ["http://10.0.0.1/x.png", "http://169.254.169.254/latest/meta-data/"],
    ids=["private", "metadata"],
)
def test_redirect_to_an_internal_address_is_refused_without_connecting(
    i2v: LiveServer, site: ImageSite, outside_attempts: list[str], location: str
) -> None:
    site.routes["/go.png"] = redirect(location)
    token = i2v.new_key(credits=START_CREDITS)
    task = run_task(i2v, token, site.url("/go.png"))
    assert_refunded(i2v, token, task, "image_url_unsafe")
    assert outside_attempts == []
    assert site.requests == ["/go.png"]


def test_a_stalling_server_is_given_up_on_at_the_deadline(
    server_factory: ServerFactory, site: ImageSite
) -> None:
    i2v = server_factory(allow_loopback_for_tests=True, image_total_timeout_seconds=2.0)
    site.routes["/slow.png"] = announce_then_stall()
    token = i2v.new_key(credits=START_CREDITS)
    started = time.monotonic()
    task = run_task(i2v, token, site.url("/slow.png"))
    elapsed = time.monotonic() - started
    assert_refunded(i2v, token, task, "image_fetch_timeout")
    assert "took longer than" in task["error"]["message"]
    assert elapsed < 10, elapsed


# ---------------------------------------------------------------------------------------------
# Obviously bad image requests: 400 at creation, nothing created, nothing fetched


@pytest.mark.parametrize(
    "image_urls",
    [
        ["http://127.0.0.1:{port}/a.png", "http://127.0.0.1:{port}/b.png"],
        ["ftp://127.0.0.1:{port}/a.png"],
        ["http://10.1.2.3/a.png"],
        ["http://169.254.169.254/latest/meta-data/"],
        ["http://[::ffff:10.1.2.3]/a.png"],
        ["a picture of a cat"],
        [""],
    ],
    ids=["two-urls", "ftp", "private-literal", "metadata", "mapped-v6", "not-a-url", "empty"],
)
def test_bad_image_urls_are_refused_at_creation(
    server_factory: ServerFactory, site: ImageSite, image_urls: list[str]
) -> None:
    server = server_factory(allow_loopback_for_tests=True)
    token = server.new_key(credits=START_CREDITS)
    urls = [u.format(port=site.port) for u in image_urls]
    response = server.create(token, image_urls=urls, quality="480p", duration=2)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "image_urls"
    assert "image_urls" in error["message"]
    assert error["type"] == "invalid_request_error"
    listing = server.client.get("/v1/tasks", headers=server.auth(token)).json()
    assert listing["data"] == []
    key_id = key_id_of(token)
    assert server.runtime.accounts.get(key_id).balance == START_CREDITS
    assert server.runtime.service.ledger_audit(key_id).reserved == 0
    time.sleep(0.2)  # a worker that wrongly picked something up would have fetched by now
    assert site.requests == []
