"""The Ark and evolink engines and failover, against fake upstream servers on loopback."""

from __future__ import annotations

import base64
import io
import json
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from opendance.engines.base import (
    Engine,
    EngineContext,
    EngineError,
    EngineResult,
    TaskCancelled,
    VideoJob,
    VideoPlan,
    VideoRequest,
)
from opendance.engines.failover import FailoverEngine
from opendance.engines.upstream.ark import ArkEngine, ArkOptions, defuse_text_commands, from_options
from opendance.engines.upstream.evolink import EvolinkEngine, EvolinkOptions
from tests.helpers.upstreams import FakeArk, FakeEvolink, FakeUpstream, Scripted, make_mp4

ARK_KEY = "ark-secret-key-0123456789abcdef"
EVOLINK_KEY = "sk-evolink-secret-fedcba9876543210"
EVOLINK_MODEL = "evolink/doubao-seedance-1.0-pro-fast"


class SimulatedCrash(BaseException):
    """Stands in for kill -9: nothing in the engine may catch it or clean up after it."""


class FakeContext:
    """The worker's side of an attempt: records progress and state, can cancel or crash."""

    def __init__(
        self,
        work_dir: Path,
        resume_state: dict[str, Any] | None = None,
        *,
        cancel_after_reports: int | None = None,
        crash_after_reports: int | None = None,
    ) -> None:
        self._work_dir = work_dir
        self._resume = resume_state
        self.cancel_after_reports = cancel_after_reports
        self.crash_after_reports = crash_after_reports
        self.states: list[dict[str, Any]] = []
        self.progress: list[float] = []
        self.cancelled = False

    @property
    def task_id(self) -> str:
        return "task-unified-1761313744-testtask"

    @property
    def work_dir(self) -> Path:
        return self._work_dir

    @property
    def resume_state(self) -> dict[str, Any] | None:
        return self._resume

    @property
    def last_state(self) -> dict[str, Any]:
        return self.states[-1]

    def save_state(self, state: dict[str, Any]) -> None:
        # Round-trip through JSON, as a durable store would: state must be plain JSON.
        self.states.append(json.loads(json.dumps(state)))

    def report_progress(self, fraction: float) -> None:
        assert 0.0 <= fraction <= 0.95
        self.progress.append(fraction)
        if self.crash_after_reports is not None and len(self.progress) >= self.crash_after_reports:
            raise SimulatedCrash
        if (
            self.cancel_after_reports is not None
            and len(self.progress) >= self.cancel_after_reports
        ):
            self.cancelled = True
        self.check_cancel()

    def check_cancel(self) -> None:
        if self.cancelled:
            raise TaskCancelled

    def is_cancelled(self) -> bool:
        return self.cancelled


def job(**overrides: Any) -> VideoJob:
    values: dict[str, Any] = {
        "task_id": "task-unified-1761313744-testtask",
        "prompt": "a red fox in snow",
        "width": 864,
        "height": 480,
        "fps": 24,
        "frames": 121,
        "duration": 5,
        "quality": "480p",
        "aspect_ratio": "16:9",
    }
    values.update(overrides)
    return VideoJob(**values)


FAST: dict[str, Any] = {
    "poll_initial_seconds": 0.005,
    "poll_max_seconds": 0.01,
    "request_timeout_seconds": 5.0,
    "connect_timeout_seconds": 2.0,
    "video_url_allow_loopback": True,  # the fakes serve the video on 127.0.0.1
}


def ark_engine(fake: FakeUpstream, **overrides: Any) -> ArkEngine:
    sleep = overrides.pop("sleep", None)
    options = ArkOptions(base_url=fake.base_url, api_key=ARK_KEY, **{**FAST, **overrides})
    return ArkEngine(options, sleep=sleep) if sleep else ArkEngine(options)


def evolink_engine(fake: FakeUpstream, **overrides: Any) -> EvolinkEngine:
    values = {"reported_model": EVOLINK_MODEL, **FAST, **overrides}
    return EvolinkEngine(EvolinkOptions(base_url=fake.base_url, api_key=EVOLINK_KEY, **values))


class RecordingSleep:
    """A sleep that only records how long the engine asked to wait."""

    def __init__(self) -> None:
        self.slept: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)

    @property
    def total(self) -> float:
        return sum(self.slept)


@pytest.fixture(scope="module")
def video_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return make_mp4(tmp_path_factory.mktemp("video") / "fake.mp4")


@pytest.fixture
def ark(video_bytes: bytes) -> Iterator[FakeArk]:
    fake = FakeArk(ARK_KEY, video_bytes)
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def evolink(video_bytes: bytes) -> Iterator[FakeEvolink]:
    fake = FakeEvolink(EVOLINK_KEY, video_bytes)
    fake.start()
    yield fake
    fake.stop()


