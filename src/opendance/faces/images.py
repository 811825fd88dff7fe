"""First-frame images given to a face: http(s) URLs, `data:` URLs and uploads.

URLs are checked as written (the SSRF policy) and fetched by the worker later; `data:` URLs
and uploaded files are checked now (size, format, pixels) and stored as the key's own upload
(`upload:<name>`, its bytes in the store), which the worker reads back.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Final

from opendance.faces.errors import ApiError
from opendance.media.addresses import check_url
from opendance.media.fetch import ImageFetchError, decode_image
from opendance.media.uploads import UPLOAD_PREFIX
from opendance.settings import Settings
from opendance.tasks.uploads import UploadRecord, Uploads

__all__ = ["UPLOAD_PREFIX", "ImageInbox", "decode_data_url", "image_reference", "save_upload"]
_DATA_URL: Final = re.compile(
    r"^data:([^,;]*)((?:;[^,;]*)*?);base64,(.*)$", re.IGNORECASE | re.DOTALL
)


def _invalid(param: str, rule: str) -> ApiError:
    return ApiError(400, "invalid_parameter", f"Invalid '{param}': {rule}.", param=param)


@dataclass(frozen=True)
class ImageInbox:
    """Where the images a key sends are kept: as that key's uploads, in the store."""

    uploads: Uploads
    key_id: str
    settings: Settings


def save_upload(
    inbox: ImageInbox, data: bytes, *, param: str, filename: str | None = None
) -> UploadRecord:
    """Check an uploaded image (size, format, pixels) and store it as the key's upload.

    The worker decodes it again from the store, so only bytes that decode now are ever stored.
    """
    settings = inbox.settings
    max_bytes = settings.image_max_bytes
    if len(data) > max_bytes:
        raise _invalid(param, f"the image is larger than {max_bytes / (1024 * 1024):g} MB")
    try:
        _image, image_format = decode_image(data, max_pixels=settings.image_max_pixels)
    except ImageFetchError as error:
        raise _invalid(param, error.message) from None
    return inbox.uploads.create(inbox.key_id, data, image_format, filename)


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


def image_reference(url: str, settings: Settings, *, param: str, inbox: ImageInbox | None) -> str:
    """What to record as a task's image: an http(s) URL as it is; a data: URL stored now as
    the key's upload; an `upload:<name>` id of the key's own live upload.
    """
    if url.startswith(UPLOAD_PREFIX) or url[:5].lower() == "data:":
        if inbox is None:
            raise _invalid(param, "uploads and data: URLs are not taken here")
        if url.startswith(UPLOAD_PREFIX):
            return inbox.uploads.usable(inbox.key_id, url, param=param)
        data = decode_data_url(url, max_bytes=settings.image_max_bytes, param=param)
        assert data is not None
        return save_upload(inbox, data, param=param).reference
    problem = check_url(
        url,
        schemes={"http", "https"},
        field=param,
        allow_loopback=settings.allow_loopback_for_tests,
    )
    if problem:
        raise _invalid(param, problem)
    return url
