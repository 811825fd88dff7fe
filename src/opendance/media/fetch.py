"""Download a user's image URL safely and decode it into an RGB first frame.

The download goes through the SSRF guard (`opendance.media.safe_http`), follows at most three
redirects (each hop checked again), stops reading at a byte cap whatever `Content-Length` says,
and runs under one overall deadline: httpx's read timeout is per chunk, so a server dripping a
byte a second (in the body or in the headers) would otherwise hold a worker forever. The
deadline is an `asyncio.timeout` around the whole exchange, which is why the sync `fetch_image`
runs a short event loop of its own; call it from a worker thread, never from a running loop.

The bytes decide the type (`Image.open(formats=[JPEG, PNG, WEBP])`), and the pixel count from
the header is capped before anything is decoded, so a small file cannot expand into gigabytes.
Every failure is an `ImageFetchError` with a stable code and a message safe to show the user.
"""

from __future__ import annotations

import asyncio
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx
from PIL import Image, ImageOps, UnidentifiedImageError

from opendance.media.addresses import check_url
from opendance.media.safe_http import (
    DEFAULT_MAX_REDIRECTS,
    Resolver,
    UnsafeAddressError,
    make_async_safe_client,
)

DEFAULT_MAX_BYTES: Final = 10 * 1024 * 1024
DEFAULT_MAX_PIXELS: Final = 36_000_000
ACCEPTED_FORMATS: Final[tuple[str, ...]] = ("JPEG", "PNG", "WEBP")

_REQUEST_HEADERS: Final = {
    "Accept": "image/jpeg, image/png, image/webp",
    "Accept-Encoding": "identity",
    "User-Agent": "opendance-image-fetch",
}


