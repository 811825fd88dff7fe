"""Images stored by the server itself (uploads, data: URLs), named `upload:<32 hex>.<ext>`.

The random name is the reference a task records instead of a URL; its bytes live in the store
(`uploads/<name>`), so a worker on another host reads them back and decodes them again (only
bytes that decoded are ever stored). Who may use an upload is the business of
`opendance.tasks.uploads`, which keeps a row per upload.
"""

from __future__ import annotations

import re
from typing import Final

from PIL.Image import Image

from opendance.media.blobs import Blobs, ObjectMissing, StorageError
from opendance.media.fetch import ImageFetchError, decode_image

UPLOAD_PREFIX: Final[str] = "upload:"
UPLOAD_NAME: Final = re.compile(r"^[0-9a-f]{32}\.(?:jpg|png|webp)$")
UPLOADS: Final = "uploads"


def upload_key(name: str) -> str:
    if not UPLOAD_NAME.match(name):
        raise ValueError(f"not an upload name: {name!r}")
    return f"{UPLOADS}/{name}"


def read_upload(blobs: Blobs, reference: str, *, max_pixels: int) -> Image:
    """Decode a stored upload; ImageFetchError with a stable code if it is not usable."""
    name = reference.removeprefix(UPLOAD_PREFIX)
    if not UPLOAD_NAME.match(name):
        raise ImageFetchError("image_invalid", "the uploaded image reference is not valid")
    try:
        data = blobs.get_bytes(upload_key(name))
    except ObjectMissing:
        raise ImageFetchError(
            "image_fetch_failed", "the uploaded image is no longer stored"
        ) from None
    except StorageError as exc:
        raise ImageFetchError(
            "storage_unavailable", f"the upload could not be read: {exc}"
        ) from None
    return decode_image(data, max_pixels=max_pixels)[0]
