"""Y'CbCr layers for the sandbox renderer: overlays converted once, then blended per frame.

The sandbox composes frames directly in Y'CbCr 4:2:0, so every picture it lays over a frame is
converted to premultiplied planes once, and each frame is only crops, small blends and plane
writes. This module holds those planes and the small integer blends that use them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from opendance.media.video import Yuv420, rgb_to_ycbcr, subsample_420

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

U8Array = npt.NDArray[np.uint8]
U16Array = npt.NDArray[np.uint16]
RGB = tuple[int, int, int]


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
