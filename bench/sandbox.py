"""How long the sandbox engine takes per video, end to end (render + encode + file in place).

    PYTHONPATH=src .venv/bin/python bench/sandbox.py --repeat 5

Prints a markdown table: per quality (16:9) and mode (text-to-video, image-to-video), the median
and fastest wall time for one video, and seconds per megapixel-frame, the unit of the engine's
`estimate_seconds` cost model.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from opendance.engines.base import VideoJob, VideoRequest
from opendance.engines.sandbox import SandboxEngine
from opendance.media.video import probe_mp4

PROMPT = (
    "A golden retriever surfing a turquoise wave at sunset, cinematic slow motion, spray "
    "glittering in the backlight, shot on 35mm film with a shallow depth of field"
)


class BenchContext:
    """An EngineContext that never cancels."""

    def __init__(self, work_dir: Path) -> None:
        self.task_id = "bench"
        self.work_dir = work_dir
        self.resume_state: dict[str, Any] | None = None

    def save_state(self, state: dict[str, Any]) -> None:
        self.resume_state = state

    def report_progress(self, fraction: float) -> None:
        pass

    def check_cancel(self) -> None:
        pass

    def is_cancelled(self) -> bool:
        return False


def sample_image(width: int, height: int) -> Image.Image:
    """A photo-like picture: gradients, shapes, a little text, softened."""
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack(
        [xx * 255 // width, yy * 255 // height, 255 - (xx + yy) * 255 // (width + height)], -1
    ).astype(np.uint8)
    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    for i in range(12):
        x, y = width * i // 12, height // 5 + (i % 3) * height // 6
        draw.ellipse((x, y, x + width // 8, y + height // 5), fill=(250 - i * 20, i * 20, 120))
    draw.text((width // 10, height * 3 // 4), "sample image", fill=(255, 255, 255))
    return image.filter(ImageFilter.GaussianBlur(1.5))


def make_job(
    engine: SandboxEngine, quality: str, duration: int, image: bool, seed: int
) -> VideoJob:
    plan = engine.plan(VideoRequest(PROMPT, duration, quality, "16:9", seed, has_image=image))
    return VideoJob(
        task_id="bench",
        prompt=PROMPT,
        width=plan.width,
        height=plan.height,
        fps=plan.fps,
        frames=plan.frames,
        duration=duration,
        quality=quality,
        aspect_ratio="16:9",
        seed=seed,
        image=sample_image(plan.width, plan.height) if image else None,
    )


def time_one(engine: SandboxEngine, job: VideoJob) -> tuple[float, int]:
    """Seconds for one video, and its file size in bytes."""
    with tempfile.TemporaryDirectory() as scratch:
        ctx = BenchContext(Path(scratch))
        started = time.perf_counter()
        result = engine.generate(job, ctx)
        elapsed = time.perf_counter() - started
        info = probe_mp4(result.path, decode=False)
        assert (info.width, info.height, info.frames) == (job.width, job.height, job.frames)
        return elapsed, result.path.stat().st_size


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description="Time the sandbox engine per video.")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per row")
    parser.add_argument("--duration", type=int, default=5, help="seconds of video")
    parser.add_argument("--qualities", nargs="+", default=["480p", "720p", "1080p"])
    parser.add_argument("--modes", nargs="+", default=["text", "image"], choices=["text", "image"])
    parser.add_argument("--preset", default="ultrafast", help="x264 preset")
    parser.add_argument("--crf", type=int, default=23, help="x264 constant rate factor")
    args = parser.parse_args()

    engine = SandboxEngine(preset=args.preset, crf=args.crf)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"CPU: {cpu_model()}, {cpus} cores usable; Python {platform.python_version()}, "
        f"PyAV {av.__version__}, libavcodec {av.library_versions['libavcodec']}"
    )
    print(
        f"{args.duration} s at 24 fps, 16:9, x264 {args.preset} CRF {args.crf}, "
        f"{args.repeat} runs per row after one warm-up run\n"
    )
    print("| quality | size | mode | frames | median s | min s | s per MP-frame | MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for quality in args.qualities:
        for mode in args.modes:
            job = make_job(engine, quality, args.duration, mode == "image", seed=1)
            _, size = time_one(engine, job)
            runs = [time_one(engine, job)[0] for _ in range(args.repeat)]
            median = statistics.median(runs)
            per_mp_frame = median / (job.width * job.height * job.frames / 1e6)
            print(
                f"| {quality} | {job.width}x{job.height} | {mode} | {job.frames} | "
                f"{median:.2f} | {min(runs):.2f} | {per_mp_frame:.4f} | {size / 2**20:.2f} |"
            )


if __name__ == "__main__":
    main()
