"""The diffusers engine on tiny random-weight pipelines, loaded from a folder like real weights.

Each tiny pipeline is built and saved once per session (tests/helpers/pipelines.py); every
engine then loads it with `from_pretrained(folder)`. Jobs are 9 frames at 128x128 with 3 steps.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from PIL import Image

from opendance.engines.base import (
    EngineError,
    TaskCancelled,
    VideoJob,
    VideoPlan,
    VideoRequest,
)
from opendance.engines.diffusers import DiffusersEngine, DiffusersOptions
from opendance.engines.diffusers.family import (
    frames_for,
    plan_video,
)
from opendance.engines.diffusers.loading import detect_family
from opendance.engines.diffusers.ltx import LTX_RULES
from opendance.engines.diffusers.wan import WAN21_RULES, WAN22_TI2V_RULES
from opendance.media.sizes import NAMED_RATIOS, QUALITIES
from tests.helpers import pipelines

SRC = Path(__file__).resolve().parents[2] / "src"


class RecordingContext:
    """An EngineContext that records progress and cancels after `cancel_after` reports."""

    def __init__(self, work_dir: Path, cancel_after: int | None = None) -> None:
        self._work_dir = work_dir
        self.cancel_after = cancel_after
        self.progress: list[float] = []

    @property
    def task_id(self) -> str:
        return "task"

    @property
    def work_dir(self) -> Path:
        return self._work_dir

    @property
    def resume_state(self) -> dict[str, Any] | None:
        return None

    def save_state(self, state: dict[str, Any]) -> None:
        pass

    def is_cancelled(self) -> bool:
        return self.cancel_after is not None and len(self.progress) >= self.cancel_after

    def check_cancel(self) -> None:
        if self.is_cancelled():
            raise TaskCancelled("cancelled")

    def report_progress(self, fraction: float) -> None:
        self.check_cancel()
        self.progress.append(fraction)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Folder of a tiny saved pipeline by name, built on first use."""
    pytest.importorskip("diffusers")
    built: dict[str, Path] = {}
    lock = threading.Lock()

    def get(name: str) -> Path:
        with lock:
            if name not in built:
                folder = tmp_path_factory.mktemp(name)
                built[name] = pipelines.BUILDERS[name](folder)
            return built[name]

    return get


@pytest.fixture
def make_engine(tiny_model: Callable[[str], Path]) -> Iterator[Callable[..., DiffusersEngine]]:
    engines: list[DiffusersEngine] = []

    def make(name: str, **overrides: Any) -> DiffusersEngine:
        options = pipelines.engine_options(name, tiny_model(name), **overrides)
        engine = DiffusersEngine(options)
        engine.start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


def request(
    *, seed: int | None = 7, image: bool = False, prompt: str = "a fox in the snow"
) -> VideoRequest:
    return VideoRequest(
        prompt=prompt,
        duration=5,
        quality="480p",
        aspect_ratio="16:9",
        seed=seed,
        has_image=image,
    )


def job_for(engine: DiffusersEngine, req: VideoRequest) -> VideoJob:
    plan = engine.plan(req)
    image = None
    if req.has_image:
        gradient = np.linspace(0, 255, plan.width * plan.height * 3).astype(np.uint8)
        image = Image.fromarray(gradient.reshape(plan.height, plan.width, 3))
    return VideoJob(
        task_id="task",
        prompt=req.prompt,
        width=plan.width,
        height=plan.height,
        fps=plan.fps,
        frames=plan.frames,
        duration=req.duration,
        quality=req.quality,
        aspect_ratio=req.aspect_ratio,
        seed=req.seed,
        image=image,
    )


