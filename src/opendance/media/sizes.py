"""The Seedance 1.0 output sizes and the aspect-ratio rules of the contract.

The table is the contract's (and the hosted model's) exact pixel sizes; engines whose model
cannot make a size exactly pick the nearest one they can and report it.
"""

from __future__ import annotations

from typing import Final, Literal

Quality = Literal["480p", "720p", "1080p"]
NamedRatio = Literal["16:9", "9:16", "1:1", "4:3", "3:4", "21:9"]

QUALITIES: Final[tuple[str, ...]] = ("480p", "720p", "1080p")
NAMED_RATIOS: Final[tuple[str, ...]] = ("16:9", "9:16", "1:1", "4:3", "3:4", "21:9")
IMAGE_ONLY_RATIOS: Final[tuple[str, ...]] = ("keep_ratio", "adaptive")
FPS: Final[int] = 24

SIZES: Final[dict[str, dict[str, tuple[int, int]]]] = {
    "16:9": {"480p": (864, 480), "720p": (1248, 704), "1080p": (1920, 1088)},
    "4:3": {"480p": (736, 544), "720p": (1120, 832), "1080p": (1664, 1248)},
    "1:1": {"480p": (640, 640), "720p": (960, 960), "1080p": (1440, 1440)},
    "3:4": {"480p": (544, 736), "720p": (832, 1120), "1080p": (1248, 1664)},
    "9:16": {"480p": (480, 864), "720p": (704, 1248), "1080p": (1088, 1920)},
    "21:9": {"480p": (960, 416), "720p": (1504, 640), "1080p": (2176, 928)},
}


def size_for(quality: str, ratio: str) -> tuple[int, int]:
    """Width and height of a named ratio at a quality, exactly as the contract's table says."""
    return SIZES[ratio][quality]


def ratio_value(ratio: str) -> float:
    """`"16:9"` -> 1.777..."""
    w, h = ratio.split(":")
    return int(w) / int(h)


def nearest_named_ratio(width: int, height: int) -> str:
    """The supported ratio nearest an image's (compared on a log scale, so 2:1 and 1:2 are fair)."""
    import math

    target = math.log(width / height)
    return min(NAMED_RATIOS, key=lambda r: abs(math.log(ratio_value(r)) - target))


def keep_ratio_size(quality: str, width: int, height: int, multiple: int = 16) -> tuple[int, int]:
    """The image's own ratio at about the quality's pixel count, both sides multiples of 16."""
    import math

    ref_w, ref_h = SIZES["16:9"][quality]
    pixels = ref_w * ref_h
    aspect = width / height
    h = math.sqrt(pixels / aspect)
    w = h * aspect
    out_w = max(multiple, round(w / multiple) * multiple)
    out_h = max(multiple, round(h / multiple) * multiple)
    return out_w, out_h
