"""The sandbox's scenes: what each frame of a text- or image-to-video sandbox render shows.

A scene is built once per job (seeded background, sprites, text panel, all converted to Y'CbCr
layers) and then draws each frame into the encoder's planes. The same prompt and seed always
give the same frames.
"""

from __future__ import annotations

import colorsys
import hashlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageOps

from opendance.engines.base import VideoJob
from opendance.engines.sandbox.layers import RGB, U8Array, _even, _Overlay, _solid, _ycbcr
from opendance.engines.sandbox.text import (
    Font,
    _FontMaker,
    _line_height,
    _panel,
    _TextBlock,
    wrap_text,
)
from opendance.media.video import Yuv420, rgb_to_ycbcr, rgb_to_yuv420

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

LABEL: Final[str] = "SANDBOX RENDER \u00b7 opendance"


def scene_rng(prompt: str, seed: int | None) -> np.random.Generator:
    """A random generator fixed by prompt and seed, identical across runs and machines."""
    digest = hashlib.sha256(f"{seed}\x00{prompt}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "big"))


class _Scene(Protocol):
    def render(self, index: int, planes: Yuv420) -> None:
        """Draw frame `index` into the (uninitialised) planes of a new frame."""


class _Chrome:
    """What every sandbox frame carries: a progress bar and a frame counter."""

    def __init__(
        self, width: int, height: int, frames: int, fps: int, fonts: _FontMaker, accent: RGB
    ) -> None:
        unit = min(width, height)
        self.frames = frames
        self.fps = fps
        self.width = width
        self.bar_top = height - _even(max(4, unit * 0.012))
        self.bar_bottom = height
        self.accent = _ycbcr(accent)
        self.font = fonts(max(10, round(unit * 0.03)))
        widest = self._counter_text(frames - 1)
        self.box_w = _even(self.font.getlength(widest) + unit * 0.04)
        self.box_h = _even(_line_height(self.font) + unit * 0.02)
        self.margin = _even(unit * 0.03)

    def _counter_text(self, index: int) -> str:
        return f"frame {index + 1}/{self.frames}  {index / self.fps:5.2f} s"

    def draw_progress(self, planes: Yuv420, index: int) -> None:
        filled = _even(self.width * (index + 1) / self.frames)
        _solid(planes, 0, self.bar_top, filled, self.bar_bottom, self.accent)
        _solid(planes, filled, self.bar_top, self.width, self.bar_bottom, (40, 128, 128))

    def draw_counter(self, planes: Yuv420, index: int) -> None:
        """A dark box, top right, with the frame number and time (white text, neutral chroma)."""
        x0 = self.width - self.margin - self.box_w
        y0 = self.margin
        if x0 < 0:
            return  # a frame too narrow for it (extreme keep_ratio images)
        mask = Image.new("L", (self.box_w, self.box_h), 0)
        pad = (self.box_h - _line_height(self.font)) // 2
        ImageDraw.Draw(mask).text((pad, pad), self._counter_text(index), font=self.font, fill=255)
        coverage = np.asarray(mask, dtype=np.uint16)
        planes.y[y0 : y0 + self.box_h, x0 : x0 + self.box_w] = 28 + ((coverage * 207) >> 8)
        planes.u[y0 // 2 : (y0 + self.box_h) // 2, x0 // 2 : (x0 + self.box_w) // 2] = 128
        planes.v[y0 // 2 : (y0 + self.box_h) // 2, x0 // 2 : (x0 + self.box_w) // 2] = 128


def _palette(rng: np.random.Generator, count: int) -> list[RGB]:
    """Harmonious seeded colours: hues spread around a random start, muted and darkish."""
    start = float(rng.random())
    colours = []
    for step in range(count):
        hue = (start + step / count + float(rng.normal(0, 0.04))) % 1.0
        saturation = float(rng.uniform(0.45, 0.8))
        value = float(rng.uniform(0.3, 0.6))
        r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
        colours.append((round(r * 255), round(g * 255), round(b * 255)))
    return colours


def _accent(rng: np.random.Generator) -> RGB:
    """A seeded light colour: readable on the dark panel, distinct from the darker background."""
    r, g, b = colorsys.hsv_to_rgb(float(rng.random()), 0.5, 1.0)
    return round(r * 255), round(g * 255), round(b * 255)


def _background(rng: np.random.Generator, width: int, height: int) -> Yuv420:
    """A seeded field of soft colour blobs over a gradient, with a faint grid to show motion.

    Drawn at 1/8 scale and enlarged: it is smooth anyway, and cheap to encode.
    """
    small_w, small_h = max(2, width // 8), max(2, height // 8)
    yy, xx = np.mgrid[0:small_h, 0:small_w].astype(np.float32)
    colours = np.array(_palette(rng, 5), dtype=np.float32)
    angle = float(rng.uniform(0, 2 * math.pi))
    ramp = (xx * math.cos(angle) + yy * math.sin(angle)) / (small_w + small_h) + 0.5
    ramp = np.clip(ramp, 0.0, 1.0)[..., None]
    rgb = colours[0] * (1 - ramp) + colours[1] * ramp
    for _ in range(9):
        cx, cy = rng.uniform(0, small_w), rng.uniform(0, small_h)
        radius = rng.uniform(0.08, 0.22) * (small_w + small_h)
        weight = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * radius**2))[..., None] * 0.8
        rgb = rgb * (1 - weight) + colours[int(rng.integers(2, 5))] * weight
    ycbcr = rgb_to_ycbcr(np.clip(rgb, 0, 255).astype(np.uint8))
    y = _enlarge(ycbcr[..., 0], width, height, 16, 235)
    step = _even(min(width, height) / 7)
    for offset in range(2):
        y[:, offset::step] = np.minimum(y[:, offset::step], 215) + 20
        y[offset::step, :] = np.minimum(y[offset::step, :], 215) + 20
    return Yuv420(
        y=y,
        u=_enlarge(ycbcr[..., 1], width // 2, height // 2, 16, 240),
        v=_enlarge(ycbcr[..., 2], width // 2, height // 2, 16, 240),
    )


def _enlarge(
    plane: npt.NDArray[np.float32], width: int, height: int, low: int, high: int
) -> U8Array:
    image = Image.fromarray(np.ascontiguousarray(plane), "F")
    large = np.asarray(image.resize((width, height), Image.Resampling.BICUBIC))
    return np.clip(large + 0.5, low, high).astype(np.uint8)


def _disc(radius: int, colour: RGB) -> PILImage:
    """An anti-aliased disc with a white rim, drawn large and shrunk."""
    scale = 4
    size = _even(2 * radius + 4)
    big = Image.new("RGBA", (size * scale, size * scale), (0, 0, 0, 0))
    draw = ImageDraw.Draw(big)
    box = (2 * scale, 2 * scale, (size - 2) * scale, (size - 2) * scale)
    draw.ellipse(box, fill=(255, 255, 255, 240))
    rim = max(2, radius // 6) * scale
    inner = (box[0] + rim, box[1] + rim, box[2] - rim, box[3] - rim)
    draw.ellipse(inner, fill=(*colour, 235))
    return big.resize((size, size), Image.Resampling.LANCZOS)


@dataclass(frozen=True)
class _Wave:
    """`centre + amplitude * sin(2 pi t / period + phase)`, a smooth seeded path coordinate."""

    centre: float
    amplitude: float
    period: float
    phase: float

    @classmethod
    def seeded(cls, rng: np.random.Generator, low: float, high: float) -> _Wave:
        return cls(
            centre=(low + high) / 2,
            amplitude=(high - low) / 2,
            period=float(rng.uniform(3.0, 6.0)),
            phase=float(rng.uniform(0, 2 * math.pi)),
        )

    def at(self, seconds: float) -> int:
        return _even(
            self.centre
            + self.amplitude * math.sin(2 * math.pi * seconds / self.period + self.phase)
        )


class _TextScene:
    """Text-to-video: a panning seeded background, an orbiting disc, and the labelled prompt."""

    def __init__(self, job: VideoJob, fonts: _FontMaker, *, model: str) -> None:
        rng = scene_rng(job.prompt, job.seed)
        width, height, unit = job.width, job.height, min(job.width, job.height)
        self.width, self.height, self.fps = width, height, job.fps
        margin_x, margin_y = _even(width * 0.06), _even(height * 0.06)
        self.background = _background(rng, width + 2 * margin_x, height + 2 * margin_y)
        self.pan_x = _Wave.seeded(rng, 0, 2 * margin_x)
        self.pan_y = _Wave.seeded(rng, 0, 2 * margin_y)
        accent = _accent(rng)
        self.chrome = _Chrome(width, height, job.frames, job.fps, fonts, accent)
        self.disc = _Overlay.from_rgba(_disc(_even(unit * 0.08), accent))
        self.disc_x = _Wave.seeded(rng, 0, width - self.disc.width)
        self.disc_y = _Wave.seeded(rng, 0, self.chrome.bar_top - self.disc.height)
        self.panel, self.panel_x, self.panel_y = self._panel(job, fonts, model, accent)

    def _panel(
        self, job: VideoJob, fonts: _FontMaker, model: str, accent: RGB
    ) -> tuple[_Overlay, int, int]:
        unit = min(job.width, job.height)
        padding = _even(unit * 0.035)
        text_width = min(job.width - 2 * _even(unit * 0.05), unit * 1.9) - 2 * padding
        title = fonts(round(unit * 0.055))
        meta = fonts(max(10, round(unit * 0.03)))
        body = fonts(max(12, round(unit * 0.042)))
        seed = "no seed" if job.seed is None else f"seed {job.seed}"
        details = (
            f"{model}  |  {job.width}x{job.height}  |  {job.fps} fps  |  "
            f"{job.duration} s  |  {seed}"
        )
        prompt = fonts.displayable(job.prompt) or "(empty prompt)"
        room = job.height * 0.62 - 2 * padding - _line_height(title) - 2 * _line_height(meta)
        max_lines = max(1, int(room // _line_height(body)))
        lines: list[tuple[str, Font, RGB]] = [
            (LABEL, title, accent),
            (details, meta, (200, 200, 200)),
            ("", meta, (0, 0, 0)),
        ]
        lines += [
            (line, body, (255, 255, 255)) for line in wrap_text(prompt, body, text_width, max_lines)
        ]
        image = _panel(_TextBlock(lines), padding, (10, 10, 16, 170))
        return (
            _Overlay.from_rgba(image),
            _even((job.width - image.width) / 2),
            _even((job.height - image.height) / 2),
        )

    def render(self, index: int, planes: Yuv420) -> None:
        seconds = index / self.fps
        x, y = self.pan_x.at(seconds), self.pan_y.at(seconds)
        planes.y[...] = self.background.y[y : y + self.height, x : x + self.width]
        cx, cy = x // 2, y // 2
        planes.u[...] = self.background.u[cy : cy + self.height // 2, cx : cx + self.width // 2]
        planes.v[...] = self.background.v[cy : cy + self.height // 2, cx : cx + self.width // 2]
        self.disc.blend_onto(planes, self.disc_x.at(seconds), self.disc_y.at(seconds))
        self.panel.blend_onto(planes, self.panel_x, self.panel_y)
        self.chrome.draw_counter(planes, index)
        self.chrome.draw_progress(planes, index)


class _ImageScene:
    """Image-to-video: the image itself is frame 0, then a slow seeded zoom and drift over it.

    Only a small corner badge and the progress bar mark it as a sandbox render, and only from
    frame 1 on, so the first frame is the input image as exactly as H.264 allows.
    """

    def __init__(self, job: VideoJob, image: PILImage, fonts: _FontMaker) -> None:
        rng = scene_rng(job.prompt, job.seed)
        width, height = job.width, job.height
        image = image.convert("RGB")
        if image.size != (width, height):
            image = ImageOps.fit(image, (width, height), Image.Resampling.LANCZOS)
        self.first = rgb_to_yuv420(np.asarray(image))
        self.planes = [Image.fromarray(p, "L") for p in (self.first.y, self.first.u, self.first.v)]
        self.width, self.height, self.frames = width, height, job.frames
        self.zoom = float(rng.uniform(0.06, 0.12))
        angle = float(rng.uniform(0, 2 * math.pi))
        self.drift = (math.cos(angle), math.sin(angle))
        unit = min(width, height)
        self.chrome = _Chrome(width, height, job.frames, job.fps, fonts, _accent(rng))
        small = fonts(max(11, round(unit * 0.024)))
        prompt = wrap_text(
            fonts.displayable(job.prompt) or "(empty prompt)", small, width * 0.35, 1
        )
        block = _TextBlock(
            [(LABEL, small, (255, 255, 255))] + [(line, small, (210, 210, 210)) for line in prompt]
        )
        padding = _even(unit * 0.015)
        self.badge = _Overlay.from_rgba(_panel(block, padding, (10, 10, 16, 170)))
        self.badge_at = _even(unit * 0.03)

    def _box(self, index: int) -> tuple[float, float, float, float]:
        """The part of the image that frame `index` shows (eased zoom in, drifting)."""
        t = index / max(1, self.frames - 1)
        eased = t * t * (3 - 2 * t)
        scale = 1 + self.zoom * eased
        view_w, view_h = self.width / scale, self.height / scale
        slack_x, slack_y = (self.width - view_w) / 2, (self.height - view_h) / 2
        left = slack_x * (1 + self.drift[0])
        top = slack_y * (1 + self.drift[1])
        return left, top, left + view_w, top + view_h

    def render(self, index: int, planes: Yuv420) -> None:
        if index == 0:
            planes.y[...] = self.first.y
            planes.u[...] = self.first.u
            planes.v[...] = self.first.v
            return
        left, top, right, bottom = self._box(index)
        for target, source, div in zip(
            (planes.y, planes.u, planes.v), self.planes, (1, 2, 2), strict=True
        ):
            resized = source.resize(
                (target.shape[1], target.shape[0]),
                Image.Resampling.BILINEAR,
                box=(left / div, top / div, right / div, bottom / div),
            )
            target[...] = np.asarray(resized)
        self.badge.blend_onto(planes, self.badge_at, self.badge_at)
        self.chrome.draw_progress(planes, index)
