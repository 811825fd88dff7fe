"""Uploads that belong to the key that made them: a row per upload, its bytes in the store.

A task may use only its own key's uploads, and only while they exist: another key's id (or a
deleted or expired one) is refused at create, before anything is charged. The owner reads the
metadata (`GET /v1/files/{id}`) and deletes it; nobody else learns that it exists.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
from dataclasses import dataclass
from typing import Final

from sqlalchemy import delete, select

from opendance.clock import Clock
from opendance.media.blobs import Blobs, StorageError
from opendance.media.uploads import UPLOAD_NAME, UPLOAD_PREFIX, upload_key
from opendance.store.db import Database
from opendance.store.tables import Upload
from opendance.tasks.errors import InvalidRequest, ServiceUnavailable, UploadNotFound

_EXTENSIONS: Final[dict[str, tuple[str, str]]] = {
    "JPEG": ("jpg", "image/jpeg"),
    "MPO": ("jpg", "image/jpeg"),
    "PNG": ("png", "image/png"),
    "WEBP": ("webp", "image/webp"),
}


@dataclass(frozen=True)
class UploadRecord:
    id: str
    api_key_id: str
    content_type: str
    bytes: int
    sha256: str
    filename: str | None
    created_at: float
    expires_at: float

    @property
    def reference(self) -> str:
        return UPLOAD_PREFIX + self.id


def _record(row: Upload) -> UploadRecord:
    return UploadRecord(
        row.id, row.api_key_id, row.content_type, row.bytes, row.sha256, row.filename,
        row.created_at, row.expires_at,
    )  # fmt: skip


class Uploads:
    def __init__(self, db: Database, blobs: Blobs, clock: Clock, ttl_seconds: float) -> None:
        self.db = db
        self.blobs = blobs
        self.clock = clock
        self.ttl_seconds = ttl_seconds

    def create(
        self, key_id: str, data: bytes, image_format: str, filename: str | None = None
    ) -> UploadRecord:
        """Store checked image bytes as the key's upload (the bytes first, then the row)."""
        extension, content_type = _EXTENSIONS.get(image_format, ("png", "image/png"))
        name = f"{secrets.token_hex(16)}.{extension}"
        try:
            self.blobs.put_bytes(upload_key(name), data, content_type)
        except StorageError as exc:
            raise ServiceUnavailable(
                f"The image could not be stored now: {exc}", code="storage_unavailable"
            ) from None
        now = self.clock.now()
        row = Upload(
            id=name,
            api_key_id=key_id,
            content_type=content_type,
            bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            filename=(filename or None) and filename[:255],
            created_at=now,
            expires_at=now + self.ttl_seconds,
        )
        with self.db.write() as session:
            session.add(row)
            session.flush()
            return _record(row)

    def get(self, key_id: str, reference: str) -> UploadRecord:
        """The key's own upload, live; UploadNotFound for anything else (never "not yours")."""
        name = reference.removeprefix(UPLOAD_PREFIX)
        if not UPLOAD_NAME.match(name):
            raise UploadNotFound(f"No upload '{reference}'.", param="file_id")
        with self.db.read() as session:
            row = session.get(Upload, name)
            if row is None or row.api_key_id != key_id or row.expires_at <= self.clock.now():
                raise UploadNotFound(f"No upload '{reference}'.", param="file_id")
            return _record(row)

    def usable(self, key_id: str, reference: str, *, param: str) -> str:
        """`reference` if this key may make a task from it, else a 400 naming the field."""
        try:
            self.get(key_id, reference)
        except UploadNotFound:
            raise InvalidRequest(
                f"Invalid '{param}': no such upload for this key (deleted, expired or "
                "another key's).",
                param=param,
            ) from None
        return reference

    def delete(self, key_id: str, reference: str) -> UploadRecord:
        record = self.get(key_id, reference)
        with self.db.write() as session:
            session.execute(delete(Upload).where(Upload.id == record.id))
        self._drop(record.id)
        return record

    def sweep(self) -> int:
        """Delete uploads past their lifetime (a task that used one has ended by then)."""
        now = self.clock.now()
        with self.db.read() as session:
            names = list(session.scalars(select(Upload.id).where(Upload.expires_at <= now)))
        for name in names:
            with self.db.write() as session:
                session.execute(delete(Upload).where(Upload.id == name))
            self._drop(name)
        return len(names)

    def _drop(self, name: str) -> None:
        # The row is gone, so nothing can use the bytes; a bucket lifecycle rule (or a later
        # delete) removes what a failed delete leaves.
        with contextlib.suppress(StorageError):
            self.blobs.delete(upload_key(name))
