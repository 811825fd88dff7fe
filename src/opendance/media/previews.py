"""Still previews of a result video: a thumbnail and a spritesheet, made once and cached.

The OpenAI videos API serves `thumbnail` and `spritesheet` variants of every finished video.
Both are real images decoded from the MP4 (not placeholders), written next to the result as
`<task_id>.thumbnail.webp` and `<task_id>.spritesheet.jpg`, atomically, on first request; later
requests read the cached file. `delete_previews` removes them with the result.
"""

from __future__ import annotations

import math
import os
import uuid
from pathlib import Path
from typing import Any, Final, Literal

import av
from PIL import Image

from opendance.media.video import InvalidVideo, extract_thumbnail, probe_mp4

Variant = Literal["thumbnail", "spritesheet"]

VARIANTS: Final[tuple[Variant, ...]] = ("thumbnail", "spritesheet")

SUFFIXES: Final[dict[str, str]] = {
    "thumbnail": ".thumbnail.webp",
    "spritesheet": ".spritesheet.jpg",
}
MEDIA_TYPES: Final[dict[str, str]] = {"thumbnail": "image/webp", "spritesheet": "image/jpeg"}

#: Thumbnail: the middle frame (more typical than the first), fitted into 640x640.
THUMBNAIL_AT: Final[float] = 0.5
THUMBNAIL_MAX_SIDE: Final[int] = 640
#: Spritesheet: up to 25 evenly spaced frames, 5 per row, each 256 px wide.
SPRITE_TILES: Final[int] = 25
SPRITE_COLUMNS: Final[int] = 5
SPRITE_TILE_WIDTH: Final[int] = 256
JPEG_QUALITY: Final[int] = 80


def preview_path(video: Path, variant: Variant) -> Path:
    """Where a variant of `video` is cached: beside it, named after it."""
    return video.with_name(video.stem + SUFFIXES[variant])


def ensure_preview(video: Path, variant: Variant) -> Path:
    """The cached preview of `video`, made now if missing. Blocking: call from a thread."""
    target = preview_path(video, variant)
    if target.exists():
        return target
    if variant == "thumbnail":
        return extract_thumbnail(
            video, target, at_fraction=THUMBNAIL_AT, max_side=THUMBNAIL_MAX_SIDE, quality=80
        )
    return make_spritesheet(video, target)


def delete_previews(video: Path) -> None:
    """Remove every cached preview of `video` (the video itself is the caller's)."""
    for variant in VARIANTS:
        preview_path(video, variant).unlink(missing_ok=True)


def sprite_indices(frames: int, tiles: int = SPRITE_TILES) -> list[int]:
    """`tiles` frame indices spread evenly from the first frame to the last."""
    if frames <= 0:
        return []
    count = min(frames, tiles)
    if count == 1:
        return [0]
    return [round(i * (frames - 1) / (count - 1)) for i in range(count)]


def make_spritesheet(
    video: Path,
    target: Path,
    *,
    tiles: int = SPRITE_TILES,
    columns: int = SPRITE_COLUMNS,
    tile_width: int = SPRITE_TILE_WIDTH,
) -> Path:
    """Write a JPEG grid of evenly spaced frames (left to right, top to bottom), atomically.

    Frames are decoded once, in order, and only the chosen ones are scaled and converted, so a
    12 s 1080p video costs one decode pass, not one per tile.
    """
    info = probe_mp4(video, decode=False)
    wanted = sprite_indices(info.frames, tiles)
    if not wanted:
        raise InvalidVideo(f"{video} has no frames")
    tile_height = max(2, round(tile_width * info.height / info.width))
    columns = min(columns, len(wanted))
    rows = math.ceil(len(wanted) / columns)
    sheet = Image.new("RGB", (columns * tile_width, rows * tile_height), (0, 0, 0))
    chosen = set(wanted)
    placed = 0
    container: Any = av.open(str(video), mode="r")
    try:
        for index, frame in enumerate(container.decode(container.streams.video[0])):
            if index in chosen:
                tile = frame.reformat(width=tile_width, height=tile_height, format="rgb24")
                row, column = divmod(placed, columns)
                sheet.paste(tile.to_image(), (column * tile_width, row * tile_height))
                placed += 1
                if placed == len(wanted):
                    break
    except av.error.FFmpegError as exc:
        raise InvalidVideo(f"cannot decode {video}: {exc}") from exc
    finally:
        container.close()
    temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
    try:
        sheet.save(temp, format="JPEG", quality=JPEG_QUALITY)
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    return target
