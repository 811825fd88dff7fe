"""Text for the sandbox renderer: fonts, ASCII fallbacks, word wrap and text panels.

Every sandbox video shows its label and prompt. Pillow's built-in font has Latin letters only,
so prompts are folded to look-alikes unless a TrueType font is configured; lines are wrapped by
rendered width and drawn as RGBA panels that the scenes turn into overlays.
"""

from __future__ import annotations

import math
import os
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from PIL import Image, ImageDraw, ImageFont

from opendance.engines.sandbox.layers import RGB, _even

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

# The default font covers ASCII and a little more; map the common rest to look-alikes.
_ASCII_LOOKALIKES: Final[dict[str, str]] = {
    "\u2014": "-",
    "\u2013": "-",
    "\u2212": "-",
    "\u00d7": "x",
    "\u00a0": " ",
}


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
