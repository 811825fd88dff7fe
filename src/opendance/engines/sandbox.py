"""The sandbox engine: real, playable MP4s from a CPU renderer, with no model at all.

It exists so the whole server (tasks, credits, callbacks, faces, storage) can be run, tested
and demonstrated on any machine. Every video is plainly labelled as a sandbox render and shows
its prompt; it has the contract's exact size, 24 fps and `duration x 24` frames, and it is
deterministic: the same prompt and seed always give the same frames.

Frames are composed directly in Y'CbCr 4:2:0 with numpy: the background, text panel and sprites
are converted once, and each frame is only crops, small blends and plane writes. That keeps a
1080p five-second video to a couple of seconds on two CPU cores, most of it in the encoder.
"""

from __future__ import annotations

import colorsys
import hashlib
import math
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont, ImageOps
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
from opendance.media import sizes
from opendance.media.video import Mp4Writer, Yuv420, rgb_to_ycbcr, rgb_to_yuv420, subsample_420

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
U8Array = npt.NDArray[np.uint8]
U16Array = npt.NDArray[np.uint16]
RGB = tuple[int, int, int]

LABEL: Final[str] = "SANDBOX RENDER \u00b7 opendance"
OUTPUT_NAME: Final[str] = "video.mp4"
PROGRESS_EVERY: Final[int] = 12
# From bench/sandbox.py on a 2-core Xeon (docs/bench/sandbox.md): image-to-video, the slower
# path, costs about 0.008 s per megapixel-frame; text-to-video about 0.003.
SECONDS_PER_MEGAPIXEL_FRAME: Final[float] = 0.008
SETUP_SECONDS: Final[float] = 0.05
TEXT_TO_VIDEO_COST_RATIO: Final[float] = 0.4
# The default font covers ASCII and a little more; map the common rest to look-alikes.
_ASCII_LOOKALIKES: Final[dict[str, str]] = {
    "\u2014": "-",
    "\u2013": "-",
    "\u2212": "-",
    "\u00d7": "x",
    "\u00a0": " ",
}


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