def decode(path: Path) -> tuple[np.ndarray, float]:
    """All frames of an MP4 (PyAV) and its frame rate."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        return np.stack(frames), float(stream.average_rate or 0)


def count_calls(module: Any) -> list[int]:
    calls = [0]

    def hook(*_: Any) -> None:
        calls[0] += 1

    module.register_forward_hook(hook)
    return calls


# -- plan(): what each family really makes -------------------------------------------------


@pytest.mark.parametrize(
    ("rules", "quality", "ratio", "size"),
    [
        (WAN21_RULES, "480p", "16:9", (832, 480)),
        (WAN21_RULES, "480p", "9:16", (480, 832)),
        (WAN21_RULES, "720p", "16:9", (1280, 720)),
        (WAN21_RULES, "1080p", "16:9", (1280, 720)),
        (WAN21_RULES, "480p", "1:1", (624, 624)),
        (WAN22_TI2V_RULES, "720p", "16:9", (1280, 704)),
        (WAN22_TI2V_RULES, "720p", "9:16", (704, 1280)),
        (WAN22_TI2V_RULES, "480p", "16:9", (1280, 704)),
        (LTX_RULES, "480p", "16:9", (832, 480)),
        (LTX_RULES, "720p", "16:9", (1280, 704)),
    ],
)
def test_plan_picks_the_models_native_sizes(
    rules: Any, quality: str, ratio: str, size: tuple[int, int]
) -> None:
    req = VideoRequest(prompt="p", duration=5, quality=quality, aspect_ratio=ratio)
    shape = plan_video(rules, req)
    assert (shape.width, shape.height) == size


@pytest.mark.parametrize("rules", [WAN21_RULES, WAN22_TI2V_RULES, LTX_RULES])
@pytest.mark.parametrize("quality", QUALITIES)
@pytest.mark.parametrize("ratio", NAMED_RATIOS)
def test_every_planned_size_follows_the_models_rules(rules: Any, quality: str, ratio: str) -> None:
    req = VideoRequest(prompt="p", duration=5, quality=quality, aspect_ratio=ratio)
    shape = plan_video(rules, req)
    assert shape.width % rules.spatial_multiple == 0
    assert shape.height % rules.spatial_multiple == 0
    wanted = int(ratio.split(":")[0]) / int(ratio.split(":")[1])
    assert abs(shape.width / shape.height - wanted) / wanted < 0.08
    largest = max(w * h for w, h in rules.native_sizes.values())
    assert shape.width * shape.height <= largest * 1.05
    assert (shape.frames - 1) % rules.frame_step == 0
    assert shape.fps == rules.fps


@pytest.mark.parametrize(
    ("rules", "duration", "frames"),
    [
        (WAN21_RULES, 5, 81),
        (WAN21_RULES, 2, 33),
        (WAN21_RULES, 10, 81),
        (WAN22_TI2V_RULES, 5, 121),
        (WAN22_TI2V_RULES, 3, 73),
        (WAN22_TI2V_RULES, 10, 121),
        (LTX_RULES, 5, 121),
        (LTX_RULES, 2, 49),
        (LTX_RULES, 10, 241),
        (LTX_RULES, 12, 257),
    ],
)
def test_duration_maps_to_the_frame_rule_at_native_fps(
    rules: Any, duration: int, frames: int
) -> None:
    assert frames_for(rules, duration) == frames


def test_max_frames_and_size_override_cap_the_plan() -> None:
    req = VideoRequest(prompt="p", duration=5, quality="720p", aspect_ratio="16:9")
    assert frames_for(WAN21_RULES, 5, cap=40) == 37
    assert frames_for(LTX_RULES, 5, cap=20) == 17
    shape = plan_video(LTX_RULES, req, size_override=(100, 70), max_frames=9)
    assert (shape.width, shape.height, shape.frames) == (96, 64, 9)
    assert plan_video(WAN21_RULES, req, max_quality="480p").width == 832


def test_keep_ratio_follows_the_image() -> None:
    req = VideoRequest(prompt="p", duration=5, quality="480p", aspect_ratio="adaptive")
    portrait = plan_video(WAN21_RULES, req, image_size=(600, 1000))
    assert portrait.width < portrait.height
    assert abs(portrait.width / portrait.height - 0.6) < 0.05
    assert portrait.width % 16 == 0 and portrait.height % 16 == 0


@pytest.mark.parametrize(
    ("index", "family"),
    [
        ({"_class_name": "WanPipeline", "expand_timesteps": False}, "wan21"),
        ({"_class_name": "WanImageToVideoPipeline"}, "wan21"),
        ({"_class_name": "WanPipeline", "expand_timesteps": True}, "wan22_ti2v"),
        ({"_class_name": "LTXPipeline"}, "ltx"),
        ({"_class_name": "LTXImageToVideoPipeline"}, "ltx"),
    ],
)
def test_family_detected_from_model_index(index: dict[str, Any], family: str) -> None:
    assert detect_family(index) == family


def test_unknown_pipeline_class_is_refused() -> None:
    with pytest.raises(EngineError) as caught:
        detect_family({"_class_name": "StableDiffusionPipeline"})
    assert caught.value.code == "unsupported_model"


def test_options_reject_unknown_fields_and_devices() -> None:
    with pytest.raises(ValueError):
        DiffusersOptions.model_validate({"model": "m", "speed": "fast"})
    with pytest.raises(ValueError):
        DiffusersOptions.model_validate({"model": "m", "device": "tpu"})
    assert DiffusersOptions(model="m", device="cuda:1").device == "cuda:1"


def test_plans_before_start_from_the_folder(tiny_model: Callable[[str], Path]) -> None:
    folder = tiny_model("wan21")
    engine = DiffusersEngine({"model": str(folder)})
    plan = engine.plan(request())
    assert plan == VideoPlan(832, 480, 16, 81, folder.name)
    assert engine.estimate_seconds(plan) > 0
    with pytest.raises(EngineError) as caught:
        engine.plan(request(image=True))
    assert caught.value.code == "image_to_video_unsupported"


def test_package_imports_and_plans_without_torch(tmp_path: Path) -> None:
    (tmp_path / "model_index.json").write_text(
        json.dumps({"_class_name": "LTXPipeline", "_diffusers_version": "0.42.1"})
    )
    script = f"""