def run_expecting(
    engine: Engine, ctx: FakeContext, code: str, the_job: VideoJob | None = None
) -> EngineError:
    with pytest.raises(EngineError) as caught:
        engine.generate(the_job or job(), ctx)
    assert caught.value.code == code, caught.value.message
    return caught.value


# -- Ark: the happy path and the request we send --------


def test_ark_completes_and_reports_the_real_video(ark: FakeArk, tmp_path: Path) -> None:
    ctx = FakeContext(tmp_path)
    result = ark_engine(ark).generate(job(seed=7), ctx)

    assert result.path.parent == tmp_path and result.path.is_file()
    assert (result.width, result.height, result.frames, result.fps) == (96, 64, 6, 24)
    assert result.model == "doubao-seedance-1.0-pro-fast"
    assert result.usage == {"completion_tokens": 48600, "total_tokens": 48600}

    [create] = ark.creates()
    assert create.headers["authorization"] == f"Bearer {ARK_KEY}"
    assert create.json == {
        "model": "seedance-1-0-pro-fast-251015",
        "content": [{"type": "text", "text": "a red fox in snow"}],
        "resolution": "480p",
        "ratio": "16:9",
        "duration": 5,
        "seed": 7,
        "watermark": False,
    }
    upstream_id = ctx.last_state["upstream_id"]
    assert [s["phase"] for s in ctx.states] == ["submitting", "submitted"]
    assert ctx.states[0]["client_request_id"] == create.headers["x-client-request-id"]
    polls = ark.calls("GET", "/contents/generations/tasks/")
    assert {p.path.rsplit("/", 1)[1] for p in polls} == {upstream_id}
    # queued, running, running, then succeeded: progress reported for the first three.
    assert ctx.progress[0] == pytest.approx(0.05) and len(ctx.progress) == 3
    [download] = ark.calls("GET", "/files/")
    assert "authorization" not in download.headers


def test_ark_image_job_sends_the_image_inline_as_first_frame(ark: FakeArk, tmp_path: Path) -> None:
    image = Image.new("RGB", (400, 300), (10, 200, 30))
    ark_engine(ark).generate(
        job(source_image=image, aspect_ratio="keep_ratio"), FakeContext(tmp_path)
    )

    [create] = ark.creates()
    text, part = create.json["content"]
    assert part["type"] == "image_url" and part["role"] == "first_frame"
    prefix = "data:image/png;base64,"
    assert part["image_url"]["url"].startswith(prefix)
    sent = Image.open(io.BytesIO(base64.b64decode(part["image_url"]["url"][len(prefix) :])))
    assert sent.size == (400, 300) and sent.getpixel((5, 5)) == (10, 200, 30)
    assert create.json["ratio"] == "adaptive"


def test_ark_never_forwards_extra_fields_or_prompt_commands(ark: FakeArk, tmp_path: Path) -> None:
    the_job = job(
        prompt="a fox --dur 12 --resolution 1080p --wm true, not--this",
        extra={"callback_url": "https://attacker.example/hook", "service_tier": "flex"},
    )
    ark_engine(ark).generate(the_job, FakeContext(tmp_path))

    [create] = ark.creates()
    assert set(create.json) == {"model", "content", "resolution", "ratio", "duration", "watermark"}
    text = create.json["content"][0]["text"]
    assert " --" not in text and text.startswith("a fox \u2013dur 12") and "not--this" in text
    assert defuse_text_commands("--rs 720p") == "\u2013rs 720p"


# -- Ark: how tasks end --------


@pytest.mark.parametrize(
    ("error_code", "expected"),
    [
        ("OutputVideoSensitiveContentDetected", "upstream_content_rejected"),
        ("InputImageSensitiveContentDetected.PrivacyInformation", "upstream_content_rejected"),
        ("InternalServiceError", "upstream_failed"),
    ],
)
def test_ark_failed_task_maps_to_a_stable_code(
    ark: FakeArk, tmp_path: Path, error_code: str, expected: str
) -> None:
    ark.scenario.outcome = "failed"
    ark.scenario.error_code = error_code
    ark.scenario.error_message = "The request failed.\nRequest id: 0217"
    ctx = FakeContext(tmp_path)
    error = run_expecting(ark_engine(ark), ctx, expected)
    assert not error.retryable
    assert error_code in error.message and "\n" not in error.message
    assert ark.calls("DELETE") == []  # nothing left to cancel


