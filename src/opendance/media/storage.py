"""Result videos (and their previews) in the store, served under signed, expiring URLs.

Names come from task ids we generated (never from user input): `results/<task id>.mp4`, with
`<task id>.thumbnail.webp` and `<task id>.spritesheet.jpg` beside it. The store is a local folder
or a bucket (`opendance.media.blobs`). A result URL is, by `result_urls`:

- `proxy` (default): `{public_base_url}/v1/files/{expires}/{signature}/{task_id}.mp4`, the HMAC
  over task id and expiry is the credential (no API key: a browser or curl can play it), and
  opendance streams the object (ranges included) from wherever it is stored;
- `redirect`: the same URL, answered with a redirect to a presigned URL of the bucket;
- `presigned`: the bucket's presigned URL itself, expiring with the result.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import time
from pathlib import Path
from typing import Final, Literal

from opendance.media import previews
from opendance.media.blobs import Blobs, LocalBlobs, ObjectBody, StorageError

log = logging.getLogger(__name__)

TASK_ID_PATTERN = re.compile(r"^task-unified-\d{1,12}-[a-z0-9]{8}$")
RESULTS: Final = "results"
ResultUrls = Literal["proxy", "redirect", "presigned"]
PreviewVariant = Literal["video", "thumbnail", "spritesheet"]


class ResultStore:
    def __init__(
        self, blobs: Blobs, secret: bytes, base_url: str, url_mode: ResultUrls = "proxy"
    ) -> None:
        self.blobs = blobs
        self._secret = secret
        self.base_url = base_url.rstrip("/")
        self.url_mode: ResultUrls = url_mode if not isinstance(blobs, LocalBlobs) else "proxy"

    @property
    def is_local(self) -> bool:
        return isinstance(self.blobs, LocalBlobs)

    def relative_name(self, task_id: str) -> str:
        if not TASK_ID_PATTERN.match(task_id):
            raise ValueError(f"not a task id: {task_id!r}")
        return f"{task_id}.mp4"

    def key_of(self, relative: str, variant: PreviewVariant = "video") -> str:
        if not TASK_ID_PATTERN.match(relative.removesuffix(".mp4")):
            raise ValueError(f"not a result name: {relative!r}")
        if variant == "video":
            return f"{RESULTS}/{relative}"
        return f"{RESULTS}/{relative.removesuffix('.mp4')}{previews.SUFFIXES[variant]}"

    def path_of(self, relative: str) -> Path:
        """The file of a result on this machine's disk (the local store only)."""
        path = self.blobs.local_path(self.key_of(relative))
        if path is None:
            raise ValueError("results are not on this machine's disk")
        return path

    def store(self, task_id: str, source: Path) -> str:
        """Put an engine's output into the store (whole or not at all); the name to record.

        A bucket also gets the previews now, made from the local file (a local store makes
        them on first request, next to the file)."""
        relative = self.relative_name(task_id)
        self.blobs.put_file(self.key_of(relative), source, "video/mp4")
        if not self.is_local:
            # Made beside the engine's output, in the attempt's own scratch folder.
            for variant in previews.VARIANTS:
                made = previews.ensure_preview(source, variant)
                self.blobs.put_file(
                    self.key_of(relative, variant), made, previews.MEDIA_TYPES[variant]
                )
        return relative

    def open(
        self, relative: str, variant: PreviewVariant = "video", range_header: str | None = None
    ) -> ObjectBody:
        """A (ranged) read of a result from a bucket, to stream."""
        return self.blobs.open(self.key_of(relative, variant), range_header)

    def presigned(self, relative: str, expires: int, variant: PreviewVariant = "video") -> str:
        url = self.blobs.presign(self.key_of(relative, variant), int(expires - time.time()))
        if url is None:
            raise StorageError("this store has no presigned URLs")
        return url

    def delete(self, relative: str) -> None:
        """Delete a result and its previews (thumbnail, spritesheet)."""
        try:
            variants: tuple[PreviewVariant, ...] = ("video", "thumbnail", "spritesheet")
            keys = [self.key_of(relative, variant) for variant in variants]
        except ValueError:
            log.warning("refusing to delete %r: not a result name", relative)
            return
        for key in keys:
            try:
                self.blobs.delete(key)
            except StorageError as exc:
                log.warning("could not delete %s (%s); it expires anyway", key, exc)

    def check(self) -> None:
        self.blobs.check()

    def signature(self, task_id: str, expires: int) -> str:
        mac = hmac.new(self._secret, f"{task_id}:{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac[:24]).decode().rstrip("=")

    def url(self, task_id: str, expires: int) -> str:
        if self.url_mode == "presigned":
            return self.presigned(self.relative_name(task_id), expires)
        return (
            f"{self.base_url}/v1/files/{expires}/{self.signature(task_id, expires)}/{task_id}.mp4"
        )

    def verify(self, task_id: str, expires: int, signature: str, now: float) -> bool:
        if expires < now or not TASK_ID_PATTERN.match(task_id):
            return False
        # Bytes, not str: compare_digest refuses non-ASCII strings (a 500 for a mangled URL).
        return hmac.compare_digest(signature.encode(), self.signature(task_id, expires).encode())


def load_or_create_secret(path: Path) -> bytes:
    """The URL signing key: read from the data dir, or made once (0600) on first start."""
    if path.exists():
        return path.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = os.urandom(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(secret)
    return secret
