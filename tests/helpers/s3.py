"""A real S3 endpoint on loopback for the storage tests: moto's S3 server, run as a process.

It speaks the S3 HTTP API (SigV4, multipart uploads, ranged GETs, presigned URLs), so the
server's boto3 client talks to it exactly as to AWS or MinIO. It can be stopped and started
again on the same port, to test a store that goes away mid-run (moto keeps its objects in
memory: a restart starts empty, so tests that restart it recreate the bucket).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.helpers.servers import free_port

#: Credentials moto accepts (any); set for the server's boto3 through the environment.
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class S3Server:
    port: int = field(default_factory=free_port)
    bucket: str = field(default_factory=lambda: f"od-{uuid.uuid4().hex[:12]}")
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def storage_url(self) -> str:
        return f"s3://{self.bucket}/opendance"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **S3_ENV},
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "moto's S3 server exited"
            try:
                httpx.get(self.endpoint, timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        self.client().create_bucket(Bucket=self.bucket)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
            region_name=S3_ENV["AWS_DEFAULT_REGION"],
        )

    def object_keys(self) -> list[str]:
        listed = self.client().list_objects_v2(Bucket=self.bucket)
        return sorted(item["Key"] for item in listed.get("Contents", []))

    def settings(self) -> dict[str, str]:
        """The server settings that put results and uploads in this bucket."""
        return {"storage_url": self.storage_url, "s3_endpoint_url": self.endpoint}
