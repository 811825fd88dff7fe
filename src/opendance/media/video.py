"""Writing and reading the MP4 files every engine hands back.

Output is H.264 in an MP4 container, yuv420p, BT.709 limited range (tagged, so browsers and
decoders agree on the colours), with the `moov` atom at the front so a browser can start playing
before the download ends. Files appear atomically: they are written under a temporary name and
renamed into place only when complete, so a crash or a cancel never leaves half a video behind.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import av
import numpy as np
import numpy.typing as npt
from PIL import Image

from opendance.media.sizes import FPS

U8Array = npt.NDArray[np.uint8]

DEFAULT_CRF: Final[int] = 23
DEFAULT_PRESET: Final[str] = "veryfast"
THUMBNAIL_FORMATS: Final[dict[str, str]] = {
    ".webp": "WEBP",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
}

# BT.709 RGB -> Y'CbCr, limited ("tv") range: Y in 16..235, Cb/Cr in 16..240.
_KR: Final[float] = 0.2126
_KB: Final[float] = 0.0722
_KG: Final[float] = 1.0 - _KR - _KB
_RGB_TO_YUV: Final[npt.NDArray[np.float32]] = np.array(
    [
        [_KR * 219 / 255, _KG * 219 / 255, _KB * 219 / 255],
        [-_KR / (1 - _KB) / 2 * 224 / 255, -_KG / (1 - _KB) / 2 * 224 / 255, 0.5 * 224 / 255],
        [0.5 * 224 / 255, -_KG / (1 - _KR) / 2 * 224 / 255, -_KB / (1 - _KR) / 2 * 224 / 255],
    ],
    dtype=np.float32,
)
_YUV_OFFSET: Final[npt.NDArray[np.float32]] = np.array([16.0, 128.0, 128.0], dtype=np.float32)


class InvalidVideo(ValueError):
    """The file is not a readable video (not MP4, no video stream, corrupt data)."""


@dataclass(frozen=True)
class VideoInfo:
    """What a video file really contains, as a decoder sees it."""

    width: int
    height: int
    fps: float
    frames: int
    duration_seconds: float
    codec: str


@dataclass(frozen=True)
class Yuv420:
    """One frame as planar Y'CbCr 4:2:0: `y` is HxW, `u` and `v` are (H/2)x(W/2), all uint8."""

    y: U8Array
    u: U8Array
    v: U8Array


