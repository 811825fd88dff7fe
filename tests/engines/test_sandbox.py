"""The sandbox engine, checked on real MP4 files decoded with PyAV."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from opendance.engines.base import (
    EngineError,
    EngineResult,
    TaskCancelled,
    VideoJob,
    VideoPlan,
    VideoRequest,
)
from opendance.engines.sandbox import SandboxEngine, from_options, wrap_text
from opendance.media.video import iter_frames, probe_mp4, read_frame
from tests.helpers.images import mean_abs_error

# The contract's table (docs: seed-api.md, "Resolutions"), written out independently.
CONTRACT_SIZES = {
    ("16:9", "480p"): (864, 480),
    ("16:9", "720p"): (1248, 704),
    ("16:9", "1080p"): (1920, 1088),
    ("4:3", "480p"): (736, 544),
    ("4:3", "720p"): (1120, 832),
    ("4:3", "1080p"): (1664, 1248),
    ("1:1", "480p"): (640, 640),
    ("1:1", "720p"): (960, 960),
    ("1:1", "1080p"): (1440, 1440),
    ("3:4", "480p"): (544, 736),
    ("3:4", "720p"): (832, 1120),
    ("3:4", "1080p"): (1248, 1664),
    ("9:16", "480p"): (480, 864),
    ("9:16", "720p"): (704, 1248),
    ("9:16", "1080p"): (1088, 1920),
    ("21:9", "480p"): (960, 416),
    ("21:9", "720p"): (1504, 640),
    ("21:9", "1080p"): (2176, 928),
}
PROMPT = "A red fox trotting through fresh snow at dawn, soft light, slow pan"


class FakeContext:
    """An EngineContext that records progress and can cancel after `cancel_after` reports."""

    def __init__(self, work_dir: Path, *, cancel_after: int | None = None) -> None:
        work_dir.mkdir(parents=True, exist_ok=True)
        self.task_id = "task-test"
        self.work_dir = work_dir
        self.resume_state: dict[str, Any] | None = None
        self.progress: list[float] = []
        self.cancel_after = cancel_after

    def save_state(self, state: dict[str, Any]) -> None:
        self.resume_state = state

    def report_progress(self, fraction: float) -> None:
        self.progress.append(fraction)
        self.check_cancel()

    def check_cancel(self) -> None:
        if self.is_cancelled():
            raise TaskCancelled()

    def is_cancelled(self) -> bool:
        return self.cancel_after is not None and len(self.progress) >= self.cancel_after


def make_job(
    engine: SandboxEngine,
    *,
    prompt: str = PROMPT,
    duration: int = 2,
    quality: str = "480p",
    ratio: str = "16:9",
    seed: int | None = 7,
    image: Image.Image | None = None,
) -> VideoJob:
    """A job the way the worker builds one: the plan decides the size; the image is fitted."""
    request = VideoRequest(prompt, duration, quality, ratio, seed, has_image=image is not None)
    plan = engine.plan(request, image.size if image is not None else None)
    fitted = image.resize((plan.width, plan.height)) if image is not None else None
    return VideoJob(
        task_id="task-test",
        prompt=prompt,
        width=plan.width,
        height=plan.height,
        fps=plan.fps,
        frames=plan.frames,
        duration=duration,
        quality=quality,
        aspect_ratio=ratio,
        seed=seed,
        image=fitted,
    )


def render(engine: SandboxEngine, job: VideoJob, work_dir: Path) -> EngineResult:
    return engine.generate(job, FakeContext(work_dir))


def all_frames(path: Path) -> np.ndarray:
    return np.stack(list(iter_frames(path)))


def photo_like(width: int, height: int) -> Image.Image:
    """A smooth picture with shapes and text, like a real photo as far as H.264 is concerned."""
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack(
        [xx * 255 // width, yy * 255 // height, 255 - (xx + yy) * 255 // (width + height)], -1
    ).astype(np.uint8)
    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    for i in range(6):
        x, y = width * i // 6, height // 4 + (i % 2) * height // 4
        draw.ellipse((x, y, x + width // 5, y + height // 3), fill=(230 - i * 30, i * 40, 120))
    draw.rectangle((0, 0, width // 3, height // 4), fill=(245, 240, 230))
    draw.text((10, 10), "first frame", fill=(0, 0, 0))
    return image.filter(ImageFilter.GaussianBlur(1))


@pytest.fixture(scope="module")
def engine() -> SandboxEngine:
    return SandboxEngine()


@pytest.fixture(scope="module")
def text_video(engine: SandboxEngine, tmp_path_factory: pytest.TempPathFactory) -> EngineResult:
    """One 2 s 480p text-to-video render, shared by the read-only checks below."""
    return render(engine, make_job(engine), tmp_path_factory.mktemp("text"))


# -- plan -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("ratio", "quality"), sorted(CONTRACT_SIZES))
def test_plan_gives_the_contract_size_for_every_ratio_and_quality(
    engine: SandboxEngine, ratio: str, quality: str
) -> None:
    plan = engine.plan(VideoRequest(PROMPT, 5, quality, ratio))

    assert plan == VideoPlan(*CONTRACT_SIZES[ratio, quality], 24, 120, "opendance-sandbox")


@pytest.mark.parametrize(
    ("image_size", "ratio", "expected"),
    [
        ((1000, 1000), "adaptive", (640, 640)),
        ((1600, 900), "adaptive", (864, 480)),
        ((900, 1600), "adaptive", (480, 864)),
        ((1300, 1000), "adaptive", (736, 544)),
        ((1200, 400), "keep_ratio", (1120, 368)),
        ((1600, 900), "4:3", (736, 544)),
    ],
)
def test_plan_for_image_to_video_follows_the_image(
    engine: SandboxEngine, image_size: tuple[int, int], ratio: str, expected: tuple[int, int]
) -> None:
    plan = engine.plan(VideoRequest(PROMPT, 2, "480p", ratio, has_image=True), image_size)

    assert (plan.width, plan.height, plan.frames) == (*expected, 48)


def test_plan_refuses_image_only_ratios_without_an_image(engine: SandboxEngine) -> None:
    with pytest.raises(EngineError) as caught:
        engine.plan(VideoRequest(PROMPT, 5, "720p", "adaptive"))
    assert caught.value.code == "invalid_aspect_ratio"


def test_estimate_grows_with_pixels_and_duration(engine: SandboxEngine) -> None:
    small = engine.estimate_seconds(engine.plan(VideoRequest(PROMPT, 5, "480p", "16:9")))
    large = engine.estimate_seconds(engine.plan(VideoRequest(PROMPT, 5, "1080p", "16:9")))
    longer = engine.estimate_seconds(engine.plan(VideoRequest(PROMPT, 10, "1080p", "16:9")))

    assert 0 < small < large < longer


def test_from_options_builds_a_configured_engine() -> None:
    engine = from_options({"model": "sandbox-x", "crf": 30, "preset": "superfast"})

    assert engine.model_name == "sandbox-x"
    assert engine.plan(VideoRequest(PROMPT, 2, "480p", "1:1")).model == "sandbox-x"
    with pytest.raises(ValueError, match="unknown"):
        from_options({"unknown": 1})


# -- text-to-video --------------------------------------------------------------------------------


def test_text_video_is_a_real_h264_mp4_of_the_planned_size(text_video: EngineResult) -> None:
    info = probe_mp4(text_video.path)

    assert (info.width, info.height, info.fps, info.frames) == (864, 480, 24.0, 48)
    assert info.codec == "h264"
    assert info.duration_seconds == pytest.approx(2.0)
    assert (text_video.width, text_video.height, text_video.fps, text_video.frames) == (
        864,
        480,
        24,
        48,
    )
    assert text_video.model == "opendance-sandbox"
    assert text_video.path.parent.name.startswith("text")


def test_text_video_moves(text_video: EngineResult) -> None:
    frames = all_frames(text_video.path)

    for earlier, later in zip(frames, frames[1:], strict=False):
        assert not np.array_equal(earlier, later)
    # Beyond the counter and the progress bar, the picture itself changes: a share of the
    # pixels (grid lines, the disc) moves by clearly more than codec noise.
    body = (slice(60, 440), slice(0, 600))
    change = np.abs(frames[0][body].astype(np.int16) - frames[24][body]).max(axis=-1)
    assert float((change > 10).mean()) > 0.03


@pytest.mark.parametrize("ratio", ["9:16", "1:1", "21:9", "3:4"])
def test_renders_have_the_exact_contract_size(
    engine: SandboxEngine, tmp_path: Path, ratio: str
) -> None:
    result = render(engine, make_job(engine, ratio=ratio), tmp_path)

    info = probe_mp4(result.path)
    assert (info.width, info.height) == CONTRACT_SIZES[ratio, "480p"]
    assert info.frames == 48


def test_a_1080p_render_has_the_exact_size_and_frame_count(
    engine: SandboxEngine, tmp_path: Path
) -> None:
    result = render(engine, make_job(engine, quality="1080p", duration=3), tmp_path)

    info = probe_mp4(result.path)
    assert (info.width, info.height, info.fps, info.frames) == (1920, 1088, 24.0, 72)


def test_same_prompt_and_seed_give_identical_frames(
    engine: SandboxEngine, text_video: EngineResult, tmp_path: Path
) -> None:
    again = render(engine, make_job(engine), tmp_path)

    assert np.array_equal(all_frames(again.path), all_frames(text_video.path))


@pytest.mark.parametrize(
    "change", [{"seed": 8}, {"seed": None}, {"prompt": "A blue whale in deep water"}]
)
def test_another_seed_or_prompt_gives_different_frames(
    engine: SandboxEngine, text_video: EngineResult, tmp_path: Path, change: dict[str, Any]
) -> None:
    other = render(engine, make_job(engine, **change), tmp_path)

    reference = all_frames(text_video.path)
    frames = all_frames(other.path)
    assert frames.shape == reference.shape
    assert mean_abs_error(frames[0], reference[0]) > 5


def test_without_a_seed_the_prompt_alone_fixes_the_video(
    engine: SandboxEngine, tmp_path: Path
) -> None:
    first = render(engine, make_job(engine, seed=None, duration=1), tmp_path / "a")
    second = render(engine, make_job(engine, seed=None, duration=1), tmp_path / "b")

    assert np.array_equal(all_frames(first.path), all_frames(second.path))


def test_long_and_non_ascii_prompts_render(engine: SandboxEngine, tmp_path: Path) -> None:
    prompt = "Caf\u00e9 \u2014 \u732b " + "supercalifragilistic" * 20 + " word" * 400
    result = render(engine, make_job(engine, prompt=prompt, duration=1), tmp_path)

    assert probe_mp4(result.path).frames == 24


# -- progress and cancel --------------------------------------------------------------------------


def test_progress_rises_to_one_at_least_every_twelve_frames(
    engine: SandboxEngine, tmp_path: Path
) -> None:
    ctx = FakeContext(tmp_path)
    engine.generate(make_job(engine, duration=3), ctx)

    assert ctx.progress == sorted(set(ctx.progress))
    assert ctx.progress[-1] == 1.0
    assert all(0 < fraction <= 1 for fraction in ctx.progress)
    assert len(ctx.progress) >= 72 // 12


def test_cancel_mid_render_raises_and_leaves_no_file(engine: SandboxEngine, tmp_path: Path) -> None:
    ctx = FakeContext(tmp_path, cancel_after=2)

    with pytest.raises(TaskCancelled):
        engine.generate(make_job(engine, duration=4), ctx)

    assert len(ctx.progress) == 2
    assert list(tmp_path.iterdir()) == []


def test_cancel_before_start_writes_nothing(engine: SandboxEngine, tmp_path: Path) -> None:
    ctx = FakeContext(tmp_path, cancel_after=0)

    with pytest.raises(TaskCancelled):
        engine.generate(make_job(engine), ctx)

    assert ctx.progress == []
    assert list(tmp_path.iterdir()) == []


# -- image-to-video -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_video(
    engine: SandboxEngine, tmp_path_factory: pytest.TempPathFactory
) -> tuple[VideoJob, EngineResult]:
    job = make_job(engine, image=photo_like(1200, 700), ratio="adaptive")
    return job, render(engine, job, tmp_path_factory.mktemp("image"))


def test_image_is_the_first_frame(image_video: tuple[VideoJob, EngineResult]) -> None:
    job, result = image_video
    assert job.image is not None
    image = np.asarray(job.image)

    first = read_frame(result.path, 0)

    assert first.shape == (480, 864, 3)
    assert mean_abs_error(first, image) < 6
    corner = (slice(0, 120), slice(0, 300))  # where the sandbox badge appears later
    assert mean_abs_error(first[corner], image[corner]) < 6


def test_image_video_moves_and_is_labelled_after_the_first_frame(
    image_video: tuple[VideoJob, EngineResult],
) -> None:
    job, result = image_video
    assert job.image is not None
    image = np.asarray(job.image)
    frames = all_frames(result.path)

    assert len(frames) == 48
    centre = (slice(120, 420), slice(200, 700))
    assert mean_abs_error(frames[47][centre], image[centre]) > 3
    corner = (slice(0, 40), slice(0, 200))
    assert mean_abs_error(frames[1][corner], image[corner]) > 10


def test_keep_ratio_renders_a_narrow_image_at_its_own_ratio(
    engine: SandboxEngine, tmp_path: Path
) -> None:
    job = make_job(engine, image=photo_like(400, 1500), ratio="keep_ratio", duration=1)

    result = render(engine, job, tmp_path)

    info = probe_mp4(result.path)
    assert (info.width, info.height, info.frames) == (336, 1248, 24)
    assert job.image is not None
    assert mean_abs_error(read_frame(result.path, 0), np.asarray(job.image)) < 6


def test_image_video_is_deterministic(
    engine: SandboxEngine, image_video: tuple[VideoJob, EngineResult], tmp_path: Path
) -> None:
    job, result = image_video

    again = render(engine, job, tmp_path)

    assert np.array_equal(all_frames(again.path), all_frames(result.path))


# -- text layout ----------------------------------------------------------------------------------


def test_wrap_text_fits_lines_to_the_width() -> None:
    from PIL import ImageFont

    font = ImageFont.load_default(size=20)
    text = "the quick brown fox jumps over the lazy dog " * 5

    lines = wrap_text(text.strip(), font, 200, max_lines=50)

    assert all(font.getlength(line) <= 200 for line in lines)
    assert " ".join(lines) == text.strip()


def test_wrap_text_splits_long_words_and_ends_with_an_ellipsis() -> None:
    from PIL import ImageFont

    font = ImageFont.load_default(size=20)

    lines = wrap_text("x" * 200 + " tail", font, 150, max_lines=3)

    assert len(lines) == 3
    assert all(font.getlength(line) <= 150 for line in lines)
    assert lines[-1].endswith("\u2026")
