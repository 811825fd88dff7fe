"""Result files on local disk, served under signed, expiring URLs.

File names are derived from task ids we generated (never from user input), written atomically
(same-filesystem rename), and swept after they expire. A URL is
`{public_base_url}/v1/files/{expires}/{signature}/{task_id}.mp4`: the HMAC over task id and
expiry is the credential, so a result can be played by a browser or fetched by curl without
the API key, and stops working when it expires.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

TASK_ID_PATTERN = re.compile(r"^task-unified-\d{1,12}-[a-z0-9]{8}$")


class ResultStore:
    def __init__(self, root: Path, secret: bytes, base_url: str) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._secret = secret
        self.base_url = base_url.rstrip("/")

    def relative_name(self, task_id: str) -> str:
        if not TASK_ID_PATTERN.match(task_id):
            raise ValueError(f"not a task id: {task_id!r}")
        return f"{task_id}.mp4"

    def path_of(self, relative: str) -> Path:
        path = (self.root / relative).resolve()
        if path.parent != self.root.resolve():
            raise ValueError("result path escapes the result folder")
        return path

    def store(self, task_id: str, source: Path) -> str:
        """Move an engine's output into place atomically; returns the name to record."""
        relative = self.relative_name(task_id)
        target = self.path_of(relative)
        staging = target.with_name(f".{target.name}.part")
        shutil.copyfile(source, staging)
        with open(staging, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(staging, target)
        return relative

    def delete(self, relative: str) -> None:
        """Delete a result and the previews cached beside it (thumbnail, spritesheet)."""
        from opendance.media.previews import delete_previews

        try:
            path = self.path_of(relative)
        except ValueError:
            log.warning("refusing to delete %r outside the result folder", relative)
            return
        delete_previews(path)
        path.unlink(missing_ok=True)

    def signature(self, task_id: str, expires: int) -> str:
        mac = hmac.new(self._secret, f"{task_id}:{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac[:24]).decode().rstrip("=")

    def url(self, task_id: str, expires: int) -> str:
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
