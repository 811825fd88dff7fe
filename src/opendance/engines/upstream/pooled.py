"""The template of engines that drive open inference servers: a pool of servers per route.

On top of `UpstreamEngine` (create once, record before sending, poll, cancel, fetch), it adds:
- the server is chosen from the route's pool (`ServerPool`: least loaded, at most
  `max_in_flight` jobs each) and recorded in the job's state with the server's job id, so a
  restarted opendance resumes polling the same server and never sends the create again;
- when the owning server is gone (its connections refused while polling, or it restarted and
  no longer knows the job: its queue lived in memory), nothing more can come of that job, so
  the attempt moves to another server, up to `server_attempts` servers; an ambiguous create is
  never sent again (the upstream rules apply). Past that the task fails and is refunded.
- the server's own size table: the contract's size is mapped to the nearest size the model
  makes, and the task reports what it really got.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Final

import httpx
from pydantic import Field, SecretStr, model_validator

from opendance.engines.base import (
    EngineContext,
    EngineError,
    EngineResult,
    VideoJob,
    VideoPlan,
    VideoRequest,
)
from opendance.engines.upstream.base import State, UpstreamEngine
from opendance.engines.upstream.errors import (
    UPSTREAM_AMBIGUOUS,
    UPSTREAM_STATE_INVALID,
    UPSTREAM_TASK_LOST,
    UPSTREAM_UNAVAILABLE,
)
from opendance.engines.upstream.options import UpstreamOptions
from opendance.engines.upstream.servers import ServerPool, http_probe
from opendance.media.sizes import keep_ratio_size, size_for

#: A server lost the job, so it may be sent to another.
_SERVER_LOST: Final = frozenset({UPSTREAM_UNAVAILABLE, UPSTREAM_TASK_LOST})


class PooledOptions(UpstreamOptions):
    """One route entry of servers of the same model."""

    base_urls: list[str] = Field(min_length=1, description="The servers of this model")
    base_url: str = Field(default="", description="Set from base_urls; not to be given")
    api_key: SecretStr = Field(default=SecretStr(""), description="Sent as a bearer token, if set")
    upstream_model: str = Field(default="default", min_length=1)
    max_in_flight: int = Field(default=1, ge=1, description="Jobs one server holds at once")
    server_attempts: int = Field(
        default=3, ge=1, description="Servers a job may try when the one holding it is lost"
    )
    down_seconds: float = Field(default=5.0, gt=0, description="How long a failed server rests")
    probe_timeout_seconds: float = Field(default=2.0, gt=0)
    sizes: list[str] = Field(
        default_factory=lambda: ["832x480", "480x832", "1280x720", "720x1280", "960x960"],
        description="WIDTHxHEIGHT sizes the model makes; the nearest is used",
    )
    fps: int = Field(default=16, ge=1, description="Frames per second the model makes")
    frames_4n_plus_1: bool = Field(
        default=True, description="Frame counts of the form 4n+1 (Wan and most video DiTs)"
    )
    extra_params: dict[str, Any] = Field(
        default_factory=dict,
        description="Fields sent as they are with every create (num_inference_steps, ...)",
    )
    # The servers are ours, on our network: a query is cheap, and a finished job should not
    # wait for the next poll (the control plane's added latency is one poll interval).
    poll_initial_seconds: float = 0.05
    poll_max_seconds: float = 0.1
    max_poll_errors: int = 20
    estimate_base_seconds: float = 5.0
    estimate_seconds_per_video_second: float = 3.0

    @model_validator(mode="after")
    def _first_server(self) -> PooledOptions:
        if not self.base_url:
            object.__setattr__(self, "base_url", self.base_urls[0])
        for size in self.sizes:
            parse_size(size)
        return self


def parse_size(text: str) -> tuple[int, int]:
    width, sep, height = text.partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise ValueError(f"a size is WIDTHxHEIGHT, not {text!r}")
    return int(width), int(height)


def nearest_size(sizes: list[str], width: int, height: int) -> tuple[int, int]:
    """The supported size closest in shape, then in area, to `width` x `height`."""

    def distance(size: str) -> tuple[float, float]:
        w, h = parse_size(size)
        return abs(w / h - width / height), abs(w * h - width * height)

    return parse_size(min(sizes, key=distance))


class PooledEngine(UpstreamEngine):
    """An engine over a pool of inference servers; subclasses describe one server's API."""

    options: PooledOptions
    #: The path a server answers 2xx on when it is alive.
    health_path: str = "/health"

    def __init__(self, options: PooledOptions, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        headers = {"Authorization": f"Bearer {key}"} if (key := self._key()) else {}
        self.pool = ServerPool(
            options.base_urls,
            max_in_flight=options.max_in_flight,
            probe=http_probe(self.health_path, options.probe_timeout_seconds, headers),
            down_seconds=options.down_seconds,
        )

    def _key(self) -> str:
        return self.options.api_key.get_secret_value()

    def plan(self, request: VideoRequest, image_size: tuple[int, int] | None = None) -> VideoPlan:
        ratio = self.plan_ratio(request.aspect_ratio, image_size)
        if ratio == "keep_ratio" and image_size is not None:
            wanted = keep_ratio_size(request.quality, *image_size)
        else:
            wanted = size_for(request.quality, ratio)
        width, height = nearest_size(self.options.sizes, *wanted)
        frames = request.duration * self.options.fps
        if self.options.frames_4n_plus_1:
            frames = 4 * round(frames / 4) + 1
        return VideoPlan(width, height, self.options.fps, frames, self.model_name)

    def generate(self, job: VideoJob, ctx: EngineContext) -> EngineResult:
        for attempt in range(1, self.options.server_attempts + 1):
            try:
                return super().generate(job, ctx)
            except EngineError as exc:
                state = ctx.resume_state or {}
                server = state.get("server")
                if not isinstance(server, str) or not self._lost_there(exc, server):
                    raise
                if server in self.pool:
                    self.pool.failed(server)
                lost = [*state.get("lost_on", []), server]
                if attempt == self.options.server_attempts:
                    raise
                self._log.warning(
                    "task %s: server %s lost the job (%s); trying another", ctx.task_id, server,
                    exc.code,
                )  # fmt: skip
                # The server is gone or forgot the job: nothing more can come of it there.
                ctx.save_state({"phase": "not_submitted", "lost_on": lost})
        raise AssertionError("unreachable")  # pragma: no cover

    def _lost_there(self, error: EngineError, server: str) -> bool:
        """Whether the job can have no future on `server`: it refused us, forgot the job, or
        (after a create whose answer never came) is dead now, and its queue died with it."""
        if error.code in _SERVER_LOST:
            return True
        return (
            error.code == UPSTREAM_AMBIGUOUS and server in self.pool and not self.pool.alive(server)
        )

    @contextlib.contextmanager
    def session(self, job: VideoJob, ctx: EngineContext) -> Iterator[tuple[httpx.Client, State]]:
        state = ctx.resume_state or {}
        owner = state.get("server")
        lost = [url for url in state.get("lost_on", []) if isinstance(url, str)]
        if state.get("phase") in ("submitting", "submitted"):
            if not isinstance(owner, str) or owner not in self.pool:
                raise EngineError(
                    UPSTREAM_STATE_INVALID,
                    "the server that holds this job is not in the route any more",
                )
            self.pool.attach(owner)
            url = owner
        else:
            url = self.pool.acquire(ctx, exclude=lost)
        try:
            with self._client(url) as api:
                yield api, {"server": url, "lost_on": lost}
        finally:
            self.pool.release(url)

    def _client(self, url: str) -> httpx.Client:
        headers = {"Accept": "application/json"}
        if key := self._key():
            headers["Authorization"] = f"Bearer {key}"
        return httpx.Client(
            base_url=url,
            headers=headers,
            timeout=httpx.Timeout(
                self.options.request_timeout_seconds, connect=self.options.connect_timeout_seconds
            ),
            follow_redirects=False,
        )

    def is_content_rejection(self, code: str | None) -> bool:
        return False