import sys
sys.modules["torch"] = None
sys.modules["diffusers"] = None
from opendance.engines.base import EngineError, VideoRequest
from opendance.engines.diffusers import DiffusersEngine
engine = DiffusersEngine({{"model": {str(tmp_path)!r}}})
plan = engine.plan(VideoRequest(prompt="p", duration=5, quality="720p", aspect_ratio="16:9"))
print(plan.width, plan.height, plan.frames)
try:
    engine.start()
except EngineError as exc:
    print(exc.code)
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC)},
        check=True,
    )
    assert result.stdout.split() == ["1280", "704", "121", "engine_unavailable"]


# -- generate(): real pipelines, loaded from a folder ----------------------------------------


def test_progress_rises_once_per_step_and_mp4_matches_the_plan(
    make_engine: Callable[..., DiffusersEngine], tmp_path: Path
) -> None:
    engine = make_engine("wan21")
    job = job_for(engine, request())
    ctx = RecordingContext(tmp_path)
    result = engine.generate(job, ctx)

    assert len(ctx.progress) == 3
    assert ctx.progress == sorted(set(ctx.progress))
    assert ctx.progress[0] > 0 and ctx.progress[-1] <= 1
    frames, fps = decode(result.path)
    assert result.path.parent == tmp_path
    assert frames.shape == (job.frames, job.height, job.width, 3)
    assert (result.width, result.height, result.frames, result.fps) == (128, 128, 9, 16)
    assert fps == result.fps == job.fps
    assert result.model == "tiny-wan21"
    assert result.usage["seed"] == 7