def scene_rng(prompt: str, seed: int | None) -> np.random.Generator:
    """A random generator fixed by prompt and seed, identical across runs and machines."""
    digest = hashlib.sha256(f"{seed}\x00{prompt}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "big"))


class _Scene(Protocol):
    def render(self, index: int, planes: Yuv420) -> None:
        """Draw frame `index` into the (uninitialised) planes of a new frame."""


# ---------------------------------------------------------------------------------------------
# Y'CbCr layers


@dataclass(frozen=True)
class _Overlay:
    """An RGBA picture converted once to premultiplied Y'CbCr, blended onto frames cheaply.

    Alpha is scaled to 0..256 so a blend is `(dst * inverse + premultiplied) >> 8` in uint16,
    exact at both ends; chroma is alpha-weighted before subsampling so edges keep their colour.
    """

    width: int
    height: int
    y: U16Array
    y_inverse: U16Array
    u: U16Array
    v: U16Array
    c_inverse: U16Array

    @classmethod
    def from_rgba(cls, image: PILImage) -> _Overlay:
        rgba = np.asarray(image.convert("RGBA"))
        height, width = rgba.shape[0] & ~1, rgba.shape[1] & ~1
        rgba = rgba[:height, :width]
        alpha = rgba[..., 3].astype(np.float32) / 255.0
        weighted = rgb_to_ycbcr(np.ascontiguousarray(rgba[..., :3])) * alpha[..., None]
        chroma = subsample_420(weighted[..., 1:])
        chroma_alpha = subsample_420(alpha)
        return cls(
            width=width,
            height=height,
            y=_premultiplied(weighted[..., 0]),
            y_inverse=_inverse(alpha),
            u=_premultiplied(chroma[..., 0]),
            v=_premultiplied(chroma[..., 1]),
            c_inverse=_inverse(chroma_alpha),
        )

    def blend_onto(self, planes: Yuv420, x: int, y: int) -> None:
        """Blend with the top-left corner at (x, y), rounded down to even; clipped to the frame."""
        x, y = x & ~1, y & ~1
        frame_h, frame_w = planes.y.shape
        left, top = max(0, -x), max(0, -y)
        right, bottom = min(self.width, frame_w - x), min(self.height, frame_h - y)
        if right <= left or bottom <= top:
            return
        rows, cols = slice(top, bottom), slice(left, right)
        _blend(
            planes.y[y + top : y + bottom, x + left : x + right],
            self.y[rows, cols],
            self.y_inverse[rows, cols],
        )
        rows, cols = slice(top // 2, bottom // 2), slice(left // 2, right // 2)
        cx, cy = x // 2, y // 2
        inverse = self.c_inverse[rows, cols]
        target = (slice(cy + rows.start, cy + rows.stop), slice(cx + cols.start, cx + cols.stop))
        _blend(planes.u[target], self.u[rows, cols], inverse)
        _blend(planes.v[target], self.v[rows, cols], inverse)


def _premultiplied(weighted: npt.NDArray[np.float32]) -> U16Array:
    # +128 makes the final `>> 8` round to nearest instead of down.
    return (weighted * 256.0 + 128.5).astype(np.uint16)


def _inverse(alpha: npt.NDArray[np.float32]) -> U16Array:
    opaque: npt.NDArray[np.float32] = np.rint(alpha * 256.0)
    return (256 - opaque).astype(np.uint16)


def _blend(target: U8Array, premultiplied: U16Array, inverse: U16Array) -> None:
    mixed = np.multiply(target, inverse, dtype=np.uint16)
    mixed += premultiplied
    mixed >>= 8
    np.copyto(target, mixed, casting="unsafe")


def _solid(planes: Yuv420, x0: int, y0: int, x1: int, y1: int, color: tuple[int, int, int]) -> None:
    """Fill an even-aligned rectangle with a Y'CbCr colour."""
    planes.y[y0:y1, x0:x1] = color[0]
    planes.u[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2] = color[1]
    planes.v[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2] = color[2]


def _ycbcr(color: RGB) -> tuple[int, int, int]:
    value = rgb_to_ycbcr(np.array([[color]], dtype=np.uint8))[0, 0]
    return int(value[0] + 0.5), int(value[1] + 0.5), int(value[2] + 0.5)


def _even(value: float) -> int:
    return int(round(value / 2)) * 2


# ---------------------------------------------------------------------------------------------
# Text


class _FontMaker:
    """Fonts by pixel size: a given TrueType file, or Pillow's built-in (Latin-only) font."""

    def __init__(self, font_path: str | os.PathLike[str] | None) -> None:
        self._font_path = font_path

    def __call__(self, size: int) -> Font:
        if self._font_path is not None:
            return ImageFont.truetype(os.fspath(self._font_path), size)
        return ImageFont.load_default(size=size)

    def displayable(self, text: str) -> str:
        """One line of text the font can draw: whitespace collapsed, accents dropped if needed."""
        text = " ".join(text.split())
        if self._font_path is not None:
            return text
        return "".join(_ascii_lookalike(char) for char in text)


def _ascii_lookalike(char: str) -> str:
    if char.isascii():
        return char
    if char in _ASCII_LOOKALIKES:
        return _ASCII_LOOKALIKES[char]
    folded = "".join(c for c in unicodedata.normalize("NFKD", char) if c.isascii())
    return folded or char


def _line_height(font: Font) -> int:
    box = font.getbbox("Ag")
    return int(math.ceil((box[3] - box[1]) * 1.35))


def wrap_text(text: str, font: Font, max_width: float, max_lines: int) -> list[str]:
    """Greedy word wrap by rendered width; words too long for a line are split; an ellipsis
    ends the last line when the text does not fit in `max_lines`."""
    lines: list[str] = []
    line = ""
    for word in text.split(" "):
        candidate = f"{line} {word}" if line else word
        if font.getlength(candidate) <= max_width:
            line = candidate
            continue
        if line:
            lines.append(line)
        line = word
        while font.getlength(line) > max_width and len(line) > 1:
            cut = _fitting_prefix(line, font, max_width)
            lines.append(line[:cut])
            line = line[cut:]
    if line:
        lines.append(line)
    if len(lines) <= max_lines:
        return lines
    kept = lines[:max_lines]
    last = kept[-1]
    while last and font.getlength(last + "\u2026") > max_width:
        last = last[:-1]
    kept[-1] = last.rstrip() + "\u2026"
    return kept


def _fitting_prefix(text: str, font: Font, max_width: float) -> int:
    cut = 1
    while cut < len(text) and font.getlength(text[: cut + 1]) <= max_width:
        cut += 1
    return cut


@dataclass
class _TextBlock:
    lines: list[tuple[str, Font, RGB]]

    def size(self) -> tuple[int, int]:
        width = max((int(math.ceil(font.getlength(t))) for t, font, _ in self.lines), default=0)
        return width, sum(_line_height(font) for _, font, _ in self.lines)

    def draw(self, image: PILImage, x: int, y: int) -> PILImage:
        """Composite the lines onto an RGBA image, each glyph's coverage used as alpha."""
        for text, font, color in self.lines:
            mask = Image.new("L", image.size, 0)
            ImageDraw.Draw(mask).text((x, y), text, font=font, fill=255)
            layer = Image.new("RGBA", image.size, (*color, 255))
            layer.putalpha(mask)
            image = Image.alpha_composite(image, layer)
            y += _line_height(font)
        return image


def _panel(block: _TextBlock, padding: int, fill: tuple[int, int, int, int]) -> PILImage:
    """A rounded, translucent box holding a text block."""
    width, height = block.size()
    size = (_even(width + 2 * padding + 1), _even(height + 2 * padding + 1))
    image = Image.new("RGBA", size, (0, 0, 0, 0))
    ImageDraw.Draw(image).rounded_rectangle(
        (0, 0, size[0] - 1, size[1] - 1), radius=padding, fill=fill
    )
    return block.draw(image, padding, padding)


# ---------------------------------------------------------------------------------------------
# Scenes


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
