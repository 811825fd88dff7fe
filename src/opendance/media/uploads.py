"""Images stored by the server itself (uploads, data: URLs), named `upload:<32 hex>.<ext>`.

The random name is the reference a task records instead of a URL; the worker reads the file
back from `data_dir/uploads` and decodes it again (only bytes that decoded are ever stored).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

from PIL.Image import Image

from opendance.media.fetch import ImageFetchError, decode_image
from opendance.settings import Settings

UPLOAD_PREFIX: Final[str] = "upload:"
UPLOAD_NAME: Final = re.compile(r"^[0-9a-f]{32}\.(?:jpg|png|webp)$")


def uploads_dir(settings: Settings) -> Path:
    return settings.data_dir / "uploads"


def read_upload(settings: Settings, reference: str) -> Image:
    """Decode a stored upload; ImageFetchError with a stable code if it is not usable."""
    name = reference.removeprefix(UPLOAD_PREFIX)
    if not UPLOAD_NAME.match(name):
        raise ImageFetchError("image_invalid", "the uploaded image reference is not valid")
    try:
        data = (uploads_dir(settings) / name).read_bytes()
    except FileNotFoundError:
        raise ImageFetchError(
            "image_fetch_failed", "the uploaded image is no longer stored"
        ) from None
    return decode_image(data, max_pixels=settings.image_max_pixels)[0]


def sweep_uploads(settings: Settings, now: float) -> int:
    """Delete uploads older than the result lifetime (a task that used one has ended by then)."""
    folder = uploads_dir(settings)
    if not folder.is_dir():
        return 0
    removed = 0
    for path in folder.iterdir():
        if path.is_file() and now - path.stat().st_mtime > settings.result_ttl_seconds:
            path.unlink(missing_ok=True)
            removed += 1
    return removed
