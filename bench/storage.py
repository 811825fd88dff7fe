"""Storing a result: the local data folder against an S3 bucket on loopback, in one run.

    PYTHONPATH=src .venv/bin/python bench/storage.py
    PYTHONPATH=src .venv/bin/python bench/storage.py --runs 10

The file is a real result: the sandbox engine's 1080p, 12-second MP4 (1920x1088, 289 frames),
made once. Each run times `ResultStore.store` as a worker calls it, from the engine's output
file to the stored object: the local store copies, fsyncs and renames; the S3 store uploads
(multipart above 16 MiB) to moto's S3 server, an HTTP S3 implementation run as a separate
process on loopback, so the figure is the client's and the protocol's cost without a network.
The bucket also gets the previews (thumbnail, spritesheet), made from the file, as a worker's
S3 store does; the table shows both the video alone and the video with its previews.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from opendance.engines.base import VideoJob
from opendance.engines.sandbox import SandboxEngine
from opendance.media.blobs import LocalBlobs, S3Blobs
from opendance.media.storage import ResultStore

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Context:
    def __init__(self, folder: Path) -> None:
        self.task_id = "task-unified-1-benchmrk"
        self.work_dir = folder
        self.resume_state = None

    def save_state(self, state: object) -> None:
        pass

    def report_progress(self, fraction: float) -> None:
        pass

    def check_cancel(self) -> None:
        pass

    def is_cancelled(self) -> bool:
        return False


def make_result(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    engine = SandboxEngine("opendance-sandbox")
    job = VideoJob(
        task_id="task-unified-1-benchmrk", prompt="a benchmark", width=1920, height=1088,
        fps=24, frames=289, duration=12, quality="1080p", aspect_ratio="16:9", seed=1,
    )  # fmt: skip
    return engine.generate(job, Context(folder)).path  # type: ignore[arg-type]


def time_store(store: ResultStore, source: Path, runs: int) -> list[float]:
    times = []
    for index in range(runs):
        started = time.perf_counter()
        store.store(f"task-unified-{index + 10}-benchmrk", source)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    os.environ.update(CREDENTIALS)
    port = free_port()
    moto = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ},
    )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                httpx.get(endpoint, timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        with tempfile.TemporaryDirectory(prefix="opendance-bench-") as tmp:
            folder = Path(tmp)
            source = make_result(folder / "work")
            size = source.stat().st_size
            s3 = S3Blobs("bench", "opendance", endpoint_url=endpoint)
            s3._client.create_bucket(Bucket="bench")
            local = ResultStore(LocalBlobs(folder / "data"), b"k" * 32, "http://x")
            bucket = ResultStore(s3, b"k" * 32, "http://x")
            local_times = time_store(local, source, args.runs)
            bucket_times = time_store(bucket, source, args.runs)
            plain = []
            for index in range(args.runs):
                started = time.perf_counter()
                s3.put_file(f"results/raw-{index}.mp4", source, "video/mp4")
                plain.append(time.perf_counter() - started)
    finally:
        moto.kill()
    local_s = statistics.median(local_times)
    print(
        f"# {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; file {size / 1e6:.1f} MB, {args.runs} runs"
    )
    print("| store | median s | vs local |")
    print("| --- | --- | --- |")
    print(f"| local data folder (copy, fsync, rename) | {local_s:.3f} | 1.00x |")
    video = statistics.median(plain)
    print(f"| S3 on loopback, the video | {video:.3f} | {video / local_s:.2f}x |")
    both = statistics.median(bucket_times)
    print(
        f"| S3 on loopback, video + thumbnail + spritesheet | {both:.3f} | {both / local_s:.2f}x |"
    )


if __name__ == "__main__":
    main()
