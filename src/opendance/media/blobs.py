"""Where result videos, their previews and uploaded images live: a local folder or a bucket.

`storage_url` picks the backend: empty for the server's own `data_dir` (one machine), or
`s3://bucket/prefix` for any S3-compatible service (AWS S3, MinIO, Ceph, R2, GCS in interop
mode), so API replicas and GPU workers on other hosts share results and uploads without a
shared disk. Keys are ours (`results/<task id>.mp4`, `uploads/<random>.png`), never a user's.

Both backends write whole objects only: the local one renames a finished temporary file into
place; S3 makes an object visible only when its (multipart) upload completes. So a
half-written object is never served.

The S3 client is boto3: the standard AWS credential chain (environment, shared profile, SSO,
container and instance roles) comes with it, as do multipart uploads, presigned URLs and
ranged reads; see docs/architecture.md for the comparison with obstore.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

_CHUNK: Final = 1 << 20


class StorageError(Exception):
    """The store could not be reached or refused the operation (retry later)."""


class ObjectMissing(StorageError):
    """No object under that key (never written, deleted or expired)."""


@dataclass(frozen=True)
class ObjectBody:
    """A (ranged) read of an object, streamed."""

    status: int  # 200, or 206 for a range
    headers: dict[str, str]
    chunks: Iterator[bytes]


class Blobs(Protocol):
    """The few operations opendance needs of a store."""

    def put_file(self, key: str, source: Path, content_type: str) -> None: ...

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None: ...

    def get_bytes(self, key: str) -> bytes: ...

    def download(self, key: str, target: Path) -> None: ...

    def open(self, key: str, range_header: str | None = None) -> ObjectBody: ...

    def presign(self, key: str, seconds: int) -> str | None: ...

    def delete(self, key: str) -> None: ...

    def local_path(self, key: str) -> Path | None: ...

    def check(self) -> None: ...


class LocalBlobs:
    """Objects as files under `root` (the server's `data_dir`)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def local_path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise ValueError(f"key {key!r} escapes the store")
        return path

    def put_file(self, key: str, source: Path, content_type: str) -> None:
        def write(staging: Path) -> None:
            shutil.copyfile(source, staging)
            with open(staging, "rb") as handle:
                os.fsync(handle.fileno())

        self._write(key, write)

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        self._write(key, lambda staging: staging.write_bytes(data))

    def _write(self, key: str, write: Callable[[Path], object]) -> None:
        """Write a temporary file beside the target, then rename it into place: whole or not
        at all."""
        target = self.local_path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
        try:
            write(staging)
            os.replace(staging, target)
        except OSError as exc:
            raise StorageError(f"cannot write {key}: {exc}") from exc
        finally:
            staging.unlink(missing_ok=True)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.local_path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectMissing(key) from None

    def download(self, key: str, target: Path) -> None:
        try:
            shutil.copyfile(self.local_path(key), target)
        except FileNotFoundError:
            raise ObjectMissing(key) from None

    def open(self, key: str, range_header: str | None = None) -> ObjectBody:
        raise NotImplementedError("local files are served by path (FileResponse)")

    def presign(self, key: str, seconds: int) -> str | None:
        return None

    def delete(self, key: str) -> None:
        self.local_path(key).unlink(missing_ok=True)

    def check(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise StorageError(f"{self.root} is not writable")


class S3Blobs:
    """Objects in an S3 bucket under a prefix, through boto3."""

    def __init__(self, bucket: str, prefix: str, *, endpoint_url: str | None = None) -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError as exc:  # pragma: no cover - the s3 extra is missing
            raise StorageError(f"s3:// storage needs boto3: install opendance[s3] ({exc})") from exc
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._client: Any = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            config=Config(
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
                signature_version="s3v4",
            ),
        )

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, what: str, function: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return function(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "404", "NotFound"):
                raise ObjectMissing(kwargs.get("Key", "")) from None
            raise StorageError(f"{what} failed: {code or exc}") from None
        except BotoCoreError as exc:
            raise StorageError(f"{what} failed: {type(exc).__name__}") from None

    def put_file(self, key: str, source: Path, content_type: str) -> None:
        from boto3.exceptions import Boto3Error
        from boto3.s3.transfer import TransferConfig
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.upload_file(
                str(source),
                self.bucket,
                self._key(key),
                ExtraArgs={"ContentType": content_type},
                Config=TransferConfig(
                    multipart_threshold=16 * _CHUNK, multipart_chunksize=16 * _CHUNK
                ),
            )
        except (Boto3Error, BotoCoreError, ClientError, OSError) as exc:
            # Boto3Error: S3UploadFailedError wraps what the transfer manager met.
            raise StorageError(f"upload of {key} failed: {type(exc).__name__}: {exc}") from None

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        self._call(
            "put", self._client.put_object, Key=self._key(key), Body=data, ContentType=content_type
        )

    def get_bytes(self, key: str) -> bytes:
        answer = self._call("get", self._client.get_object, Key=self._key(key))
        return bytes(answer["Body"].read())

    def download(self, key: str, target: Path) -> None:
        answer = self._call("get", self._client.get_object, Key=self._key(key))
        with open(target, "wb") as out:
            for chunk in answer["Body"].iter_chunks(_CHUNK):
                out.write(chunk)

    def open(self, key: str, range_header: str | None = None) -> ObjectBody:
        kwargs: dict[str, Any] = {"Key": self._key(key)}
        if range_header:
            kwargs["Range"] = range_header
        answer = self._call("get", self._client.get_object, **kwargs)
        meta = answer["ResponseMetadata"]
        headers = {"content-length": str(answer["ContentLength"]), "accept-ranges": "bytes"}
        if answer.get("ContentRange"):
            headers["content-range"] = str(answer["ContentRange"])
        if answer.get("ETag"):
            headers["etag"] = str(answer["ETag"])
        return ObjectBody(
            status=int(meta.get("HTTPStatusCode", 200)),
            headers=headers,
            chunks=answer["Body"].iter_chunks(_CHUNK),
        )

    def presign(self, key: str, seconds: int) -> str:
        url = self._client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._key(key)},
            ExpiresIn=max(1, min(seconds, 7 * 24 * 3600)),  # SigV4 allows a week at most
        )
        return str(url)

    def delete(self, key: str) -> None:
        self._call("delete", self._client.delete_object, Key=self._key(key))

    def local_path(self, key: str) -> Path | None:
        return None

    def check(self) -> None:
        self._call("head bucket", self._client.head_bucket)


def open_blobs(storage_url: str | None, data_dir: Path, endpoint_url: str | None) -> Blobs:
    """The store named by `storage_url` (empty: `data_dir` on this machine)."""
    if not storage_url:
        return LocalBlobs(data_dir)
    parts = urlsplit(storage_url)
    if parts.scheme == "s3" and parts.netloc:
        return S3Blobs(parts.netloc, parts.path, endpoint_url=endpoint_url)
    raise ValueError(f"storage_url must be s3://bucket/prefix or empty, not {storage_url!r}")