def test_cancel_stops_at_the_next_step_without_decoding(
    make_engine: Callable[..., DiffusersEngine], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine("wan21", num_inference_steps=4)
    pipe = engine._pipes["t2v"]
    calls = count_calls(pipe.transformer.proj_out)
    decodes = [0]
    decode_latents = pipe.vae.decode

    def counting_decode(*args: Any, **kwargs: Any) -> Any:
        decodes[0] += 1
        return decode_latents(*args, **kwargs)

    monkeypatch.setattr(pipe.vae, "decode", counting_decode)
    job = job_for(engine, request())

    engine.generate(job, RecordingContext(tmp_path))
    calls_per_step = calls[0] / 4
    assert decodes[0] == 1
    calls[0] = decodes[0] = 0

    cancelled_dir = tmp_path / "cancelled"
    cancelled_dir.mkdir()
    ctx = RecordingContext(cancelled_dir, cancel_after=1)
    with pytest.raises(TaskCancelled) as caught:
        engine.generate(job, ctx)
    assert len(ctx.progress) == 1
    assert calls[0] == 2 * calls_per_step
    assert decodes[0] == 0
    assert list(cancelled_dir.iterdir()) == []
    # A fresh exception: no traceback chain keeps the pipeline's tensors alive.
    assert caught.value.__context__ is None


def test_engine_is_clean_after_a_cancel(
    make_engine: Callable[..., DiffusersEngine], tmp_path: Path
) -> None:
    engine = make_engine("wan21", cache="first_block", cache_threshold=0.5)
    job = job_for(engine, request())
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    before = decode(engine.generate(job, RecordingContext(tmp_path / "a")).path)[0]
    with pytest.raises(TaskCancelled):
        engine.generate(job, RecordingContext(tmp_path, cancel_after=1))
    after = decode(engine.generate(job, RecordingContext(tmp_path / "b")).path)[0]
    np.testing.assert_array_equal(before, after)


def test_same_seed_same_frames_other_seed_other_frames(
    make_engine: Callable[..., DiffusersEngine], tmp_path: Path
) -> None:
    engine = make_engine("wan21")
    videos = []
    for index, seed in enumerate([11, 11, 12]):
        work = tmp_path / str(index)
        work.mkdir()
        result = engine.generate(job_for(engine, request(seed=seed)), RecordingContext(work))
        videos.append(decode(result.path)[0])
    np.testing.assert_array_equal(videos[0], videos[1])
    assert np.abs(videos[0].astype(int) - videos[2].astype(int)).mean() > 0.1


def test_no_seed_picks_one_and_reports_it(
    make_engine: Callable[..., DiffusersEngine], tmp_path: Path
) -> None:
    engine = make_engine("wan21")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = engine.generate(job_for(engine, request(seed=None)), RecordingContext(tmp_path / "a"))
    seed = first.usage["seed"]
    again = engine.generate(job_for(engine, request(seed=seed)), RecordingContext(tmp_path / "b"))
    np.testing.assert_array_equal(decode(first.path)[0], decode(again.path)[0])


def test_batched_guidance_matches_the_two_pass_pipeline(
    make_engine: Callable[..., DiffusersEngine], tmp_path: Path
) -> None:
    batched = make_engine("wan21", batch_cfg=True)
    plain = make_engine("wan21", batch_cfg=False)
    assert batched.applied["batch_cfg"] and not plain.applied["batch_cfg"]
    # proj_out runs once per real transformer forward (the pipeline-level call count stays 2).
    batched_calls = count_calls(batched._pipes["t2v"].transformer.proj_out)
    plain_calls = count_calls(plain._pipes["t2v"].transformer.proj_out)
    outputs = []
    for index, engine in enumerate([batched, plain]):
        work = tmp_path / str(index)
        work.mkdir()
        result = engine.generate(job_for(engine, request()), RecordingContext(work))
        outputs.append(decode(result.path)[0].astype(int))
    assert (batched_calls[0], plain_calls[0]) == (3, 6)
    assert np.abs(outputs[0] - outputs[1]).max() <= 2


def test_different_prompts_give_different_videos(
    make_engine: Callable[..., DiffusersEngine], tmp_path: Path
) -> None:
    engine = make_engine("wan21", guidance_scale=1.0)
    videos = []
    for index, prompt in enumerate(["a red fox", "a blue whale"]):
        work = tmp_path / str(index)
        work.mkdir()
        result = engine.generate(job_for(engine, request(prompt=prompt)), RecordingContext(work))
        videos.append(decode(result.path)[0].astype(int))
    assert np.abs(videos[0] - videos[1]).max() > 0


@pytest.mark.parametrize(
    ("name", "image", "size", "fps"),
    [
        ("wan22_ti2v", False, (128, 128), 24),
        ("wan22_ti2v", True, (128, 128), 24),
        ("ltx", False, (128, 128), 24),
        ("ltx", True, (128, 128), 24),
        ("wan21_i2v", True, (128, 128), 16),
    ],
)
def test_text_and_image_to_video_for_every_family(
    make_engine: Callable[..., DiffusersEngine],
    tmp_path: Path,
    name: str,
    image: bool,
    size: tuple[int, int],
    fps: int,
) -> None:
    engine = make_engine(name)
    job = job_for(engine, request(image=image))
    ctx = RecordingContext(tmp_path)
    result = engine.generate(job, ctx)
    frames, video_fps = decode(result.path)
    assert frames.shape == (9, size[1], size[0], 3)
    assert (result.width, result.height, result.frames, result.fps) == (*size, 9, fps)
    assert video_fps == fps
    assert len(ctx.progress) == 3


def test_image_first_frame_conditions_the_video(
    make_engine: Callable[..., DiffusersEngine], tmp_path: Path
) -> None:
    engine = make_engine("wan22_ti2v")
    job = job_for(engine, request(image=True))
    (tmp_path / "t").mkdir()
    (tmp_path / "i").mkdir()
    with_image = decode(engine.generate(job, RecordingContext(tmp_path / "i")).path)[0]
    text_job = job_for(engine, request())
    text_only = decode(engine.generate(text_job, RecordingContext(tmp_path / "t")).path)[0]
    assert np.abs(with_image[0].astype(int) - text_only[0].astype(int)).mean() > 1


def test_image_to_video_model_requires_an_image(
    make_engine: Callable[..., DiffusersEngine],
) -> None:
    engine = make_engine("wan21_i2v")
    with pytest.raises(EngineError) as caught:
        engine.plan(request())
    assert caught.value.code == "image_required"


def test_warm_up_runs_at_start(tiny_model: Callable[[str], Path]) -> None:
    import torch

    options = pipelines.engine_options(
        "ltx", tiny_model("ltx"), warmup=[{"quality": "480p"}, {"image": True}]
    )
    engine = DiffusersEngine(options)
    transformer_calls = [0]

    def count(module: Any, *_: Any) -> None:
        if type(module).__name__ == "LTXVideoTransformer3DModel":
            transformer_calls[0] += 1

    handle = torch.nn.modules.module.register_module_forward_hook(count)
    try:
        engine.start()
    finally:
        handle.remove()
    # Two shapes, two steps each; LTX batches guidance, so one call per step.
    assert transformer_calls[0] == 2 * 2


def test_generate_before_start_is_refused(
    tiny_model: Callable[[str], Path], tmp_path: Path
) -> None:
    engine = DiffusersEngine({"model": str(tiny_model("ltx"))})
    job = VideoJob("t", "p", 128, 128, 24, 9, 5, "480p", "16:9")
    with pytest.raises(EngineError) as caught:
        engine.generate(job, RecordingContext(tmp_path))
    assert caught.value.code == "engine_not_started"


def test_estimate_grows_with_the_video(make_engine: Callable[..., DiffusersEngine]) -> None:
    engine = make_engine("wan21", size_override=None, max_frames=None)
    small = engine.plan(request())
    large = engine.plan(VideoRequest(prompt="p", duration=5, quality="720p", aspect_ratio="16:9"))
    assert engine.estimate_seconds(large) > 2 * engine.estimate_seconds(small) > 0
