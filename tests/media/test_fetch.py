"""Image downloads against a real loopback HTTP server: good images, hostile servers, bad files.

`img.example.test` is mapped to 127.0.0.1 by an injected resolver (with loopback allowed, the
test-only setting); the loopback guard fails the test on any attempt to connect outside loopback.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from opendance.media.addresses import IPAddress
from opendance.media.fetch import (
    FetchedImage,
    ImageFetchError,
    decode_image,
    fetch_image,
    fit_image,
)
from tests.helpers.images import (
    ImageSite,
    Route,
    announce_then_stall,
    drip_body,
    drip_headers,
    encoded,
    endless,
    png_header_only,
    redirect,
    serve_bytes,
    silent,
    status,
)

IMAGE_HOST = "img.example.test"
ELEVEN_MB = 11 * 1024 * 1024

pytestmark = pytest.mark.usefixtures("only_loopback_connections")


def gradient(width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height))
    image.putdata([(x * 4 % 256, y * 4 % 256, 128) for y in range(height) for x in range(width)])
    return image


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


@pytest.fixture
def site() -> Iterator[ImageSite]:
    with ImageSite(host=IMAGE_HOST) as site:
        yield site


def resolver(host: str, port: int) -> list[IPAddress]:
    table = {IMAGE_HOST: ["127.0.0.1"], "internal.example.test": ["10.0.0.5"]}
    if host not in table:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return [ip_address(a) for a in table[host]]


def fetch(url: str, **kwargs: Any) -> FetchedImage:
    kwargs.setdefault("total_timeout", 5)
    return fetch_image(url, allow_loopback=True, resolver=resolver, **kwargs)


def fetch_error(url: str, **kwargs: Any) -> ImageFetchError:
    with pytest.raises(ImageFetchError) as caught:
        fetch(url, **kwargs)
    return caught.value


@pytest.mark.parametrize(("fmt", "params"), [("PNG", {}), ("JPEG", {"quality": 95}), ("WEBP", {})])
def test_good_images_are_decoded_to_rgb(site: ImageSite, fmt: str, params: dict[str, Any]) -> None:
    body = encoded(gradient(64, 48), fmt, **params)
    site.routes["/cat"] = serve_bytes(body, "text/plain")  # the bytes decide, not Content-Type
    fetched = fetch(site.url("/cat"))
    assert fetched.format == fmt
    assert (fetched.width, fetched.height) == (64, 48)
    assert fetched.image.mode == "RGB"
    assert fetched.byte_size == len(body)
    assert fetched.url == site.url("/cat")


def test_transparency_is_flattened_on_white(site: ImageSite) -> None:
    image = Image.new("RGBA", (8, 8), (255, 0, 0, 255))
    image.putpixel((0, 0), (0, 0, 0, 0))
    site.routes["/alpha.png"] = serve_bytes(encoded(image, "PNG"))
    fetched = fetch(site.url("/alpha.png"))
    assert fetched.image.getpixel((0, 0)) == (255, 255, 255)
    assert fetched.image.getpixel((4, 4)) == (255, 0, 0)


def test_exif_orientation_is_applied(site: ImageSite) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed rotated 90 degrees: portrait
    site.routes["/phone.jpg"] = serve_bytes(encoded(gradient(40, 20), "JPEG", exif=exif))
    fetched = fetch(site.url("/phone.jpg"))
    assert (fetched.width, fetched.height) == (20, 40)


def test_redirects_are_followed_up_to_three_hops(site: ImageSite) -> None:
    site.routes["/good.png"] = serve_bytes(encoded(gradient(16, 16), "PNG"))
    site.routes["/r1"] = redirect("/r2")
    site.routes["/r2"] = redirect("/r3")
    site.routes["/r3"] = redirect(site.url("/good.png"))
    site.routes["/r0"] = redirect("/r1")
    assert fetch(site.url("/r1")).url == site.url("/good.png")
    error = fetch_error(site.url("/r0"))
    assert error.code == "image_fetch_failed"
    assert "redirects more than 3 times" in error.message


@pytest.mark.parametrize(
    "location",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://internal.example.test/secret.png",
        "http://[::ffff:127.0.0.1]/x.png",
        "http://10.0.0.1/x.png",
    ],
)
def test_redirect_to_an_internal_address_is_refused(site: ImageSite, location: str) -> None:
    site.routes["/go"] = redirect(location)
    error = fetch_error(site.url("/go"))
    assert error.code == "image_url_unsafe"
    assert "10.0.0.5" not in error.message


def test_unsafe_urls_are_refused_before_any_request() -> None:
    with pytest.raises(ImageFetchError) as caught:
        fetch_image("http://127.0.0.1:9/cat.png", resolver=resolver)
    assert caught.value.code == "image_url_unsafe"
    assert "internal address (127.0.0.1)" in caught.value.message
    with pytest.raises(ImageFetchError) as caught:
        fetch_image("file:///etc/passwd")
    assert caught.value.code == "image_url_unsafe"
    assert "must use http or https" in caught.value.message


def test_announced_size_over_the_cap_is_refused_without_reading(site: ImageSite) -> None:
    """The server then stalls: only an early refusal (not the deadline) gives this code."""
    site.routes["/big.png"] = announce_then_stall(ELEVEN_MB)
    error = fetch_error(site.url("/big.png"))
    assert error.code == "image_too_large"
    assert error.message == "the image is larger than 10 MB"


@pytest.mark.parametrize("chunked", [True, False])
def test_body_without_length_is_cut_at_the_cap(site: ImageSite, chunked: bool) -> None:
    site.routes["/endless.png"] = endless(chunked=chunked)
    error = fetch_error(site.url("/endless.png"), total_timeout=10)
    assert error.code == "image_too_large"


def test_custom_byte_cap(site: ImageSite) -> None:
    body = encoded(gradient(64, 64), "PNG")
    site.routes["/cat.png"] = serve_bytes(body)
    assert fetch_error(site.url("/cat.png"), max_bytes=len(body) - 1).code == "image_too_large"
    assert fetch(site.url("/cat.png"), max_bytes=len(body)).byte_size == len(body)


@pytest.mark.parametrize("route", [drip_body, drip_headers, silent])
def test_stalling_servers_are_stopped_at_the_deadline(
    site: ImageSite, route: Callable[[], Route]
) -> None:
    site.routes["/slow.png"] = route()
    started = time.monotonic()
    error = fetch_error(site.url("/slow.png"), total_timeout=2)
    assert time.monotonic() - started < 10
    assert error.code == "image_fetch_timeout"
    assert IMAGE_HOST in error.message


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (encoded(gradient(8, 8), "GIF"), "image_format_unsupported"),
        (encoded(gradient(8, 8), "BMP"), "image_format_unsupported"),
        (b"<!doctype html><html><body>Not an image</body></html>", "image_format_unsupported"),
        (b"", "image_format_unsupported"),
        (truncated(encoded(gradient(64, 64), "PNG")), "image_invalid"),
        (truncated(encoded(gradient(64, 64), "JPEG")), "image_invalid"),
        (png_header_only(20000, 20000), "image_too_many_pixels"),
        (png_header_only(10000, 10000), "image_too_many_pixels"),
        (png_header_only(7000, 6000), "image_too_many_pixels"),
    ],
    ids=["gif", "bmp", "html", "empty", "truncated-png", "truncated-jpeg", "bomb", "warn", "cap"],
)
def test_bad_files_are_refused(site: ImageSite, body: bytes, code: str) -> None:
    site.routes["/file"] = serve_bytes(body, "image/png")
    error = fetch_error(site.url("/file"))
    assert error.code == code


@pytest.mark.parametrize("size", [(10000, 10000), (20000, 20000)])
def test_pillow_bomb_limits_hold_even_with_a_looser_cap(size: tuple[int, int]) -> None:
    """Above Pillow's MAX_IMAGE_PIXELS its warning is an error too, whatever our cap says."""
    with pytest.raises(ImageFetchError) as caught:
        decode_image(png_header_only(*size), max_pixels=10**10)
    assert caught.value.code == "image_too_many_pixels"