def rgb_to_ycbcr(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """Full-resolution Y'CbCr (float32 HxWx3, not rounded) with the writer's matrix.

    For callers that weight colours before subsampling, e.g. by alpha when preparing overlays.
    """
    ycbcr = rgb.astype(np.float32) @ _RGB_TO_YUV.T
    ycbcr += _YUV_OFFSET
    return ycbcr


def subsample_420(plane: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Mean of each 2x2 block of an HxW(xC) array: full resolution to 4:2:0 chroma resolution."""
    total = plane[0::2, 0::2] + plane[1::2, 0::2]
    total += plane[0::2, 1::2]
    total += plane[1::2, 1::2]
    total *= 0.25
    return total


def rgb_to_yuv420(rgb: npt.NDArray[np.uint8]) -> Yuv420:
    """Convert an RGB HxWx3 uint8 image with the writer's matrix (BT.709, limited range).

    Chroma is the mean of each 2x2 block. Engines that render in Y'CbCr use this to prepare
    their layers once, then compose frames without a per-frame colour conversion.
    """
    _even_size(rgb)
    ycbcr = rgb_to_ycbcr(rgb)
    chroma = subsample_420(ycbcr[..., 1:])
    return Yuv420(y=_to_u8(ycbcr[..., 0]), u=_to_u8(chroma[..., 0]), v=_to_u8(chroma[..., 1]))


def _to_u8(values: npt.NDArray[np.float32]) -> U8Array:
    return np.ascontiguousarray(np.clip(values + 0.5, 0, 255).astype(np.uint8))


def _even_size(rgb: npt.NDArray[np.uint8]) -> tuple[int, int]:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB array, got {rgb.shape} {rgb.dtype}")
    height, width = int(rgb.shape[0]), int(rgb.shape[1])
    if height % 2 or width % 2:
        raise ValueError(f"4:2:0 video needs even sides, got {width}x{height}")
    return height, width


def _plane_view(frame: av.VideoFrame, index: int) -> U8Array:
    """A writable numpy view of one plane of `frame`, without the row padding."""
    plane = frame.planes[index]
    flat = np.frombuffer(memoryview(plane), dtype=np.uint8)
    return flat.reshape(plane.height, plane.line_size)[:, : plane.width]


class Mp4Writer:
    """Stream frames into an H.264 MP4 one at a time, so no engine holds a whole video in memory.

    Use it as a context manager: leaving the block normally finishes the file (moved into place
    at `path`); leaving it with an exception, a cancel included, deletes the partial file.

        with Mp4Writer(path, 1920, 1088) as writer:
            for rgb in frames:
                writer.write_rgb(rgb)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        width: int,
        height: int,
        fps: int = FPS,
        *,
        crf: int = DEFAULT_CRF,
        preset: str = DEFAULT_PRESET,
        threads: int = 0,
        keyframe_seconds: float = 2.0,
    ) -> None:
        if width <= 0 or height <= 0 or width % 2 or height % 2:
            raise ValueError(f"H.264 4:2:0 needs positive even sides, got {width}x{height}")
        self.path = Path(path)
        self.width = width
        self.height = height
        self.fps = fps
        self.frames_written = 0
        self._temp_path = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.part")
        self._container: Any = av.open(
            str(self._temp_path), mode="w", format="mp4", options={"movflags": "+faststart"}
        )
        try:
            self._stream: Any = self._container.add_stream("libx264", rate=fps)
            codec = self._stream.codec_context
            codec.width = width
            codec.height = height
            codec.pix_fmt = "yuv420p"
            codec.time_base = Fraction(1, fps)
            codec.gop_size = max(1, round(fps * keyframe_seconds))
            codec.color_range = 1  # AVCOL_RANGE_MPEG (limited)
            codec.colorspace = 1  # AVCOL_SPC_BT709
            codec.color_primaries = 1  # AVCOL_PRI_BT709
            codec.color_trc = 1  # AVCOL_TRC_BT709
            codec.thread_count = threads
            codec.options = {"preset": preset, "crf": str(crf)}
        except BaseException:
            self.abort()
            raise

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def new_frame(self) -> tuple[Any, Yuv420]:
        """A blank frame and writable views of its planes, to render into without a copy."""
        frame = av.VideoFrame(self.width, self.height, "yuv420p")
        return frame, Yuv420(
            y=_plane_view(frame, 0), u=_plane_view(frame, 1), v=_plane_view(frame, 2)
        )

    def write_frame(self, frame: Any) -> None:
        """Encode a frame from `new_frame` (or any yuv420p `av.VideoFrame` of the right size)."""
        frame.pts = self.frames_written
        frame.time_base = Fraction(1, self.fps)
        frame.color_range = 1
        frame.colorspace = 1
        self._container.mux(self._stream.encode(frame))
        self.frames_written += 1

    def write_yuv420(self, planes: Yuv420) -> None:
        """Encode one frame given as 4:2:0 planes (see `rgb_to_yuv420` for the colour matrix)."""
        frame, target = self.new_frame()
        target.y[...] = planes.y
        target.u[...] = planes.u
        target.v[...] = planes.v
        self.write_frame(frame)

    def write_rgb(self, rgb: npt.NDArray[np.uint8]) -> None:
        """Encode one HxWx3 uint8 RGB frame."""
        height, width = _even_size(rgb)
        if (width, height) != (self.width, self.height):
            raise ValueError(f"frame is {width}x{height}, the video is {self.width}x{self.height}")
        source = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        self.write_frame(
            source.reformat(format="yuv420p", dst_colorspace="ITU709", dst_color_range="MPEG")
        )

    def close(self) -> Path:
        """Flush the encoder, finish the file and move it into place; returns its path."""
        if self.frames_written == 0:
            self.abort()
            raise ValueError("an MP4 needs at least one frame")
        try:
            self._container.mux(self._stream.encode(None))
            self._container.close()
            os.replace(self._temp_path, self.path)
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        """Stop and delete the partial file; safe to call more than once."""
        with contextlib.suppress(Exception):
            self._container.close()
        self._temp_path.unlink(missing_ok=True)


def encode_mp4(
    frames: Iterable[npt.NDArray[np.uint8]],
    path: str | os.PathLike[str],
    width: int,
    height: int,
    fps: int = FPS,
    *,
    crf: int = DEFAULT_CRF,
    preset: str = DEFAULT_PRESET,
) -> Path:
    """Write RGB HxWx3 uint8 frames (any iterable, consumed lazily) to an MP4 at `path`."""
    with Mp4Writer(path, width, height, fps, crf=crf, preset=preset) as writer:
        for rgb in frames:
            writer.write_rgb(rgb)
    return writer.path


def _open_video(path: str | os.PathLike[str]) -> tuple[Any, Any]:
    try:
        container = av.open(str(path), mode="r")
    except (av.error.FFmpegError, OSError) as exc:
        raise InvalidVideo(f"cannot open {path}: {exc}") from exc
    if not container.streams.video:
        container.close()
        raise InvalidVideo(f"{path} has no video stream")
    return container, container.streams.video[0]


def probe_mp4(path: str | os.PathLike[str], *, decode: bool = True) -> VideoInfo:
    """Size, frame rate, frame count, duration and codec of a video file.

    With `decode` (the default) every frame is decoded, so a file that demuxes but does not
    decode is caught; `decode=False` counts packets only, which is much faster and exact for MP4.
    """
    container, stream = _open_video(path)
    try:
        if decode:
            frames = sum(1 for _ in container.decode(stream))
        else:
            frames = sum(1 for packet in container.demux(stream) if packet.size)
        codec = stream.codec_context
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        else:
            duration = frames / fps if fps else 0.0
        return VideoInfo(
            width=int(codec.width),
            height=int(codec.height),
            fps=fps,
            frames=frames,
            duration_seconds=duration,
            codec=str(codec.name),
        )
    except av.error.FFmpegError as exc:
        raise InvalidVideo(f"cannot decode {path}: {exc}") from exc
    finally:
        container.close()


def iter_frames(path: str | os.PathLike[str]) -> Generator[U8Array, None, None]:
    """Decode every frame of a video as RGB HxWx3 uint8 arrays, in order."""
    container, stream = _open_video(path)
    try:
        for frame in container.decode(stream):
            yield frame.to_ndarray(format="rgb24")
    except av.error.FFmpegError as exc:
        raise InvalidVideo(f"cannot decode {path}: {exc}") from exc
    finally:
        container.close()


def read_frame(path: str | os.PathLike[str], index: int) -> U8Array:
    """Decode frame `index` (0-based) as an RGB HxWx3 uint8 array; IndexError past the end."""
    if index < 0:
        raise IndexError(f"frame index must be >= 0, got {index}")
    frames = iter_frames(path)
    try:
        for position, rgb in enumerate(frames):
            if position == index:
                return rgb
    finally:
        frames.close()
    raise IndexError(f"{path} has no frame {index}")


def extract_thumbnail(
    path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    at_fraction: float = 0.0,
    max_side: int | None = 640,
    quality: int = 80,
) -> Path:
    """Save one frame of a video as a still image (WebP, JPEG or PNG, from `out_path`'s suffix).

    `at_fraction` picks the frame by position (0 = first, 1 = last); `max_side` shrinks the
    picture to fit, keeping its ratio. The file appears atomically.
    """
    target = Path(out_path)
    image_format = THUMBNAIL_FORMATS.get(target.suffix.lower())
    if image_format is None:
        raise ValueError(f"thumbnail must end in one of {sorted(THUMBNAIL_FORMATS)}: {target}")
    if not 0.0 <= at_fraction <= 1.0:
        raise ValueError(f"at_fraction must be in [0, 1], got {at_fraction}")
    frames = probe_mp4(path, decode=False).frames
    index = min(frames - 1, max(0, round(at_fraction * (frames - 1))))
    image = Image.fromarray(read_frame(path, index))
    if max_side is not None:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
    try:
        image.save(temp, format=image_format, quality=quality)
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    return target
