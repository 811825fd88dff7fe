"""The sandbox engine: real, playable MP4s from a CPU renderer, with no model at all.

It exists so the whole server (tasks, credits, callbacks, faces, storage) can be run, tested
and demonstrated on any machine. Every video is plainly labelled as a sandbox render and shows
its prompt; it has the contract's exact size, 24 fps and `duration x 24` frames, and it is
deterministic: the same prompt and seed always give the same frames.

Frames are composed directly in Y'CbCr 4:2:0 with numpy: the background, text panel and sprites
are converted once, and each frame is only crops, small blends and plane writes. That keeps a
1080p five-second video to a couple of seconds on two CPU cores, most of it in the encoder.

`engine` is the `Engine` (options, plan, estimate, encode loop); `scenes` draws the frames, on
the Y'CbCr `layers` and with the fonts and word wrap of `text`.
"""

from opendance.engines.sandbox.engine import (
    OUTPUT_NAME,
    PROGRESS_EVERY,
    SECONDS_PER_MEGAPIXEL_FRAME,
    SETUP_SECONDS,
    TEXT_TO_VIDEO_COST_RATIO,
    SandboxEngine,
    SandboxOptions,
    from_options,
    plan_size,
)
from opendance.engines.sandbox.scenes import LABEL, scene_rng
from opendance.engines.sandbox.text import Font, wrap_text

__all__ = [
    "LABEL",
    "OUTPUT_NAME",
    "PROGRESS_EVERY",
    "SECONDS_PER_MEGAPIXEL_FRAME",
    "SETUP_SECONDS",
    "TEXT_TO_VIDEO_COST_RATIO",
    "Font",
    "SandboxEngine",
    "SandboxOptions",
    "from_options",
    "plan_size",
    "scene_rng",
    "wrap_text",
]
