"""Fetching the finished video from the URL an upstream hands back, and checking it.

The URL comes from the upstream, not from our configuration, so the download goes through the
SSRF guard, on a separate client without our Authorization header (the video host is not the
API). It streams into a temporary file within a size cap, with a few retries, renames it into
place only when complete, and the result must decode as a video with at least one frame.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

import httpx

from opendance.engines.base import EngineContext, EngineError
from opendance.engines.upstream.errors import (
    UPSTREAM_BAD_VIDEO,
    UPSTREAM_DOWNLOAD_FAILED,
    UPSTREAM_VIDEO_TOO_LARGE,
)
from opendance.engines.upstream.options import UpstreamOptions
from opendance.media.safe_http import UnsafeAddressError, make_safe_client
from opendance.media.video import InvalidVideo, VideoInfo, probe_mp4

if TYPE_CHECKING:
    from pathlib import Path

_CHUNK: Final = 1 << 20


def download_video(
    ctx: EngineContext,
    url: str,
    target: Path,
    options: UpstreamOptions,
    *,
    wait: Callable[[EngineContext, float], None],
    log: logging.Logger,
    api: httpx.Client | None = None,
) -> None:
    """Stream the video into `target` (atomically), within the size cap, with a few retries.

    A URL the upstream handed back goes through a separate client without our Authorization
    header (the video host is not the API), through the SSRF guard: the URL is not from our
    configuration. With `api`, `url` is a path of the configured API itself (an inference
    server that serves `/content`), fetched with the API's own client.
    `wait(ctx, seconds)` sleeps between attempts (and sees a cancel).
    """
    host = urlsplit(url).hostname or "?"
    timeout = httpx.Timeout(
        options.download_timeout_seconds, connect=options.connect_timeout_seconds
    )
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
    last_problem = "no attempt"
    client = api or make_safe_client(
        timeout=timeout,
        allow_loopback=options.video_url_allow_loopback,
        follow_redirects=True,
    )
    with contextlib.nullcontext(client) if api is not None else client:
        for attempt in range(1, options.download_attempts + 1):
            ctx.check_cancel()
            try:
                with client.stream("GET", url, timeout=timeout) as response:
                    status = response.status_code
                    if status != 200:
                        last_problem = f"HTTP {status}"
                        if status < 500 and status not in (408, 429):
                            break
                    else:
                        _stream_to(ctx, response, partial, options.max_video_bytes)
                        os.replace(partial, target)
                        return
            except UnsafeAddressError:
                raise EngineError(
                    UPSTREAM_DOWNLOAD_FAILED,
                    "the upstream's video URL points to an internal address; not fetched",
                ) from None
            except httpx.TransportError as exc:
                last_problem = type(exc).__name__
            finally:
                partial.unlink(missing_ok=True)
            log.warning(
                "task %s: video download from %s failed (%s), attempt %d",
                ctx.task_id,
                host,
                last_problem,
                attempt,
            )
            if attempt < options.download_attempts:
                wait(ctx, options.poll_initial_seconds * attempt)
    raise EngineError(
        UPSTREAM_DOWNLOAD_FAILED,
        f"the finished video could not be downloaded from the upstream ({last_problem})",
    )


def _stream_to(ctx: EngineContext, response: httpx.Response, partial: Path, cap: int) -> None:
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise EngineError(
            UPSTREAM_VIDEO_TOO_LARGE, f"the upstream video is larger than {cap} bytes"
        )
    received = 0
    with partial.open("wb") as out:
        for chunk in response.iter_bytes(_CHUNK):
            received += len(chunk)
            if received > cap:
                raise EngineError(
                    UPSTREAM_VIDEO_TOO_LARGE, f"the upstream video is larger than {cap} bytes"
                )
            out.write(chunk)
            ctx.check_cancel()


def checked_video(target: Path) -> VideoInfo:
    """What the downloaded file holds; a file that does not decode is removed."""
    try:
        info = probe_mp4(target)
    except InvalidVideo:
        target.unlink(missing_ok=True)
        raise EngineError(
            UPSTREAM_BAD_VIDEO, "the video the upstream made could not be decoded"
        ) from None
    if info.frames < 1:
        raise EngineError(UPSTREAM_BAD_VIDEO, "the video the upstream made has no frames")
    return info