def test_pixel_cap_is_a_setting() -> None:
    data = encoded(gradient(300, 300), "PNG")
    with pytest.raises(ImageFetchError) as caught:
        decode_image(data, max_pixels=300 * 300 - 1)
    assert caught.value.code == "image_too_many_pixels"
    image, fmt = decode_image(data, max_pixels=300 * 300)
    assert (image.size, fmt) == ((300, 300), "PNG")


def test_http_errors_fail_with_the_status(site: ImageSite) -> None:
    site.routes["/missing.png"] = status(404)
    error = fetch_error(site.url("/missing.png"))
    assert error.code == "image_fetch_failed"
    assert "HTTP 404" in error.message


def test_unreachable_and_unknown_hosts_fail(site: ImageSite) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    error = fetch_error(f"http://{IMAGE_HOST}:{closed_port}/x.png")
    assert (error.code, error.message) == (
        "image_fetch_failed",
        f"could not download the image from {IMAGE_HOST} (could not connect)",
    )
    assert fetch_error("http://nowhere.example.test/x.png").code == "image_fetch_failed"


def test_fit_image_crops_the_centre_then_resizes() -> None:
    wide = Image.new("RGB", (400, 100), (0, 255, 0))  # green sides are cropped away
    wide.paste((255, 0, 0), (150, 0, 250, 100))  # the centre square: red ...
    wide.paste((0, 0, 255), (175, 0, 225, 100))  # ... around a blue band
    fitted = fit_image(wide, 64, 64)
    assert fitted.size == (64, 64)
    assert fitted.getpixel((32, 32)) == (0, 0, 255)
    assert fitted.getpixel((1, 32)) == (255, 0, 0)
    assert fitted.getpixel((62, 32)) == (255, 0, 0)
    tall = fit_image(Image.new("RGB", (100, 300), (0, 255, 0)), 160, 90)
    assert tall.size == (160, 90)
    assert tall.getpixel((80, 45)) == (0, 255, 0)


def test_fetched_image_can_be_saved(tmp_path: Path, site: ImageSite) -> None:
    site.routes["/cat.webp"] = serve_bytes(encoded(gradient(32, 32), "WEBP"))
    fetched = fetch(site.url("/cat.webp"))
    target = tmp_path / "first_frame.png"
    fetched.image.save(target)
    with Image.open(target) as reopened:
        assert reopened.size == (32, 32)