def test_ark_failure_message_is_sanitized(ark: FakeArk, tmp_path: Path) -> None:
    ark.scenario.outcome = "failed"
    # The upstream echoes our key and its own task id back; neither may reach the owner.
    ark.scenario.error_message = f"key {ARK_KEY} task {{id}}\x00 " + "x" * 1000
    error = run_expecting(ark_engine(ark), FakeContext(tmp_path), "upstream_failed")
    [upstream_id] = ark.tasks
    assert ARK_KEY not in error.message and upstream_id not in error.message
    assert "[redacted]" in error.message and "\x00" not in error.message
    assert len(error.message) < 400


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [("cancelled", "upstream_cancelled"), ("expired", "upstream_expired")],
)
def test_ark_cancelled_and_expired_are_terminal(
    ark: FakeArk, tmp_path: Path, outcome: str, expected: str
) -> None:
    ark.scenario.outcome = outcome
    run_expecting(ark_engine(ark), FakeContext(tmp_path), expected)
    assert len(ark.creates()) == 1


def test_ark_unknown_status_is_an_error_not_running(ark: FakeArk, tmp_path: Path) -> None:
    ark.scenario.outcome = "paused_for_review"
    engine = ark_engine(ark, max_wait_seconds=5)  # a regression times out instead of hanging
    error = run_expecting(engine, FakeContext(tmp_path), "upstream_bad_status")
    assert "paused_for_review" in error.message
    # We walk away from a task in an unknown state, so we try to stop it.
    assert len(ark.calls("DELETE")) == 1


def test_ark_slow_task_times_out_and_is_cancelled(ark: FakeArk, tmp_path: Path) -> None:
    ark.scenario.running_polls = 10**9
    ctx = FakeContext(tmp_path)
    run_expecting(ark_engine(ark, max_wait_seconds=0.2), ctx, "upstream_timeout")
    assert len(ctx.progress) >= 2
    assert ctx.progress == sorted(ctx.progress) and max(ctx.progress) <= 0.95
    [delete] = ark.calls("DELETE")
    assert delete.path.endswith(ctx.last_state["upstream_id"])


# -- Ark: create errors --------


def test_ark_429_on_create_waits_retry_after_then_succeeds(ark: FakeArk, tmp_path: Path) -> None:
    ark.scenario.create_answers = [
        Scripted(
            429,
            {"error": {"code": "RateLimitExceeded", "message": "slow down"}},
            {"Retry-After": "3"},
        )
    ]
    sleep = RecordingSleep()
    result = ark_engine(ark, sleep=sleep).generate(job(), FakeContext(tmp_path))
    assert result.frames == 6
    assert len(ark.creates()) == 2 and len(ark.tasks) == 1
    assert 3.0 <= sleep.total < 3.5  # Retry-After, plus the tiny poll intervals


def test_ark_429_on_create_exhausted_is_retryable(ark: FakeArk, tmp_path: Path) -> None:
    too_many = Scripted(429, {"error": {"code": "RateLimitExceeded"}}, {"Retry-After": "1"})
    ark.scenario.create_answers = [too_many, too_many]
    ctx = FakeContext(tmp_path)
    engine = ark_engine(ark, sleep=RecordingSleep(), create_rate_limit_retries=1)
    error = run_expecting(engine, ctx, "upstream_rate_limited")
    assert error.retryable
    assert ctx.last_state == {"phase": "not_submitted"}


@pytest.mark.parametrize("status", [500, 503])
def test_ark_5xx_on_create_is_retryable(ark: FakeArk, tmp_path: Path, status: int) -> None:
    ark.scenario.create_answers = [Scripted(status, {"error": {"code": "InternalServiceError"}})]
    ctx = FakeContext(tmp_path)
    error = run_expecting(ark_engine(ark), ctx, "upstream_unavailable")
    assert error.retryable and ctx.last_state == {"phase": "not_submitted"}
    assert len(ark.creates()) == 1


