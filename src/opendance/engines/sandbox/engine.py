"""The sandbox `Engine`: options, planning, the time estimate, and the render-and-encode loop.

It is the part of the sandbox the server sees; what each frame shows lives in `scenes`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

from opendance.engines.base import (
    Engine,
    EngineContext,
    EngineError,
    EngineResult,
    VideoJob,
    VideoPlan,
    VideoRequest,
)
from opendance.engines.sandbox.scenes import _ImageScene, _Scene, _TextScene
from opendance.engines.sandbox.text import _FontMaker
from opendance.media import sizes
from opendance.media.video import Mp4Writer

OUTPUT_NAME: Final[str] = "video.mp4"
PROGRESS_EVERY: Final[int] = 12
# From bench/sandbox.py on a 2-core Xeon (docs/bench/sandbox.md): image-to-video, the slower
# path, costs about 0.008 s per megapixel-frame; text-to-video about 0.003.
SECONDS_PER_MEGAPIXEL_FRAME: Final[float] = 0.008
SETUP_SECONDS: Final[float] = 0.05
TEXT_TO_VIDEO_COST_RATIO: Final[float] = 0.4


class SandboxEngine(Engine):
    """Renders labelled test videos on the CPU: text-to-video and image-to-video."""

    kind = "sandbox"

    def __init__(
        self,
        model: str = "opendance-sandbox",
        *,
        crf: int = 23,
        preset: str = "ultrafast",
        threads: int = 0,
        font_path: str | os.PathLike[str] | None = None,
        seconds_per_megapixel_frame: float = SECONDS_PER_MEGAPIXEL_FRAME,
    ) -> None:
        """`font_path` is a TrueType font to draw prompts with (e.g. one with CJK glyphs);
        without it Pillow's built-in font is used, which has Latin letters only."""
        self._model = model
        self._crf = crf
        self._preset = preset
        self._threads = threads
        self._font_path = font_path
        self._seconds_per_megapixel_frame = seconds_per_megapixel_frame

    @property
    def model_name(self) -> str:
        return self._model

    def plan(self, request: VideoRequest, image_size: tuple[int, int] | None = None) -> VideoPlan:
        width, height = plan_size(request.quality, request.aspect_ratio, image_size)
        return VideoPlan(
            width=width,
            height=height,
            fps=sizes.FPS,
            frames=request.duration * sizes.FPS,
            model=self._model,
            has_image=request.has_image or image_size is not None,
        )

    def estimate_seconds(self, plan: VideoPlan) -> float:
        """From the benchmark: image-to-video (a zoom per frame) costs about 2.5x text-to-video."""
        megapixel_frames = plan.width * plan.height * plan.frames / 1e6
        rate = self._seconds_per_megapixel_frame
        if not plan.has_image:
            rate *= TEXT_TO_VIDEO_COST_RATIO
        return SETUP_SECONDS + megapixel_frames * rate

    def generate(self, job: VideoJob, ctx: EngineContext) -> EngineResult:
        if job.frames <= 0 or job.width % 2 or job.height % 2:
            raise EngineError(
                "invalid_job", f"cannot render {job.frames} frames at {job.width}x{job.height}"
            )
        ctx.check_cancel()
        fonts = _FontMaker(self._font_path)
        scene: _Scene
        if job.image is not None:
            scene = _ImageScene(job, job.image, fonts)
        else:
            scene = _TextScene(job, fonts, model=self._model)
        path = Path(ctx.work_dir) / OUTPUT_NAME
        with Mp4Writer(
            path,
            job.width,
            job.height,
            job.fps,
            crf=self._crf,
            preset=self._preset,
            threads=self._threads,
        ) as writer:
            for index in range(job.frames):
                frame, planes = writer.new_frame()
                scene.render(index, planes)
                writer.write_frame(frame)
                done = index + 1
                if done % PROGRESS_EVERY == 0 and done < job.frames:
                    ctx.report_progress(done / job.frames)
        ctx.report_progress(1.0)
        return EngineResult(
            path=path,
            width=job.width,
            height=job.height,
            fps=job.fps,
            frames=writer.frames_written,
            model=self._model,
        )


class SandboxOptions(BaseModel):
    """A sandbox route entry; every field is optional."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(default="opendance-sandbox", min_length=1, description="Reported model")
    crf: int = Field(default=23, ge=0, le=51, description="x264 constant rate factor")
    preset: str = Field(default="ultrafast", description="x264 preset")
    threads: int = Field(default=0, ge=0, description="Encoder threads; 0 picks per CPU")
    font_path: str | None = Field(default=None, description="TrueType font for the prompt")
    seconds_per_megapixel_frame: float = Field(
        default=SECONDS_PER_MEGAPIXEL_FRAME, gt=0, description="Cost model for estimated_time"
    )


def from_options(options: dict[str, Any]) -> SandboxEngine:
    """Build the engine from a route's options (see `SandboxOptions`)."""
    settings = SandboxOptions.model_validate(options)
    return SandboxEngine(
        settings.model,
        crf=settings.crf,
        preset=settings.preset,
        threads=settings.threads,
        font_path=settings.font_path,
        seconds_per_megapixel_frame=settings.seconds_per_megapixel_frame,
    )


def plan_size(quality: str, ratio: str, image_size: tuple[int, int] | None) -> tuple[int, int]:
    """The contract's size for a quality and ratio; image-only ratios follow the image."""
    if ratio in sizes.IMAGE_ONLY_RATIOS:
        if image_size is None:
            raise EngineError(
                "invalid_aspect_ratio", f"aspect_ratio {ratio!r} needs an input image"
            )
        if ratio == "adaptive":
            return sizes.size_for(quality, sizes.nearest_named_ratio(*image_size))
        return sizes.keep_ratio_size(quality, *image_size)
    return sizes.size_for(quality, ratio)