class ImageFetchError(Exception):
    """An image could not be used; `code` is stable, `message` is safe to show the user.

    Codes: image_url_unsafe, image_fetch_failed, image_fetch_timeout, image_too_large,
    image_format_unsupported, image_invalid, image_too_many_pixels.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class FetchedImage:
    """A decoded image: RGB, upright (EXIF orientation applied), alpha flattened on white."""

    image: Image.Image
    format: str
    """The format the bytes were in: JPEG, PNG or WEBP (MPO for multi-picture JPEGs)."""
    byte_size: int
    url: str
    """The URL the bytes came from, after redirects."""

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height


def fetch_image(
    url: str,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    connect_timeout: float = 5.0,
    total_timeout: float = 20.0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    allow_loopback: bool = False,
    extra_ca_file: str | Path | None = None,
    resolver: Resolver | None = None,
) -> FetchedImage:
    """Download `url` within `total_timeout` seconds and decode it; raises ImageFetchError.

    Blocking: it runs its own event loop, so call it from a worker thread.
    """
    problem = check_url(
        url, schemes={"http", "https"}, field="the image URL", allow_loopback=allow_loopback
    )
    if problem is not None:
        raise ImageFetchError("image_url_unsafe", problem)
    data, final_url = asyncio.run(
        _download(
            url,
            max_bytes=max_bytes,
            connect_timeout=connect_timeout,
            total_timeout=total_timeout,
            allow_loopback=allow_loopback,
            extra_ca_file=extra_ca_file,
            resolver=resolver,
        )
    )
    image, image_format = decode_image(data, max_pixels=max_pixels)
    return FetchedImage(image=image, format=image_format, byte_size=len(data), url=final_url)


async def _download(
    url: str,
    *,
    max_bytes: int,
    connect_timeout: float,
    total_timeout: float,
    allow_loopback: bool,
    extra_ca_file: str | Path | None,
    resolver: Resolver | None,
) -> tuple[bytes, str]:
    host = httpx.URL(url).host
    client = make_async_safe_client(
        timeout=httpx.Timeout(total_timeout, connect=connect_timeout),
        allow_loopback=allow_loopback,
        extra_ca_file=extra_ca_file,
        resolver=resolver,
        follow_redirects=True,
        max_redirects=DEFAULT_MAX_REDIRECTS,
    )
    try:
        async with client, asyncio.timeout(total_timeout):
            return await _read_capped(client, url, max_bytes=max_bytes)
    except (TimeoutError, httpx.TimeoutException) as exc:
        raise _timeout_error(host, total_timeout) from exc
    except UnsafeAddressError as exc:
        target = exc.request.url.host
        raise ImageFetchError(
            "image_url_unsafe",
            f"the image URL leads to an address the server may not reach ({target})",
        ) from exc
    except httpx.TooManyRedirects as exc:
        raise ImageFetchError(
            "image_fetch_failed",
            f"the image URL at {host} redirects more than {DEFAULT_MAX_REDIRECTS} times",
        ) from exc
    except httpx.HTTPError as exc:
        raise ImageFetchError(
            "image_fetch_failed", f"could not download the image from {host} ({_describe(exc)})"
        ) from exc


async def _read_capped(client: httpx.AsyncClient, url: str, *, max_bytes: int) -> tuple[bytes, str]:
    async with client.stream("GET", url, headers=_REQUEST_HEADERS) as response:
        host = response.url.host
        if response.status_code != 200:
            raise ImageFetchError(
                "image_fetch_failed",
                f"the image URL at {host} answered HTTP {response.status_code} instead of 200",
            )
        announced = response.headers.get("content-length", "")
        if announced.isdigit() and int(announced) > max_bytes:
            raise _too_large(max_bytes)
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > max_bytes:
                raise _too_large(max_bytes)
        return bytes(body), str(response.url)


def _too_large(max_bytes: int) -> ImageFetchError:
    megabytes = max_bytes / (1024 * 1024)
    return ImageFetchError("image_too_large", f"the image is larger than {megabytes:g} MB")


def _timeout_error(host: str, total_timeout: float) -> ImageFetchError:
    return ImageFetchError(
        "image_fetch_timeout",
        f"downloading the image from {host} took longer than {total_timeout:g} seconds",
    )


def _describe(exc: httpx.HTTPError) -> str:
    """A short, fixed phrase for a transport failure: exception texts may carry internal detail."""
    if isinstance(exc, httpx.ConnectError):
        return "could not connect"
    if isinstance(exc, httpx.UnsupportedProtocol):
        return "unsupported URL scheme"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "the server broke the HTTP protocol"
    if isinstance(exc, httpx.NetworkError):
        return "the connection failed"
    return "request failed"


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, str]:
    """Decode JPEG, PNG or WebP bytes into an upright RGB image; raises ImageFetchError.

    The pixel count is read from the header and checked before any pixel is decoded.
    """
    # Pillow warns (rather than raises) between MAX_IMAGE_PIXELS and twice that. The filter is
    # process-global and not thread-safe, but a lost race only leaves the stricter check below.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            opened = Image.open(io.BytesIO(data), formats=list(ACCEPTED_FORMATS))
        except UnidentifiedImageError as exc:
            raise ImageFetchError(
                "image_format_unsupported", "the image must be a JPEG, PNG or WebP file"
            ) from exc
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _too_many_pixels(max_pixels) from exc
        except (OSError, ValueError, SyntaxError) as exc:
            raise _invalid() from exc
    with opened:
        width, height = opened.size
        if width * height > max_pixels:
            raise _too_many_pixels(max_pixels)
        if width < 1 or height < 1:
            raise _invalid()
        image_format = opened.format or "unknown"
        try:
            opened.load()
            rgb = _to_rgb(ImageOps.exif_transpose(opened))
        except Exception as exc:  # decoders of hostile bytes fail in many ways; all mean corrupt
            raise _invalid() from exc
    return rgb, image_format


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB with any transparency flattened onto white (a first frame has no alpha)."""
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def _too_many_pixels(max_pixels: int) -> ImageFetchError:
    return ImageFetchError(
        "image_too_many_pixels",
        f"the image has more than {max_pixels / 1_000_000:g} megapixels",
    )


def _invalid() -> ImageFetchError:
    return ImageFetchError("image_invalid", "the image file is truncated or corrupt")


def fit_image(image: Image.Image, width: int, height: int) -> Image.Image:
    """`image` cropped around its centre to the ratio width:height, then resized (LANCZOS)."""
    return ImageOps.fit(
        image, (width, height), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5)
    )