def test_ark_connect_error_is_retryable(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    options = ArkOptions(base_url=f"http://127.0.0.1:{port}/api/v3", api_key=ARK_KEY, **FAST)
    ctx = FakeContext(tmp_path)
    error = run_expecting(ArkEngine(options), ctx, "upstream_unavailable")
    assert error.retryable and ctx.last_state == {"phase": "not_submitted"}


@pytest.mark.parametrize("status", [502, 504])
def test_ark_gateway_error_after_sending_is_ambiguous(
    ark: FakeArk, tmp_path: Path, status: int
) -> None:
    ark.scenario.create_answers = [Scripted(status, "<html>bad gateway</html>")]
    ctx = FakeContext(tmp_path)
    error = run_expecting(ark_engine(ark), ctx, "upstream_ambiguous")
    assert not error.retryable and ctx.last_state["phase"] == "submitting"


def test_ark_create_read_timeout_is_ambiguous_and_not_retried(ark: FakeArk, tmp_path: Path) -> None:
    ark.scenario.create_delay = 1.0  # the fake creates the task, then answers too late
    ctx = FakeContext(tmp_path)
    error = run_expecting(ark_engine(ark, request_timeout_seconds=0.2), ctx, "upstream_ambiguous")
    assert not error.retryable
    assert len(ark.creates()) == 1 and len(ark.tasks) == 1
    assert ctx.last_state["phase"] == "submitting"


def test_ark_create_answer_without_id_is_ambiguous(ark: FakeArk, tmp_path: Path) -> None:
    ark.scenario.create_answers = [Scripted(200, "{not json")]
    run_expecting(ark_engine(ark), FakeContext(tmp_path), "upstream_ambiguous")


def test_ark_400_is_rejected_with_their_message(ark: FakeArk, tmp_path: Path) -> None:
    ark.scenario.create_answers = [
        Scripted(
            400,
            {
                "error": {
                    "code": "InvalidParameter",
                    "message": f"duration is invalid (key {ARK_KEY})",
                }
            },
        )
    ]
    error = run_expecting(ark_engine(ark), FakeContext(tmp_path), "upstream_rejected")
    assert not error.retryable
    assert "duration is invalid" in error.message and ARK_KEY not in error.message


def test_ark_400_for_sensitive_input_is_a_content_rejection(ark: FakeArk, tmp_path: Path) -> None:
    ark.scenario.create_answers = [
        Scripted(400, {"error": {"code": "InputTextSensitiveContentDetected", "message": "no"}})
    ]
    run_expecting(ark_engine(ark), FakeContext(tmp_path), "upstream_content_rejected")


def test_ark_wrong_key_is_auth_failed_without_the_key(ark: FakeArk, tmp_path: Path) -> None:
    options = ArkOptions(base_url=ark.base_url, api_key="wrong-key-123456789", **FAST)
    error = run_expecting(ArkEngine(options), FakeContext(tmp_path), "upstream_auth_failed")
    assert not error.retryable and "wrong-key-123456789" not in error.message


# -- Ark: polling through trouble --------


def test_ark_keeps_polling_through_5xx_and_429(ark: FakeArk, tmp_path: Path) -> None:
    ark.scenario.poll_answers = [
        Scripted(500, {"error": {"code": "InternalServiceError"}}),
        Scripted(429, {"error": {"code": "RateLimitExceeded"}}, {"Retry-After": "2"}),
        Scripted(502, "bad gateway"),
    ]
    sleep = RecordingSleep()
    result = ark_engine(ark, sleep=sleep).generate(job(), FakeContext(tmp_path))
    assert result.frames == 6
    assert sleep.total >= 2.0
    assert len(ark.creates()) == 1


def test_ark_gives_up_after_too_many_poll_errors(ark: FakeArk, tmp_path: Path) -> None:
    ark.scenario.poll_answers = [Scripted(500, {"error": {}}) for _ in range(3)]
    error = run_expecting(
        ark_engine(ark, max_poll_errors=3), FakeContext(tmp_path), "upstream_unavailable"
    )
    assert not error.retryable  # the task was created: no failover now
    assert len(ark.calls("DELETE")) == 1


def test_ark_tolerates_one_malformed_answer(ark: FakeArk, tmp_path: Path) -> None:
    ark.scenario.poll_answers = [Scripted(200, "{oops"), Scripted(200, {"no": "status"})]
    result = ark_engine(ark).generate(job(), FakeContext(tmp_path))
    assert result.frames == 6


def test_ark_fails_on_repeated_malformed_answers(ark: FakeArk, tmp_path: Path) -> None:
    ark.scenario.poll_answers = [Scripted(200, "<html>") for _ in range(3)]
    error = run_expecting(ark_engine(ark), FakeContext(tmp_path), "upstream_bad_response")
    assert "malformed" in error.message
    assert len(ark.calls("DELETE")) == 1


def test_ark_task_that_vanishes_is_lost(ark: FakeArk, tmp_path: Path) -> None:
    ark.scenario.poll_answers = [
        Scripted(404, {"error": {"code": "ResourceNotFound"}}) for _ in range(3)
    ]
    run_expecting(ark_engine(ark), FakeContext(tmp_path), "upstream_task_lost")


# -- resume after a crash --------


def test_ark_resumes_the_same_upstream_task_after_a_crash(ark: FakeArk, tmp_path: Path) -> None:
    engine = ark_engine(ark)
    first = FakeContext(tmp_path, crash_after_reports=2)
    with pytest.raises(SimulatedCrash):
        engine.generate(job(), first)
    saved = first.last_state
    assert saved["phase"] == "submitted"

    second = FakeContext(tmp_path, resume_state=saved)
    result = engine.generate(job(), second)
    assert result.frames == 6
    assert len(ark.creates()) == 1 and len(ark.tasks) == 1
    polled = {p.path.rsplit("/", 1)[1] for p in ark.calls("GET", "/contents/generations/tasks/")}
    assert polled == {saved["upstream_id"]}
    assert second.states == []  # nothing new to record
    assert ark.calls("DELETE") == []


def test_ark_resume_from_saved_state_never_creates(ark: FakeArk, tmp_path: Path) -> None:
    upstream_id = ark.add_task({"model": "seedance-1-0-pro-fast-251015"})
    state = {"phase": "submitted", "upstream_id": upstream_id, "submitted_at": 1.0e12}
    result = ark_engine(ark).generate(job(), FakeContext(tmp_path, resume_state=state))
    assert result.frames == 6 and ark.creates() == []


def test_ark_resume_after_an_unknown_create_outcome_fails(ark: FakeArk, tmp_path: Path) -> None:
    state = {"phase": "submitting", "client_request_id": "abc"}
    error = run_expecting(
        ark_engine(ark), FakeContext(tmp_path, resume_state=state), "upstream_ambiguous"
    )
    assert not error.retryable and ark.requests == []


def test_ark_resume_after_a_certain_non_creation_creates(ark: FakeArk, tmp_path: Path) -> None:
    state = {"phase": "not_submitted"}
    ark_engine(ark).generate(job(), FakeContext(tmp_path, resume_state=state))
    assert len(ark.creates()) == 1


def test_ark_resume_with_a_bad_record_fails(ark: FakeArk, tmp_path: Path) -> None:
    state = {"phase": "submitted", "upstream_id": "../../etc", "submitted_at": 1.0}
    run_expecting(
        ark_engine(ark), FakeContext(tmp_path, resume_state=state), "upstream_state_invalid"
    )
    assert ark.requests == []


# -- cancel --------


def test_cancel_reaches_ark(ark: FakeArk, tmp_path: Path) -> None:
    ark.scenario.running_polls = 50
    ctx = FakeContext(tmp_path, cancel_after_reports=2)
    with pytest.raises(TaskCancelled):
        ark_engine(ark).generate(job(), ctx)
    upstream_id = ctx.last_state["upstream_id"]
    [delete] = ark.calls("DELETE")
    assert delete.path == f"/api/v3/contents/generations/tasks/{upstream_id}"
    assert delete.headers["authorization"] == f"Bearer {ARK_KEY}"
    assert ark.tasks[upstream_id].forced == "cancelled"


def test_a_lost_lease_leaves_the_upstream_task_to_the_next_attempt(
    ark: FakeArk, tmp_path: Path
) -> None:
    ark.scenario.running_polls = 50

    class LeaseLost(FakeContext):
        def check_cancel(self) -> None:
            if self.cancelled:
                stop = TaskCancelled(self.task_id)
                setattr(stop, "lease_lost", True)  # noqa: B010 - proposed field of TaskCancelled
                raise stop

    ctx = LeaseLost(tmp_path, cancel_after_reports=2)
    with pytest.raises(TaskCancelled):
        ark_engine(ark).generate(job(), ctx)
    assert ark.calls("DELETE") == []
    # ...and the next attempt picks it up where this one stopped.
    result = ark_engine(ark).generate(job(), FakeContext(tmp_path, resume_state=ctx.last_state))
    assert result.frames == 6 and len(ark.creates()) == 1


def test_cancel_reaches_an_evolink_upstream_with_a_cancel_endpoint(
    evolink: FakeEvolink, tmp_path: Path
) -> None:
    evolink.scenario.running_polls = 50
    ctx = FakeContext(tmp_path, cancel_after_reports=2)
    engine = evolink_engine(evolink, cancel_path="/v1/tasks/{id}/cancel")
    with pytest.raises(TaskCancelled):
        engine.generate(job(), ctx)
    upstream_id = ctx.last_state["upstream_id"]
    assert [c.path for c in evolink.calls("POST", "/cancel")] == [f"/v1/tasks/{upstream_id}/cancel"]
    assert evolink.tasks[upstream_id].forced == "cancelled"


def test_cancel_without_an_upstream_endpoint_just_stops(
    evolink: FakeEvolink, tmp_path: Path
) -> None:
    evolink.scenario.running_polls = 50
    ctx = FakeContext(tmp_path, cancel_after_reports=2)
    with pytest.raises(TaskCancelled):
        evolink_engine(evolink).generate(job(), ctx)
    assert evolink.calls("POST", "/cancel") == [] and len(evolink.creates()) == 1


# -- evolink --------


def test_evolink_completes(evolink: FakeEvolink, tmp_path: Path) -> None:
    ctx = FakeContext(tmp_path)
    result = evolink_engine(evolink).generate(job(aspect_ratio="9:16", quality="720p"), ctx)
    assert (result.width, result.height, result.frames) == (96, 64, 6)
    assert result.model == EVOLINK_MODEL
    [create] = evolink.creates()
    assert create.json == {
        "model": "doubao-seedance-1.0-pro-fast",
        "prompt": "a red fox in snow",
        "duration": 5,
        "quality": "720p",
        "aspect_ratio": "9:16",
    }
    # evolink reports its own progress (40 %) while processing: 0.05 + 0.9 * 0.4.
    assert ctx.progress == pytest.approx([0.05, 0.41, 0.41])


@pytest.mark.parametrize(
    ("error_code", "expected"),
    [
        ("content_policy_violation", "upstream_content_rejected"),
        ("invalid_parameters", "upstream_rejected"),
        ("request_cancelled", "upstream_cancelled"),
        ("service_error", "upstream_failed"),
    ],
)
def test_evolink_failure_codes(
    evolink: FakeEvolink, tmp_path: Path, error_code: str, expected: str
) -> None:
    evolink.scenario.outcome = "failed"
    evolink.scenario.error_code = error_code
    run_expecting(evolink_engine(evolink), FakeContext(tmp_path), expected)


def test_evolink_image_job_needs_a_public_url(evolink: FakeEvolink, tmp_path: Path) -> None:
    image = Image.new("RGB", (320, 320))
    error = run_expecting(
        evolink_engine(evolink),
        FakeContext(tmp_path),
        "upstream_image_unsupported",
        job(source_image=image, aspect_ratio="adaptive"),
    )
    assert not error.retryable and evolink.requests == []

    evolink_engine(evolink).generate(
        job(
            source_image=image,
            aspect_ratio="keep_ratio",
            extra={"image_url": "https://cdn.example/a.png"},
        ),
        FakeContext(tmp_path),
    )
    [create] = evolink.creates()
    assert create.json["image_urls"] == ["https://cdn.example/a.png"]
    assert create.json["aspect_ratio"] == "keep_ratio"


def test_evolink_ambiguous_create(evolink: FakeEvolink, tmp_path: Path) -> None:
    evolink.scenario.create_delay = 1.0
    engine = evolink_engine(evolink, request_timeout_seconds=0.2)
    run_expecting(engine, FakeContext(tmp_path), "upstream_ambiguous")
    assert len(evolink.tasks) == 1


# -- download --------


def test_video_over_the_size_cap_is_refused(ark: FakeArk, tmp_path: Path) -> None:
    run_expecting(
        ark_engine(ark, max_video_bytes=100), FakeContext(tmp_path), "upstream_video_too_large"
    )
    assert [p.name for p in tmp_path.iterdir()] == []


def test_video_that_does_not_decode_is_refused(ark: FakeArk, tmp_path: Path) -> None:
    ark.scenario.video_bytes = b"\x00\x00\x00\x18ftypmp42 this is not a video"
    run_expecting(ark_engine(ark), FakeContext(tmp_path), "upstream_bad_video")


def test_video_url_to_an_internal_address_is_not_fetched(ark: FakeArk, tmp_path: Path) -> None:
    engine = ark_engine(ark, video_url_allow_loopback=False)
    error = run_expecting(engine, FakeContext(tmp_path), "upstream_download_failed")
    assert "internal address" in error.message
    assert ark.calls("GET", "/files/") == []


def test_video_that_cannot_be_downloaded_fails(ark: FakeArk, tmp_path: Path) -> None:
    ark.scenario.video_status = 403
    run_expecting(ark_engine(ark), FakeContext(tmp_path), "upstream_download_failed")
    assert len(ark.calls("GET", "/files/")) == 1  # a 403 is not worth retrying


# -- failover --------


def test_500_on_create_fails_over_to_the_next_engine(
    ark: FakeArk, evolink: FakeEvolink, tmp_path: Path
) -> None:
    ark.scenario.create_answers = [Scripted(500, {"error": {"code": "InternalServiceError"}})]
    ctx = FakeContext(tmp_path)
    result = FailoverEngine([ark_engine(ark), evolink_engine(evolink)]).generate(job(), ctx)

    assert result.model == EVOLINK_MODEL
    assert len(ark.creates()) == 1 and len(evolink.creates()) == 1
    final = ctx.last_state
    assert final["engine_index"] == 1
    assert final["engines"]["0"] == {"phase": "not_submitted"}
    assert final["engines"]["1"]["phase"] == "submitted"


def test_ambiguous_create_never_fails_over(
    ark: FakeArk, evolink: FakeEvolink, tmp_path: Path
) -> None:
    ark.scenario.create_delay = 1.0
    engine = FailoverEngine([ark_engine(ark, request_timeout_seconds=0.2), evolink_engine(evolink)])
    run_expecting(engine, FakeContext(tmp_path), "upstream_ambiguous")
    assert evolink.requests == []


def test_failover_resume_goes_back_to_the_same_engine(
    ark: FakeArk, evolink: FakeEvolink, tmp_path: Path
) -> None:
    upstream_id = evolink.add_task({"model": "doubao-seedance-1.0-pro-fast"})
    state = {
        "engine_index": 1,
        "engines": {
            "0": {"phase": "not_submitted"},
            "1": {"phase": "submitted", "upstream_id": upstream_id, "submitted_at": 1.0e12},
        },
    }
    engine = FailoverEngine([ark_engine(ark), evolink_engine(evolink)])
    result = engine.generate(job(), FakeContext(tmp_path, resume_state=state))
    assert result.model == EVOLINK_MODEL
    assert ark.requests == [] and evolink.creates() == []


class StubEngine(Engine):
    """An engine scripted to save some state and then fail or succeed."""

    kind = "stub"

    def __init__(
        self, name: str, *, save: dict[str, Any] | None = None, error: EngineError | None = None
    ) -> None:
        self.name = name
        self.save = save
        self.error = error
        self.seen_resume: list[dict[str, Any] | None] = []
        self.started = self.closed = False

    @property
    def model_name(self) -> str:
        return self.name

    def plan(self, request: VideoRequest, image_size: tuple[int, int] | None = None) -> VideoPlan:
        return VideoPlan(width=64, height=64, fps=24, frames=25, model=self.name)

    def estimate_seconds(self, plan: VideoPlan) -> float:
        return 10.0 if self.name == "first" else 99.0

    def generate(self, job: VideoJob, ctx: EngineContext) -> EngineResult:
        self.seen_resume.append(ctx.resume_state)
        if self.save is not None:
            ctx.save_state(self.save)
        if self.error is not None:
            raise self.error
        return EngineResult(
            path=ctx.work_dir / "x.mp4", width=64, height=64, fps=24, frames=25, model=self.name
        )

    def start(self) -> None:
        self.started = True

    def close(self) -> None:
        self.closed = True


def test_failover_does_not_move_on_after_work_started(tmp_path: Path) -> None:
    first = StubEngine(
        "first",
        save={"phase": "submitted", "upstream_id": "x"},
        error=EngineError("upstream_unavailable", "down", retryable=True),
    )
    second = StubEngine("second")
    with pytest.raises(EngineError):
        FailoverEngine([first, second]).generate(job(), FakeContext(tmp_path))
    assert second.seen_resume == []


def test_failover_does_not_move_on_for_non_retryable_errors(tmp_path: Path) -> None:
    first = StubEngine("first", error=EngineError("upstream_rejected", "no"))
    second = StubEngine("second")
    with pytest.raises(EngineError):
        FailoverEngine([first, second]).generate(job(), FakeContext(tmp_path))
    assert second.seen_resume == []


def test_failover_plans_like_the_first_engine_and_manages_all(tmp_path: Path) -> None:
    first, second = StubEngine("first"), StubEngine("second")
    engine = FailoverEngine([first, second])
    request = VideoRequest(prompt="p", duration=5, quality="480p", aspect_ratio="16:9")
    assert engine.plan(request).model == "first" and engine.model_name == "first"
    assert engine.estimate_seconds(engine.plan(request)) == 10.0
    engine.start()
    engine.close()
    assert first.started and second.started and first.closed and second.closed


def test_failover_hands_a_single_engine_state_to_the_first(tmp_path: Path) -> None:
    first = StubEngine("first")
    legacy = {"phase": "submitted", "upstream_id": "cgt-1", "submitted_at": 1.0}
    FailoverEngine([first, StubEngine("second")]).generate(
        job(), FakeContext(tmp_path, resume_state=legacy)
    )
    assert first.seen_resume == [legacy]


def test_failover_refuses_a_record_for_another_route(tmp_path: Path) -> None:
    state = {"engine_index": 5, "engines": {}}
    engine = FailoverEngine([StubEngine("first"), StubEngine("second")])
    run_expecting(engine, FakeContext(tmp_path, resume_state=state), "upstream_state_invalid")


# -- plans and options --------


def test_plans_follow_the_seedance_table() -> None:
    options = ArkOptions(api_key=ARK_KEY)
    engine = ArkEngine(options)
    text = VideoRequest(prompt="p", duration=5, quality="720p", aspect_ratio="16:9")
    assert engine.plan(text) == VideoPlan(1248, 704, 24, 121, "doubao-seedance-1.0-pro-fast")
    image = VideoRequest(
        prompt="p", duration=2, quality="480p", aspect_ratio="keep_ratio", has_image=True
    )
    plan = engine.plan(image, (1000, 1000))
    assert (plan.width, plan.height, plan.frames) == (640, 640, 49)
    evolink = EvolinkEngine(EvolinkOptions(api_key=EVOLINK_KEY))
    kept = evolink.plan(image, (1000, 500))
    assert kept.width / kept.height == pytest.approx(2.0, rel=0.05)
    assert engine.estimate_seconds(engine.plan(text)) == pytest.approx(45 + 24 * 121 / 24)


def test_options_read_the_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_ARK_KEY", ARK_KEY)
    engine = from_options({"api_key_env": "TEST_ARK_KEY", "upstream_model": "ep-2025-x"})
    assert engine.options.api_key.get_secret_value() == ARK_KEY
    assert ARK_KEY not in repr(engine) and ARK_KEY not in repr(engine.options)
    monkeypatch.delenv("TEST_ARK_KEY")
    with pytest.raises(ValueError, match="TEST_ARK_KEY"):
        from_options({"api_key_env": "TEST_ARK_KEY"})
    with pytest.raises(ValueError):
        from_options({"api_key": "k", "poll_intervall": 3})  # typos are caught


# -- the key never leaks --------


def test_the_upstream_key_never_appears_anywhere(
    ark: FakeArk, evolink: FakeEvolink, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    contexts: list[FakeContext] = []

    def attempt(engine: Engine, the_job: VideoJob | None = None, **ctx_args: Any) -> None:
        ctx = FakeContext(tmp_path / f"a{len(contexts)}", **ctx_args)
        ctx.work_dir.mkdir()
        contexts.append(ctx)
        try:
            seen.append(repr(engine.generate(the_job or job(), ctx)))
        except (EngineError, TaskCancelled) as exc:
            seen.extend([str(exc), repr(exc), getattr(exc, "message", "")])

    attempt(ark_engine(ark))  # success
    ark.scenario.create_answers = [Scripted(400, {"error": {"message": f"bad {ARK_KEY}"}})]
    attempt(ark_engine(ark))  # rejected, their message echoes the key
    ark.scenario.create_answers = [Scripted(500, {"error": {"message": ARK_KEY}})]
    attempt(FailoverEngine([ark_engine(ark), evolink_engine(evolink)]))  # failover
    ark.scenario.outcome = "failed"
    ark.scenario.error_message = f"upstream says {ARK_KEY}"
    attempt(ark_engine(ark))  # failed task
    ark.scenario.outcome, ark.scenario.running_polls = "succeeded", 50
    attempt(ark_engine(ark), cancel_after_reports=2)  # cancelled
    attempt(ArkEngine(ArkOptions(base_url=ark.base_url, api_key=ARK_KEY + "x", **FAST)))  # 401

    # The test can fail: the key really went out, as a bearer token, to the API only.
    assert any(r.headers.get("authorization") == f"Bearer {ARK_KEY}" for r in ark.requests)
    assert all("authorization" not in r.headers for r in ark.calls("GET", "/files/"))
    assert all("authorization" not in r.headers for r in evolink.calls("GET", "/files/"))
    assert caplog.records, "expected log output to search"

    states = json.dumps([ctx.states for ctx in contexts])
    for key in (ARK_KEY, EVOLINK_KEY):
        # Not even a piece of it: every 10-character window is searched for.
        for piece in {key[i : i + 10] for i in range(len(key) - 9)}:
            assert piece not in caplog.text
            assert all(piece not in text for text in seen)
            assert piece not in states


def test_engines_are_safe_to_share_between_worker_threads(ark: FakeArk, tmp_path: Path) -> None:
    engine = ark_engine(ark)
    results: list[EngineResult] = []

    def work(n: int) -> None:
        folder = tmp_path / str(n)
        folder.mkdir()
        results.append(engine.generate(job(), FakeContext(folder)))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 3 and len(ark.tasks) == 3
    assert len({r.path for r in results}) == 3
