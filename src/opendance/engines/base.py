"""The engine interface: what every engine (sandbox, diffusers, upstream) implements.

An engine knows nothing about keys, credits or HTTP faces. It gets a typed `VideoJob` (what to
make, at which size) and an `EngineContext` (report progress, check cancel, a scratch folder,
state that survives a restart) and returns an `EngineResult` pointing at an MP4 file it wrote.
Engines run in a worker thread, so `generate` is a plain blocking call.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from PIL.Image import Image


class TaskCancelled(Exception):
    """Raised inside an engine (by the context) when the task must stop now.

    Engines must let it propagate. `lease_lost` tells a real cancel (the user cancelled: stop
    and clean up, e.g. cancel an upstream task) from losing the task to another attempt or
    handing it back at shutdown (stop, but leave resumable work alone).
    """

    def __init__(self, *args: object, lease_lost: bool = False) -> None:
        super().__init__(*args)
        self.lease_lost = lease_lost


class EngineError(Exception):
    """A failure the engine understands, with a stable error `code` shown to the task's owner.

    `retryable` marks failures where another engine or a later attempt may succeed (an upstream
    5xx or 429 before any work started); the router uses it for failover.
    """

    def __init__(self, code: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable


class EngineUnavailable(EngineError):
    """The engine cannot serve now, or cannot be built from its route: a missing package, a
    model folder that is not there, a GPU gone, an inference server down. Faces answer 503
    `engine_unavailable` (never 500); `serve` and `worker` refuse to start on it."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__("engine_unavailable", message, retryable=retryable)


class EngineFatal(EngineError):
    """The device is lost (a fatal CUDA error: the context is gone, nothing more can run in
    this process). The runner puts the task back in the queue and ends the process with
    `FATAL_EXIT_CODE`, so its supervisor starts a fresh one."""

    def __init__(self, message: str) -> None:
        super().__init__("engine_fatal", message)


#: The exit status of a worker process that stopped on a fatal device error (EX_SOFTWARE).
FATAL_EXIT_CODE = 70


@dataclass(frozen=True)
class VideoRequest:
    """What the client asked for, already validated against the contract."""

    prompt: str
    duration: int
    quality: str
    aspect_ratio: str
    seed: int | None = None
    has_image: bool = False


@dataclass(frozen=True)
class VideoPlan:
    """What the engine will really make for a request: size, frame rate, frame count, model.

    The sandbox makes the contract's sizes exactly; a model engine maps to the nearest size its
    model supports and says so here, and the task reports it.
    """

    width: int
    height: int
    fps: int
    frames: int
    model: str
    #: Image-to-video (engines may cost and estimate it differently).
    has_image: bool = False


@dataclass(frozen=True)
class VideoJob:
    """One unit of work for an engine."""

    task_id: str
    prompt: str
    width: int
    height: int
    fps: int
    frames: int
    duration: int
    quality: str
    aspect_ratio: str
    seed: int | None = None
    # The first frame for image-to-video, already fitted to width x height (RGB).
    image: Image | None = None
    # The original (unfitted) image, for engines that send it upstream as it is.
    source_image: Image | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EngineResult:
    """An MP4 file the engine wrote (inside the context's work_dir) and what it really is."""

    path: Path
    width: int
    height: int
    fps: int
    frames: int
    model: str
    usage: dict[str, Any] = field(default_factory=dict)


class EngineContext(Protocol):
    """What the worker gives an engine for one attempt of one task."""

    @property
    def task_id(self) -> str: ...

    @property
    def work_dir(self) -> Path:
        """A private scratch folder for this attempt; write the output file here."""
        ...

    @property
    def resume_state(self) -> dict[str, Any] | None:
        """State saved by an earlier attempt of this task (e.g. an upstream task id), if any."""
        ...

    def save_state(self, state: dict[str, Any]) -> None:
        """Persist small JSON state before doing anything that must not be repeated on restart."""
        ...

    def report_progress(self, fraction: float) -> None:
        """Report progress in [0, 1]; raises `TaskCancelled` if the task must stop now."""
        ...

    def check_cancel(self) -> None:
        """Raise `TaskCancelled` if the task was cancelled (a safe point)."""
        ...

    def is_cancelled(self) -> bool: ...


class Engine(ABC):
    """Base class of every engine. One instance serves many tasks (it may hold a loaded model)."""

    #: The engine kind, as named in routes: "sandbox", "diffusers", "ark", ...
    kind: str = "engine"

    @property
    @abstractmethod
    def model_name(self) -> str:
        """The model this engine runs, reported in the task's `model` field."""

    @abstractmethod
    def plan(self, request: VideoRequest, image_size: tuple[int, int] | None = None) -> VideoPlan:
        """Map a request (and the input image's size, for image-to-video) to what will be made."""

    @abstractmethod
    def estimate_seconds(self, plan: VideoPlan) -> float:
        """How long one job of this plan takes on this engine, for `estimated_time`."""

    @abstractmethod
    def generate(self, job: VideoJob, ctx: EngineContext) -> EngineResult:
        """Make the video. Blocking; call `ctx.report_progress` often; honour cancel."""

    def check(self) -> None:  # noqa: B027 - optional hook
        """Cheap checks of the route at start, before any weights load or any call goes out:
        raise `EngineUnavailable` naming what is wrong (a folder that is not there, a package
        that is not installed). `serve`, `worker` and `opendance config check` call it."""

    def start(self) -> None:  # noqa: B027 - optional hook
        """Load weights, warm up; called once before the first job (in the worker's thread)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free what `start` took."""
