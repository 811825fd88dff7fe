"""First-frame images given to a face: http(s) URLs, `data:` URLs and uploads.

URLs are checked as written (the SSRF policy) and fetched by the worker later; `data:` URLs
and uploaded files are checked now (size, format, pixels) and stored on disk as `upload:<name>`,
which the worker reads back (`opendance.media.uploads`).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
from pathlib import Path
from typing import Final

from opendance.faces.errors import ApiError
from opendance.media.addresses import check_url
from opendance.media.fetch import ImageFetchError, decode_image
from opendance.media.uploads import UPLOAD_NAME, UPLOAD_PREFIX, uploads_dir
from opendance.settings import Settings

__all__ = ["UPLOAD_PREFIX", "decode_data_url", "image_reference", "save_upload", "uploads_dir"]

_UPLOAD_EXTENSIONS: Final[dict[str, str]] = {
    "JPEG": "jpg",
    "MPO": "jpg",
    "PNG": "png",
    "WEBP": "webp",
}
_DATA_URL: Final = re.compile(
    r"^data:([^,;]*)((?:;[^,;]*)*?);base64,(.*)$", re.IGNORECASE | re.DOTALL
)


def _invalid(param: str, rule: str) -> ApiError:
    return ApiError(400, "invalid_parameter", f"Invalid '{param}': {rule}.", param=param)


def save_upload(folder: Path, data: bytes, *, max_bytes: int, max_pixels: int, param: str) -> str:
    """Check an uploaded image (size, format, pixels) and store it; returns `upload:<name>`.

    The worker decodes it again from disk, so only bytes that decode now are ever stored.
    """
    if len(data) > max_bytes:
        raise _invalid(param, f"the image is larger than {max_bytes / (1024 * 1024):g} MB")
    try:
        _image, image_format = decode_image(data, max_pixels=max_pixels)
    except ImageFetchError as error:
        raise _invalid(param, error.message) from None
    name = f"{secrets.token_hex(16)}.{_UPLOAD_EXTENSIONS.get(image_format, 'png')}"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    temp = folder / f".{name}.part"
    try:
        temp.write_bytes(data)
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    return UPLOAD_PREFIX + name


def decode_data_url(url: str, *, max_bytes: int, param: str) -> bytes | None:
    """The bytes of a base64 `data:` URL; None if `url` is not a data URL."""
    if url[:5].lower() != "data:":
        return None
    match = _DATA_URL.match(url)
    if match is None:
        raise _invalid(param, "a data URL must be data:image/<format>;base64,<data>")
    payload = match[3]
    if len(payload) * 3 // 4 > max_bytes + 3:
        raise _invalid(param, f"the image is larger than {max_bytes / (1024 * 1024):g} MB")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise _invalid(param, "the data URL is not valid base64") from None


def image_reference(url: str, settings: Settings, *, param: str) -> str:
    """What to record as a task's image: an http(s) URL as it is, a data: URL stored on disk.

    An `upload:<name>` id from an earlier upload (`POST /v1/files`, or a data: URL) is taken
    when that upload exists.
    """
    if url.startswith(UPLOAD_PREFIX):
        name = url.removeprefix(UPLOAD_PREFIX)
        if not UPLOAD_NAME.match(name) or not (uploads_dir(settings) / name).is_file():
            raise _invalid(param, "no such upload")
        return url
    data = decode_data_url(url, max_bytes=settings.image_max_bytes, param=param)
    if data is not None:
        return save_upload(
            uploads_dir(settings),
            data,
            max_bytes=settings.image_max_bytes,
            max_pixels=settings.image_max_pixels,
            param=param,
        )
    problem = check_url(
        url,
        schemes={"http", "https"},
        field=param,
        allow_loopback=settings.allow_loopback_for_tests,
    )
    if problem:
        raise _invalid(param, problem)
    return url
